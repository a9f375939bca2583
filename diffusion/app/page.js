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
  const checkRange = (event) => {
    const input = event.target;
    if (!(input instanceof HTMLInputElement) || input.type !== "number" || input.value === "") return;
    const block = input.closest(".block") || input.parentElement;
    const value = Number(input.value), min = input.getAttribute("min"), max = input.getAttribute("max");
    const low = min === null || min === "" ? -Infinity : Number(min);
    const high = max === null || max === "" ? Infinity : Number(max);
    if (Number.isNaN(value) || (value >= low && value <= high)) {
      block.querySelector(":scope > .range-notice")?.remove();
      return;
    }
    const label = (block.querySelector("label span, [data-testid='block-info']")?.textContent || "This value").trim();
    const slider = block.querySelector("input[type=range]") !== null;
    const range = high === Infinity ? `${min} or more` : low === -Infinity ? `${max} or less` : `from ${min} to ${max}`;
    noticeFor(block).textContent = `${label} must be ${range}; ${input.value} is not. ` +
      (slider ? `The slider was set to ${value > high ? max : min}; type a value in range.` : "Type a value in range.");
  };
  document.addEventListener("input", checkRange, true);
  document.addEventListener("change", checkRange, true);

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
})();
