"""The playground in a real browser (Debian chromium driven by playwright) against the real app.

One page goes through what a person does: type a prompt, move a slider, generate, click a token, and
read the inspector. Screenshots land in test-artifacts/ for a human to look at.
"""

from __future__ import annotations

import pytest

from tests.browser import ARTIFACTS, GENERATION_TIMEOUT_MS, fill, open_page

pytestmark = [pytest.mark.browser, pytest.mark.server]


@pytest.fixture(scope="module")
def page(server):
    with open_page(server.url) as page:
        yield page


def test_generate_click_a_token_and_inspect_it(page):
    fill(page, "message", "Name a fruit.")
    fill(page, "knob-max_tokens", "10")
    fill(page, "knob-seed", "11")
    # Move the temperature slider one step left with the keyboard: 1.0 -> 0.95.
    page.locator("#knob-temperature input[type=range]").focus()
    page.keyboard.press("ArrowLeft")
    page.click("#generate")
    page.wait_for_selector("#completions .comp-head:has-text('tokens')", timeout=GENERATION_TIMEOUT_MS)
    page.wait_for_selector("#inspector .js-plotly-plot", timeout=GENERATION_TIMEOUT_MS)
    assert page.locator("#completions .comp-head").inner_text().startswith("Completion 1 · length · 10 tokens")

    tokens = page.locator("#tokenview [data-step]")
    assert tokens.count() == 10
    # The app preselects the most uncertain step; click another one so the click itself must work.
    preselected = int(page.locator("#tokenview .sel").get_attribute("data-step"))
    target = 3 if preselected == 2 else 2
    tokens.nth(target).click()
    page.wait_for_selector(f"#sentences :text('Step {target}')", timeout=30_000)
    page.wait_for_selector(f"#tokenview [data-step='{target}'].sel")

    sentences = page.inner_text("#sentences")
    assert "temperature 0.95 sharpened the distribution" in sentences  # the slider's value reached the sampler
    assert "The random draw landed at" in sentences
    # The inspector chart: a bar row for raw and one for temperature, drawn by plotly.
    assert page.locator("#inspector .js-plotly-plot .barlayer .trace").count() == 2
    assert page.locator("#draw .js-plotly-plot").count() == 1
    # The alternatives: a table row per top token, and the same tokens offered for branching.
    rows = page.locator("#alternatives table.alts tbody tr")
    assert rows.count() == 10
    fates = rows.locator("td:last-child").all_inner_texts()
    assert all(f in ("chosen", "possible") or f.startswith("removed by") for f in fates), fates
    page.screenshot(path=str(ARTIFACTS / "ui-inspector.png"), full_page=True)


def test_hovering_a_token_shows_its_alternatives(page):
    page.locator("#tokenview [data-step='1']").hover()
    tip = page.locator("#tokenview [data-step='1']").get_attribute("data-tip")
    assert "alternatives (raw → final):" in tip
    after = page.evaluate("getComputedStyle(document.querySelector(\"#tokenview [data-step='1']\"), '::after').content")
    assert "alternatives" in after


def test_clicking_the_timeline_selects_that_step(page):
    assert page.locator("#step input[type=number]").input_value() != "4"
    page.locator("#timeline .js-plotly-plot .scatterlayer .trace").first.locator(".point").nth(4).click(force=True)
    page.wait_for_selector("#sentences :text('Step 4')", timeout=30_000)
    assert page.locator("#step input[type=number]").input_value() == "4"


def test_an_invalid_setting_shows_a_message_next_to_its_group(page):
    fill(page, "knob-seed", "abc")
    error = page.locator("#error-output")
    error.locator(":text('seed must be an integer')").wait_for(timeout=15_000)
    assert "seed must be an integer in [0, 9223372036854775807], got 'abc'" in error.inner_text()
    fill(page, "knob-seed", "11")
    page.wait_for_function("!document.querySelector('#error-output').innerText.includes('seed')", timeout=15_000)


def test_branching_continues_from_an_alternative_next_to_the_original(page):
    page.get_by_role("tab", name="Branch").click()
    page.click("#branch")
    view = page.locator("#branch-view")
    view.locator(".comp-head:has-text('Branch 1')").wait_for(timeout=GENERATION_TIMEOUT_MS)
    assert view.locator(".comp").count() == 2
    assert view.locator(".tok.forced").count() == 1
    page.wait_for_function("document.querySelector('#branch-view .comp:nth-child(2) .tv').innerText.length > 0")
    page.screenshot(path=str(ARTIFACTS / "ui-branch.png"), full_page=True)


def test_replay_redoes_the_selected_step_under_another_engines_order(page):
    page.get_by_role("tab", name="Replay").click()
    page.click("#replay")
    page.wait_for_function("/orders? (would )?picks?/.test(document.querySelector('#replay-note').innerText)",
                           timeout=GENERATION_TIMEOUT_MS)
    note = page.inner_text("#replay-note")
    assert "With the same random number" in note and "final distribution" in note
    page.wait_for_selector("#replay-plot .js-plotly-plot", timeout=30_000)
    page.screenshot(path=str(ARTIFACTS / "ui-replay.png"), full_page=True)


def test_stop_cancels_a_long_generation(page):
    fill(page, "knob-max_tokens", "2000")
    fill(page, "message", "Tell me a long story.")
    page.click("#generate")
    page.wait_for_selector("#completions .comp-head:has-text('generating')", timeout=GENERATION_TIMEOUT_MS)
    page.click("#stop")
    page.wait_for_selector("#completions .comp-head:has-text('cancelled')", timeout=30_000)
    fill(page, "knob-max_tokens", "10")


ADVANCED_TITLE = "Advanced"
ADD_TOOL = ('[{"type": "function", "function": {"name": "add", "parameters": {"type": "object", '
            '"properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}, "required": ["a", "b"]}}}]')


def test_a_required_tool_call_is_shown_with_the_constraint_stage(page):
    page.get_by_text(ADVANCED_TITLE, exact=True).first.click()
    page.locator("#tools .cm-content").click()
    page.keyboard.insert_text(ADD_TOOL)
    page.locator("#tool-choice").get_by_text("required", exact=True).click()
    # This model's template cannot think: the control is disabled and says why.
    assert "no <think> section" in page.inner_text("#effort")
    fill(page, "knob-max_tokens", "40")
    fill(page, "message", "Add 2 and 3.")
    page.click("#generate")
    page.wait_for_selector("#completions .tool-call", timeout=GENERATION_TIMEOUT_MS)
    assert "tool call: add(" in page.inner_text("#completions .tool-call")
    assert "tool_calls" in page.inner_text("#completions .comp-head")
    page.locator("#tokenview [data-step='0']").click()
    page.wait_for_function(
        "document.querySelector('#sentences').innerText.includes('the constraint (grammar or forced tokens) allowed 1 token')",
        timeout=30_000)
    page.screenshot(path=str(ARTIFACTS / "ui-tool-call.png"), full_page=True)


def test_load_model_without_a_name_says_what_to_type(page):
    page.click("text=Load model")
    page.wait_for_selector("#model-info :text('Type a Hugging Face model id')", timeout=30_000)


def test_every_tab_shows_in_its_row_without_a_more_tabs_menu(page):
    for name in ["What if", "Sweep", "Replay", "Prompt", "Sample N times", "All engine orders", "Many futures",
                 "Manual", "Logit lens"]:
        assert page.get_by_role("tab", name=name, exact=True).is_visible(), name
    assert not page.locator("button[aria-label='More tabs']").first.is_visible()
