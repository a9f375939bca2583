"""Issue 37, item 14: a Trajectory run waited 37.6 s behind another tab's Generate with nothing on screen. Now a job
waiting in the queue shows one line at the top of the page, whatever tab it came from, and the line goes once the
job runs."""

from __future__ import annotations

import re
import shutil
import threading
from pathlib import Path

import pytest

from conftest import CHROMIUM, browser_page

pytestmark = pytest.mark.skipif(not shutil.which("chromium") and not Path(CHROMIUM).exists(),
                                reason="needs Debian's chromium (CI installs it)")


def test_a_job_queued_behind_another_says_it_is_waiting_in_chromium(server, monkeypatch, tmp_path):
    from playwright.sync_api import expect

    import diffusion.serving.backend as backend_module

    started, release, real_run = threading.Event(), threading.Event(), backend_module.OPERATIONS["run_request"]

    def held_run(cache, request, *args, **kwargs):  # Generate holds the sampler until the test has seen the sign
        started.set()
        release.wait(timeout=120)
        return real_run(cache, request, *args, **kwargs)

    monkeypatch.setitem(backend_module.OPERATIONS, "run_request", held_run)
    with browser_page(server) as first, browser_page(server) as second:  # two users
        try:
            for page in (first, second):
                page.wait_for_selector("text=Next run", timeout=120_000)
            first.get_by_role("button", name="Generate", exact=True).click()
            assert started.wait(timeout=120)
            second.get_by_role("tab", name="Trajectory").click()
            second.get_by_role("button", name="Show trajectory", exact=True).click()
            sign = second.locator("#queue-sign")
            expect(sign).to_be_visible(timeout=60_000)
            expect(sign).to_have_text(re.compile(r"^Trajectory: waiting for the sampler: you are next, after the run in "
                                                 r"progress; waited \d+ s so far\.$"))  # once, not once per output
            assert sign.bounding_box()["y"] < 50  # at the top of the window, wherever the page is scrolled
            expect(first.locator("#queue-sign")).to_be_hidden()  # the running job's user is not told to wait
            second.screenshot(path=str(tmp_path / "queued.png"))
            second.set_viewport_size({"width": 400, "height": 850})  # a phone: the line stays inside the window
            box = sign.bounding_box()
            assert box["x"] >= 0 and box["x"] + box["width"] <= 400, box
            second.screenshot(path=str(tmp_path / "queued-400.png"))
            release.set()
            expect(sign).to_be_hidden(timeout=120_000)
            first.wait_for_selector("text=images/s", timeout=120_000)
        finally:
            release.set()


def test_the_sign_never_repeats_gradios_own_time_estimate(server):
    """Gradio's tracker reads "queue: 1/1 | 3.1/2.1s" once it has timed earlier runs of the same event: 2.1 s is their
    mean, not the time left (the newcomer's tour saw "about 0 s" with a 2-minute run ahead). The sign says how long
    the run has waited instead."""
    from playwright.sync_api import expect

    from conftest import app_page

    with app_page(server) as page:
        page.wait_for_selector("text=Next run", timeout=120_000)
        page.evaluate("""() => {
            const panel = document.querySelector('[role=tabpanel]');
            const tracker = document.createElement('div');
            tracker.setAttribute('data-testid', 'status-tracker');
            tracker.innerHTML = '<span class="progress-text">queue: 1/1 | 3.1/2.1s</span>';
            panel.appendChild(tracker);
        }""")
        expect(page.locator("#queue-sign")).to_have_text(re.compile(r"you are next, after the run in progress; "
                                                                    r"waited 3 s so far\.$"))
