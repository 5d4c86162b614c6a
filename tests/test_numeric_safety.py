"""Every knob is numerically safe over its whole documented range (issue 16): no stage outputs NaN or +inf,
a stage that removes nothing never turns a finite logit into -inf, a result beyond float32's range
saturates at its limits, a row's result is the same beside any rows as alone, and every field of a step's
record is finite JSON. Vocabularies are hand-made and tiny; the "saturated" one holds logits an earlier
stage pushed to float32's limits, as a repetition penalty of 1e-50 does."""

from __future__ import annotations

import json
import math
import sys

import pytest
import torch
from fastapi.testclient import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.context import FLOAT32_MAX
from engine.knobs import SamplingParams
from engine.rng import uniform
from engine.sampler import RowKnobs, SamplerContext, draw, learn, run_pipeline
from engine.stages import ALL, PRESETS
from engine.trace import Step, record

INF = float("inf")
MAX = FLOAT32_MAX
F64_MAX = sys.float_info.max

VOCABS = {
    "ordinary": [2.0, -1.0, 0.5, -3.0, 1.0, 0.0],
    "saturated": [MAX, 0.75 * MAX, 2.0, -1.0, -MAX, -0.5 * MAX],
    "removed": [1.0, -INF, MAX, -MAX, -INF, 0.0],  # a constraint or an earlier stage removed tokens 1 and 4
}
SEEN = [0, 1, 3, 4]  # in the prompt or the output: the penalties' targets
TIMES = 1e6  # how often each seen token was generated: large counts for the frequency penalty
HISTORY = [0, 1, 2, 0, 1]  # DRY: token 2 would continue a repeat

# Each knob at its bounds and at tiny and huge legal values, with the knobs that turn its stage on.
EXTREMES = [
    {"logit_bias": {0: 100.0, 3: -100.0}},
    {"repetition_penalty": 5e-324},
    {"repetition_penalty": 1e-50},
    {"repetition_penalty": 1e-38},
    {"repetition_penalty": 1.9999999999},
    {"repetition_penalty": 1e-7, "temperature": 1e-30},
    {"repetition_penalty": 1e-300, "temperature": 1e-30},
    {"presence_penalty": -2.0, "frequency_penalty": -2.0},
    {"presence_penalty": 2.0, "frequency_penalty": 2.0},
    {"temperature": 0.0},
    {"temperature": 5e-324},
    {"temperature": 1e-30},
    {"temperature": 2.0},
    {"dynatemp_range": 5e-324},
    {"dynatemp_range": F64_MAX},
    {"dynatemp_range": 1e308, "dynatemp_exponent": 1e308},
    {"dynatemp_range": 1.0, "dynatemp_exponent": 0.0},
    {"temperature": 0.0, "dynatemp_range": 1e308},
    {"temperature": 5e-324, "dynatemp_range": 5e-324},
    {"top_k": 1},
    {"top_k": 10**20},
    {"top_k": 10**400},
    {"top_p": 5e-324},
    {"min_p": 5e-324},
    {"min_p": 1.0},
    {"typical_p": 5e-324},
    {"top_n_sigma": 5e-324},
    {"top_n_sigma": F64_MAX},
    {"xtc_probability": 1.0, "xtc_threshold": 0.0},
    {"xtc_probability": 5e-324, "xtc_threshold": 0.5},
    {"dry_multiplier": 1e308, "dry_base": 1e308, "dry_allowed_length": 1},
    {"dry_multiplier": 5e-324, "dry_allowed_length": 10**20},
    {"mirostat": 2, "mirostat_tau": 5e-324, "mirostat_eta": 1.0},
    {"mirostat": 2, "mirostat_tau": 1e308},
    {"mirostat": 2, "mirostat_tau": F64_MAX, "mirostat_eta": 1.0},
    {"repetition_penalty": 1e-50, "temperature": 5e-324, "dynatemp_range": 1e308, "top_k": 10**20, "top_n_sigma": 1e308,
     "xtc_probability": 1.0, "xtc_threshold": 0.0, "mirostat": 2, "mirostat_tau": 1e308},
]
ORDERS = {"Hugging Face": PRESETS["Hugging Face"], "llama.cpp": PRESETS["llama.cpp"]}  # temperature before / after the cuts


def rows(*vocabs: str) -> torch.Tensor:
    return torch.tensor([VOCABS[v] for v in vocabs], dtype=torch.float32)


def sample(x: torch.Tensor, params: list[SamplingParams], coords=None):
    """The pipeline, the draw, learning and the record for rows x (B, V), one params each, as the batch runs
    them. Returns (stages, tokens, the steps' dicts)."""
    B, V = x.shape
    seen = torch.zeros(B, V, dtype=torch.bool)
    seen[:, SEEN] = True
    counts = seen.float() * TIMES
    bias = torch.zeros(B, V)
    for b, p in enumerate(params):
        for token, value in p.logit_bias:
            bias[b, token] = value
    coords = coords or [(7, b, 3) for b in range(B)]
    ctx = SamplerContext(RowKnobs.of(params, V), params[0].sampler_order, seen, counts, bias,
                         history=[HISTORY] * B, breakers=[frozenset()] * B, memory=[{} for _ in range(B)], coords=coords)
    stages = run_pipeline(x, ctx)
    tokens, landing = draw(stages[-1][1], torch.tensor([uniform(*c) for c in coords], dtype=torch.float64), ctx.knobs.greedy)
    learn(stages, ctx, tokens)
    names = tuple(name for name, _ in stages)
    steps = []
    for b, rec in enumerate(record(stages, tokens, landing, 4)):
        notes = {name: v for name, values in ctx.notes.items() if (v := float(values[b])) == v}
        steps.append(Step(index=b, position=3, text="", delta="", notes=notes, **rec).to_dict(names))
    return stages, tokens, steps


def assert_safe(stages, tokens, steps) -> None:
    for (_, before), (name, after) in zip(stages, stages[1:]):
        assert not torch.isnan(after).any() and not (after == INF).any(), f"{name} gave NaN or +inf"
        assert not ((after > -INF) & (before == -INF)).any(), f"{name} brought back a removed token"
        assert (after > -INF).any(dim=-1).all(), f"{name} left nothing"
        if not ALL[name].truncates:
            assert torch.equal(after > -INF, before > -INF), f"{name} removes nothing, but a finite logit became -inf"
    final = stages[-1][1]
    assert (final.gather(1, tokens[:, None]) > -INF).all()
    for step in steps:
        json.dumps(step, allow_nan=False)  # starlette's JSONResponse refuses NaN and inf
        assert math.isfinite(step["logprob"])  # drawn from the final distribution, so it has probability there
        # The raw logprob is null only where the token has no probability in float32 at all (a raw logit
        # -MAX beside +MAX): null is the record's one way of saying "probability 0".
        assert step["raw_logprob"] is None or math.isfinite(step["raw_logprob"])


# --- every knob's extremes ---------------------------------------------------------------------------


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("vocab", VOCABS)
@pytest.mark.parametrize("knobs", EXTREMES, ids=lambda k: ",".join(f"{n}={v:g}" if isinstance(v, float) else n for n, v in k.items()))
def test_a_knob_at_its_extremes_gives_finite_stages_a_finite_draw_and_a_finite_record(knobs, vocab, order):
    params = SamplingParams.build(**knobs, sampler_order=ORDERS[order])
    assert_safe(*sample(rows(vocab), [params]))


# --- by hand -------------------------------------------------------------------------------------------


def penalised(x: torch.Tensor, theta: float) -> torch.Tensor:
    B, V = x.shape
    ctx = SamplerContext.of(SamplingParams.build(repetition_penalty=theta), torch.ones(B, V, dtype=torch.bool), torch.zeros(B, V))
    return ALL["repetition_penalty"](x, ctx)


def test_a_tiny_repetition_penalty_saturates_a_seen_positive_logit_at_float32s_limit():
    out = penalised(torch.tensor([[2.0, -2.0, 0.0]]), 1e-50)
    assert out[0, 0].item() == MAX  # 2 / 1e-50 is beyond float32: saturated, not inf
    assert out[0, 1].item() == 0.0 and out[0, 2].item() == 0.0  # -2e-50 rounds to -0 in float32


def test_a_repetition_penalty_below_float32s_normal_range_is_applied_in_float64():
    # As a float32, 1e-44 is a subnormal 2% away from it; a saturated -3e38 comes back to -3e-6.
    out = penalised(torch.tensor([[1e-30, -3e38, 1.0]]), 1e-44)
    assert out[0].tolist() == pytest.approx([1e14, -3e-6, MAX], rel=1e-6)


def test_a_repetition_penalty_near_two_never_removes_a_very_negative_logit():
    out = penalised(torch.tensor([[-MAX, -0.75 * MAX, 1.0]]), 1.99)
    assert out[0, :2].tolist() == [-MAX, -MAX]  # saturated, still possible
    assert out[0, 2].item() == pytest.approx(1.0 / 1.99)


def temperature(x: torch.Tensor, **knobs) -> torch.Tensor:
    B, V = x.shape
    return ALL["temperature"](x, SamplerContext.of(SamplingParams.build(**knobs), torch.zeros(B, V, dtype=torch.bool), torch.zeros(B, V)))


def test_a_temperature_below_one_keeps_saturated_logits_in_order_rather_than_tied_at_the_limit():
    out = temperature(torch.tensor([[MAX, 0.75 * MAX, 0.0]]), temperature=0.5)
    assert torch.isfinite(out).all()
    assert torch.softmax(out.double(), dim=-1)[0].tolist() == [1.0, 0.0, 0.0]  # not 1/2, 1/2 at +MAX each


def test_a_tiny_temperature_after_a_tiny_repetition_penalty_keeps_the_seen_token_finite_and_drawn():
    # The case: 1e-7 pushes 100 to 1e9, and 1e9 / 1e-30 is beyond float32.
    x = torch.tensor([[100.0, 3.0, -1.0]])
    params = SamplingParams.build(repetition_penalty=1e-7, temperature=1e-30)
    ctx = SamplerContext.of(params, torch.tensor([[True, False, False]]), torch.zeros(1, 3))
    final = run_pipeline(x, ctx)[-1][1]
    assert final[0, 0].item() == 0.0 and torch.isfinite(final).all()  # shifted by its maximum
    assert draw(final, torch.tensor([0.99], dtype=torch.float64), torch.tensor([False]))[0].item() == 0


def test_a_dynamic_temperature_stays_in_its_range_where_the_entropy_rounds_past_its_maximum():
    # Five equal logits: H / log 5 rounds above 1 in float64, and (1 + eps) ** 1e308 is inf.
    x = torch.zeros(1, 5)
    ctx = SamplerContext.of(SamplingParams.build(dynatemp_range=1.0, dynatemp_exponent=1e308), torch.zeros(1, 5, dtype=torch.bool), torch.zeros(1, 5))
    out = ALL["temperature"](x, ctx)
    assert ctx.notes["temperature_used"].tolist() == [2.0] and out.tolist() == [[0.0] * 5]


def test_a_huge_dynamic_range_divides_in_float64_and_keeps_removed_tokens_removed():
    x = torch.tensor([[3.0, -INF, 1.0, 0.0]])
    ctx = SamplerContext.of(SamplingParams.build(dynatemp_range=F64_MAX), torch.zeros(1, 4, dtype=torch.bool), torch.zeros(1, 4))
    out = ALL["temperature"](x, ctx)
    assert math.isfinite(ctx.notes["temperature_used"].item())
    assert out[0, 1].item() == -INF and torch.isfinite(out[0, [0, 2, 3]]).all()  # (x - max) / 1e308: about 0, flat


def test_a_top_k_beyond_int64_beside_a_row_with_top_k_keeps_everything_as_it_does_alone():
    x = rows("ordinary", "ordinary")
    huge, forty = SamplingParams.build(top_k=10**20), SamplingParams.build(top_k=2)
    stages, tokens, steps = sample(x, [huge, forty], coords=[(1, 0, 0), (1, 1, 0)])
    alone = sample(x[:1], [huge], coords=[(1, 0, 0)])
    assert torch.equal(stages[-1][1][0], x[0])  # kept everything
    assert tokens[0] == alone[1][0] and steps[0] == alone[2][0]
    assert int(torch.isfinite(stages[-1][1][1]).sum()) == 2


def test_a_knob_column_saturates_at_its_dtypes_range():
    params = [SamplingParams.build(top_k=10**400, mirostat_tau=1e308), SamplingParams.build(top_k=40)]
    knobs = RowKnobs.of(params, 6)
    assert knobs.col("top_k", torch.int64).tolist() == [[2**63 - 1], [40]]
    assert knobs.col("mirostat_tau").tolist() == [[MAX], [5.0]]
    assert knobs.col("mirostat_tau", torch.float64).tolist() == [[1e308], [5.0]]


def test_a_huge_mirostat_tau_keeps_mu_finite_through_learning():
    params = SamplingParams.build(mirostat=2, mirostat_tau=1e308)
    x = rows("ordinary")
    memory = [{}]
    for position in range(3):
        ctx = SamplerContext.of(params, torch.zeros(1, 6, dtype=torch.bool), torch.zeros(1, 6), memory=memory,
                                coords=[(0, 0, position)])
        stages = run_pipeline(x, ctx)
        tokens, _ = draw(stages[-1][1], torch.tensor([0.5], dtype=torch.float64), ctx.knobs.greedy)
        learn(stages, ctx, tokens)
        assert ctx.notes["mirostat_mu"].item() == F64_MAX  # 2 * 1e308 saturates: every token is kept
        assert math.isfinite(memory[0]["mirostat_mu"]) and math.isfinite(ctx.notes["mirostat_surprise"].item())
        assert torch.equal(stages[-1][1], x)


def test_tied_saturated_logits_share_the_mass_in_the_record():
    x = torch.tensor([[MAX, MAX, MAX, 0.0]])
    ctx = SamplerContext.of(SamplingParams.build(), torch.zeros(1, 4, dtype=torch.bool), torch.zeros(1, 4))
    stages = run_pipeline(x, ctx)
    (rec,) = record(stages, torch.tensor([1]), torch.tensor([0.5], dtype=torch.float64), 4)
    assert rec["stage_entropy"][0] == pytest.approx(math.log(3))
    assert rec["stage_probs"][0].tolist() == pytest.approx([1 / 3, 1 / 3, 1 / 3, 0.0])
    assert rec["logprob"] == pytest.approx(-math.log(3))


# --- a batch of extreme rows: each row as alone, every record finite ------------------------------------

VALUES = {
    "repetition_penalty": [5e-324, 1e-50, 1e-7, 1.0, 1.9999999999],
    "presence_penalty": [-2.0, 0.0, 2.0],
    "frequency_penalty": [-2.0, 0.0, 2.0],
    "temperature": [0.0, 5e-324, 1e-30, 0.7, 1.0, 2.0],
    "dynatemp_range": [0.0, 5e-324, 0.5, 1e308, F64_MAX],
    "dynatemp_exponent": [0.0, 1.0, 1e308],
    "top_k": [0, 1, 2, 5, 6, 10**20, 10**400],
    "top_p": [5e-324, 0.5, 1.0],
    "min_p": [0.0, 5e-324, 0.2, 1.0],
    "typical_p": [5e-324, 0.5, 1.0],
    "top_n_sigma": [0.0, 5e-324, 1.0, 1e308],
    "xtc_probability": [0.0, 5e-324, 1.0],
    "xtc_threshold": [0.0, 0.1, 0.5, 1.0],
    "dry_multiplier": [0.0, 5e-324, 1.0, 1e308],
    "dry_base": [1.0, 1.75, 1e308],
    "mirostat": [0, 2],
    "mirostat_tau": [5e-324, 5.0, 1e308, F64_MAX],
    "mirostat_eta": [0.0, 0.1, 1.0],
}
row_knobs = st.fixed_dictionaries({name: st.sampled_from(values) for name, values in VALUES.items()})


@settings(max_examples=120, deadline=None)
@given(order=st.sampled_from(list(ORDERS)), batch=st.lists(st.tuples(row_knobs, st.sampled_from(list(VOCABS))), min_size=2, max_size=4))
def test_extreme_rows_in_one_batch_give_each_row_its_result_alone_and_finite_records(order, batch):
    params = [SamplingParams.build(**knobs, sampler_order=ORDERS[order]) for knobs, _ in batch]
    x = rows(*(vocab for _, vocab in batch))
    coords = [(11, b, 2) for b in range(len(batch))]
    stages, tokens, steps = sample(x, params, coords)
    assert_safe(stages, tokens, steps)
    for b in range(len(batch)):
        alone_stages, alone_tokens, alone_steps = sample(x[b : b + 1], [params[b]], coords[b : b + 1])
        assert tokens[b] == alone_tokens[0]
        assert torch.equal(stages[-1][1][b], alone_stages[-1][1][0])
        assert steps[b]["notes"] == alone_steps[0]["notes"]


# --- through the API -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def api():
    """The HTTP API on a fake model that prefers "b", then "c", then the end token."""
    from playground.api import ApiSettings, create_api
    from playground.models import ModelHost
    from tests.fakes import EOS, fake_lm

    def says_bc(history):  # after the assistant's turn (<p>, id 1)
        said = len(history) - history.index(1) - 1
        out = torch.tensor([-2.0, -3.0, 1.0, 3.0, 2.0, -1.0, 0.5, 0.0])
        out[[3, 4][said] if said < 2 else EOS] = 4.0
        return out

    lm = fake_lm(says_bc, [b"<eos>", b"<p>", b"a", b"b", b"c", b"d", b"e", b"f"], context_length=512)
    with TestClient(create_api(ModelHost(lm), ApiSettings())) as client:
        yield client


@pytest.mark.parametrize("knobs", [
    {"repetition_penalty": 1e-50},
    {"mirostat": 2, "mirostat_tau": 1e308},
    {"repetition_penalty": 1e-30, "temperature": 1e-30},
], ids=["repetition_penalty 1e-50", "mirostat_tau 1e308", "tiny temperature after a tiny penalty"])
def test_the_api_answers_extreme_knobs_with_a_finite_trace(api, knobs):
    r = api.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "abcabc"}], "max_tokens": 4,
                                               "seed": 3, "logprobs": True, "top_logprobs": 3, "trace": True, **knobs})
    assert r.status_code == 200, r.text
    body = json.loads(r.text, parse_constant=lambda c: pytest.fail(f"{c} in the response"))
    assert body["choices"][0]["trace"]["steps"]
