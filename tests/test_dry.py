"""DRY (engine/dry.py): llama.cpp's reference cases, hand-computed repeats, its look-back window, and the
linear-time stage equal to the quadratic definition (tests/dry_reference.py) on random histories, alone,
batched, token by token as the decode loop feeds it, and in the what-if's penalty ledger."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.dry import DryHistory
from engine.generator import Generation
from engine.knobs import ParamError, SamplingParams
from engine.sampler import SamplerContext
from engine.stages import STAGES
from engine.whatif import Snapshot, resample
from tests.dry_reference import reference_dry
from tests.fakes import fake_lm, fixed

V = 6  # the random histories also hold id 6, outside the logits, as a prompt may


def probs(*p):
    return torch.tensor([p], dtype=torch.float32).log()


def context(rows, vocab=V):
    """rows: [(history (ids or DryHistory), breakers, knobs)]."""
    params = [SamplingParams.build(**knobs) for _, _, knobs in rows]
    B = len(rows)
    return SamplerContext.of(params, torch.zeros(B, vocab, dtype=torch.bool), torch.zeros(B, vocab),
                             history=[h for h, _, _ in rows], breakers=[frozenset(b) for _, b, _ in rows])


def dry(x, rows):
    return STAGES["dry"](x, context(rows, x.shape[1]))


def reference(x, rows):
    plain = [(h.ids.tolist() if isinstance(h, DryHistory) else h, b, k) for h, b, k in rows]
    return reference_dry(x, context(plain, x.shape[1]))


# --- the definition, on hand-computed cases ----------------------------------------------------------


@pytest.mark.parametrize("p, history, expected, multiplier, allowed, breakers", [
    # llama.cpp test_dry cases: (probs, last tokens, expected probs, multiplier, base 1.1, allowed length, breakers)
    ([0.25] * 4, [0, 1], [0.25] * 4, 1.0, 2, []),
    ([0.25] * 4, [0, 1, 2, 0, 1], [0.296923, 0.296923, 0.109232, 0.296923], 1.0, 2, []),
    ([0.2] * 5, [0, 1, 3, 4, 0, 1], [0.2] * 5, 1.0, 2, [3]),
    ([0.2] * 5, [0, 1, 2, 0, 1], [0.241818, 0.241818, 0.032727, 0.241818, 0.241818], 2.0, 2, []),
    ([0.2] * 5, [0, 1, 2, 3, 4, 0, 1], [0.2] * 5, 1.0, 4, []),
])
def test_dry_matches_llama_cpp(p, history, expected, multiplier, allowed, breakers):
    knobs = dict(dry_multiplier=multiplier, dry_base=1.1, dry_allowed_length=allowed)
    got = torch.softmax(dry(probs(*p), [(history, breakers, knobs)]).double(), dim=-1)[0].tolist()
    assert got == pytest.approx(expected, abs=1e-6)


def test_dry_pushes_down_each_next_token_by_the_longest_repeat_it_would_continue():
    # The example in llama.cpp's DRY source: "a b c c b c y a b c", repeat counts 0 0 3 1 0 2 0 0 0 0, so c
    # (after the first "a b c") continues a 3-token repeat, y one of 2 ("b c"), b one of 1 ("c").
    a, b, c, y = 1, 2, 3, 4
    knobs = dict(dry_multiplier=1.0, dry_base=2.0, dry_allowed_length=1)  # penalty 2 ** (length - 1)
    got = dry(torch.zeros(1, 5), [([a, b, c, c, b, c, y, a, b, c], [], knobs)])
    assert got[0].tolist() == [0.0, 0.0, -1.0, -4.0, -2.0]


def test_dry_growth_is_clamped_as_llama_cpp_clamps_it():
    got = dry(probs(0.5, 0.5), [([0, 1] * 300 + [0], [], dict(dry_multiplier=5.0, dry_base=3.0))])
    assert torch.isfinite(got).all() and got[0, 1] < -1e37


def test_a_logit_already_at_float32s_limit_saturates_there_and_is_not_removed():
    x = torch.tensor([[0.0, -torch.finfo(torch.float32).max, 0.0]])
    got = dry(x, [([0, 1, 2, 0], [], dict(dry_multiplier=1e38, dry_allowed_length=1))])  # 1 would repeat "0"
    assert got[0, 1] == -torch.finfo(torch.float32).max and got[0, 0] == 0.0 and got[0, 2] == 0.0


def test_a_breaker_ends_a_repeat_and_is_never_pushed_down():
    knobs = dict(dry_multiplier=1.0, dry_base=2.0, dry_allowed_length=1)
    # "0 1 5 0 1": the repeat "0 1" would go on with 5, a breaker; "1" alone goes on with 5 too.
    assert dry(torch.zeros(1, V), [([0, 1, 5, 0, 1], [5], knobs)])[0].tolist() == [0.0] * V
    # "0 5 1 2 0 5 1": the repeat is "1" only (5 breaks it), so 2 loses 2 ** 0.
    assert dry(torch.zeros(1, V), [([0, 5, 1, 2, 0, 5, 1], [5], knobs)])[0].tolist() == [0, 0, -1.0, 0, 0, 0]


# --- dry_penalty_last_n ------------------------------------------------------------------------------


def test_dry_looks_back_over_the_last_n_tokens_only():
    knobs = dict(dry_multiplier=1.0, dry_base=2.0, dry_allowed_length=2)
    history = [0, 1, 2, 0, 1]  # "0 1" repeats; 2 would continue it
    assert dry(torch.zeros(1, V), [(history, [], {**knobs, "dry_penalty_last_n": 5})])[0, 2] == -1.0
    # The last 4 tokens "1 2 0 1" hold "1" twice: a repeat of 1, under the allowed 2.
    assert dry(torch.zeros(1, V), [(history, [], {**knobs, "dry_penalty_last_n": 4})])[0].tolist() == [0.0] * V


def test_dry_penalty_last_n_of_minus_one_is_the_whole_history_and_the_default():
    assert SamplingParams.build().dry_penalty_last_n == -1
    history = [0, 1, 2] + [3, 4] * 20 + [0, 1]
    knobs = dict(dry_multiplier=1.0, dry_base=2.0, dry_allowed_length=2)
    whole = dry(torch.zeros(1, V), [(history, [], knobs)])
    assert whole[0, 2] == -1.0
    assert torch.equal(whole, dry(torch.zeros(1, V), [(history, [], {**knobs, "dry_penalty_last_n": len(history)})]))


def test_dry_penalty_last_n_of_zero_turns_dry_off():
    params = SamplingParams.build(dry_multiplier=1.0, dry_penalty_last_n=0)
    assert not STAGES["dry"].on(params, V)
    x = torch.zeros(1, V)
    assert dry(x, [([0, 1, 2, 0, 1], [], dict(dry_multiplier=1.0, dry_penalty_last_n=0))]) is x


@pytest.mark.parametrize("value", [-2, 1.5, "3", True, -10**30])
def test_dry_penalty_last_n_must_be_an_integer_from_minus_one(value):
    with pytest.raises(ParamError) as e:
        SamplingParams.build(dry_penalty_last_n=value)
    assert e.value.param == "dry_penalty_last_n" and "[-1, inf)" in e.value.message


def test_huge_allowed_lengths_and_windows_overflow_nothing():
    history = [0, 1, 2, 0, 1]
    rows = [(history, [], dict(dry_multiplier=1.0, dry_base=2.0, dry_allowed_length=10**30)),
            (history, [], dict(dry_multiplier=1.0, dry_base=2.0, dry_penalty_last_n=10**30)),
            (history, [], dict(dry_multiplier=1e308, dry_base=1e308, dry_allowed_length=1, dry_penalty_last_n=2**63))]
    got = dry(torch.zeros(3, V), rows)
    assert got[0].tolist() == [0.0] * V
    assert got[1].tolist() == [0, 0, -1.0, 0, 0, 0]
    assert torch.isfinite(got).all() and got[2, 2] == -torch.finfo(torch.float32).max
    assert torch.equal(got, reference(torch.zeros(3, V), rows))


# --- linear time, same result as the quadratic definition --------------------------------------------

ids = st.integers(0, V)  # a small alphabet: lots of repeats
row_knobs = st.fixed_dictionaries({
    "dry_multiplier": st.sampled_from([0.0, 0.5, 1.0, 3.0, 1e30]),
    "dry_base": st.sampled_from([1.0, 1.000001, 1.1, 1.75, 3.0, 1e10]),
    "dry_allowed_length": st.one_of(st.integers(1, 6), st.just(10**30)),
    "dry_penalty_last_n": st.one_of(st.just(-1), st.just(0), st.integers(1, 90), st.just(10**30)),
})
a_row = st.tuples(st.lists(ids, max_size=80), st.sets(ids, max_size=3), row_knobs)


def random_logits(B, seed):
    x = torch.randn(B, V, generator=torch.Generator().manual_seed(seed)) * 3
    x[:, 0] = float("-inf") if seed % 3 == 0 else x[:, 0]  # a removed token stays removed
    return x


@settings(max_examples=400, deadline=None)
@given(row=a_row, seed=st.integers(0, 2**16))
def test_a_row_gets_exactly_what_the_quadratic_definition_gives(row, seed):
    x = random_logits(1, seed)
    assert torch.equal(dry(x, [row]), reference(x, [row]))


@settings(max_examples=150, deadline=None)
@given(rows=st.lists(a_row, min_size=2, max_size=6), seed=st.integers(0, 2**16))
def test_batched_rows_each_get_what_they_get_alone_and_what_the_definition_gives(rows, seed):
    x = random_logits(len(rows), seed)
    got = dry(x, rows)
    assert torch.equal(got, reference(x, rows))
    for b, row in enumerate(rows):
        assert torch.equal(got[b:b + 1], dry(x[b:b + 1], [row]))


@settings(max_examples=150, deadline=None)
@given(start=st.lists(ids, max_size=40), tails=st.lists(st.lists(ids, max_size=30), min_size=1, max_size=3),
       breakers=st.sets(ids, max_size=3), knobs=row_knobs, seed=st.integers(0, 2**16))
def test_appending_token_by_token_keeps_exactly_the_definition(start, tails, breakers, knobs, seed):
    # Like the n rows of one job: copies of one starting history, each fed its own tokens.
    first = DryHistory(start, frozenset(breakers))
    rows = [first.copy() for _ in tails]
    x = random_logits(1, seed)
    for step in range(max(len(t) for t in tails)):
        for h, tail in zip(rows, tails):
            if step < len(tail):
                h.append(tail[step])
        for h in rows:
            assert torch.equal(dry(x, [(h, breakers, knobs)]), reference(x, [(h, breakers, knobs)]))
    assert first.ids.tolist() == start  # the copies never wrote into the history they started from


def letters_lm(next_logits):
    return fake_lm(next_logits, [b"<eos>", b"<p>", b"a", b"b", b"c", b"\n", b"d", b"e"], context_length=160)


def test_the_decode_loop_feeds_each_row_its_own_history(monkeypatch):
    # The model loves to go on with what followed the last token before, but not surely: n rows wander off
    # their own ways, and DRY (with a newline breaker) pushes each row by its own repeats.
    def loop(history):
        out = torch.full((8,), -1.0)
        out[0] = -9.0
        out[{1: 2, 2: 3, 3: 4, 4: 5, 5: 2}.get(history[-1], 6)] = 3.0
        return out

    params = SamplingParams.build(seed=5, n=4, max_tokens=60, dry_multiplier=0.6, dry_base=1.5, dry_allowed_length=2)
    fast = Generation(letters_lm(loop), [1, 2, 3, 4, 2, 3], params)
    for _ in fast:
        pass
    monkeypatch.setitem(STAGES, "dry", replace(STAGES["dry"], apply=reference_dry))
    slow = Generation(letters_lm(loop), [1, 2, 3, 4, 2, 3], params)
    for _ in slow:
        pass
    assert len({tuple(s.token_id for s in c) for c in fast.completions}) == 4  # each row its own text
    at = fast.stages.index("dry")
    for mine, theirs in zip(fast.completions, slow.completions):
        assert [s.token_id for s in mine] == [s.token_id for s in theirs]
        assert all(torch.equal(torch.as_tensor(a.stage_probs[at]), torch.as_tensor(b.stage_probs[at])) for a, b in zip(mine, theirs))


def test_dry_penalises_the_token_that_would_continue_a_repeat_in_the_generation():
    letters = [b"<eos>", b"<p>"] + [bytes([c]) for c in b"abcdef"]
    # The model loves to go on with whatever followed the last token before: an endless loop of 2 3 4.
    def loop(history):
        out = torch.full((8,), -5.0)
        out[{1: 2, 2: 3, 3: 4, 4: 2}.get(history[-1], 5)] = 5.0
        return out

    lm = fake_lm(loop, letters)
    plain = Generation(lm, [1], SamplingParams.build(temperature=0, max_tokens=9))
    dry = Generation(lm, [1], SamplingParams.build(temperature=0, max_tokens=9, dry_multiplier=20.0, dry_allowed_length=2))
    for gen in (plain, dry):
        for _ in gen:
            pass
    assert [s.token_id for s in plain.completions[0]] == [2, 3, 4] * 3
    broken = [s.token_id for s in dry.completions[0]]
    # After "2 3 4 2 3", a 4 would continue the 2-token repeat "2 3" (allowed length 2): DRY pushes it down.
    assert broken[:5] == [2, 3, 4, 2, 3] and broken[5] != 4
    assert dry.completions[0][5].stage_probs[dry.stages.index("dry")].max() < 0.99


def test_the_what_if_ledger_says_what_dry_took_from_each_token():
    lm = letters_lm(fixed([0.01, 0.01, 0.3, 0.2, 0.2, 0.1, 0.1, 0.08]))
    # "a b c \n a b c \n a b" (newline is no breaker here): c would go on with a 6-token repeat.
    prompt, earlier = [1, 2, 3, 4, 5, 2, 3], [4, 5, 2, 3]
    knobs = dict(dry_multiplier=0.8, dry_base=1.75, dry_allowed_length=2, dry_sequence_breakers=["d"])
    raw = torch.tensor([0.01, 0.01, 0.3, 0.2, 0.2, 0.1, 0.1, 0.08]).log()  # (V,)
    result = resample(lm, Snapshot(raw, None), SamplingParams.build(**knobs), prompt, earlier, (0, 0, len(earlier)))
    after = reference_dry(raw[None], context([(prompt + earlier, {6}, knobs)], 8))[0]
    took = {row["id"]: row["loss"]["dry"] for row in result.ledger if "dry" in row["loss"]}
    assert took == {4: float(raw[4].double() - after[4].double())} and took[4] == pytest.approx(0.8 * 1.75**4)
