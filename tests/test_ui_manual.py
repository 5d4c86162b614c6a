"""Manual mode in a real browser: Generate makes one step and waits; search the table, pick a token top-k
removed, let the sampler draw, rewind."""

from __future__ import annotations

import pytest

from tests.browser import ARTIFACTS, GENERATION_TIMEOUT_MS, fill, open_page

pytestmark = [pytest.mark.browser, pytest.mark.server]


def note(page) -> str:
    return page.inner_text("#manual-note")


def wait_note(page, text: str) -> None:
    page.wait_for_function(f"document.querySelector('#manual-note').innerText.includes({text!r})",
                           timeout=GENERATION_TIMEOUT_MS)


def tokens_made(page) -> int:
    return page.locator("#manual-text .tok").count()


def test_manual_mode_waits_at_each_step_for_a_pick_a_draw_or_a_rewind(server):
    with open_page(server.url) as page:
        for knob, value in {"message": "Name a colour.", "knob-max_tokens": "6", "knob-seed": "5"}.items():
            fill(page, knob, value)
        box = page.locator("#knob-top_k input[type=number]")
        box.fill("5")
        box.press("Enter")
        page.locator("#manual input[type=checkbox]").check()
        page.click("#generate")
        page.wait_for_selector("#manual-table tr[data-token]", timeout=GENERATION_TIMEOUT_MS)
        assert "Step 0 is waiting for you" in note(page)
        assert page.locator("#tab-manual").is_visible()  # its tab opened by itself
        # One page of the table reaches the page, never the whole vocabulary; the stage pictures sit beside it.
        assert page.locator("#manual-table tr[data-token]").count() == 200
        assert "Rows 1–200 of all 49,152 tokens" in page.inner_text("#manual-table")
        page.wait_for_selector("#manual-inspector .js-plotly-plot", timeout=30_000)
        assert page.inner_text("#completions") == ""  # nothing was generated

        # Search on the server, then pick a token top-k removed: it is taken, and flagged.
        page.locator("#manual-search textarea, #manual-search input").first.type("blue")
        page.wait_for_function("document.querySelector('#manual-table').innerText.includes(\"match 'blue'\")",
                               timeout=30_000)
        rows = page.locator("#manual-table tr[data-token]")
        assert rows.count() > 0 and all("blue" in t.lower() for t in rows.all_inner_texts())
        removed = page.locator("#manual-table tr.removed").first
        picked = removed.get_attribute("data-token")
        removed.click()
        box = "document.querySelector('#manual-token textarea, #manual-token input')"
        page.wait_for_function(f"{box}.value === {picked!r}", timeout=30_000)
        page.click("#manual-pick")
        wait_note(page, "Step 1 is waiting")
        assert "top-k had removed it, so the sampler could never have drawn it" in note(page)
        assert tokens_made(page) == 1 and page.locator("#manual-text .tok.forced").count() == 1
        page.wait_for_function("document.querySelector('#view input').value === 'Manual'", timeout=30_000)

        page.click("#manual-draw")
        wait_note(page, "Step 2 is waiting")
        assert "The sampler drew" in note(page) and tokens_made(page) == 2
        assert page.locator("#manual-text .tok.forced").count() == 1
        page.screenshot(path=str(ARTIFACTS / "ui-manual.png"), full_page=True)

        page.click("#manual-rewind")
        wait_note(page, "Rewound 1 step.")
        wait_note(page, "Step 1 is waiting")
        assert tokens_made(page) == 1
