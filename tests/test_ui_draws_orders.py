"""In a real browser: sample the selected step N times (and move N), then compare every engine's order on
it (playground/ui_manydraws.py, playground/ui_orders.py)."""

from __future__ import annotations

import pytest

from tests.browser import ARTIFACTS, GENERATION_TIMEOUT_MS, fill, open_page, open_tab

pytestmark = [pytest.mark.browser, pytest.mark.server]



def set_number(page, elem_id: str, value: str) -> None:
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(value)
    box.press("Enter")
    box.blur()


def wait_text(page, elem_id: str, text: str, timeout: int = 60_000) -> None:
    page.wait_for_function(f"document.querySelector('#{elem_id}').innerText.includes({text!r})", timeout=timeout)


@pytest.fixture(scope="module")
def page(server):
    with open_page(server.url) as page:
        for knob, value in {"message": "Name a river.", "knob-max_tokens": "6", "knob-seed": "5"}.items():
            fill(page, knob, value)
        page.click("#generate")
        page.wait_for_selector("#completions .comp-head:has-text('6 tokens')", timeout=GENERATION_TIMEOUT_MS)
        page.wait_for_selector("#inspector .js-plotly-plot", timeout=GENERATION_TIMEOUT_MS)
        yield page


def test_sampling_a_step_n_times_draws_a_histogram_that_moving_n_redraws(page):
    open_tab(page, "Sample N times")
    page.click("#draws")
    wait_text(page, "draws-note", "1,000 draws")
    page.wait_for_selector("#draws-plot .js-plotly-plot", timeout=30_000)
    note = page.inner_text("#draws-note")
    assert "exact final distribution over all" in note and "the run's own settings" in note
    assert "Total-variation distance" in note and "χ² =" in note
    # Three series: the draws' shares, the final and the raw probabilities.
    assert page.locator("#draws-plot .js-plotly-plot .barlayer .trace").count() == 3
    set_number(page, "draws-n", "5")
    wait_text(page, "draws-note", "100,000 draws")
    page.wait_for_function("[...document.querySelectorAll('#draws-plot text')].some(t => t.textContent.includes('100,000 times'))",
                           timeout=30_000)
    page.screenshot(path=str(ARTIFACTS / "ui-draws.png"), full_page=True)
    # Once drawn, the histogram follows the selected step.
    step = page.inner_text("#draws-note").split("from step ")[1].split(".")[0]
    other = "1" if step != "1" else "2"
    page.locator(f"#tokenview [data-step='{other}']").click()
    wait_text(page, "draws-note", f"100,000 draws from step {other}.")


def test_every_engine_order_on_the_selected_step_side_by_side(page):
    set_number(page, "knob-temperature", "2")
    set_number(page, "knob-top_p", "0.6")
    open_tab(page, "All engine orders")
    page.click("#orders")
    wait_text(page, "orders-note", "in each engine's order", timeout=GENERATION_TIMEOUT_MS)
    note = page.inner_text("#orders-note")
    assert "temperature 1.0 → 2.0" in note and "top_p 1.0 → 0.6" in note
    assert page.locator("#orders-table table.orders tbody tr").count() == 4
    engines = page.locator("#orders-table tbody tr td:first-child").all_inner_texts()
    assert engines == ["Hugging Face", "vLLM", "llama.cpp", "text-generation-webui"]
    assert "top-p → temperature" in page.inner_text("#orders-table")  # llama.cpp's order, as the row says
    page.wait_for_selector("#orders-plot .js-plotly-plot", timeout=30_000)
    assert page.locator("#orders-plot .js-plotly-plot .barlayer .trace").count() == 4
    page.screenshot(path=str(ARTIFACTS / "ui-orders.png"), full_page=True)
    page.locator("#tokenview [data-step='4']").click()  # once drawn, the view follows the selected step
    wait_text(page, "orders-note", "Step 4 under", timeout=GENERATION_TIMEOUT_MS)
