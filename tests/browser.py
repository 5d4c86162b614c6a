"""A real browser page on the app: Debian's chromium driven by playwright (no download needed)."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
GENERATION_TIMEOUT_MS = 120_000  # a busy 2-core CI machine can be slow; a healthy run takes seconds


@contextlib.contextmanager
def open_page(url: str, init_script: str | None = None):
    """The app's page, loaded; fails the test if the page raised a JavaScript error meanwhile. `init_script`
    runs in the page before any of its own scripts."""
    from playwright import sync_api

    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: scripts/setup.sh --test installs Debian's chromium")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        if init_script:
            page.add_init_script(init_script)
        page.goto(url)
        page.wait_for_selector("#generate")
        yield page
        browser.close()
        assert not errors, f"JavaScript errors on the page: {errors}"


def fill(page, elem_id: str, text: str) -> None:
    box = page.locator(f"#{elem_id} textarea, #{elem_id} input[type=text]").first
    box.fill(text)
    box.blur()


def open_tab(page, name: str) -> None:
    """Click the tab with this name (the tab rows are short enough that none hides in "More tabs")."""
    page.get_by_role("tab", name=name, exact=True).click()
