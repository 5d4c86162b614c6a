"""The core flow in a real browser with the ZeroGPU mode forced (`app.py --zerogpu`): generate, select a
step, what-if, branch and sweep, each model action one call whose yields pass through pickle; the API
answers 503 and "Load model" is off, both saying why."""

from __future__ import annotations

import httpx
import pytest

from tests.browser import GENERATION_TIMEOUT_MS, fill, open_page
from tests.serving import start_server
from tests.test_ui_teaching import fill_number, set_slider

pytestmark = [pytest.mark.browser, pytest.mark.server]


@pytest.fixture(scope="module")
def zerogpu_server():
    with start_server("--zerogpu") as s:
        yield s


@pytest.fixture(scope="module")
def page(zerogpu_server):
    with open_page(zerogpu_server.url) as page:
        yield page


def test_generate_then_select_a_step(page):
    fill(page, "message", "Name a colour.")
    fill(page, "knob-max_tokens", "8")
    fill(page, "knob-seed", "5")
    page.click("#generate")
    page.wait_for_selector("#completions .comp-head:has-text('8 tokens')", timeout=GENERATION_TIMEOUT_MS)
    page.wait_for_selector("#inspector .js-plotly-plot", timeout=GENERATION_TIMEOUT_MS)
    assert page.locator("#tokenview [data-step]").count() == 8
    page.locator("#tokenview [data-step='3']").click()
    page.wait_for_selector("#sentences :text('Step 3')", timeout=30_000)


def test_what_if_redraws_the_step_under_another_temperature(page):
    page.wait_for_function("document.querySelector('#whatif-note').innerText.includes(\"the run's own settings\")",
                           timeout=GENERATION_TIMEOUT_MS)
    set_slider(page, "temperature", "1.7")
    page.wait_for_function("document.querySelector('#whatif-note').innerText.includes('temperature 1.0 → 1.7')",
                           timeout=30_000)
    assert "temperature 1.7 flattened the distribution" in page.inner_text("#whatif-sentences")
    set_slider(page, "temperature", "1")


def test_branch_continues_from_an_alternative(page):
    page.get_by_role("tab", name="Branch").click()
    page.click("#branch")
    view = page.locator("#branch-view")
    view.locator(".comp-head:has-text('Branch 1')").wait_for(timeout=GENERATION_TIMEOUT_MS)
    assert view.locator(".tok.forced").count() == 1


def test_a_sweep_plots_its_values(page):
    page.get_by_role("tab", name="Sweep").click()
    for elem, value in {"sweep-from": "0.2", "sweep-to": "1.4", "sweep-count": "3", "sweep-samples": "2", "sweep-tokens": "6"}.items():
        fill_number(page, elem, value)
    page.click("#sweep")
    page.wait_for_selector("#sweep-plot .js-plotly-plot", timeout=GENERATION_TIMEOUT_MS)
    assert "3 values × 2 samples" in page.inner_text("#sweep-status")


def test_load_model_is_off_with_the_reason(page):
    assert page.locator("button:has-text('Load model')").is_disabled()
    assert "off on ZeroGPU" in page.locator("textarea[placeholder*='ZeroGPU'], input[placeholder*='ZeroGPU']").first.get_attribute("placeholder")


def test_the_api_answers_503_saying_why(zerogpu_server):
    r = httpx.post(zerogpu_server.api + "/chat/completions", json={"messages": [{"role": "user", "content": "Hi"}]})
    assert r.status_code == 503 and "ZeroGPU" in r.json()["error"]["message"]
