"""The logit lens tab on the real embedded model (SmolLM2, Llama-shaped)."""

from __future__ import annotations

import math

import pytest

from playground import lens_figures, ui_lens
from playground.models import ModelHost
from playground.ui_events import Stops
from tests.test_ui_events import last, settings

pytestmark = pytest.mark.model


@pytest.fixture(scope="module")
def runs(lm, host):
    from playground import ui_events

    return last(ui_events.generate(host, Stops(), settings(lm, max_tokens="6"), "s"))["runs"]


@pytest.fixture(scope="module")
def table(lm, host, runs):
    steps = runs[0]["completions"][0]["steps"]
    ids = runs[0]["prompt_ids"] + [s["token_id"] for s in steps[:4]]
    return host.scheduler().call(lambda: ui_lens.lens_table(lm, ids, steps[4]["token_id"]))


def test_the_lens_has_a_row_for_the_embeddings_and_each_layer_and_eight_columns(lm, table):
    layers = lm.model.config.num_hidden_layers
    assert table["layers"][0] == "embeddings" and table["layers"][-1] == f"layer {layers}"
    assert len(table["top"]) == layers + 1 and all(len(row) == 8 and len(row[0]) == 5 for row in table["top"])
    assert len(table["rank"]) == layers + 1


def test_the_last_layers_reading_is_the_distribution_the_step_was_sampled_from(runs, table):
    step = runs[0]["completions"][0]["steps"][4]
    # The run's decode steps and the lens's one prefill round differently (bf16): the top token and the
    # chosen token's probability agree to a few percent.
    assert table["top"][-1][-1][0]["id"] == step["top"][0]["id"]
    assert table["prob"][-1] == pytest.approx(math.exp(step["raw_logprob"]), rel=0.05, abs=2e-3)
    assert table["rank"][-1] == step["rank"]


def test_the_handler_draws_the_heatmap_and_the_rank_line_and_says_these_are_hidden_states(host, runs):
    out = ui_lens.lens(host, runs, 0, 1, 2)
    assert "hidden states, not the sampled logits" in out["lens_note"] and "Step 2" in out["lens_note"]
    heat = out["lens_heatmap"].data[0]
    assert len(heat.z) == len(heat.y) and len(heat.z[0]) == 8
    assert list(out["lens_rank"].data[0].x) == list(heat.y)


def test_the_heatmap_cells_show_the_top_token_and_hover_the_top_five(table):
    heat = lens_figures.heatmap_figure(table).data[0]
    cell = table["top"][3][2]
    assert heat.z[3][2] == cell[0]["p"]
    assert heat.customdata[3][2].count("<br>") == 4


def test_a_run_of_a_model_that_is_not_loaded_says_the_lens_needs_it(host, runs):
    out = ui_lens.lens(host, [{**runs[0], "model": "someone/else"}], 0, 1, 2)
    assert "needs the model" in out["lens_note"] and out["lens_heatmap"] is None


def test_a_model_without_local_weights_is_refused_in_words(lm, runs):
    import dataclasses

    remote = dataclasses.replace(lm, model=None, name="a-server/model")  # as engine/remote.py's RemoteModel holds it
    out = ui_lens.lens(ModelHost(remote), [{**runs[0], "model": remote.name}], 0, 1, 2)
    assert "needs a local model's hidden states" in out["lens_note"] and out["lens_heatmap"] is None
