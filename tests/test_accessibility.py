"""Issue 37, item 13, in Chromium: on Generate every radio group and button has a distinct name a screen reader reads
out, the keyboard reaches Generate within 8 Tab presses, tabbing past the Checkpoint list closes it, and result
pictures have alt text naming their checkpoint and settings."""

from __future__ import annotations

import collections
import re
import shutil
from pathlib import Path

import pytest
from conftest import CHROMIUM, app_page

pytestmark = pytest.mark.skipif(not shutil.which("chromium") and not Path(CHROMIUM).exists(),
                                reason="needs Debian's chromium (CI installs it)")

FOCUSED = """() => { const e = document.activeElement;
  return [e.getAttribute('role') || e.tagName.toLowerCase(), e.classList.contains('primary'),
          (e.getAttribute('aria-label') || e.innerText || '').trim()]; }"""


def named(snapshot: str, role: str) -> list[str]:
    """The names of every `role` in an aria snapshot ('' for one without a name)."""
    return [m.group(1) or "" for m in re.finditer(rf'^\s*- {role}(?: "([^"]*)")?', snapshot, re.M)]


def test_generate_names_every_radio_group_and_button_and_is_reached_within_8_tab_presses(server):
    """Before: no radiogroup at all (self-conditioning read "on" / "off"), three buttons named "Reset to default
    value", and 18 Tab presses to Generate (every tab and example button was a Tab stop)."""
    with app_page(server) as page:
        page.get_by_role("button", name="Generate", exact=True).first.wait_for()
        page.wait_for_function("() => document.querySelector('[role=radiogroup][aria-label]') !== null")
        snapshot = page.locator("[role=tabpanel]:visible").first.aria_snapshot()
        groups, buttons = named(snapshot, "radiogroup"), named(snapshot, "button")
        assert {"Guidance", "Sampler", "Time spacing", "Self-conditioning"} <= set(groups), groups
        for names in (groups, buttons):
            assert all(names) and not [n for n, k in collections.Counter(names).items() if k > 1], names
        assert "Reset Guidance scale w to its default" in buttons
        page.locator("body").click(position={"x": 2, "y": 2})
        for presses in range(1, 9):
            page.keyboard.press("Tab")
            role, primary, name = page.evaluate(FOCUSED)
            if primary and name == "Generate":
                break
        assert (primary, name) == (True, "Generate"), f"after {presses} presses: {role} {name!r}"
        page.keyboard.press("ArrowRight")  # the tab list is one Tab stop; its arrows move along the tabs
        page.keyboard.press("Shift+Tab")
        page.keyboard.press("Shift+Tab")
        assert page.evaluate(FOCUSED)[:1] == ["tab"]
        page.keyboard.press("ArrowRight")
        assert page.get_by_role("tab", name="Compare samplers").get_attribute("aria-selected") == "true"
        page.keyboard.press("ArrowLeft")
        assert page.get_by_role("tab", name="Generate").get_attribute("aria-selected") == "true"


def test_tabbing_past_the_checkpoint_list_closes_it(server):
    """Before: the list that opened on focus stayed open over the page after Tab moved on to Generate."""
    with app_page(server) as page:
        box = page.get_by_role("combobox", name="Checkpoint").first
        box.focus()
        page.get_by_role("listbox").first.wait_for()
        before = box.input_value()
        page.keyboard.press("Tab")
        page.get_by_role("listbox").first.wait_for(state="hidden")
        assert box.input_value() == before


def test_result_pictures_say_what_they_show(server):
    """Before: the gallery's thumbnails and the sweep's grid had alt="" (a screen reader skipped them)."""
    with app_page(server) as page:
        page.get_by_role("button", name="Generate", exact=True).first.click()
        page.wait_for_function("() => (document.querySelector('#images img')?.alt || '').includes('Model: tiny')",
                               timeout=120_000)
        alt = page.locator("#images img").first.get_attribute("alt")
        assert alt.startswith("Images (click one for its seed and noise index), thumbnail 1 of ") and "Steps: " in alt
        page.get_by_role("tab", name="Guidance sweep").click()
        page.get_by_role("button", name="Sweep", exact=True).click()
        page.wait_for_function("() => [...document.querySelectorAll('[role=tabpanel] img')].some(i => i.offsetParent "
                               "&& i.alt.startsWith('One row per scale') && i.alt.includes('Model: tiny'))",
                               timeout=120_000)
        shown = page.locator("[role=tabpanel] img:visible").all()
        assert all(picture.get_attribute("alt") for picture in shown)


def test_the_difference_map_says_what_it_compares(server):
    """Before: the difference map had alt="" (its PNG carried no words)."""
    with app_page(server) as page:
        page.get_by_role("tab", name="Compare samplers").click()
        checkpoint = page.locator("[role=tabpanel]:visible").get_by_role("combobox", name="Checkpoint").input_value()
        page.get_by_role("button", name="Compare", exact=True).click()
        page.wait_for_function("name => [...document.querySelectorAll('[role=tabpanel] img')].some(i => i.offsetParent "
                               "&& i.alt.startsWith('|A - B| per pixel: |') && i.alt.includes(` of ${name} (`))",
                               arg=checkpoint, timeout=120_000)
        shown = page.locator("[role=tabpanel] img:visible").all()
        assert all(picture.get_attribute("alt") for picture in shown)
