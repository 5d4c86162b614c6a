"""All engine orders side by side (playground/ui_orders.py): the sentence and table on hand-made step
records, and the handler on the real embedded model."""

from __future__ import annotations

import re

import pytest

from engine.knobs import SamplingParams
from engine.stages import PRESETS, token_label
from playground import ui_events, ui_orders
from playground.ui_events import Inputs, Stops
from tests.test_ui_events import last
from tests.test_ui_events import settings as ui_settings

TEXTS = {1: "sea", 2: "lake", 3: "pond"}


def step(token: int, kept: int, draw: float | None = 0.42) -> dict:
    """A step record with what the view reads: the pick, the draw, the final survivors and probabilities."""
    return {"token_id": token, "draw": draw, "candidates": [1, 2, 3],
            "stages": [{"name": "raw", "kept": 3, "probs": [0.5, 0.3, 0.2]}, {"name": "min_p", "kept": kept, "probs": [0.6, 0.4, 0.0]}]}


def by_engine(*steps) -> dict[str, dict]:
    return dict(zip(PRESETS, steps))


def test_swapped_pairs_are_the_stages_that_are_on_and_run_the_other_way_round():
    on = ["temperature", "top_k", "min_p"]
    assert ui_orders.swapped(PRESETS["Hugging Face"], PRESETS["llama.cpp"], on) == [("temperature", "top_k"), ("temperature", "min_p")]
    assert ui_orders.swapped(PRESETS["Hugging Face"], PRESETS["vLLM"], on) == [("top_k", "min_p")]
    assert ui_orders.swapped(PRESETS["Hugging Face"], PRESETS["Hugging Face"], on) == []


def test_the_sentence_names_the_orders_that_disagree_and_the_stages_they_swap():
    steps = by_engine(step(1, 30), step(1, 30), step(2, 10), step(1, 30))
    text = ui_orders.explain(steps, PRESETS, ["temperature", "min_p"], TEXTS)
    assert text.startswith("With the run's random number 0.420, Hugging Face, vLLM and text-generation-webui pick 'sea'; "
                           "llama.cpp picks 'lake'.")
    assert ("They disagree because llama.cpp applies min-p before temperature, where Hugging Face does the opposite, "
            "so 10 tokens survive in llama.cpp's order against 30 in Hugging Face's.") in text


def test_when_all_pick_the_same_token_the_sentence_still_says_where_the_survivors_differ():
    steps = by_engine(step(1, 30), step(1, 30), step(1, 1), step(1, 30))
    text = ui_orders.explain(steps, PRESETS, ["temperature", "min_p"], TEXTS)
    assert "all four orders pick 'sea'" in text
    assert "still differ: llama.cpp applies min-p before temperature" in text and "1 token survives" in text


def test_with_one_stage_on_the_order_cannot_matter():
    steps = by_engine(*[step(1, 3, draw=None)] * 4)
    text = ui_orders.explain(steps, PRESETS, ["temperature"], TEXTS)
    assert text.startswith("With greedy, no random number, all four orders pick 'sea'.")
    assert "Only temperature is on, so the order cannot matter here." in text


def test_the_table_lists_each_order_and_marks_the_pick_that_differs():
    steps = by_engine(step(1, 30), step(1, 30), step(2, 10), step(1, 30))
    html = ui_orders.table_html(steps, PRESETS, ["temperature", "min_p"], TEXTS)
    assert html.count("<tr>") == 5  # a head and four engines
    assert "<td>min-p → temperature</td><td>10</td>" in html and "<td>temperature → min-p</td><td>30</td>" in html
    assert "<code style='color:#ea580c;font-weight:700'>lake</code>" in html and html.count("#ea580c") == 1


# --- on the real model ---------------------------------------------------------------------------------


def settings(lm, **knobs) -> Inputs:
    return ui_settings(lm, **{"max_tokens": "4", **knobs})


@pytest.fixture(scope="module")
def runs(lm, host):
    return last(ui_events.generate(host, Stops(), settings(lm, temperature=0.8, top_p=0.9), "s"))["runs"]


@pytest.mark.model
def test_the_runs_own_order_picks_the_recorded_token(lm, host, runs):
    out = last(ui_orders.all_orders(host, Stops(), settings(lm, temperature=0.8, top_p=0.9), runs, 0, 1, 2, "s"))
    assert "under the run's own settings" in out["orders_note"]
    recorded = runs[0]["completions"][0]["steps"][2]
    assert SamplingParams.build(**runs[0]["params"]).sampler_order == PRESETS["Hugging Face"]
    hf = out["orders_table"].split("<tr>")[2]
    assert hf.startswith("<td><b>Hugging Face</b></td><td>temperature → top-p</td>")
    assert f"<code>{token_label(runs[0]['texts'], recorded['token_id'])}</code></td></tr>" in hf
    assert len(out["orders_plot"].data) == 4


@pytest.mark.model
def test_top_p_before_a_hot_temperature_keeps_fewer_tokens(lm, host, runs):
    # llama.cpp cuts the raw distribution, the others the flatter one temperature 2 makes: at most as many survive.
    out = last(ui_orders.all_orders(host, Stops(), settings(lm, temperature=2.0, top_p=0.6), runs, 0, 1, 1, "s"))
    assert "the current settings (temperature 0.8 → 2.0, top_p 0.9 → 0.6)" in out["orders_note"]
    kept = {name: int(n.replace(",", "")) for name, n in re.findall(r"<tr><td><b>(.*?)</b></td><td>.*?</td><td>([\d,]+)</td>",
                                                                   out["orders_table"])}
    assert kept["llama.cpp"] < kept["Hugging Face"] == kept["vLLM"] == kept["text-generation-webui"]
    assert "llama.cpp applies top-p before temperature" in out["orders_note"]


@pytest.mark.model
def test_without_the_model_the_view_says_it_needs_it(lm, host, runs):
    out = last(ui_orders.all_orders(host, Stops(), settings(lm), [{**runs[0], "model": "another/model"}], 0, 1, 0, "s"))
    assert "needs the step's exact logits, so the model" in out["orders_note"] and "'another/model', is not loaded" in out["orders_note"]
    assert "orders_table" not in out


def test_a_page_that_never_compared_the_orders_does_not_compare_them_for_a_new_step():
    assert list(ui_orders.follow_step(None, None, None, [], 0, 1, 0, "s", note="")) == []
