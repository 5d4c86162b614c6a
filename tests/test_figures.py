"""Figures and stage sentences, built from steps recorded by the real sampler on a 4-token vocabulary.

The distribution is p = [0.5, 0.3, 0.15, 0.05] over four tokens, so every number below is checkable
by hand.
"""

from __future__ import annotations

import importlib
import json
import math
import sys

import numpy as np
import plotly.graph_objects as go
import pytest
import torch
from plotly.subplots import make_subplots

from engine.knobs import STAGE_ORDER, SamplingParams
from engine.sampler import SamplerContext, draw, run_pipeline
from engine.trace import Step, record
from playground import figures, sweeps

TEXTS = {0: " Paris", 1: " London", 2: " Rome", 3: "\n"}
PROBS = [0.5, 0.3, 0.15, 0.05]


def recorded_step(probs=PROBS, u: float | None = 0.7, seen=(), counts=None, position=0, texts=TEXTS, **knobs) -> tuple[dict, dict]:
    """One step through the real pipeline, draw and recorder: (step dict as the UI keeps it, params dict).

    u: the uniform of the draw (ignored when temperature is 0). seen: token ids already in the context.
    """
    params = SamplingParams.build(**knobs)
    V = len(probs)
    logits = torch.tensor([probs], dtype=torch.float32).log()  # (1, V)
    seen_t = torch.zeros(1, V, dtype=torch.bool)
    seen_t[0, list(seen)] = True
    counts_t = torch.zeros(1, V) if counts is None else torch.tensor([counts], dtype=torch.float32)
    bias_t = None
    if params.logit_bias:
        bias_t = torch.zeros(V)
        for tok, b in params.logit_bias:
            bias_t[tok] = b
    stages = run_pipeline(logits, SamplerContext.of(params, seen_t, counts_t, bias_t))
    tokens, landing = draw(stages[-1][1], torch.tensor([u], dtype=torch.float64), torch.tensor([params.greedy]))
    rec = record(stages, tokens, landing, k=V)[0]
    tok = int(tokens[0])
    step = Step(index=0, position=position, text=texts[tok], delta=texts[tok], **rec)
    d = step.to_dict(("raw", *params.sampler_order))
    d["shown"] = texts[tok]
    return d, params.to_dict()


def entropy(p) -> float:
    p = np.array([x for x in p if x > 0])
    return float(-(p * np.log(p)).sum())


# ---- sentences ----

def test_top_p_sentence_names_the_tokens_kept_and_the_mass_they_hold():
    step, params = recorded_step(top_p=0.8)
    assert "top-p 0.8 kept 2 tokens holding 0.80 of the mass." in figures.stage_sentences(step, TEXTS, params)


def test_top_k_sentence_counts_the_kept_tokens():
    step, params = recorded_step(top_k=3)
    assert "top-k 3 kept 3 tokens holding 0.95 of the mass." in figures.stage_sentences(step, TEXTS, params)


def test_min_p_sentence_states_the_threshold_rule():
    step, params = recorded_step(min_p=0.5)
    # threshold 0.5 x 0.5 = 0.25: Paris and London stay, holding 0.8 of the mass.
    assert "min-p 0.5 kept 2 tokens (those with p ≥ 0.5 × 0.50) holding 0.80 of the mass." in figures.stage_sentences(step, TEXTS, params)


def test_a_truncation_that_removes_nothing_says_so():
    step, params = recorded_step(top_p=0.999)
    assert "top-p 0.999 removed nothing here: 4 tokens still possible." in figures.stage_sentences(step, TEXTS, params)


def test_knobs_at_their_off_value_are_reported_off():
    step, params = recorded_step()
    sentences = figures.stage_sentences(step, TEXTS, params)
    for label in ("logit bias", "repetition penalty", "presence/frequency", "temperature", "top-k", "top-p", "min-p"):
        assert f"{label} was off." in sentences


def test_temperature_below_one_sharpens_with_the_entropies_before_and_after():
    step, params = recorded_step(temperature=0.5)
    sharp = np.array(PROBS) ** 2 / (np.array(PROBS) ** 2).sum()  # p^(1/T), renormalised
    expected = f"temperature 0.5 sharpened the distribution: entropy {entropy(PROBS):.2f} → {entropy(sharp):.2f} nats."
    assert expected in figures.stage_sentences(step, TEXTS, params)


def test_temperature_above_one_flattens():
    step, params = recorded_step(temperature=1.5)
    assert any(s.startswith("temperature 1.5 flattened the distribution") for s in figures.stage_sentences(step, TEXTS, params))


def test_temperature_zero_is_described_as_greedy_without_a_draw():
    step, params = recorded_step(temperature=0.0)
    sentences = figures.stage_sentences(step, TEXTS, params)
    assert "temperature 0 is greedy: only '␣Paris', the top token, remains." in sentences
    assert sentences[-1] == "Greedy decoding took the top token '␣Paris' without a random draw."


def test_draw_sentence_says_where_the_draw_landed_and_what_it_picked():
    step, params = recorded_step(top_p=0.8, u=0.7)
    # Final distribution [0.625, 0.375]: a draw at 0.7 lies past Paris's band [0, 0.625), in London's.
    assert step["token_id"] == 1
    assert figures.stage_sentences(step, TEXTS, params)[-1] == (
        "The random draw landed at 0.70 on the final cumulative distribution, inside the band of '␣London' "
        "(p = 0.38, the raw distribution's #2)."
    )


def test_logit_bias_sentence_names_the_biased_token_and_its_change():
    step, params = recorded_step(logit_bias={"3": math.log(10)})
    # Token 3's weight becomes 0.05 * 10 = 0.5 out of 1.45.
    assert f"logit bias added +{math.log(10):g} to '↵' (p 0.050 → {0.5 / 1.45:.3f})." in figures.stage_sentences(step, TEXTS, params)


def test_repetition_penalty_sentence_names_the_biggest_drop():
    step, params = recorded_step(repetition_penalty=1.5, seen=[0])
    # Paris's logit log(0.5) < 0 is multiplied by 1.5: weight 0.5^1.5 = 0.354 out of 0.854.
    new = 0.5 ** 1.5 / (0.5 ** 1.5 + 0.5)
    sentence = next(s for s in figures.stage_sentences(step, TEXTS, params) if s.startswith("repetition penalty"))
    assert sentence.endswith(f"the biggest drop: '␣Paris' 0.500 → {new:.3f}.")


def test_the_first_sentence_describes_the_raw_distribution():
    step, params = recorded_step()
    assert figures.stage_sentences(step, TEXTS, params)[0] == f"The model's raw distribution put 0.50 on '␣Paris' (entropy {entropy(PROBS):.2f} nats)."


# ---- the inspector chart ----

def test_inspector_has_a_row_for_raw_and_each_stage_that_acted():
    step, params = recorded_step(temperature=0.5, top_p=0.8)
    fig = go.Figure(figures.inspector_figure(step, TEXTS, params))
    assert [t.name for t in fig.data] == ["raw", "temperature", "top-p"]
    assert f"{len(STAGE_ORDER) - 2} stages off" in fig.layout.title.text and "no change from" not in fig.layout.title.text


def test_inspector_names_a_stage_that_was_on_but_changed_nothing():
    step, params = recorded_step(top_k=10)  # all four tokens survive top-k 10
    assert "no change from: top-k" in go.Figure(figures.inspector_figure(step, TEXTS, params)).layout.title.text


def test_inspector_marks_the_chosen_token_and_greys_removed_ones_at_their_earlier_height():
    step, params = recorded_step(top_p=0.8, u=0.1)  # picks Paris
    fig = go.Figure(figures.inspector_figure(step, TEXTS, params))
    raw, after = fig.data
    assert list(after.x) == ["␣Paris", "␣London", "␣Rome", "↵"]
    assert list(after.marker.color) == [figures.CHOSEN, figures.KEPT, figures.REMOVED, figures.REMOVED]
    assert after.y[0] == pytest.approx(0.625) and after.y[1] == pytest.approx(0.375)
    # A removed token stays visible as a grey ghost of what it had before top-p removed it.
    assert after.y[2] == pytest.approx(0.15) and after.y[3] == pytest.approx(0.05)
    assert after.hovertext[2] == "removed by top-p"
    assert list(raw.y) == pytest.approx(PROBS)


def test_inspector_limits_the_candidates_but_keeps_the_chosen_one():
    probs = [0.3, 0.25, 0.2, 0.15, 0.1]
    texts = {i: f"t{i}" for i in range(5)}
    step, params = recorded_step(probs=probs, u=0.99, texts=texts)  # draws the least likely token, t4
    assert step["token_id"] == 4
    fig = go.Figure(figures.inspector_figure(step, texts, params, max_tokens=2))
    assert list(fig.data[0].x) == ["t0", "t4"]


# ---- the draw chart ----

def test_draw_figure_stacks_the_final_distribution_and_draws_the_landing_line():
    step, params = recorded_step(top_p=0.8, u=0.7)
    fig = go.Figure(figures.draw_figure(step, TEXTS))
    bars = fig.data[0]
    assert list(bars.x) == ["␣Paris", "␣London"]
    assert list(bars.base) == pytest.approx([0.0, 0.625])
    assert list(bars.y) == pytest.approx([0.625, 0.375])
    assert list(bars.marker.color) == [figures.KEPT, figures.CHOSEN]
    line = fig.layout.shapes[0]
    assert line.y0 == pytest.approx(0.7)
    # The line crosses the chosen token's band.
    assert bars.base[1] <= line.y0 <= bars.base[1] + bars.y[1]


def test_draw_figure_shows_the_chosen_token_even_far_down_the_distribution():
    # 30 tokens of equal probability: u = 0.7 lands on the 22nd, past the 15 bands drawn one by one.
    texts = {i: f"t{i}" for i in range(30)}
    step, _ = recorded_step(probs=[1 / 30] * 30, u=0.7, texts=texts)
    bars = go.Figure(figures.draw_figure(step, texts)).data[0]
    assert list(bars.x)[13:] == ["(8 more)", texts[step["token_id"]], "(all others)"]
    assert list(bars.marker.color)[13:] == [figures.REMOVED, figures.CHOSEN, figures.REMOVED]
    assert bars.base[14] <= 0.7 <= bars.base[14] + bars.y[14]  # the line still crosses the chosen band
    assert bars.base[15] + bars.y[15] == pytest.approx(1.0)


def test_draw_figure_says_greedy_has_no_draw():
    step, _ = recorded_step(temperature=0.0)
    fig = go.Figure(figures.draw_figure(step, TEXTS))
    assert fig.layout.title.text.startswith("Greedy: no random draw")
    assert not fig.layout.shapes


# ---- the timeline ----

def test_timeline_plots_chosen_probabilities_and_entropy_per_step():
    steps = [recorded_step(u=u, position=i, top_p=0.8)[0] for i, u in enumerate([0.1, 0.9, 0.3])]
    fig = go.Figure(figures.timeline_figure(steps, TEXTS, selected=1))
    raw, final, ent = fig.data
    assert list(raw.x) == [0, 1, 2]
    assert list(raw.y) == pytest.approx([0.5, 0.3, 0.5], abs=1e-5)
    assert list(final.y) == pytest.approx([0.625, 0.375, 0.625], abs=1e-5)
    assert list(ent.y) == pytest.approx([entropy(PROBS)] * 3, abs=1e-5)
    assert fig.layout.shapes[0].x0 == 1  # the selected step


@pytest.mark.model
def test_figures_build_from_steps_the_real_model_recorded(lm):
    from playground import ui_runs

    params = SamplingParams.build(temperature=0.8, top_k=50, top_p=0.9, min_p=0.05, max_tokens=6, seed=1)
    gen, run = ui_runs.start(lm, [{"role": "user", "content": "Name a colour."}], params, "test")
    for run in ui_runs.advance(lm, gen, run):
        pass
    steps = run["completions"][0]["steps"]
    for step in steps:
        sentences = figures.stage_sentences(step, run["texts"], run["params"])
        assert len(sentences) == len(run["stages"]) + 1
        inspector = go.Figure(figures.inspector_figure(step, run["texts"], run["params"]))
        assert inspector.data[0].name == "raw"
        assert go.Figure(figures.draw_figure(step, run["texts"])).layout.shapes[0].y0 == pytest.approx(step["draw"])
    assert len(go.Figure(figures.timeline_figure(steps, run["texts"])).data[0].x) == len(steps)


# ---- the figures as plotly JSON (built without plotly's objects: issue 17) ----

def sweep_points(*settings: dict) -> list[dict]:
    return [{"settings": s, "samples": 2, "metrics": {name: 0.5 for name in sweeps.METRICS}} for s in settings]


def every_figure_kind(figures=figures) -> dict[str, figures.Figure]:
    several, params = recorded_step(temperature=0.5, top_p=0.8, u=0.7)
    greedy, _ = recorded_step(temperature=0.0)
    steps = [recorded_step(u=u, position=i, top_p=0.8)[0] for i, u in enumerate([0.1, 0.9, 0.3])]
    return {
        "inspector, 3 rows": figures.inspector_figure(several, TEXTS, params),
        "draw with its line": figures.draw_figure(several, TEXTS),
        "draw, greedy": figures.draw_figure(greedy, TEXTS),
        "timeline, a step selected": figures.timeline_figure(steps, TEXTS, selected=1),
        "sweep of 1 knob": figures.sweep_figure(sweep_points(*({"temperature": t} for t in (0.5, 1.0))), selected=0),
        "sweep of 2 knobs": figures.sweep_figure(sweep_points(*({"temperature": t, "top_p": p} for t in (0.5, 1.0)
                                                                 for p in (0.5, 0.9))), selected=3),
    }


def test_every_figure_kind_is_valid_plotly_that_a_gradio_plot_sends_as_is():
    from gradio.components import Plot

    for kind, fig in every_figure_kind().items():
        # go.Figure validates every property against plotly's schema: a misspelt one raises.
        assert go.Figure(fig).data, kind
        sent = Plot().postprocess(fig)
        assert sent.type == "plotly" and json.loads(sent.plot) == fig, kind


def test_the_inspector_rows_keep_make_subplots_layout():
    step, params = recorded_step(temperature=0.5, top_p=0.8)
    fig = go.Figure(figures.inspector_figure(step, TEXTS, params))
    titles = [note.text for note in fig.layout.annotations]
    assert [t.split(":")[0] for t in titles] == ["raw (the model's own distribution)", "after temperature 0.5",
                                                "after top-p 0.8 = final"]
    plotly = make_subplots(rows=3, cols=1, shared_xaxes=True, vertical_spacing=0.35 / 3 / 2 + 0.02, subplot_titles=titles)
    for axis in ("xaxis", "yaxis", "xaxis2", "yaxis2", "xaxis3", "yaxis3"):
        for key in ("domain", "anchor", "matches", "showticklabels"):
            assert fig.layout[axis][key] == plotly.layout[axis][key], (axis, key)
    assert [(a.x, a.y, a.xanchor, a.yanchor, a.xref, a.yref) for a in fig.layout.annotations] == \
           [(a.x, a.y, a.xanchor, a.yanchor, a.xref, a.yref) for a in plotly.layout.annotations]
    # Each row is drawn on its own axes; the upper rows share the bottom row's x and hide its labels.
    assert [(t.xaxis, t.yaxis) for t in fig.data] == [("x", "y"), ("x2", "y2"), ("x3", "y3")]
    assert fig.layout.xaxis.matches == fig.layout.xaxis2.matches == "x3" and fig.layout.xaxis3.matches is None


def test_the_per_run_figures_build_without_importing_plotly(monkeypatch):
    import builtins

    import playground

    def no_plotly(name, *args, **kwargs):
        if name.split(".")[0] == "plotly":
            raise ImportError(f"the figures imported {name}")
        return real_import(name, *args, **kwargs)

    real_import = builtins.__import__
    monkeypatch.setattr(builtins, "__import__", no_plotly)
    monkeypatch.delitem(sys.modules, "playground.figures")
    monkeypatch.setattr(playground, "figures", None)
    fresh = importlib.import_module("playground.figures")
    for kind, fig in every_figure_kind(fresh).items():
        assert json.loads(fig.to_json())["data"], kind


def test_a_figure_of_numpy_numbers_serialises_as_plotly_did():
    points = [{"settings": {"temperature": np.float64(t)}, "samples": 1,
               "metrics": {name: np.float32(0.25) for name in sweeps.METRICS} | {"perplexity": np.float64("nan")}}
              for t in (0.5, 1.0)]
    sent = json.loads(figures.sweep_figure(points).to_json())
    assert sent["data"][0]["x"] == [0.5, 1.0] and sent["data"][0]["y"] == [0.25, 0.25]
    assert sent["data"][1]["y"] == [None, None]  # NaN: null, as plotly wrote it
