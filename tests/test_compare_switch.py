"""Issue 37, item 9 (second half): after a switch of checkpoint, Compare kept the previous model's three columns and
difference map on screen, under the new model's name. Now a switch clears them and says which model is chosen."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from conftest import CHROMIUM, STABLE, app_page

pytestmark = pytest.mark.skipif(not shutil.which("chromium") and not Path(CHROMIUM).exists(),
                                reason="needs Debian's chromium (CI installs it)")


def test_switching_checkpoint_clears_compare_columns_in_chromium(server, tmp_path):
    from playwright.sync_api import expect

    with app_page(server) as page:
        page.wait_for_selector("text=Next run", timeout=120_000)
        page.get_by_role("tab", name="Compare samplers").click()
        panel = page.locator("[role=tabpanel]:visible").first
        for label, value in (("number input for DDPM steps", "2"), ("number input for DDIM steps", "2"),
                             ("number input for ODE steps", "2")):
            box = panel.locator(f"input[aria-label='{label}']")
            box.fill(value)
            box.press("Enter")
        page.wait_for_function(STABLE, polling=100, timeout=60_000)
        page.get_by_role("button", name="Compare", exact=True).click()
        page.wait_for_selector("text=mean |DDIM - ODE|", timeout=120_000)
        columns = panel.locator("img[src*='compare-']")
        expect(columns).to_have_count(3, timeout=30_000)
        picker = panel.get_by_label("Checkpoint", exact=True)
        chosen = picker.input_value()
        other = "tiny-flow" if chosen != "tiny-flow" else "tiny"
        picker.click()
        page.get_by_role("option", name=other, exact=True).click()
        expect(columns).to_have_count(0, timeout=60_000)
        expect(panel.get_by_text(f"Now {other}: press Compare for its columns.")).to_be_visible(timeout=60_000)
        expect(panel.get_by_text("mean |DDIM - ODE|")).to_have_count(0)
        expect(panel.get_by_text("NFE")).to_have_count(0)
        page.screenshot(path=str(tmp_path / "compare-switched.png"), full_page=True)
