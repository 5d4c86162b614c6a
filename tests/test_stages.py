"""The samplers beyond OpenAI's, each on the reference cases of llama.cpp's tests/test-sampling.cpp where
they exist and on hand-computed ones where not; and what the registry promises for every stage."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import chisquare

from engine.generator import Generation
from engine.knobs import KNOBS, STAGE_ORDER, SamplingParams
from engine.sampler import SamplerContext, learn, run_pipeline
from engine.rng import uniform
from engine.stages import ALL, PRESETS, STAGES, XTC_STREAM, Said
from tests.fakes import fake_lm, fixed

INF = float("inf")


def probs(*p):
    return torch.tensor([p], dtype=torch.float32).log()


def after(name, x, history=None, breakers=None, **knobs):
    """The stage's output on one row, with these knobs."""
    B, V = x.shape
    ctx = SamplerContext.of(SamplingParams.build(**knobs), torch.zeros(B, V, dtype=torch.bool), torch.zeros(B, V),
                            history=history, breakers=breakers)
    return STAGES[name](x, ctx)


def final(name, x, **kw):
    return torch.softmax(after(name, x, **kw).double(), dim=-1)[0].tolist()


# --- typical-p -----------------------------------------------------------------------------------


def test_typical_keeps_the_confident_token_when_it_is_typical():
    # llama.cpp test_typical({0.97, 0.01, 0.01, 0.01}, {0.97}, 0.5)
    assert torch.isfinite(after("typical_p", probs(0.97, 0.01, 0.01, 0.01), typical_p=0.5))[0].tolist() == [True, False, False, False]


def test_typical_prefers_the_tokens_whose_surprise_is_closest_to_the_entropy():
    # llama.cpp test_typical({0.4, 0.2, 0.2, 0.2}, {0.2, 0.2, 0.2}, 0.5): the likeliest token is atypical here.
    assert torch.isfinite(after("typical_p", probs(0.4, 0.2, 0.2, 0.2), typical_p=0.5))[0].tolist() == [False, True, True, True]


def test_typical_of_one_is_off():
    x = probs(0.4, 0.2, 0.2, 0.2)
    assert after("typical_p", x, typical_p=1.0) is x


# --- top-n-sigma --------------------------------------------------------------------------------


def test_top_n_sigma_keeps_logits_within_n_standard_deviations_of_the_largest():
    # llama.cpp test_top_n_sigma({0.1, 0.2, 0.3, 0.4}, {.., 0.428571, 0.571429}, 1): sigma over 4 logits (not 3)
    assert final("top_n_sigma", probs(0.1, 0.2, 0.3, 0.4), top_n_sigma=1.0) == pytest.approx([0, 0, 0.428571, 0.571429], abs=1e-6)


def test_top_n_sigma_wide_keeps_everything_and_zero_is_off():
    x = probs(0.1, 0.2, 0.3, 0.4)
    assert final("top_n_sigma", x, top_n_sigma=3.0) == pytest.approx([0.1, 0.2, 0.3, 0.4], abs=1e-6)
    assert after("top_n_sigma", x, top_n_sigma=0.0) is x  # llama.cpp PR #13345: 0 is a no-op, not greedy


def test_top_n_sigma_ignores_removed_tokens():
    x = torch.tensor([[math.log(0.1), math.log(0.2), math.log(0.3), math.log(0.4), -INF, -INF]])
    assert final("top_n_sigma", x, top_n_sigma=1.0)[2:4] == pytest.approx([0.428571, 0.571429], abs=1e-6)


# --- XTC ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("threshold, kept", [
    (0.09, [False, False, False, True]),  # llama.cpp test_xtc(..., {0.1}, 0.99, 0.09)
    (0.19, [False, False, True, True]),  # {0.2, 0.1}
    (0.29, [False, True, True, True]),  # {0.3, 0.2, 0.1}
    (0.39, [True, True, True, True]),  # should not: only one token reaches the threshold
])
def test_xtc_removes_the_top_choices_but_the_least_likely_of_them(threshold, kept):
    x = probs(0.4, 0.3, 0.2, 0.1)
    assert torch.isfinite(after("xtc", x, xtc_probability=1.0, xtc_threshold=threshold))[0].tolist() == kept


def test_xtc_acts_only_when_its_coin_says_so_and_the_coin_is_the_rows_own():
    x = probs(0.4, 0.3, 0.2, 0.1).expand(64, 4)
    ctx = SamplerContext.of(SamplingParams.build(xtc_probability=0.5, xtc_threshold=0.09), torch.zeros(64, 4, dtype=torch.bool),
                            torch.zeros(64, 4), coords=[(3, 0, p) for p in range(64)])
    fired = (~torch.isfinite(STAGES["xtc"](x, ctx))).any(dim=-1)
    assert 10 < int(fired.sum()) < 54  # about half
    assert ctx.notes["xtc_coin"].tolist() == fired.double().tolist()  # all four tokens reach 0.09
    again = SamplerContext.of(SamplingParams.build(xtc_probability=0.5, xtc_threshold=0.09), torch.zeros(1, 4, dtype=torch.bool),
                              torch.zeros(1, 4), coords=[(3, 0, 17)])
    assert bool((~torch.isfinite(STAGES["xtc"](x[:1], again))).any()) == bool(fired[17])


def test_xtc_above_half_is_off():
    assert not STAGES["xtc"].on(SamplingParams.build(xtc_probability=1.0, xtc_threshold=0.6), 10)


def test_xtc_with_probability_zero_never_fires_even_when_its_uniform_is_exactly_zero(monkeypatch):
    # llama.cpp returns before its coin when the probability is <= 0; 0 <= 0 must not fire beside a row where XTC is on.
    monkeypatch.setattr("engine.stages.uniform", lambda *coords: 0.0)
    x = probs(0.4, 0.3, 0.2, 0.1).expand(2, 4)
    params = [SamplingParams.build(xtc_probability=0.0, xtc_threshold=0.09), SamplingParams.build(xtc_probability=1.0, xtc_threshold=0.09)]
    out = STAGES["xtc"](x, SamplerContext.of(params, torch.zeros(2, 4, dtype=torch.bool), torch.zeros(2, 4)))
    assert torch.equal(out[0], x[0]) and torch.isfinite(out[1]).tolist() == [False, False, False, True]


def xtc_sentence(ctx: SamplerContext, params: SamplingParams) -> str:
    notes = {name: v for name, values in ctx.notes.items() if (v := float(values[0])) == v}
    cur = {"name": "xtc", "probs": [0.4, 0.3, 0.2, 0.1], "entropy": 1.28, "kept": 4, "removed_mass": 0.0}
    return ALL["xtc"].describe(Said(cur, cur, {"notes": notes, "candidates": [0, 1, 2, 3]}, {}, params))


def test_xtc_says_the_coin_said_yes_when_too_few_tokens_reached_the_threshold():
    params = SamplingParams.build(xtc_probability=1.0, xtc_threshold=0.39)  # only 0.4 reaches it
    ctx = SamplerContext.of(params, torch.zeros(1, 4, dtype=torch.bool), torch.zeros(1, 4))
    STAGES["xtc"](probs(0.4, 0.3, 0.2, 0.1), ctx)
    assert ctx.notes["xtc_coin"].tolist() == [1.0] and ctx.notes["xtc_reached"].tolist() == [1.0]
    assert xtc_sentence(ctx, params).endswith("removed nothing here: its coin said yes, but only 1 token reached the threshold.")


def test_xtc_says_its_coin_said_no_only_when_it_did():
    params = SamplingParams.build(xtc_probability=0.5, xtc_threshold=0.09)
    coords = next([(3, 0, p)] for p in range(64) if uniform(3, 0, p, XTC_STREAM) > 0.5)
    ctx = SamplerContext.of(params, torch.zeros(1, 4, dtype=torch.bool), torch.zeros(1, 4), coords=coords)
    STAGES["xtc"](probs(0.4, 0.3, 0.2, 0.1), ctx)
    assert ctx.notes["xtc_coin"].tolist() == [0.0] and ctx.notes["xtc_reached"].tolist() == [4.0]
    assert xtc_sentence(ctx, params).endswith("removed nothing here: its coin said no.")


# --- mirostat ------------------------------------------------------------------------------------


def test_mirostat_keeps_tokens_whose_surprise_is_at_most_mu():
    x = probs(*[2.0 ** -k for k in range(1, 10)], 2.0 ** -9)  # surprises 1..9, 9 bits
    ctx = SamplerContext.of(SamplingParams.build(mirostat=2, mirostat_tau=2.0), torch.zeros(1, 10, dtype=torch.bool),
                            torch.zeros(1, 10), memory=[{"mirostat_mu": 3.5}])
    assert torch.isfinite(STAGES["mirostat"](x, ctx))[0].tolist() == [True, True, True] + [False] * 7
    assert ctx.notes["mirostat_mu"].tolist() == [3.5]


def test_mirostat_starts_at_twice_tau_and_learns_from_the_token_drawn():
    x = probs(0.5, 0.25, 0.125, 0.125)  # all within mu = 2 * 5 bits
    params = SamplingParams.build(mirostat=2, mirostat_tau=5.0, mirostat_eta=0.1)
    ctx = SamplerContext.of(params, torch.zeros(1, 4, dtype=torch.bool), torch.zeros(1, 4))
    stages = run_pipeline(x, ctx)
    learn(stages, ctx, torch.tensor([1]))  # drew the token of surprise 2 bits
    assert ctx.memory[0]["mirostat_mu"] == pytest.approx(10.0 - 0.1 * (2.0 - 5.0))
    assert ctx.notes["mirostat_surprise"].tolist() == pytest.approx([2.0])


def test_mirostat_mu_follows_each_completion_across_steps():
    lm = fake_lm(fixed([1e-9] + [0.3, 0.2, 0.15, 0.1, 0.08, 0.07, 0.05, 0.03, 0.02]), [b"<eos>"] + [bytes([c]) for c in b"abcdefghi"])
    gen = Generation(lm, [1], SamplingParams.build(mirostat=2, mirostat_tau=2.5, mirostat_eta=0.5, seed=3, n=3, max_tokens=12))
    for _ in gen:
        pass
    for completion in gen.completions:
        mu = 5.0
        for step in completion:
            assert step.notes["mirostat_mu"] == pytest.approx(mu)
            mu -= 0.5 * (step.notes["mirostat_surprise"] - 2.5)
    assert len({tuple(s.notes["mirostat_mu"] for s in c) for c in gen.completions}) == 3  # each its own


# --- dynamic temperature ---------------------------------------------------------------------------


@pytest.mark.parametrize("t, d, exponent, used, expected", [
    # Computed from llama.cpp's temp_ext formula (its tests cover only d = 0).
    (1.0, 0.5, 1.0, 1.423220, [0.134408, 0.218745, 0.290847, 0.356001]),
    (1.0, 1.0, 1.0, 1.846439, [0.156562, 0.227886, 0.283848, 0.331704]),
    (0.8, 0.5, 2.0, 1.152335, [0.114292, 0.208569, 0.296526, 0.380614]),
])
def test_dynamic_temperature_follows_the_entropy(t, d, exponent, used, expected):
    x = probs(0.1, 0.2, 0.3, 0.4)
    ctx = SamplerContext.of(SamplingParams.build(temperature=t, dynatemp_range=d, dynatemp_exponent=exponent),
                            torch.zeros(1, 4, dtype=torch.bool), torch.zeros(1, 4))
    out = STAGES["temperature"](x, ctx)
    assert torch.softmax(out.double(), dim=-1)[0].tolist() == pytest.approx(expected, abs=1e-5)
    assert ctx.notes["temperature_used"].tolist() == pytest.approx([used], abs=1e-5)


def test_a_greedy_row_reports_no_dynamic_temperature_alone_or_beside_a_dynamic_row():
    x = probs(0.1, 0.2, 0.3, 0.4).expand(2, 4)
    greedy, dynamic = SamplingParams.build(temperature=0.0, dynatemp_range=0.5), SamplingParams.build(dynatemp_range=0.5)
    pair = SamplerContext.of([greedy, dynamic], torch.zeros(2, 4, dtype=torch.bool), torch.zeros(2, 4))
    alone = SamplerContext.of(greedy, torch.zeros(1, 4, dtype=torch.bool), torch.zeros(1, 4))
    assert torch.isfinite(STAGES["temperature"](x, pair)).tolist()[0] == [False, False, False, True]
    STAGES["temperature"](x[:1], alone)
    assert math.isnan(pair.notes["temperature_used"][0]) and math.isfinite(pair.notes["temperature_used"][1])
    assert math.isnan(alone.notes["temperature_used"][0])


def test_dynamic_temperature_leaves_a_single_survivor_alone():
    x = torch.tensor([[2.0, -INF, -INF]])
    assert after("temperature", x, temperature=1.0, dynatemp_range=0.5).tolist() == [[2.0, -INF, -INF]]


# --- what every stage promises ---------------------------------------------------------------------


def test_every_stage_is_off_by_default_and_has_its_knobs_in_the_registry():
    p = SamplingParams.build()
    for name, stage in STAGES.items():
        assert not stage.on(p, 50_000), name
        for knob in stage.knobs:
            assert KNOBS[knob.name] is knob
    assert set(STAGE_ORDER) == set(STAGES) and all(set(order) == set(STAGES) for order in PRESETS.values())


every_stage_on = st.fixed_dictionaries({
    "temperature": st.sampled_from([0.0, 0.7, 1.3]), "dynatemp_range": st.sampled_from([0.0, 0.5]),
    "top_k": st.integers(0, 6), "top_p": st.floats(0.05, 1.0), "min_p": st.floats(0.0, 0.5),
    "typical_p": st.floats(0.05, 1.0), "top_n_sigma": st.sampled_from([0.0, 0.5, 2.0]),
    "xtc_probability": st.sampled_from([0.0, 1.0]), "xtc_threshold": st.floats(0.0, 0.5),
    "dry_multiplier": st.sampled_from([0.0, 0.8]), "mirostat": st.sampled_from([0, 2]),
    "repetition_penalty": st.floats(0.5, 1.5), "presence_penalty": st.floats(-2, 2),
    "sampler_order": st.sampled_from(list(PRESETS.values())),
})


@settings(max_examples=150, deadline=None)
@given(row=st.lists(st.floats(-20, 20, allow_nan=False, width=32), min_size=3, max_size=12), knobs=every_stage_on)
def test_no_stage_writes_into_its_input_and_something_always_survives(row, knobs):
    x = torch.tensor([row])
    V = x.shape[1]
    ctx = SamplerContext.of(SamplingParams.build(**knobs), torch.ones(1, V, dtype=torch.bool), torch.ones(1, V),
                            history=[[0, 1, 2, 0, 1]], breakers=[frozenset()])
    stages = run_pipeline(x.clone(), ctx)
    before = [t.clone() for _, t in stages]
    run_pipeline(stages[0][1], ctx)
    for (_, t), b in zip(stages, before):
        assert torch.equal(t, b)
    assert torch.isfinite(stages[-1][1]).any()


@pytest.mark.parametrize("knobs", [
    dict(typical_p=0.6), dict(top_n_sigma=1.0), dict(xtc_probability=1.0, xtc_threshold=0.1),
    dict(dry_multiplier=0.7), dict(mirostat=2, mirostat_tau=2.0), dict(temperature=0.9, dynatemp_range=0.6),
], ids=["typical", "top-n-sigma", "xtc", "dry", "mirostat", "dynatemp"])
def test_sampled_frequencies_follow_the_final_distribution_with_each_new_stage(knobs):
    lm = fake_lm(fixed([1e-9, 0.3, 0.2, 0.15, 0.12, 0.1, 0.08, 0.05]), [b"<eos>", b"<p>"] + [bytes([c]) for c in b"abcdef"])
    counts, first = np.zeros(8), None
    for seed in range(16):
        gen = Generation(lm, [1], SamplingParams.build(**knobs, seed=seed, n=64, max_tokens=1))
        for batch in gen:
            for s in batch:
                counts[s.token_id] += 1
                p = dict(zip(s.cand_ids.tolist(), s.stage_probs[-1].tolist()))
                first = first or p
                assert p == pytest.approx(first)  # the first step is the same distribution in every row
    support = [t for t, p in first.items() if p > 0]
    assert set(np.nonzero(counts)[0]) <= set(support)
    expected = np.array([first[t] for t in support]) / sum(first[t] for t in support) * counts.sum()
    assert chisquare(counts[support], expected).pvalue > 1e-3


def test_every_stage_says_what_it_did():
    for name, stage in ALL.items():
        assert stage.label and callable(stage.describe), name
