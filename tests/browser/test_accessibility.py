"""The dashboard for everyone: contrast, the keyboard, a 1280-pixel laptop.

In Debian's chromium, on every page of a store with history (a dead run,
rejected runs, sensors of both kinds, a folder sensor, an upload under way):

- every piece of text, HTML or SVG, has a contrast of at least 4.5:1 with
  what is behind it (3:1 when large), computed from the styles the browser
  applied (WCAG 2.1 AA, success criterion 1.4.3; disabled controls are exempt
  there and here);
- "Retry" on a dead-letter group and "Cancel" on a run are reached with Tab
  and pressed, and their confirmations answered, with the keyboard alone;
- at 1280 by 800 no page scrolls sideways (wide charts scroll in their own box).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

import ferryman as fm
from ferryman.web import WebSettings
from tests.browser.conftest import shot
from tests.web.conftest import TOKEN, LiveServer, start_server, stop_server
from tests.web.web_app import add_folder_sensor, add_transfer, make_app, populate

# For each visible element with text of its own: its colour and the colour behind
# it (the first ancestor with an opaque background, semi-transparent ones blended
# over it), the element's opacity applied; then WCAG's contrast ratio.
CONTRAST = """
() => {
  const parse = (c) => {
    const m = c.match(/rgba?\\(([^)]+)\\)/);
    if (!m) return [0, 0, 0, 0];
    const p = m[1].split(/[ ,\\/]+/).filter(Boolean).map(Number);
    return [p[0], p[1], p[2], p.length > 3 ? p[3] : 1];
  };
  const over = (top, below) => {
    const a = top[3];
    return [0, 1, 2].map((i) => top[i] * a + below[i] * (1 - a)).concat([1]);
  };
  const luminance = (c) => {
    const [r, g, b] = c.slice(0, 3).map((v) => {
      v /= 255;
      return v <= 0.03928 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4);
    });
    return 0.2126 * r + 0.7152 * g + 0.0722 * b;
  };
  const behind = (element) => {
    const layers = [];
    for (let e = element; e; e = e.parentElement) {
      const bg = parse(getComputedStyle(e).backgroundColor);
      if (bg[3] > 0) layers.push(bg);
      if (bg[3] >= 1) break;
    }
    let colour = [255, 255, 255, 1];
    for (const layer of layers.reverse()) colour = over(layer, colour);
    return colour;
  };
  const opacity = (element) => {
    let o = 1;
    for (let e = element; e; e = e.parentElement) o *= Number(getComputedStyle(e).opacity);
    return o;
  };
  const found = [];
  for (const element of document.querySelectorAll("body *")) {
    const own = [...element.childNodes].some(
      (n) => n.nodeType === Node.TEXT_NODE && n.textContent.trim());
    if (!own || element.closest("[disabled], title, script, style, option")) continue;
    const rect = element.getBoundingClientRect();
    const style = getComputedStyle(element);
    if (rect.width === 0 || style.visibility === "hidden" || style.display === "none") continue;
    const svg = element instanceof SVGElement;
    const back = behind(svg ? element.ownerSVGElement || element : element);
    let fore = parse(svg ? style.fill : style.color);
    fore[3] *= opacity(element);
    fore = over(fore, back);
    const [l1, l2] = [luminance(fore), luminance(back)].sort((a, b) => b - a);
    const ratio = (l1 + 0.05) / (l2 + 0.05);
    const size = parseFloat(style.fontSize);
    const bold = Number(style.fontWeight) >= 700;
    const large = size >= 24 || (bold && size >= 18.66);
    found.push({
      text: element.textContent.trim().slice(0, 40),
      tag: element.tagName.toLowerCase(),
      cls: String(element.getAttribute("class") || ""),
      ratio: Math.round(ratio * 100) / 100,
      needed: large ? 3 : 4.5,
    });
  }
  return found;
}
"""


@pytest.fixture
def served(sqlite_url: str, tmp_path: Path) -> Iterator[tuple[fm.App, LiveServer, dict[str, str]]]:
    app = make_app(sqlite_url)
    populate(app)
    add_folder_sensor(app, tmp_path / "in", files=3)
    transfer = add_transfer(app, parts=1)
    dead = app.get_runs(job="flaky")[0]
    (waiting_id,) = app.submit("load", fm.RunRequest("waiting-1", {"n": 9})).run_ids
    live = start_server(app, WebSettings(token=TOKEN))
    pages = {
        "overview": "/",
        "overview-7d": "/?range=7d",
        "runs": "/runs",
        "dead-run": f"/runs/{dead.id}",
        "queued-run": f"/runs/{waiting_id}",
        "dead-letters": "/dead-letters",
        "timeline": "/timeline?range=24h",
        "job": "/jobs/load",
        "sensors": "/sensors",
        "poll-sensor": "/sensors/numbers",
        "push-sensor": "/sensors/inbox",
        "folder-sensor": "/sensors/incoming",
        "workers": "/workers",
        "transfers": "/transfers",
        "transfer": f"/transfers/{transfer}",
        "login": "/login",
    }
    yield app, live, pages
    stop_server(live)
    app.close()


def sign_in_by_keyboard(page: Page, url: str) -> None:
    page.goto(f"{url}/login?next=/")
    tab_to(page, "input[name=token]")
    page.keyboard.type(TOKEN)
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name="Overview")).to_be_visible()


def tab_to(page: Page, selector: str, limit: int = 200) -> None:
    """Press Tab until the element ``selector`` names has the focus (if it has not already)."""
    target = page.locator(selector).first
    expect(target).to_be_visible()
    for _ in range(limit):
        if target.evaluate("element => element === document.activeElement"):
            return
        page.keyboard.press("Tab")
    pytest.fail(f"{selector} is not reached with Tab in {limit} presses")


def test_every_text_on_every_page_meets_wcag_aa_contrast(
    served: tuple[fm.App, LiveServer, dict[str, str]], page: Page
) -> None:
    _app, live, pages = served
    sign_in_by_keyboard(page, live.url)  # the pages with their enabled buttons
    failing = []
    checked = 0
    for name, path in pages.items():
        page.goto(f"{live.url}{path}")
        for item in page.evaluate(CONTRAST):
            checked += 1
            if item["ratio"] < item["needed"]:
                failing.append((name, item))
    assert checked > 500, checked  # the audit saw the pages' text
    assert not failing, "\n".join(f"{name}: {item}" for name, item in failing)


def test_retry_and_cancel_with_the_keyboard_alone(
    served: tuple[fm.App, LiveServer, dict[str, str]], page: Page, screenshots: Path
) -> None:
    app, live, pages = served
    sign_in_by_keyboard(page, live.url)

    page.goto(f"{live.url}/dead-letters")
    tab_to(page, "button:text-is('Retry 1')")
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name="Retry 1 runs?")).to_be_visible()
    assert app.get_runs(job="flaky")[0].status is fm.RunStatus.DEAD  # asked, not done
    tab_to(page, "button:text-is('Retry 1 runs')")
    shot(page, screenshots, "11-keyboard-confirm-retry")
    page.keyboard.press("Enter")
    expect(page.get_by_role("status")).to_contain_text("1 runs queued again")
    assert app.get_runs(job="flaky")[0].status is fm.RunStatus.QUEUED

    page.goto(f"{live.url}{pages['queued-run']}")
    tab_to(page, "button:text-is('Cancel')")
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name="Cancel run")).to_be_visible()
    tab_to(page, "button:text-matches('^Cancel run \\\\d+$')")
    page.keyboard.press("Enter")
    expect(page.get_by_role("status")).to_contain_text("cancelled")
    (waiting,) = [r for r in app.get_runs(job="load") if r.run_key == "waiting-1"]
    assert waiting.status is fm.RunStatus.CANCELLED


@pytest.mark.parametrize(
    "name",
    [
        "overview",
        "overview-7d",
        "runs",
        "dead-letters",
        "dead-run",
        "timeline",
        "job",
        "folder-sensor",
        "transfer",
    ],
)
def test_no_page_scrolls_sideways_on_a_1280_pixel_laptop(
    served: tuple[fm.App, LiveServer, dict[str, str]], page: Page, screenshots: Path, name: str
) -> None:
    _app, live, pages = served
    page.set_viewport_size({"width": 1280, "height": 800})
    page.goto(f"{live.url}{pages[name]}")
    expect(page.locator("h1")).to_be_visible()
    overflow = page.evaluate(
        "() => document.documentElement.scrollWidth - document.documentElement.clientWidth"
    )
    assert overflow <= 0, f"{pages[name]} is {overflow} px wider than the window"
    if name in ("overview", "runs"):
        shot(page, screenshots, f"12-at-1280-{name}")
