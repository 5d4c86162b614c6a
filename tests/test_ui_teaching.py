"""Teaching features in a real browser: live what-if, knob sweeps, save and load, share links."""

from __future__ import annotations

import json
from urllib.parse import parse_qs, urlparse

import httpx
import pytest

from tests.browser import ARTIFACTS, GENERATION_TIMEOUT_MS, fill, open_page

pytestmark = [pytest.mark.browser, pytest.mark.server]


@pytest.fixture(scope="module")
def page(server):
    """A page that has generated one short run (seed 5, 8 tokens, a repetition penalty on)."""
    with open_page(server.url) as page:
        for knob, value in {"message": "Name a colour.", "knob-max_tokens": "8", "knob-seed": "5"}.items():
            fill(page, knob, value)
        set_slider(page, "repetition_penalty", "1.3")
        page.click("#generate")
        page.wait_for_selector("#completions .comp-head:has-text('8 tokens')", timeout=GENERATION_TIMEOUT_MS)
        page.wait_for_selector("#inspector .js-plotly-plot", timeout=GENERATION_TIMEOUT_MS)
        yield page


def set_slider(page, knob: str, value: str) -> None:
    box = page.locator(f"#knob-{knob} input[type=number]")
    box.fill(value)
    box.press("Enter")
    box.blur()


def fill_number(page, elem_id: str, value: str) -> None:
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(value)
    box.blur()


def whatif_note(page) -> str:
    return page.inner_text("#whatif-note")


def test_moving_temperature_re_renders_the_selected_step_without_a_generation(page):
    page.locator("#tokenview [data-step='3']").click()
    page.wait_for_selector("#sentences :text('Step 3')", timeout=30_000)
    # The step's exact logits come from one replay; then the what-if shows the run's own settings.
    page.wait_for_function("document.querySelector('#whatif-note').innerText.includes(\"the run's own settings\")",
                           timeout=GENERATION_TIMEOUT_MS)
    completions = page.inner_html("#completions")
    set_slider(page, "temperature", "1.7")
    page.wait_for_function("document.querySelector('#whatif-note').innerText.includes('temperature 1.0 → 1.7')",
                           timeout=30_000)
    note = whatif_note(page)
    assert "Step 3" in note and ("still picks" in note or "would pick" in note)
    assert "random number" in note or "greedy" in note
    assert "temperature 1.7 flattened the distribution" in page.inner_text("#whatif-sentences")
    page.wait_for_function(
        "[...document.querySelectorAll('#whatif-plot text')].some(t => t.textContent.includes('after temperature 1.7'))",
        timeout=30_000)
    assert page.inner_html("#completions") == completions  # nothing was generated
    assert page.locator("#view").inner_text().count("Generated") <= 1
    # The penalty ledger of the same step: the repetition penalty touched the prompt's tokens.
    page.get_by_role("tab", name="Penalty ledger").click()
    page.wait_for_selector("#ledger table.ledger tbody tr", timeout=30_000)
    assert "repetition penalty" in page.inner_text("#ledger thead")
    page.screenshot(path=str(ARTIFACTS / "ui-whatif.png"), full_page=True)
    page.get_by_role("tab", name="What if").click()
    set_slider(page, "temperature", "1")


def test_a_sweep_of_three_values_plots_each_metric_and_shows_a_values_texts(page):
    page.get_by_role("tab", name="Sweep").click()
    for elem, value in {"sweep-from": "0.2", "sweep-to": "1.4", "sweep-count": "3", "sweep-samples": "2", "sweep-tokens": "6"}.items():
        fill_number(page, elem, value)
    page.click("#sweep")
    page.wait_for_selector("#sweep-plot .js-plotly-plot", timeout=GENERATION_TIMEOUT_MS)
    assert "3 values × 2 samples" in page.inner_text("#sweep-status")
    traces = page.locator("#sweep-plot .js-plotly-plot .scatterlayer .trace")
    assert traces.count() == 6  # one small chart per metric
    assert traces.first.locator(".point").count() == 3
    traces.first.locator(".point").nth(1).click(force=True)
    page.wait_for_selector("#sweep-texts .sweep-texts li", timeout=30_000)
    assert "temperature = 0.8" in page.inner_text("#sweep-texts")
    assert page.locator("#sweep-texts .sweep-texts li").count() == 2
    href = page.locator("#sweep-csv a").first.get_attribute("href")
    csv = httpx.get(href if href.startswith("http") else page.url.split("?")[0].rstrip("/") + href).text
    assert csv.splitlines()[0].startswith("temperature,samples,entropy,perplexity")
    assert len(csv.splitlines()) == 4
    page.screenshot(path=str(ARTIFACTS / "ui-sweep.png"), full_page=True)


def test_a_saved_run_loads_into_a_fresh_page_with_the_same_token_view(page, server, tmp_path):
    tokens = page.inner_text("#tokenview .tv")
    page.click("#save")
    link = page.locator("#run-file a").first
    link.wait_for(timeout=30_000)
    href = link.get_attribute("href")
    data = httpx.get(href if href.startswith("http") else server.url + href).content
    saved = json.loads(data)
    assert saved["format"] == "sampling-playground/run" and saved["params"]["seed"] == 5
    path = tmp_path / "run.json"
    path.write_bytes(data)
    page.reload()
    page.wait_for_selector("#generate")
    with page.expect_file_chooser() as chooser:
        page.click("#load-run")
    chooser.value.set_files(str(path))
    page.wait_for_selector("#file-note :text('Loaded the saved run')", timeout=30_000)
    page.wait_for_function("document.querySelectorAll('#tokenview [data-step]').length === 8", timeout=30_000)
    assert page.inner_text("#tokenview .tv") == tokens
    page.wait_for_selector("#inspector .js-plotly-plot", timeout=30_000)
    assert page.locator("#knob-seed input, #knob-seed textarea").first.input_value() == "5"


def test_a_shared_link_restores_the_settings_and_prompt_in_a_fresh_page(page, server):
    set_slider(page, "top_k", "7")
    fill(page, "message", "Say hi to the class.")
    page.click("#share")
    page.wait_for_function("document.querySelector('#share-url input, #share-url textarea').value.includes('top_k=7')",
                           timeout=30_000)
    url = page.locator("#share-url input, #share-url textarea").first.input_value()
    query = parse_qs(urlparse(url).query)
    assert query["message"] == ["Say hi to the class."] and query["top_k"] == ["7"]
    fresh = page.context.browser.new_page()  # a new context: nothing of the first page's session
    try:
        fresh.goto(server.url + "/?" + urlparse(url).query)
        fresh.wait_for_selector("#link-note :text('Restored')", timeout=30_000)
        assert fresh.locator("#knob-top_k input[type=number]").input_value() == "7"
        assert fresh.locator("#knob-repetition_penalty input[type=number]").input_value() == "1.3"
        assert fresh.locator("#message textarea").input_value() == "Say hi to the class."
        fresh.screenshot(path=str(ARTIFACTS / "ui-shared-link.png"))
    finally:
        fresh.close()
