// Page-wide behaviour the components do not have, loaded once by app.launch_options (as the page's <head>).
(() => {
  // 1. A typed number outside its control's range gets a sentence, not a silent clamp. Gradio's sliders clamp a typed
  //    5000 to their maximum; number boxes send it and the server refuses it. The sentence stays beside the control
  //    until its value is back in range.
  const noticeFor = (block) => {
    let notice = block.querySelector(":scope > .range-notice");
    if (!notice) {
      notice = document.createElement("div");
      notice.className = "range-notice";
      notice.setAttribute("role", "alert");
      notice.style.cssText = "color: var(--error-text-color, #b91c1c); font-size: 0.85em; margin-top: 4px;";
      block.appendChild(notice);
    }
    return notice;
  };
  const isSlider = (block) => block.querySelector("input[type=range]") !== null;
  // A slider's box never passes a value it cannot take on to Gradio, which would clamp it in the box (5000 became
  // 1000 there while the run was refused) and price the clamped value: the typed value stays shown, with its sentence.
  const keepTyped = (event, block) => {
    if (isSlider(block)) event.stopImmediatePropagation();
  };
  const checkRange = (event) => {
    const input = event.target;
    if (!(input instanceof HTMLInputElement) || input.type !== "number") return;
    const block = input.closest(".block") || input.parentElement;
    const label = (block.querySelector("label span, [data-testid='block-info']")?.textContent || "This value").trim();
    if (input.value === "") {  // an emptied box: said beside it (it was said only at the top, after a press)
      const dice = [...((block.closest(".row") || block.parentElement)?.querySelectorAll("button") || [])]
        .some((b) => b.textContent.trim() === "Random seed");
      setNotice(block, label, `${label} must be a number; the box is empty. ` +
        (dice ? "Type one, or press Random seed." : "Type one."));
      keepTyped(event, block);
      return;
    }
    const value = Number(input.value), min = input.getAttribute("min"), max = input.getAttribute("max");
    const low = min === null || min === "" ? -Infinity : Number(min);
    const high = max === null || max === "" ? Infinity : Number(max);
    if (Number.isNaN(value) || (value >= low && value <= high)) {
      block.querySelector(":scope > .range-notice")?.remove();
      if (!visibleNotices().length) document.querySelectorAll(".run-blocked").forEach((b) => b.remove());
      markEstimate();
      return;
    }
    const range = high === Infinity ? `${min} or more` : low === -Infinity ? `${max} or less` : `from ${min} to ${max}`;
    setNotice(block, label, `${label} must be ${range}; ${input.value} is not. Type a value in range.`);
    keepTyped(event, block);
  };
  const setNotice = (block, label, sentence) => {
    const notice = noticeFor(block);
    notice.dataset.label = label;
    if (notice.textContent !== sentence) notice.textContent = sentence;
    markEstimate();
  };
  document.addEventListener("input", checkRange, true);
  document.addEventListener("change", checkRange, true);
  document.addEventListener("blur", checkRange, true);  // Gradio's slider clamps its box when it loses the focus

  //    The "next run" line prices what the server holds; while a value is marked in red that is not what the page
  //    shows, so the line says which value keeps the run from running instead of pricing another one.
  const markEstimate = () => {
    const line = document.getElementById("next-run");
    if (!line) return;
    const notice = visibleNotices()[0];
    let own = line.querySelector(":scope > .estimate-blocked");
    if (!notice) {
      own?.remove();
      if (line.hasAttribute("data-blocked")) line.removeAttribute("data-blocked");
      return;
    }
    if (!own) {
      own = document.createElement("div");
      own.className = "estimate-blocked";
      line.appendChild(own);
    }
    const text = `Cannot run as set: ${notice.dataset.label} is out of range (marked in red).`;
    const sentence = /the box is empty/.test(notice.textContent) ?
      `Cannot run as set: ${notice.dataset.label} is empty (marked in red).` : text;
    if (own.textContent !== sentence) own.textContent = sentence;
    line.setAttribute("data-blocked", "");
  };

  //    While such a sentence shows in the tab, its run buttons do not run (issue 37: steps 0 said "cannot run as
  //    set", then the slider's clamp ran 1 step). The click is stopped before Gradio sees it and a sentence under
  //    the button says why; it goes when the values are back in range. A guidance interval that makes no interval
  //    has its own sentence under its boxes (#interval-note, the server's): the refusal points there.
  const visibleNotices = () => [...document.querySelectorAll(".range-notice")]
    .filter((notice) => notice.offsetParent !== null && notice.textContent);
  const intervalRefused = (button) => {
    const note = document.getElementById("interval-note");
    const panel = button.closest("[role=tabpanel]");
    return note && (!panel || panel.contains(note)) && note.innerText.trim() !== "";
  };
  document.addEventListener("click", (event) => {
    const button = event.target instanceof Element ? event.target.closest("button.primary") : null;
    if (!button) return;
    const row = button.closest(".row, .form, .block") || button.parentElement;
    let blocked = row.parentElement.querySelector(":scope > .run-blocked");
    const notices = visibleNotices(), interval = intervalRefused(button);
    if (!notices.length && !interval) {
      blocked?.remove();
      return;
    }
    event.preventDefault();
    event.stopImmediatePropagation();
    if (!blocked) {
      blocked = document.createElement("div");
      blocked.className = "run-blocked";
      blocked.setAttribute("role", "alert");
      blocked.style.cssText = "color: var(--error-text-color, #b91c1c); font-weight: 600; margin: 4px 0;";
      row.after(blocked);
    }
    blocked.textContent = notices.length ?
      `Not run: ${notices[0].textContent.split(";")[0]}. Fix the value marked in red, then run.` :
      "Not run: the guidance interval cannot be used as typed; see the sentence under its boxes (Guidance methods).";
  }, true);

  // 2. Ctrl+Enter (Cmd+Enter on a Mac) runs the visible tab: its first enabled primary button.
  document.addEventListener("keydown", (event) => {
    if (event.key !== "Enter" || !(event.ctrlKey || event.metaKey)) return;
    const button = [...document.querySelectorAll("button.primary")]
      .find((b) => b.offsetParent !== null && !b.disabled);
    if (button) {
      event.preventDefault();
      button.click();
    }
  });

  // 3. Edit's mask: a canvas of our own over the input picture (issue 37: Gradio's ImageEditor ignored a plain upload
  //    until painted on, and re-uploaded its layers some 550 times per run). Painting sends nothing: the end of each
  //    stroke writes the mask, a PNG data URL of the paint alone, into the hidden box #edit-mask, which the Edit button
  //    sends with the picture. A new picture in #edit-input clears the mask.
  const setUpMask = (host) => {
    const size = Number(host.dataset.size) || 280;
    const view = document.createElement("canvas"), paint = document.createElement("canvas");
    view.width = view.height = paint.width = paint.height = size;
    view.id = "edit-mask-canvas";
    view.setAttribute("role", "img");
    view.setAttribute("aria-label", "The input picture: paint on it the region the model should redraw");
    view.style.cssText = `width: ${size}px; height: ${size}px; max-width: 100%; touch-action: none; cursor: crosshair;` +
      " background: #f3f4f6; border: 1px solid var(--border-color-primary, #d1d5db); border-radius: 4px;";
    const clear = document.createElement("button");
    clear.type = "button";
    clear.id = "edit-mask-clear";
    clear.textContent = "Clear the mask";
    clear.className = "lg secondary sm";
    clear.style.cssText = "display: block; margin-top: 6px; padding: 2px 10px;";
    host.append(view, clear);
    const picture = new Image();
    let source = null, painted = false, down = false, last = null;
    const draw = () => {
      const context = view.getContext("2d");
      context.clearRect(0, 0, size, size);
      if (source && picture.complete && picture.naturalWidth) {
        context.imageSmoothingEnabled = false;
        context.drawImage(picture, 0, 0, size, size);
      }
      context.globalAlpha = 0.6;
      context.drawImage(paint, 0, 0);
      context.globalAlpha = 1;
    };
    const publish = () => {
      const box = document.querySelector("#edit-mask textarea, #edit-mask input");
      if (!box) return;
      box.value = painted ? paint.toDataURL("image/png") : "";
      box.dispatchEvent(new Event("input", { bubbles: true }));
    };
    const erase = () => {
      paint.getContext("2d").clearRect(0, 0, size, size);
      painted = false;
      draw();
      publish();
    };
    const at = (event) => {
      const box = view.getBoundingClientRect();
      return [(event.clientX - box.left) * size / box.width, (event.clientY - box.top) * size / box.height];
    };
    const stroke = (point) => {
      const context = paint.getContext("2d");
      context.strokeStyle = "#ff3b30";
      context.lineWidth = 24;
      context.lineCap = context.lineJoin = "round";
      context.beginPath();
      context.moveTo(...(last || point));
      context.lineTo(...point);
      context.stroke();
      last = point;
      painted = true;
      draw();
    };
    view.addEventListener("pointerdown", (event) => {
      down = true;
      last = null;
      view.setPointerCapture(event.pointerId);
      stroke(at(event));
    });
    view.addEventListener("pointermove", (event) => { if (down) stroke(at(event)); });
    const end = () => {
      if (!down) return;
      down = false;
      last = null;
      publish();
    };
    view.addEventListener("pointerup", end);
    view.addEventListener("pointercancel", end);
    clear.addEventListener("click", erase);
    picture.addEventListener("load", draw);
    const follow = () => {  // the input box's picture, whatever put it there
      const shown = document.querySelector("#edit-input img");
      const src = shown ? shown.getAttribute("src") : null;
      if (src === source) return;
      source = src;
      if (src) picture.src = src;
      erase();
    };
    new MutationObserver(follow).observe(document.body, { subtree: true, childList: true, attributes: true,
                                                          attributeFilter: ["src"] });
    follow();
  };
  new MutationObserver(() => {
    const host = document.getElementById("edit-mask-canvas-host");
    if (host && !host.querySelector("canvas")) setUpMask(host);
  }).observe(document.documentElement, { childList: true, subtree: true });
  // 4. A run waiting behind others says so on every tab (issue 37, item 14: a Trajectory run waited 37.6 s behind
  //    another tab's Generate with nothing on screen). Gradio's status trackers hold "queue: 2/3 | 1.6s[/6.0s]" for a
  //    waiting job, but over a one-line status they are too small to see; one fixed line at the top shows it.
  const QUEUED = /queue:\s*(\d+)\/(\d+)\s*\|\s*([\d.]+)(?:\/([\d.]+))?s/;
  const tabName = (tracker) => {
    const panel = tracker.closest("[role=tabpanel]");
    const button = panel && document.querySelector(`[role=tab][aria-controls="${panel.id}"]`);
    return button ? button.textContent.trim() : "";
  };
  const queueSign = () => {
    let sign = document.getElementById("queue-sign");
    if (!sign) {
      sign = document.createElement("div");
      sign.id = "queue-sign";
      sign.setAttribute("role", "status");
      sign.setAttribute("aria-live", "polite");
      sign.style.cssText = "position: fixed; top: 8px; left: 12px; right: 12px; margin: 0 auto; width: fit-content; " +
        "z-index: 1000; box-sizing: border-box; " +
        "padding: 6px 14px; border-radius: 8px; background: var(--color-accent-soft, #fff7ed); " +
        "border: 1px solid var(--color-accent, #f97316); color: var(--body-text-color, #111); font-size: 0.95em; " +
        "box-shadow: 0 2px 8px rgba(0, 0, 0, 0.15); font-family: var(--font, inherit); display: none;";
      document.body.appendChild(sign);
    }
    return sign;
  };
  const waitingLine = (match, tab) => {
    const ahead = Number(match[1]) - 1;  // Gradio counts from 1 among the waiting jobs; one job is running
    const who = ahead === 0 ? "you are next, after the run in progress" :
      `${ahead} run${ahead === 1 ? "" : "s"} waiting ahead of you, behind the run in progress`;
    // Gradio's "/2.1s" is the mean time of earlier runs of this event, not the time left ("about 0 s" was shown
    // with a 2-minute run ahead): the line says how long this run has waited, which is true.
    const waited = `waited ${Math.round(Number(match[3]))} s so far`;
    return `${tab ? tab + ": " : ""}waiting for the sampler: ${who}; ${waited}.`;
  };
  const showQueue = () => {
    const lines = [];
    document.querySelectorAll("[data-testid=status-tracker] .progress-text").forEach((text) => {
      const match = QUEUED.exec(text.textContent);
      if (match) lines.push(waitingLine(match, tabName(text)));
    });
    const sign = queueSign(), shown = [...new Set(lines)].join(" ");  // one line per run, not per output it fills
    if (sign.textContent !== shown) sign.textContent = shown;
    sign.style.display = shown ? "block" : "none";
  };
  //    A refusal under a run button goes once nothing is marked any more (a guidance interval made valid again).
  const dropStaleRefusals = () => {
    if (!document.querySelector(".run-blocked") || visibleNotices().length) return;
    const note = document.getElementById("interval-note");
    if (!note || note.innerText.trim() === "") document.querySelectorAll(".run-blocked").forEach((b) => b.remove());
  };
  new MutationObserver(dropStaleRefusals).observe(document.documentElement, { childList: true, subtree: true,
                                                                              characterData: true });
  new MutationObserver(showQueue).observe(document.documentElement, { childList: true, subtree: true,
                                                                      characterData: true });
  // 5. Names a screen reader reads out, and a short tab order (issue 37, item 13). Gradio gives a radio group no name
  //    (self-conditioning read "on" / "off"), every slider's reset button the same name ("Reset to default value"),
  //    and puts every tab and every example button in the Tab order (18 presses to reach Generate). Each radio group
  //    becomes a named radiogroup, each reset button says which control it resets, and the tab list and the example
  //    buttons are one Tab stop each, their items reached with the arrow keys (the WAI-ARIA tabs and toolbar pattern).
  const setAttr = (element, name, value) => {
    if (element.getAttribute(name) !== value) element.setAttribute(name, value);  // no change, no mutation: no loop
  };
  const blockLabel = (block) =>
    (block.querySelector("[data-testid='block-info']")?.textContent || "").trim();
  const nameRadioGroups = () => {
    for (const radio of document.querySelectorAll("input[type=radio]")) {
      const group = radio.closest("label")?.parentElement, block = radio.closest(".block");
      const label = block ? blockLabel(block) : "";
      if (!group || !label) continue;
      setAttr(group, "role", "radiogroup");
      setAttr(group, "aria-label", label);
    }
  };
  // A text box's name is its label alone (the interval boxes read their label run into their info line, or nothing).
  const nameTextboxes = () => {
    for (const box of document.querySelectorAll("input[data-testid=textbox], textarea[data-testid=textbox]")) {
      const block = box.closest(".block"), label = block ? blockLabel(block) : "";
      if (label && (!box.hasAttribute("aria-label") || box.dataset.named === "label")) {
        box.dataset.named = "label";
        setAttr(box, "aria-label", label);
      }
    }
  };
  const nameResetButtons = () => {
    for (const button of document.querySelectorAll("button[aria-label^='Reset'], button[data-reset-for]")) {
      const block = button.closest(".block"), label = block ? blockLabel(block) : "";
      if (!label) continue;
      setAttr(button, "data-reset-for", label);
      setAttr(button, "aria-label", `Reset ${label} to its default`);
      setAttr(button, "title", `Reset ${label} to its default`);
    }
  };
  // One Tab stop for a group of buttons: the current one (the selected tab, or the one last moved to) is tabbable,
  // the arrow keys, Home and End move between them.
  const rove = (items, current) => {
    items.forEach((item) => setAttr(item, "tabindex", item === current ? "0" : "-1"));
  };
  const groups = () => [
    [...document.querySelectorAll("[role=tablist]")].map((list) => [...list.querySelectorAll(":scope > [role=tab]")]),
    [...document.querySelectorAll("#example-buttons")].map((row) => [...row.querySelectorAll("button")]),
  ].flat().filter((items) => items.length > 1);
  const roveAll = () => {
    for (const items of groups()) {
      const current = items.find((i) => i.getAttribute("aria-selected") === "true") ||
        items.find((i) => i.dataset.roving === "current") || items[0];
      rove(items, current);
    }
  };
  document.addEventListener("keydown", (event) => {
    const keys = { ArrowRight: 1, ArrowDown: 1, ArrowLeft: -1, ArrowUp: -1, Home: "first", End: "last" };
    if (!(event.key in keys) || !(event.target instanceof Element)) return;
    const items = groups().find((group) => group.includes(event.target));
    if (!items) return;
    event.preventDefault();
    const step = keys[event.key], at = items.indexOf(event.target);
    const next = items[step === "first" ? 0 : step === "last" ? items.length - 1
      : (at + step + items.length) % items.length];
    items.forEach((item) => delete item.dataset.roving);
    next.dataset.roving = "current";
    rove(items, next);
    next.focus();
    if (next.getAttribute("role") === "tab") next.click();  // tabs follow the focus, as the pattern's default
  }, true);
  // A dropdown's list closes when the focus leaves it by Tab (Gradio left the Checkpoint list open over the page).
  document.addEventListener("focusout", (event) => {
    const input = event.target;
    if (!(input instanceof HTMLInputElement) || input.getAttribute("role") !== "combobox") return;
    const block = input.closest(".block");
    // Only a move to another control (Tab): a click on an option moves the focus nowhere and must still pick it.
    if (!(event.relatedTarget instanceof Element) || block?.contains(event.relatedTarget)) return;
    input.dispatchEvent(new KeyboardEvent("keydown", { key: "Escape", bubbles: true }));
  }, true);
  // Result pictures say what they show: their block's label and the settings the app wrote into the PNG (its
  //    `parameters` text: class, steps, sampler, guidance scale, seed, model; else its `Description`), read as text,
  //    never as markup.
  const pngText = (bytes, keyword) => {
    const view = new DataView(bytes), latin1 = new TextDecoder("latin1"), utf8 = new TextDecoder("utf-8");
    for (let at = 8; at + 12 <= bytes.byteLength;) {
      const length = view.getUint32(at), type = latin1.decode(new Uint8Array(bytes, at + 4, 4));
      const data = new Uint8Array(bytes, at + 8, Math.min(length, bytes.byteLength - at - 8));
      const key = latin1.decode(data.subarray(0, Math.max(0, data.indexOf(0))));
      if (type === "tEXt" && key === keyword) return latin1.decode(data.subarray(key.length + 1));
      if (type === "iTXt" && key === keyword && data[key.length + 1] === 0) {  // uncompressed international text
        let rest = data.subarray(key.length + 3);
        rest = rest.subarray(rest.indexOf(0) + 1);  // the language tag
        return utf8.decode(rest.subarray(rest.indexOf(0) + 1));  // after the translated keyword
      }
      if (type === "IDAT" || type === "IEND") return "";
      at += 12 + length;
    }
    return "";
  };
  const settingsOf = new Map();  // picture URL -> its settings in words ("" when it has none), read once
  const settingsFor = (src) => {
    if (!settingsOf.has(src)) {
      settingsOf.set(src, fetch(src).then((r) => r.arrayBuffer())
        .then((bytes) => (pngText(bytes, "parameters") || pngText(bytes, "Description")).replace(/\n/g, "; ")
          .slice(0, 400)).catch(() => ""));
    }
    return settingsOf.get(src);
  };
  const describePictures = () => {
    for (const picture of document.querySelectorAll(".block img")) {
      const block = picture.closest(".block");
      const label = (block.querySelector("label[data-testid='block-label']")?.textContent || blockLabel(block)).trim();
      const src = picture.currentSrc || picture.src;
      if (!label || !src || src.startsWith("data:") || picture.dataset.describedSrc === src) continue;
      picture.dataset.describedSrc = src;
      const thumbnail = picture.closest("button[aria-label^='Thumbnail']")?.getAttribute("aria-label");
      const what = thumbnail ? `${label}, ${thumbnail.toLowerCase()}` : label;
      setAttr(picture, "alt", what);
      settingsFor(src).then((settings) => {
        if (settings && picture.dataset.describedSrc === src) setAttr(picture, "alt", `${what}: ${settings}`);
      });
    }
  };
  const nameEverything = () => { nameRadioGroups(); nameTextboxes(); nameResetButtons(); roveAll(); describePictures(); };
  new MutationObserver(nameEverything).observe(document.documentElement, {
    childList: true, subtree: true, attributes: true, attributeFilter: ["aria-selected", "aria-label", "src"] });
  nameEverything();
})();
