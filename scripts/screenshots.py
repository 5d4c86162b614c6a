"""Take the README's screenshots from the real running app: python scripts/screenshots.py

Starts the app on a free loopback port, drives Debian's chromium through a typical session (settings,
generate, inspect a step, compare, a live what-if, a sweep, many futures, the logit lens, manual mode)
and writes PNGs into assets/.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from playwright.sync_api import sync_playwright  # noqa: E402

from tests.serving import start_server  # noqa: E402
from tests.browser import ARGS, CHROMIUM, open_tab  # noqa: E402

ASSETS = ROOT / "assets"
SETTINGS = {"temperature": "0.8", "top_k": "40", "top_p": "0.9", "min_p": "0.05", "max_tokens": "40", "seed": "4"}


def set_knob(page, name: str, value: str) -> None:
    box = page.locator(f"#knob-{name} input[type=number], #knob-{name} textarea, #knob-{name} input[type=text]").first
    box.fill(value)
    box.press("Enter") if box.get_attribute("type") == "number" else box.blur()



def draws_and_orders(page) -> None:
    """The selected step sampled 10,000 times; then under every engine's order at a hot temperature."""
    open_tab(page, "Sample N times")
    page.locator("#draws-n input[type=number]").fill("4")
    page.locator("#draws-n input[type=number]").press("Enter")
    page.wait_for_function("document.querySelector('#draws-note').innerText.includes('10,000 draws')", timeout=120_000)
    page.wait_for_selector("#draws-plot .js-plotly-plot", timeout=60_000)
    page.mouse.move(0, 0)
    page.wait_for_timeout(800)
    clip_between(page, "#draws-n", "#draws-plot", ASSETS / "draws.png")
    set_knob(page, "temperature", "1.6")
    open_tab(page, "All engine orders")
    page.click("#orders")
    page.wait_for_function("document.querySelector('#orders-note').innerText.includes(\"in each engine's order\")",
                           timeout=180_000)
    page.wait_for_selector("#orders-plot .js-plotly-plot", timeout=60_000)
    page.mouse.move(0, 0)
    page.wait_for_timeout(800)
    clip_between(page, "#orders-note", "#orders-plot", ASSETS / "orders.png")
    set_knob(page, "temperature", "0.8")


def main() -> None:
    ASSETS.mkdir(exist_ok=True)
    with start_server() as server, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1100}, device_scale_factor=1)
        page.goto(server.url)
        page.wait_for_selector("#generate")
        for name, value in SETTINGS.items():
            set_knob(page, name, value)
        page.locator("#message textarea").fill("Write a haiku about the sea.")
        page.wait_for_timeout(500)
        page.click("#generate")
        page.wait_for_selector("#inspector .js-plotly-plot", timeout=180_000)
        page.wait_for_timeout(1500)
        page.evaluate("window.scrollTo(0, 0)")
        page.screenshot(path=str(ASSETS / "playground.png"), full_page=True, clip={"x": 0, "y": 0, "width": 1400, "height": 1500})
        page.locator("#tokenview").scroll_into_view_if_needed()
        page.locator("#tokenview .sel").hover()
        page.wait_for_timeout(300)
        clip_between(page, "#view", "#step", ASSETS / "tokens-timeline.png")
        page.mouse.move(0, 0)
        clip_between(page, "#inspector", "#draw", ASSETS / "inspector.png")
        page.get_by_role("tab", name="Compare").click()
        page.click("#compare")
        page.wait_for_function("document.querySelector('#compare-view').innerText.includes('same prompt')", timeout=180_000)
        page.mouse.move(0, 0)  # no tooltip over the picture
        page.wait_for_timeout(300)
        page.locator("#compare-view").screenshot(path=str(ASSETS / "compare.png"))
        # Live what-if: the selected step under a hotter temperature, with the same random number.
        page.get_by_role("tab", name="What if").click()
        page.wait_for_function("document.querySelector('#whatif-note').innerText.includes(\"the run's own settings\")",
                               timeout=180_000)
        set_knob(page, "temperature", "1.6")
        page.wait_for_function("document.querySelector('#whatif-note').innerText.includes('0.8 → 1.6')", timeout=60_000)
        page.wait_for_timeout(1500)
        page.mouse.move(0, 0)
        clip_between(page, "#live", "#whatif-draw", ASSETS / "whatif.png")
        set_knob(page, "temperature", "0.8")
        # A sweep of temperature: 5 values x 4 samples.
        page.get_by_role("tab", name="Sweep").click()
        for elem, value in {"sweep-count": "5", "sweep-samples": "4", "sweep-tokens": "24"}.items():
            page.locator(f"#{elem} input[type=number]").fill(value)
        page.click("#sweep")
        page.wait_for_selector("#sweep-plot .js-plotly-plot", timeout=600_000)
        page.locator("#sweep-plot .js-plotly-plot .scatterlayer .trace").first.locator(".point").nth(4).click(force=True)
        page.wait_for_selector("#sweep-texts li", timeout=60_000)
        page.mouse.move(0, 0)
        page.wait_for_timeout(800)
        clip_between(page, "#sweep-status", "#sweep-texts", ASSETS / "sweep.png")
        draws_and_orders(page)
        futures_and_lens(page)
        manual(page)
        browser.close()
    print("wrote", ", ".join(sorted(p.name for p in ASSETS.glob("*.png"))))


def futures_and_lens(page) -> None:
    """32 futures of 8 tokens from the selected step as a tree; then the logit lens of that step."""
    open_tab(page, "Many futures")
    for elem, value in {"futures-n": "32", "futures-k": "8"}.items():
        page.locator(f"#{elem} input[type=number]").fill(value)
    page.click("#futures")
    page.wait_for_function("document.querySelector('#futures-status').innerText.includes('32 futures × 8 tokens')",
                           timeout=600_000)
    page.wait_for_selector("#futures-plot .js-plotly-plot", timeout=60_000)
    page.mouse.move(0, 0)
    page.wait_for_timeout(800)
    clip_between(page, "#futures-note", "#futures-texts", ASSETS / "futures.png")
    open_tab(page, "Logit lens")
    page.click("#lens")
    page.wait_for_selector("#lens-rank .js-plotly-plot", timeout=180_000)
    page.mouse.move(0, 0)
    page.wait_for_timeout(800)
    clip_between(page, "#lens-note", "#lens-rank", ASSETS / "lens.png")


def manual(page) -> None:
    """Manual mode: Generate makes one step and waits; pick a token top-k or top-p removed, then let the sampler draw."""
    page.locator("#manual input[type=checkbox]").check()
    page.locator("#message textarea").fill("Write a haiku about the sea.")
    page.click("#generate")
    page.wait_for_selector("#manual-table tr[data-token]", timeout=180_000)
    row = page.locator("#manual-table tr.removed").first
    token = row.get_attribute("data-token")
    row.click()
    box = "document.querySelector('#manual-token textarea, #manual-token input')"
    page.wait_for_function(f"{box}.value === {token!r}", timeout=60_000)
    page.click("#manual-pick")
    page.wait_for_function("document.querySelector('#manual-note').innerText.includes('Step 1 is waiting')", timeout=180_000)
    page.click("#manual-draw")
    page.wait_for_function("document.querySelector('#manual-note').innerText.includes('Step 2 is waiting')", timeout=180_000)
    page.wait_for_selector("#manual-inspector .js-plotly-plot", timeout=60_000)
    page.mouse.move(0, 0)
    page.wait_for_timeout(800)
    clip_between(page, "#manual-note", "#manual-draw-plot", ASSETS / "manual.png")
    page.locator("#manual input[type=checkbox]").uncheck()


def clip_between(page, top_selector: str, bottom_selector: str, path: Path) -> None:
    """A screenshot from the top of one element to the bottom of another, across the main column."""
    page.evaluate("window.scrollTo(0, 0)")  # bounding boxes are viewport coordinates; the clip is the page's
    page.wait_for_timeout(200)
    top = page.locator(top_selector).bounding_box()
    bottom = page.locator(bottom_selector).bounding_box()
    page.screenshot(path=str(path), full_page=True, clip={
        "x": top["x"] - 8, "y": top["y"] - 8, "width": bottom["x"] + bottom["width"] - top["x"] + 16,
        "height": bottom["y"] + bottom["height"] - top["y"] + 16})


if __name__ == "__main__":
    main()
