"""In a real Chromium: "Connect a server" connects the page to a second app process on loopback (its whole
vocabulary as raw logits), generates with that remote model, and the step view shows every stage exact:
no stage row or sentence carries the approximate mark (playground/figures.py)."""

from __future__ import annotations

import pytest

from tests.browser import ARTIFACTS, GENERATION_TIMEOUT_MS, fill, open_page
from tests.serving import start_server

pytestmark = [pytest.mark.browser, pytest.mark.server]

EXACT = ("--max-logprobs", "-1", "--logprobs-mode", "raw_logits")


@pytest.fixture(scope="module")
def provider():
    with start_server(*EXACT) as s:
        yield s


def test_connect_a_server_generate_and_see_the_stages_marked_exact(server, provider):
    with open_page(server.url) as page:
        page.get_by_text("Connect a server", exact=True).first.click()
        fill(page, "remote-url", provider.url)
        page.click("#remote-list")
        page.wait_for_selector("#remote-note :text('1 model at')", timeout=60_000)
        page.click("#remote-connect")
        page.wait_for_selector("#remote-note :text('Connected')", timeout=120_000)
        assert "for this browser session only; every stage is exact" in page.inner_text("#remote-note")
        page.wait_for_selector("#model-info :text('· remote · exact')", timeout=30_000)

        fill(page, "message", "Name a fruit.")
        fill(page, "knob-max_tokens", "6")
        fill(page, "knob-seed", "5")
        page.locator("#knob-temperature input[type=range]").focus()
        page.keyboard.press("ArrowLeft")  # 1.0 -> 0.95: a stage that reshapes the whole distribution
        page.click("#generate")
        page.wait_for_selector("#completions .comp-head:has-text('tokens')", timeout=GENERATION_TIMEOUT_MS)
        tokens = page.locator("#tokenview [data-step]")
        preselected = int(page.locator("#tokenview .sel").get_attribute("data-step"))
        target = 1 if preselected != 1 else 2
        tokens.nth(target).click()
        page.wait_for_selector(f"#sentences :text('Step {target}')", timeout=30_000)
        page.wait_for_selector("#inspector .js-plotly-plot", timeout=30_000)

        sentences = page.inner_text("#sentences")
        assert "temperature 0.95 sharpened the distribution" in sentences
        chart = page.locator("#inspector .js-plotly-plot").first.text_content()
        assert "after temperature" in chart and "raw (the model's own distribution)" in chart
        assert "approximate" not in (sentences + chart).lower()
        page.screenshot(path=str(ARTIFACTS / "ui-remote-exact.png"), full_page=True)
