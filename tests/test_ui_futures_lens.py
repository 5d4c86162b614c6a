"""Many futures and the logit lens in a real browser: draw the tree, click a node, look through the layers."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.browser import ARTIFACTS, GENERATION_TIMEOUT_MS, fill, open_page, open_tab

pytestmark = [pytest.mark.browser, pytest.mark.server]


@pytest.fixture(scope="module")
def page(server):
    """A page that has generated one short run (seed 5, 8 tokens) with step 2 selected."""
    with open_page(server.url) as page:
        for knob, value in {"message": "Name a colour.", "knob-max_tokens": "8", "knob-seed": "5"}.items():
            fill(page, knob, value)
        page.click("#generate")
        page.wait_for_selector("#completions .comp-head:has-text('8 tokens')", timeout=GENERATION_TIMEOUT_MS)
        page.wait_for_selector("#inspector .js-plotly-plot", timeout=GENERATION_TIMEOUT_MS)
        page.locator("#tokenview [data-step='2']").click()
        page.wait_for_selector("#sentences :text('Step 2')", timeout=30_000)
        yield page



def set_number(page, elem_id: str, value: str) -> None:
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(value)
    box.blur()


def test_drawing_futures_shows_a_tree_whose_boxes_list_their_continuations(page, server):
    open_tab(page, "Many futures")
    set_number(page, "futures-n", "8")
    set_number(page, "futures-k", "4")
    page.click("#futures")
    page.wait_for_selector("#futures-plot .js-plotly-plot", timeout=GENERATION_TIMEOUT_MS)
    page.wait_for_function("document.querySelector('#futures-status').innerText.includes('8 futures × 4 tokens from step 2')",
                           timeout=GENERATION_TIMEOUT_MS)
    assert "8 futures gave" in page.inner_text("#futures-note")
    assert "★" in page.inner_text("#futures-plot")
    assert page.locator("#futures-texts li").count() >= 1
    # A click on a first-level box (after the root) lists only the continuations through it.
    box = page.locator("#futures-plot g.slice").nth(1)
    box.click(force=True)
    page.wait_for_function("document.querySelector('#futures-texts').innerText.includes('the paths through')",
                           timeout=30_000)
    node = page.locator("#futures-node textarea, #futures-node input").first.input_value()
    assert node.startswith("root/") and node.count("/") == 1
    href = page.locator("#futures-json a").first.get_attribute("href")
    tree = json.loads(httpx.get(href if href.startswith("http") else server.url + href).content)
    assert len(tree["futures"]) == 8 and tree["root"] == "step 2"
    page.mouse.move(0, 0)
    page.screenshot(path=str(ARTIFACTS / "ui-futures.png"), full_page=True)


def test_the_logit_lens_draws_layers_by_positions_and_the_chosen_tokens_rank(page):
    open_tab(page, "Logit lens")
    page.click("#lens")
    page.wait_for_selector("#lens-heatmap .js-plotly-plot", timeout=GENERATION_TIMEOUT_MS)
    page.wait_for_selector("#lens-rank .js-plotly-plot", timeout=30_000)
    note = page.inner_text("#lens-note")
    assert "Step 2" in note and "hidden states, not the sampled logits" in note
    assert "layer 30" in page.inner_text("#lens-heatmap")  # SmolLM2-135M has 30 layers
    page.screenshot(path=str(ARTIFACTS / "ui-lens.png"), full_page=True)
