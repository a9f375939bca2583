"""Issue 37, item 12: on a phone (400x850 in Chromium) the results come within one screen of the run button, no
gallery image is cut off at the side, and no picture's label covers the picture (the sweep's first row label, the
2-D lab's panel titles)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from conftest import CHROMIUM, browser_page

pytestmark = pytest.mark.skipif(not shutil.which("chromium") and not Path(CHROMIUM).exists(),
                                reason="needs Debian's chromium (CI installs it)")

# [label text, pixels of overlap] for every visible picture label whose box meets a picture in its own block.
LABELS_OVER_PICTURES = """() => {
  const found = [];
  for (const label of document.querySelectorAll("label[data-testid='block-label']")) {
    const block = label.closest('.block');
    if (!block || !label.offsetParent) continue;
    const l = label.getBoundingClientRect();
    for (const img of block.querySelectorAll('img')) {
      const r = img.getBoundingClientRect();
      if (r.width && l.bottom > r.top + 1 && l.top < r.bottom && l.right > r.left && l.left < r.right)
        found.push([label.innerText.trim(), Math.round(l.bottom - r.top)]);
    }
  }
  return found;
}"""
PICTURES_SHOWN = "() => [...document.querySelectorAll('.block img')].filter(i => i.offsetParent && i.naturalWidth > 60).length"


def open_tab(page, name):
    """A tab by its name: at 400 px most tabs sit in Gradio's "More tabs" menu."""
    tab = page.get_by_role("tab", name=name)
    if not (tab.count() and tab.first.is_visible()):
        page.get_by_role("button", name="More tabs").click()
        tab = page.locator(".overflow-dropdown button", has_text=name)
    tab.first.click()


def test_phone_results_follow_the_button_fit_the_screen_and_keep_their_labels_off_pictures(server):
    """Before: the first image was 1,727 px below Generate, the gallery's rightmost image ended at x = 896 of 400,
    and labels covered pictures by 26 px (sweep) and 26-43 px (2-D lab)."""
    with browser_page(server, width=400, height=850) as page:
        run = page.get_by_role("button", name="Generate", exact=True).first
        run.click()
        page.wait_for_function("() => document.querySelectorAll('#images img').length >= 16", timeout=120_000)
        button = run.bounding_box()
        pictures = [page.locator("#images img").nth(i).bounding_box() for i in range(16)]
        assert pictures[0]["y"] - button["y"] < 850, (button, pictures[0])
        assert all(0 <= box["x"] and box["x"] + box["width"] <= 400 for box in pictures), pictures
        assert page.evaluate(LABELS_OVER_PICTURES) == []
        for tab, press in (("Guidance sweep", "Sweep"), ("2-D lab", "Draw")):
            open_tab(page, tab)
            shown = page.evaluate(PICTURES_SHOWN)
            page.get_by_role("button", name=press, exact=True).first.click()
            page.wait_for_function(f"() => ({PICTURES_SHOWN})() > {shown}", timeout=180_000)
            assert page.evaluate(LABELS_OVER_PICTURES) == [], tab
