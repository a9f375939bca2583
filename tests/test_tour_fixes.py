"""Issue 37, the newcomer's second tour in Chromium (tiny checkpoints): each value the page refuses is said once,
beside its control, and what the page shows is what runs or is priced; the Edit tab's refusal stays in its own status;
no blank gap above the History; the interval boxes have names; on a phone the settings come right after the results."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from conftest import CHROMIUM, browser_page, write_tiny_checkpoints
from test_every_control import live, live_page  # noqa: F401 (the live app fixture and its settled page)

pytestmark = pytest.mark.skipif(not shutil.which("chromium") and not Path(CHROMIUM).exists(),
                                reason="needs Debian's chromium (CI installs it)")

TOASTS = "() => [...document.querySelectorAll('.toast-body')].filter(t => t.offsetParent).length"
TOP = "(selector) => { const e = [...document.querySelectorAll(selector)].find(e => e.offsetParent); " \
      "return e ? e.getBoundingClientRect().top + scrollY : null; }"
BOTTOM = "(selector) => { const e = [...document.querySelectorAll(selector)].find(e => e.offsetParent); " \
         "return e ? e.getBoundingClientRect().bottom + scrollY : null; }"


def generate_button(page):
    return page.page.locator("button.primary:visible", has_text="Generate").first


def type_into(page, selector, value):
    box = page.page.locator(selector).first
    box.fill(str(value))
    box.press("Tab")
    page.settle()


def open_methods(page):
    page.page.get_by_text("Guidance methods (").click()
    page.page.locator("#interval-low input").wait_for(state="visible")
    page.settle()


def test_a_reversed_interval_is_said_once_under_its_named_boxes_and_the_run_points_there(live):
    """Before: the sentence was in the estimate line, the "Not run" status and a red pop-up (three copies), ~900 px
    below the boxes, and nothing marked the boxes; the aria snapshot listed both boxes without a name."""
    from playwright.sync_api import expect

    with live_page(live) as page:
        open_methods(page)
        snapshot = page.page.locator("[role=tabpanel]:visible").first.aria_snapshot()
        for name in ("Interval: from log-SNR", "to log-SNR"):  # the whole name: quoted, nothing after it
            assert f'textbox "{name}"' in snapshot, snapshot
        type_into(page, "#interval-low input", 3)
        type_into(page, "#interval-high input", -3)
        note = page.page.locator("#interval-note")
        expect(note).to_contain_text("from 3 to -3", timeout=60_000)  # answered outside the queue
        distance = page.page.evaluate(TOP, "#interval-note") - page.page.evaluate(BOTTOM, "#interval-high")
        assert 0 <= distance < 60, distance
        page.sent.clear()
        generate_button(page).click()
        page.page.wait_for_selector("text=Not run:", timeout=60_000)
        page.settle()
        body = page.page.inner_text("body")
        assert body.count("from 3 to -3") == 1, body  # one sentence, under the boxes
        assert "Not run: the guidance interval cannot be used as typed; see the sentence under its boxes" in body
        assert page.page.evaluate(TOASTS) == 0  # no pop-up that follows the user to other tabs
        assert "Cannot run as set: the guidance interval cannot be used as typed" in page.page.inner_text("#next-run")
        type_into(page, "#interval-high input", "")
        expect(note).to_have_text("", timeout=60_000)
        expect(page.page.locator("#next-run")).to_contain_text("Next run: NFE", timeout=60_000)
        expect(page.page.locator(".run-blocked")).to_have_count(0)


def test_steps_past_the_slider_and_an_empty_seed_stay_shown_said_beside_them_and_nothing_runs(live):
    """Before: the box showed a clamped 1000 while Generate was refused, and the estimate line priced 1000 steps; an
    empty seed was said only at the top, after pressing Generate."""
    from playwright.sync_api import expect

    with live_page(live) as page:
        type_into(page, "input[aria-label='number input for Steps']:visible", 5000)
        steps = page.page.locator("input[aria-label='number input for Steps']:visible").first
        assert steps.input_value() == "5000"
        notice = page.page.locator(".range-notice:visible").first.inner_text()
        assert notice == "Steps must be from 1 to 1000; 5000 is not. Type a value in range.", notice
        line = page.page.inner_text("#next-run")
        assert "NFE" not in line and "Cannot run as set: Steps is out of range (marked in red)" in line, line
        assert page.sent == [] or all("5000" not in json.dumps(s) for s in page.sent)  # never sent, never clamped
        page.sent.clear()
        generate_button(page).click()
        page.page.locator(".run-blocked:visible").wait_for()
        page.settle()
        assert page.sent == [] and steps.input_value() == "5000"
        type_into(page, "input[aria-label='number input for Steps']:visible", 6)
        expect(page.page.locator("#next-run")).to_contain_text("Next run: NFE 6", timeout=60_000)

        # An empty seed: before, nothing beside the box; the sentence came only at the top after pressing Generate.
        type_into(page, "input[aria-label='number input for Steps']:visible", 4)
        seed = page.page.locator("input[aria-label='Seed']:visible").first
        seed.fill("")
        seed.press("Tab")
        page.settle()
        notice = page.page.locator(".block:has(input[aria-label='Seed']) .range-notice:visible")
        assert notice.inner_text() == "Seed must be a number; the box is empty. Type one, or press Random seed."
        page.sent.clear()
        generate_button(page).click()
        page.page.locator(".run-blocked:visible", has_text="Not run: Seed must be a number").wait_for()
        page.settle()
        assert page.sent == [] and "images/s" not in page.page.inner_text("body")
        assert page.page.locator("input[aria-label='number input for Steps']:visible").first.input_value() == "4"
        type_into(page, "input[aria-label='Seed']:visible", 5)
        assert page.page.locator(".range-notice").count() == 0


def test_edit_without_an_image_says_so_in_its_own_status_not_a_pop_up(live):
    """Before: "load an image first" was a red pop-up that stayed while the user changed tabs."""
    with live_page(live) as page:
        page.page.get_by_role("tab", name="Edit").click()
        page.settle()
        page.page.locator("button.primary:visible", has_text="Edit").first.click()
        page.page.wait_for_function("() => /Not run: load an image first/.test("
                                    "document.querySelector('#edit-status').innerText)", timeout=60_000)
        page.settle()
        assert page.page.evaluate(TOASTS) == 0


def test_history_follows_the_results_without_a_blank_gap(live):
    """Before, with a normalizing flow's short settings at 1400x1000: 455 px between the Send-to buttons' row and the
    History (its label, in a 0 px wide cell, stood one letter per line)."""
    with live_page(live) as page:
        page.page.get_by_role("combobox", name="Checkpoint").first.click()
        page.page.get_by_role("option", name="tiny-nice").click()
        page.page.wait_for_selector("text=Now tiny-nice", timeout=60_000)
        page.settle()
        gap = page.page.evaluate("""() => {
          const history = document.querySelector('#history').closest('.gr-accordion').getBoundingClientRect();
          const above = [...document.querySelectorAll('.results-first button')]  // the Send-to buttons, last above it
            .filter(e => e.offsetParent && !e.closest('.gr-accordion') && e.getBoundingClientRect().bottom <= history.top);
          return history.top - Math.max(...above.map(e => e.getBoundingClientRect().bottom)); }""")
        assert gap < 40, gap


def test_on_a_phone_the_settings_come_right_after_the_results(live):
    """Before, at 400x850: the Class control was ~2,000 px down, under the History and the model card."""
    url, _ = live
    selectors = {"images": "#images", "class": ".block:has(input[aria-label='Class'])", "history": "#history"}
    with browser_page(url, width=400, height=850) as page:
        page.wait_for_selector("text=Next run", timeout=120_000)
        page.wait_for_function(f"() => {list(selectors.values())}.every(s => ({TOP})(s) !== null)", timeout=60_000)
        tops = {name: page.evaluate(TOP, selector) for name, selector in selectors.items()}
        assert tops["images"] < tops["class"] < tops["history"], tops
        send_row = page.evaluate(BOTTOM, ".results-first .row:has(button)")
        assert tops["class"] - send_row < 100, (tops, send_row)


def test_the_estimate_line_says_what_the_second_cfg_row_does_at_w_0(tmp_path):
    """Before: "x 2 rows (CFG)" at w = 0, where the guided row is evaluated but changes nothing."""
    from diffusion.app.generate import estimate
    from diffusion.serving.engine import ModelCache

    cache = ModelCache(write_tiny_checkpoints(tmp_path / "checkpoints"), capacity=2)
    values = ["tiny", "ode", "dpm++2m", 4, 0.0, "uniform", "cfg", 0, 0.0, "own", 0, 2]
    assert "x 2 rows (CFG; at w = 0 the guided row changes nothing)" in estimate(cache, *values)
    values[8] = 3.0
    assert "x 2 rows (CFG) for 2 images" in estimate(cache, *values)


def test_the_estimate_line_says_cannot_run_when_a_request_is_over_the_work_budget(tmp_path):
    """Before: "Next run: NFE 400 for 64 images, about 193.1 s" on a 180 s budget, and Generate was then refused."""
    from diffusion.app.generate import estimate
    from diffusion.serving.budget import WorkBudget
    from diffusion.serving.engine import ModelCache

    cache = ModelCache(write_tiny_checkpoints(tmp_path / "checkpoints"), capacity=2,
                       budget=WorkBudget(seconds=180, flops_per_second=1.5e9))
    values = ["tiny", "ode", "euler", 1000, 0.0, "uniform", "cfg", 0, 3.0, "own", 0, 64]
    line = estimate(cache, *values)
    assert line.startswith("**Cannot run as set:**") and "180 s" in line, line
    values[3] = 4
    assert estimate(cache, *values).startswith("Next run: NFE **4**")
