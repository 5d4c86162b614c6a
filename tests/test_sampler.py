"""Each sampler stage on hand-computed 4- to 6-token examples, plus properties every stage keeps."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.knobs import STAGE_ORDER, SamplingParams
from engine.sampler import STAGES, SamplerContext, draw, run_pipeline

INF = float("inf")


def ctx(logits, seen=(), counts=None, bias=None, **knobs):
    B, V = logits.shape
    seen_mask = torch.zeros(B, V, dtype=torch.bool)
    for t in seen:
        seen_mask[:, t] = True
    c = torch.zeros(B, V) if counts is None else torch.tensor([counts], dtype=torch.float32).expand(B, V)
    b = None if bias is None else torch.tensor(bias, dtype=torch.float32)
    return SamplerContext.of(SamplingParams.build(**knobs), seen_mask, c, b)


def sample(x, u):
    """Draw from one row with uniform u."""
    return draw(x, torch.tensor([u], dtype=torch.float64), torch.tensor([False]))


def L(*values):
    return torch.tensor([values], dtype=torch.float32)


def probs(*p):
    return torch.tensor([p], dtype=torch.float32).log()


# --- logit_bias -------------------------------------------------------------------------------


def test_logit_bias_adds_the_bias_to_each_listed_token():
    out = STAGES["logit_bias"](L(1.0, 2.0, 3.0, 4.0), ctx(L(0, 0, 0, 0), bias=[0.0, 5.0, 0.0, -100.0]))
    assert out.tolist() == [[1.0, 7.0, 3.0, -96.0]]


# --- repetition penalty (CTRL) ----------------------------------------------------------------


def test_repetition_penalty_divides_positive_and_multiplies_negative_logits_of_seen_tokens():
    x = L(2.0, -2.0, 2.0, -2.0)
    out = STAGES["repetition_penalty"](x, ctx(x, seen=[0, 1], repetition_penalty=1.6))
    assert out[0].tolist() == pytest.approx([2.0 / 1.6, -2.0 * 1.6, 2.0, -2.0])


def test_repetition_penalty_below_one_favours_seen_tokens():
    x = L(2.0, -2.0, 1.0, 0.0)
    out = STAGES["repetition_penalty"](x, ctx(x, seen=[0, 1, 3], repetition_penalty=0.5))
    assert out[0].tolist() == pytest.approx([4.0, -1.0, 1.0, 0.0])


def test_repetition_penalty_of_one_is_off_and_returns_the_input():
    x = L(1.0, 2.0, 3.0, 4.0)
    assert STAGES["repetition_penalty"](x, ctx(x, seen=[0, 1])) is x


# --- presence / frequency (OpenAI) -------------------------------------------------------------


def test_frequency_penalty_subtracts_once_per_occurrence():
    x = L(1.0, 1.0, 1.0, 1.0)
    out = STAGES["presence_frequency"](x, ctx(x, counts=[0, 1, 3, 0], frequency_penalty=0.5))
    assert out[0].tolist() == pytest.approx([1.0, 0.5, -0.5, 1.0])


def test_presence_penalty_subtracts_once_for_any_occurrence():
    x = L(1.0, 1.0, 1.0, 1.0)
    out = STAGES["presence_frequency"](x, ctx(x, counts=[0, 1, 3, 0], presence_penalty=0.75))
    assert out[0].tolist() == pytest.approx([1.0, 0.25, 0.25, 1.0])


def test_negative_penalties_encourage_repeats():
    x = L(0.0, 0.0, 0.0, 0.0)
    out = STAGES["presence_frequency"](x, ctx(x, counts=[0, 2, 0, 0], presence_penalty=-1.0, frequency_penalty=-0.5))
    assert out[0].tolist() == pytest.approx([0.0, 2.0, 0.0, 0.0])


def test_penalties_count_only_generated_tokens_not_the_prompt():
    # `seen` (prompt + output) drives the repetition penalty only; counts drive presence/frequency.
    x = L(1.0, 1.0, 1.0, 1.0)
    out = STAGES["presence_frequency"](x, ctx(x, seen=[0, 1, 2, 3], counts=[0, 0, 0, 0], presence_penalty=2.0))
    assert out.tolist() == x.tolist()


# --- temperature -----------------------------------------------------------------------------


def test_temperature_divides_the_logits():
    x = L(1.0, 2.0, -3.0, 0.0)
    assert STAGES["temperature"](x, ctx(x, temperature=0.5))[0].tolist() == [2.0, 4.0, -6.0, 0.0]


def test_a_vanishing_temperature_is_greedy_without_overflow():
    x = L(1.0, 3.0, -2.0, 0.0)
    out = STAGES["temperature"](x, ctx(x, temperature=1e-40))
    p = torch.softmax(out, dim=-1)
    assert torch.isfinite(p).all() and p[0].tolist() == pytest.approx([0.0, 1.0, 0.0, 0.0])


def test_top_p_that_underflows_keeps_the_top_token():
    x = probs(0.1, 0.6, 0.2, 0.1)
    assert torch.isfinite(STAGES["top_p"](x, ctx(x, top_p=5e-324)))[0].tolist() == [False, True, False, False]


def test_temperature_zero_keeps_only_the_argmax():
    x = L(1.0, 3.0, 2.0, 0.0)
    out = STAGES["temperature"](x, ctx(x, temperature=0.0))
    assert out[0].tolist() == [-INF, 3.0, -INF, -INF]


def test_temperature_zero_with_a_tie_keeps_exactly_one_token():
    x = L(3.0, 3.0, 1.0, 0.0)
    out = STAGES["temperature"](x, ctx(x, temperature=0.0))
    assert torch.isfinite(out).sum() == 1


# --- top-k -----------------------------------------------------------------------------------


def test_top_k_keeps_the_k_highest_logits():
    x = L(1.0, 4.0, 3.0, 2.0)
    assert STAGES["top_k"](x, ctx(x, top_k=2))[0].tolist() == [-INF, 4.0, 3.0, -INF]


def test_top_k_breaks_a_tie_at_the_kth_toward_the_lower_token_id_like_argmax():
    x = L(1.0, 4.0, 3.0, 3.0)
    assert STAGES["top_k"](x, ctx(x, top_k=2))[0].tolist() == [-INF, 4.0, 3.0, -INF]
    y = L(3.0, 1.0, 3.0, 0.0)
    assert STAGES["top_k"](y, ctx(y, top_k=1))[0].tolist() == [3.0, -INF, -INF, -INF]


def test_top_k_zero_or_at_least_vocab_is_off():
    x = L(1.0, 4.0, 3.0, 2.0)
    assert STAGES["top_k"](x, ctx(x, top_k=0)) is x
    assert STAGES["top_k"](x, ctx(x, top_k=4)) is x


# --- top-p -----------------------------------------------------------------------------------


def test_top_p_keeps_the_smallest_head_holding_top_p():
    x = probs(0.5, 0.3, 0.15, 0.05)
    kept = torch.isfinite(STAGES["top_p"](x, ctx(x, top_p=0.7)))[0].tolist()
    assert kept == [True, True, False, False]  # 0.5 < 0.7, so 0.3 is needed; 0.8 >= 0.7 stops


def test_top_p_exactly_reached_mass_stops_there():
    x = probs(0.5, 0.25, 0.125, 0.125)
    kept = torch.isfinite(STAGES["top_p"](x, ctx(x, top_p=0.75)))[0].tolist()
    assert kept == [True, True, False, False]


def test_top_p_small_keeps_only_the_top_token():
    x = probs(0.1, 0.6, 0.2, 0.1)
    kept = torch.isfinite(STAGES["top_p"](x, ctx(x, top_p=0.01)))[0].tolist()
    assert kept == [False, True, False, False]


def test_top_p_one_is_off():
    x = probs(0.1, 0.6, 0.2, 0.1)
    assert STAGES["top_p"](x, ctx(x, top_p=1.0)) is x


# --- min-p -----------------------------------------------------------------------------------


def test_min_p_keeps_tokens_at_least_min_p_times_the_top_probability():
    x = probs(0.5, 0.3, 0.15, 0.05)
    kept = torch.isfinite(STAGES["min_p"](x, ctx(x, min_p=0.3)))[0].tolist()
    assert kept == [True, True, True, False]  # threshold 0.15: 0.15 stays, 0.05 goes


def test_min_p_one_keeps_only_the_top_token():
    x = probs(0.2, 0.5, 0.3, 0.0 + 1e-9)
    assert torch.isfinite(STAGES["min_p"](x, ctx(x, min_p=1.0)))[0].tolist() == [False, True, False, False]


def test_min_p_zero_is_off():
    x = probs(0.2, 0.5, 0.3, 1e-9)
    assert STAGES["min_p"](x, ctx(x, min_p=0.0)) is x


# --- the pipeline ------------------------------------------------------------------------------


def test_pipeline_records_raw_then_every_stage_in_order():
    x = probs(0.5, 0.3, 0.15, 0.05)
    names = [name for name, _ in run_pipeline(x, ctx(x))]
    assert names == ["raw", *STAGE_ORDER]


def test_pipeline_order_changes_the_result():
    # min-p before temperature sees the sharp distribution; after a hot temperature it keeps more.
    x = probs(0.6, 0.25, 0.1, 0.05)
    hot_first = STAGE_ORDER
    hot_last = tuple(s for s in STAGE_ORDER if s != "temperature") + ("temperature",)
    kept_first = torch.isfinite(run_pipeline(x, ctx(x, temperature=2.0, min_p=0.3, sampler_order=hot_first))[-1][1]).sum()
    kept_last = torch.isfinite(run_pipeline(x, ctx(x, temperature=2.0, min_p=0.3, sampler_order=hot_last))[-1][1]).sum()
    assert (kept_first, kept_last) == (3, 2)


# --- the draw --------------------------------------------------------------------------------


def test_greedy_draw_is_the_argmax_and_has_no_landing_point():
    tokens, landing = draw(L(0.0, 2.0, 1.0, -1.0), torch.zeros(1, dtype=torch.float64), torch.tensor([True]))
    assert tokens.tolist() == [1] and math.isnan(landing.item())


def test_draw_picks_the_token_whose_band_on_the_probability_sorted_cdf_holds_u():
    x = probs(0.1, 0.2, 0.3, 0.4)  # sorted by probability: 3 [0, .4), 2 [.4, .7), 1 [.7, .9), 0 [.9, 1)
    for u, expected in [(0.05, 3), (0.45, 2), (0.8, 1), (0.99, 0)]:
        tokens, landing = sample(x, u)
        assert tokens.item() == expected and landing.item() == u


def test_draw_never_picks_a_removed_token():
    x = L(-INF, 0.0, -INF, -INF)
    for u in [0.0, 0.5, 0.999999]:
        assert sample(x, u)[0].item() == 1


def test_with_few_survivors_the_draw_walks_the_sorted_cdf_and_lands_at_u():
    x = torch.full((1, 64), -INF)
    x[0, [5, 9, 40]] = torch.tensor([0.2, 0.5, 0.3]).log()  # sorted: 9 [0, .5), 40 [.5, .8), 5 [.8, 1)
    for u, expected in [(0.1, 9), (0.6, 40), (0.9, 5), (0.999999, 5)]:
        tokens, landing = sample(x, u)
        assert tokens.item() == expected and landing.item() == pytest.approx(u)


def test_equally_likely_tokens_take_their_bands_in_id_order():
    x = L(0.0, 1.0, 0.0, 1.0)  # 1 and 3 tie, then 0 and 2: bands 1, 3, 0, 2
    a, b = math.e / (2 * math.e + 2), 1 / (2 * math.e + 2)
    for u, expected in [(a / 2, 1), (a * 1.5, 3), (2 * a + b / 2, 0), (1 - b / 2, 2)]:
        assert sample(x, u)[0].item() == expected


# --- properties over random logits ------------------------------------------------------------

logit_rows = st.lists(st.floats(-30, 30, allow_nan=False, width=32), min_size=2, max_size=12)
knob_values = st.fixed_dictionaries(
    {
        "temperature": st.sampled_from([0.0, 0.3, 1.0, 1.7]),
        "top_k": st.integers(0, 6),
        "top_p": st.floats(0.05, 1.0),
        "min_p": st.floats(0.0, 1.0),
        "presence_penalty": st.floats(-2, 2),
        "frequency_penalty": st.floats(-2, 2),
        "repetition_penalty": st.floats(0.1, 1.9),
    }
)


@settings(max_examples=150, deadline=None)
@given(row=logit_rows, knobs=knob_values)
def test_no_stage_writes_into_its_input_and_the_top_token_survives(row, knobs):
    x = L(*row)
    V = x.shape[1]
    c = ctx(x, seen=[0], counts=[1] + [0] * (V - 1), bias=[0.5] * V, **knobs)
    stages = run_pipeline(x.clone(), c)
    before = [t.clone() for _, t in stages]
    run_pipeline(stages[0][1], c)
    for (_, t), b in zip(stages, before):
        assert torch.equal(t, b)
    final = stages[-1][1]
    assert torch.isfinite(final).any()
    # The most likely token entering a truncation is still possible after it.
    for i in range(1, len(stages)):
        name, after = stages[i]
        if name in ("top_k", "top_p", "min_p"):
            top = stages[i - 1][1].argmax(dim=-1)
            assert torch.isfinite(after.gather(1, top[:, None])).all()
    p = torch.softmax(final, dim=-1)
    assert math.isclose(p.sum().item(), 1.0, rel_tol=1e-5)
