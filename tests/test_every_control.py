"""What the page shows is what runs (issue 37, DESIGN.md "The app's request state"): in headless Chromium, on every
tab, every accordion opened and every radio switched once and back, then each run button pressed: the values the
browser sends must equal the tab's defaults, control by control. A control that drifts when it renders (the guidance
interval's empty number box that became 0 once its accordion opened, silently switching guidance off) fails here,
whichever tab it is added to. On Generate, w = 0 and w = 10 must then give different pixels."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import socket
import time
from dataclasses import asdict
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from conftest import CHROMIUM, STABLE, browser_page, quick_lab_models, write_tiny_checkpoints

pytestmark = pytest.mark.skipif(not shutil.which("chromium") and not Path(CHROMIUM).exists(),
                                reason="needs Debian's chromium (CI installs it)")

TABS = ["Generate", "Compare samplers", "Guidance sweep", "X/Y grid", "Trajectory", "Edit", "2-D lab", "Families",
        "Likelihood", "Model card"]


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    """The app over the tiny checkpoints, and its Blocks (whose queue tells when every event has been answered)."""
    import app
    from diffusion.serving.engine import ModelCache

    cache = ModelCache(write_tiny_checkpoints(tmp_path_factory.mktemp("controls") / "checkpoints"), capacity=4)
    demo = app.build_demo(cache)
    demo.model_cache = cache  # for a test that slows one estimate
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # The 2-D lab's radios run the lab, whose learned models train at first use (26 s of this module's 50 s)
    with quick_lab_models():
        _, url, _ = demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True,
                                **app.launch_options(demo))
        try:
            yield url, demo
        finally:
            demo.close()


class Page:
    """A page of the app that records what it sends to the queue and can wait until every event it sent is answered."""

    def __init__(self, page, demo):
        self.page, self.demo, self.sent, self.in_flight, self.hold = page, demo, [], 0, False
        page.on("framenavigated", lambda frame: self.navigations.append(frame.url) if frame == page.main_frame else None)
        self.navigations = []
        page.on("request", lambda r: self._count(r, 1))
        page.on("requestfinished", lambda r: self._count(r, -1))
        page.on("requestfailed", lambda r: self._count(r, -1))
        page.route("**/gradio_api/queue/join*", self._join)

    def _count(self, request, step):
        if "/gradio_api/queue/join" in request.url:
            self.in_flight += step

    def _join(self, route):
        payload = json.loads(route.request.post_data or "{}")
        self.sent.append(payload)
        if self.hold:  # recorded, refused as the guard refuses (the page says so and stays), never run
            route.fulfill(status=429, content_type="application/json", body='{"detail": "held by the test"}')
        else:
            route.continue_()

    def server_idle(self) -> bool:
        queue = self.demo._queue
        return (self.in_flight == 0 and all(job is None for job in queue.active_jobs)
                and not any(q.queue for q in queue.event_queue_per_concurrency_id.values()))

    def settle(self, timeout=120):
        """Until the server has answered every event the page sent and the page's controls have stopped changing."""
        deadline = time.time() + timeout
        while not self.server_idle():
            assert time.time() < deadline, "the app's events did not finish"
            self.page.wait_for_timeout(50)  # polling a state, not waiting for a time
        self.page.wait_for_function(STABLE, polling=50, timeout=timeout * 1000)


@contextlib.contextmanager
def live_page(live):
    """A Page of the live app in Chromium at 1400 x 1000, loaded and settled; closed with its browser afterwards."""
    url, demo = live
    with browser_page(url) as raw:
        page = Page(raw, demo)
        page.page.wait_for_selector("text=Next run", timeout=120_000)
        page.settle()
        yield page


def open_every_accordion(page: Page):
    for wrap in page.page.locator("button.label-wrap:visible").all():
        if "open" not in (wrap.get_attribute("class") or ""):
            wrap.click()
            page.settle()


def switch_every_radio_and_back(page: Page) -> list[str]:
    """Each visible radio group to another enabled choice and back; returns the groups switched (by their label).
    Gradio names each radio input apart, so a group is the block (fieldset) around them."""
    switched = []
    for group in page.page.locator("fieldset.block:visible:has(input[type=radio])").all():
        radios = group.locator("input[type=radio]").all()
        checked = [r for r in radios if r.get_attribute("aria-checked") == "true"]
        others = [r for r in radios if r.get_attribute("aria-checked") != "true" and r.is_enabled()]
        if len(checked) != 1 or not others:
            continue
        others[0].check()
        page.settle()
        checked[0].check()
        page.settle()
        assert checked[0].get_attribute("aria-checked") == "true"
        switched.append(group.locator("[data-testid=block-info]").first.inner_text())
    return switched


def defaults(config: dict) -> dict:
    return {c["id"]: c for c in config["components"]}


def differences(config: dict, payload: dict) -> list[str]:
    """The controls whose sent value differs from the value the app starts them at (States are the server's)."""
    components = defaults(config)
    dependency = next(d for d in config["dependencies"] if d["id"] == payload["fn_index"])
    wrong = []
    for component_id, value in zip(dependency["inputs"], payload["data"]):
        component = components[component_id]
        if component["type"] == "state":
            continue
        default = component["props"].get("value")
        if value != default and not (value in (None, "", []) and default in (None, "", [])):
            wrong.append(f"{component['props'].get('label') or component['type']}: sent {value!r}, starts {default!r}")
    return wrong


def run_buttons(page: Page):
    return page.page.locator("button.primary:visible").all()


def grid_bytes(page: Page, before: str | None) -> tuple[str, np.ndarray]:
    """The next finished Generate run's grid (its download link differs from `before`)."""
    page.page.wait_for_function(
        "before => { const a = [...document.querySelectorAll(\"a[href*='samples-'][download]\")]"
        ".find(a => a.offsetParent !== null); return a && a.getAttribute('href') !== before; }",
        arg=before, timeout=120_000)
    link = page.page.locator("a[href*='samples-'][download]:visible").first.get_attribute("href")
    return link, np.asarray(Image.open(io.BytesIO(page.page.request.get(link).body())))


def set_number(page: Page, label: str, value):
    box = page.page.locator(f"input[aria-label='number input for {label}']:visible").first
    box.fill(str(value))
    box.press("Enter")
    page.settle()
    assert box.input_value() == str(value)


def test_every_control_sends_what_it_shows_on_every_tab(live):
    from diffusion.app.generate import generate_request_fields

    url, _ = live
    config = httpx.get(url.rstrip("/") + "/config").json()
    fn = {d["id"]: d for d in config["dependencies"]}
    with live_page(live) as page:
        report, checked, pressed = [], {}, {}
        for tab in TABS:
            page.page.locator("[role=tab]", has_text=tab).first.click()
            page.settle()
            # The 2-D lab runs on every radio change: eight runs of its plots (12 s of CPU in this test) that show
            # nothing about what the controls send. Held there, as the presses below are (test_lab2d_app runs it).
            page.hold = tab == "2-D lab"
            open_every_accordion(page)
            switched = switch_every_radio_and_back(page)
            page.hold = False
            buttons = run_buttons(page)
            pressed[tab] = [button.inner_text().strip() for button in buttons]
            for button in buttons:
                page.sent.clear()
                page.hold = True  # every event the press sends is recorded and not run
                button.click()
                deadline = time.time() + 60
                while not page.sent and time.time() < deadline:
                    page.page.wait_for_timeout(50)  # polling for the request the press sends
                page.hold = False
                page.settle()
                assert page.sent, f"{tab}: pressing {button.inner_text()!r} sent nothing"
                for payload in page.sent:
                    report += [f"{tab} / {button.inner_text().strip()}: {line}"
                               for line in differences(config, payload)]
                    if fn[payload["fn_index"]].get("api_name") == "generate":
                        checked["generate"] = payload["data"]
            checked[tab] = switched
        assert report == [], "the page sends other values than its controls start at:\n" + "\n".join(report)
        assert [tab for tab in TABS if not pressed[tab]] == ["Model card"]  # the card runs on a checkpoint change
        assert checked["Generate"] and checked["Edit"]  # radios were switched there

        # Generate's request, field by field, as the handler builds it from what was sent and from the defaults.
        generate = next(d for d in config["dependencies"] if d.get("api_name") == "generate")
        starts = [defaults(config)[i]["props"].get("value") for i in generate["inputs"]]
        assert asdict(generate_request_fields(*checked["generate"])) == asdict(generate_request_fields(*starts))

        # And guidance acts: after all that, w = 0 and w = 10 give different pixels.
        page.page.locator("[role=tab]", has_text="Generate").first.click()
        page.settle()
        set_number(page, "Guidance scale w", 0)
        page.page.locator("button.primary:visible", has_text="Generate").first.click()
        link, unguided = grid_bytes(page, None)
        set_number(page, "Guidance scale w", 10)
        page.page.locator("button.primary:visible", has_text="Generate").first.click()
        _, guided = grid_bytes(page, link)
        assert unguided.shape == guided.shape and not np.array_equal(unguided, guided)


def test_the_queue_sends_progress_ten_times_a_second_and_polls_at_100_hz(live):
    import app

    _, demo = live
    assert demo._queue.progress_update_sleep_when_free == app.PROGRESS_SECONDS == 0.1
    assert demo._queue.sleep_when_free == app.IDLE_POLL_SECONDS == 0.01


def test_an_interval_box_is_a_bound_or_empty_and_a_word_gets_a_sentence():
    from diffusion.app.controls import interval_bound
    from diffusion.serving.engine import RequestError

    assert [interval_bound(v, "interval start") for v in ("", "  ", "none", "None", None, "-4.7", 2)] == \
           [None, None, None, None, None, -4.7, 2.0]
    with pytest.raises(RequestError, match="interval start must be a number, got 'wide'"):
        interval_bound("wide", "interval start")


def test_steps_0_gets_a_sentence_and_generate_does_not_run_in_chromium(live):
    """Issue 37, item 8: steps 0 said "Cannot run as set", then Generate ran at the slider's clamped 1 step. Now the
    press is refused with a sentence while a value is out of range, and runs once it is back in range."""
    url, _ = live
    generate = next(d["id"] for d in httpx.get(url.rstrip("/") + "/config").json()["dependencies"]
                    if d.get("api_name") == "generate")
    with live_page(live) as page:
        steps = page.page.locator("input[aria-label='number input for Steps']:visible").first
        steps.fill("0")
        steps.press("Tab")
        page.page.locator(".range-notice:visible", has_text="Steps must be from 1 to 1000; 0 is not").wait_for()
        page.settle()
        page.sent.clear()
        page.page.locator("button.primary:visible", has_text="Generate").first.click()
        page.page.locator(".run-blocked:visible", has_text="Not run: Steps must be from 1 to 1000").wait_for()
        page.settle()
        assert [s for s in page.sent if s.get("fn_index") == generate] == []  # nothing went to the queue
        assert "images/s" not in page.page.inner_text("body")
        steps.fill("3")
        steps.press("Tab")
        page.page.locator(".range-notice").first.wait_for(state="detached")
        page.settle()
        page.page.locator("button.primary:visible", has_text="Generate").first.click()
        page.page.wait_for_selector("text=images/s", timeout=120_000)
        assert "NFE 3" in page.page.inner_text("body") and page.page.locator(".run-blocked").count() == 0


def test_an_empty_number_box_says_it_is_empty():
    from diffusion.app.generate import generate_request_fields
    from diffusion.serving.engine import RequestError

    with pytest.raises(RequestError, match="seed must be a number; the box is empty"):
        generate_request_fields("tiny", "ode", "dpm++2m", 10, 0.0, "uniform", "cfg", 0, 3.0, "own", None, 4)
    with pytest.raises(RequestError, match="steps must be a number; the box is empty"):
        generate_request_fields("tiny", "ode", "dpm++2m", " ", 0.0, "uniform", "cfg", 0, 3.0, "own", 0, 4)


def test_restoring_a_run_from_the_history_queues_one_event_in_chromium(live):
    """Issue 37, item 6: a click on a history entry queued 7 events (the click and the restored controls' change
    events), so 2 of 9 clicks hit the cap of 4 per session. Now only the click goes to the queue: the estimate line
    and the sampler's own settings answer outside it, and live mode follows the user's changes, not restores."""
    from diffusion.app.generate import APP_SAMPLING

    with live_page(live) as page:
        generate = page.page.locator("button.primary:visible", has_text="Generate").first
        generate.click()
        page.page.wait_for_selector("text=(seed 0)", timeout=120_000)
        page.settle()
        page.page.get_by_label("DDIM", exact=True).check()
        page.page.get_by_label("none (the model as it is)").check()
        page.settle()
        for label, value in (("number input for Steps", "3"), ("number input for Images", "4"), ("Seed", "5")):
            box = page.page.locator(f"input[aria-label='{label}']:visible").first
            box.fill(value)
            box.press("Enter")
            page.settle()
        generate.click()
        page.page.wait_for_selector("text=(seed 5)", timeout=120_000)
        history = page.page.locator("#history button.thumbnail-item")
        history.nth(1).wait_for(timeout=60_000)
        page.settle()
        page.sent.clear()
        history.nth(1).click()  # the first run: Generate's default (ODE, 15 steps, CFG), 16 images, seed 0
        page.page.wait_for_selector("text=Restored from the history", timeout=60_000)
        page.settle()
        assert len(page.sent) == 1, [payload["fn_index"] for payload in page.sent]
        page.page.wait_for_function(f"() => document.body.innerText.includes('Next run: NFE {APP_SAMPLING['steps']}') && "
                                    "document.body.innerText.includes('for 16 images')", timeout=60_000)


def test_switching_to_a_model_with_the_same_classes_keeps_the_class_in_chromium(live):
    """Issue 37, item 9: fashion-dit -> fashion-flow put Class back to T-shirt/top; here tiny-flow -> tiny (both
    circle, square, cross) keeps "cross"."""
    from playwright.sync_api import expect

    with live_page(live) as page:
        page.page.get_by_label("Class", exact=True).first.click()
        page.page.get_by_role("option", name="cross", exact=True).click()
        page.settle()
        page.page.get_by_label("Checkpoint").first.click()
        page.page.get_by_role("option", name="tiny", exact=True).click()
        page.page.wait_for_selector("text=Now tiny:", timeout=60_000)
        page.settle()
        expect(page.page.get_by_label("Class", exact=True).first).to_have_value("cross")


def test_the_estimate_line_shows_the_last_values_when_an_older_answer_comes_later_in_chromium(live, monkeypatch):
    """Issue 37: each control had its own estimate event, so two quick changes ran two estimates side by side and the
    slower, older answer could land last: under CI's load the line showed "Next run" for a guidance interval it
    refused a moment before (test_tour waited 60 s for the refusal). Here the first answer is held 3 s: the line
    must end on the second, the refusal."""
    import threading

    url, demo = live
    cache, slow_started, slow_done = demo.model_cache, threading.Event(), threading.Event()
    estimate_seconds = cache.estimate_seconds

    def slow_once(work):
        if not slow_started.is_set():
            slow_started.set()
            time.sleep(3)  # the older answer arrives after the newer one would have
            slow_done.set()
        return estimate_seconds(work)

    with browser_page(None) as raw:
        page = Page(raw, demo)
        direct = []  # the page's calls outside the queue, in flight
        page.page.on("request", lambda r: direct.append(r) if "/gradio_api/run/" in r.url else None)
        page.page.on("requestfinished", lambda r: direct.remove(r) if r in direct else None)
        page.page.on("requestfailed", lambda r: direct.remove(r) if r in direct else None)
        page.page.goto(url)
        page.page.wait_for_selector("text=Next run", timeout=120_000)
        page.page.get_by_text("Guidance methods (starting at interval").click()
        page.settle()
        monkeypatch.setattr(cache, "estimate_seconds", slow_once)
        for elem_id, value in (("interval-low", "3"), ("interval-high", "-3")):
            box = page.page.locator(f"#{elem_id} input").first
            box.fill(value)
            box.press("Tab")
        # Until the slow, older answer is in and nothing is in flight, the line refuses the interval. (The newer
        # estimate is sent only once the older one is answered: between the two nothing is in flight, so the
        # refusal is the state waited for, and a stale "Next run" left last never reaches it.)
        deadline, line = time.time() + 60, ""
        # (On busy cores both changes can reach the server before the first is estimated; always_last then
        # estimates only the last values, and there is no older answer to wait for.)
        while not ((slow_done.is_set() or not slow_started.is_set()) and not direct
                   and "interval cannot be used as typed" in line):
            assert time.time() < deadline, f"the line ended on {line!r}, not on the last values' refusal"
            page.page.wait_for_timeout(50)  # polling a state
            line = page.page.locator("#next-run").inner_text()
