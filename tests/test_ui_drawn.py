"""A finished run is drawn once in its page: one `show` (three charts, the token view) and one what-if,
whether or not the run moved the step slider. Counted in the server (the app served in this process on a
fake model), not timed: each extra draw costs the server and the page a whole finished view."""

from __future__ import annotations

import functools
import inspect
import time
from pathlib import Path

import pytest

from playground import ui_events
from playground.models import ModelHost
from tests.browser import ARGS, CHROMIUM, GENERATION_TIMEOUT_MS, fill
from tests.ui_server import serve, wordy_lm

pytestmark = [pytest.mark.browser, pytest.mark.server]

TOKENS = 8
SETTLE_S = 2.0  # after the expected draws: time for a duplicate, sent alongside them, to arrive


def counted(monkeypatch, name: str) -> list:
    """Count the calls of ui_events.`name` that draw a run (a settings change before any run also asks
    for a what-if, of nothing)."""
    calls: list = []
    fn = getattr(ui_events, name)
    signature = inspect.signature(fn)

    def count(args, kwargs) -> None:
        if signature.bind(*args, **kwargs).arguments["runs"]:
            calls.append(1)

    if name == "what_if":
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            count(args, kwargs)
            yield from fn(*args, **kwargs)
    else:
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            count(args, kwargs)
            return fn(*args, **kwargs)
    monkeypatch.setattr(ui_events, name, wrapper)
    return calls


def settled(shows: list, what_ifs: list, expected: int) -> tuple[int, int]:
    deadline = time.monotonic() + GENERATION_TIMEOUT_MS / 1000
    while (len(shows) < expected or len(what_ifs) < expected) and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(SETTLE_S)
    return len(shows), len(what_ifs)


def test_a_finished_run_is_drawn_once_whether_or_not_it_moves_the_step(monkeypatch):
    from playwright import sync_api

    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: scripts/setup.sh --test installs Debian's chromium")
    shows, what_ifs = counted(monkeypatch, "show"), counted(monkeypatch, "what_if")
    with serve(ModelHost(wordy_lm())) as url, sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(url)
        page.wait_for_selector("#generate")
        fill(page, "message", "Count.")
        fill(page, "knob-max_tokens", str(TOKENS))
        page.click("#generate")
        page.wait_for_selector(f"#completions .comp-head:has-text('length · {TOKENS} tokens')", timeout=GENERATION_TIMEOUT_MS)
        assert settled(shows, what_ifs, 1) == (1, 1)

        # Select another step by hand (drawn once, by the slider's change), then run again: the new run's
        # most uncertain step differs from the hand-picked one, so the slider moves.
        selected = int(page.locator("#tokenview .sel").get_attribute("data-step"))
        other = (selected + 3) % TOKENS
        page.locator(f"#tokenview [data-step='{other}']").click()
        assert settled(shows, what_ifs, 2) == (2, 2)
        fill(page, "message", "Count again.")
        page.click("#generate")
        page.wait_for_selector(f"#tokenview [data-step='{selected}'].sel", timeout=GENERATION_TIMEOUT_MS)
        assert settled(shows, what_ifs, 3) == (3, 3)
        browser.close()
    assert not errors, f"JavaScript errors on the page: {errors}"
