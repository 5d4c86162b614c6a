"""Four browser pages generating at once share one decode batch (the app served in this process on a fake
model, so the test can read the scheduler's record and hold the model until every page has asked)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from playground.models import ModelHost
from tests.browser import ARGS, CHROMIUM, GENERATION_TIMEOUT_MS, fill
from tests.ui_server import serve, wordy_lm

pytestmark = [pytest.mark.browser, pytest.mark.server]

PAGES = 4
TOKENS = 40


def test_four_pages_generating_at_once_are_decoded_in_one_batch():
    from playwright import sync_api

    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: scripts/setup.sh --test installs Debian's chromium")
    held = threading.Event()  # the model waits at its first forward until every page's run has reached the scheduler
    host = ModelHost(wordy_lm(before_step=lambda: held.wait(timeout=GENERATION_TIMEOUT_MS / 1000)))
    with serve(host) as url, sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        errors: list[str] = []
        pages = []
        for k in range(PAGES):
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(url)
            page.wait_for_selector("#generate")
            fill(page, "message", f"Page {k}, count.")
            fill(page, "knob-max_tokens", str(TOKENS))
            pages.append(page)
        for page in pages:
            page.click("#generate")
        # The first run to arrive holds the model in its prompt (its page says its prompt goes in next); the
        # others wait in the scheduler's queue, each shown its place: all four have reached the scheduler.
        for page in pages:
            page.wait_for_selector("#completions .note.waiting, #completions .comp-head:has-text('generating')",
                                   timeout=GENERATION_TIMEOUT_MS)
        assert sum(page.locator("#completions .note.waiting").count() for page in pages) == PAGES - 1
        assert sum(page.locator("#completions .note.reading").count() for page in pages) == 1
        held.set()
        for page in pages:
            page.wait_for_selector(f"#completions .comp-head:has-text('length · {TOKENS} tokens')", timeout=GENERATION_TIMEOUT_MS)
            assert page.locator("#tokenview [data-step]").count() == TOKENS
        browser.close()
        stats = host.scheduler().stats
    assert not errors, f"JavaScript errors on the pages: {errors}"
    assert stats["most_jobs_in_a_step"] >= PAGES
