"""Fault injection on the fake model (exact in any dtype): random mixes of ordinary requests and requests
with every knob at its bounds, at tiny and huge legal values, and just outside them, share one scheduler.
Every ordinary request's tokens equal its tokens alone, every extreme request ends in a result or an error
that names its knob, every record is finite JSON, and the loop is alive afterwards."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.generator import Generation
from engine.knob import ParamError
from engine.knobs import SamplingParams
from engine.scheduler import Scheduler
from tests.extremes import EXTREMES, ILLEGAL, LEGAL, Extreme
from tests.fakes import chatty, fake_lm, outcome

LETTERS = [b"<eos>", b"<p>"] + [bytes([c]) for c in b"abcdefgh:\n"]  # ids 2..11: a..h, ':' and newline


LM = fake_lm(chatty(len(LETTERS)), LETTERS, context_length=96)

ORDINARY = [  # (prompt, knobs): everyday requests, every stage on in one of them
    ([1], dict(seed=1)),
    ([1, 2, 3], dict(top_k=3, temperature=1.3, seed=2)),
    ([1, 4], dict(top_p=0.5, seed=3, n=3)),
    ([1, 5, 5, 5, 6], dict(min_p=0.2, repetition_penalty=1.3, presence_penalty=0.5, seed=4)),
    ([1, 2, 3, 2, 3, 2], dict(dry_multiplier=0.8, mirostat=2, xtc_probability=0.5, seed=5)),
    ([1, 7], dict(temperature=0.0)),
]


def build(prompt, knobs, max_tokens=10):
    return Generation(LM, prompt, SamplingParams.build(**{"max_tokens": max_tokens, **knobs}))


ALONE = {}


def alone(k: int):
    if k not in ALONE:
        gen = build(*ORDINARY[k])
        for _ in gen:
            pass
        ALONE[k] = outcome(gen)
    return ALONE[k]


def drain(ticket):
    """The job's outcome, or the exception that ended it."""
    try:
        for _ in ticket:
            pass
    except Exception as e:  # noqa: BLE001 - what ended the job is the result under test
        return e
    return ticket.job


def finite_records(gen: Generation) -> None:
    for steps in gen.completions:
        for step in steps:
            json.dumps(step.to_dict(gen.stages), allow_nan=False)  # raises on NaN or inf


@pytest.fixture(scope="module")
def scheduler():
    s = Scheduler(LM)
    yield s
    s.close()


def test_every_illegal_extreme_is_refused_at_admission_naming_its_knob():
    for e in ILLEGAL:
        with pytest.raises(ParamError) as info:
            SamplingParams.build(**e.knobs())
        assert info.value.param == e.knob, e


def test_every_legal_extreme_alone_ends_in_a_finite_result():
    for e in LEGAL:
        gen = build([1, 2, 3, 2, 3], {**e.knobs(), "seed": 7}, max_tokens=6)
        for _ in gen:
            pass
        assert all(gen.finish_reasons), e
        finite_records(gen)


extreme_requests = st.lists(st.sampled_from(EXTREMES), min_size=1, max_size=3).map(
    lambda es: {k: v for e in es for k, v in e.knobs().items()})


@settings(max_examples=30, deadline=None, database=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(mix=st.lists(st.one_of(st.integers(0, len(ORDINARY) - 1), extreme_requests), min_size=2, max_size=8),
       seed=st.integers(0, 2**32))
def test_a_random_mix_of_ordinary_and_extreme_requests_leaves_the_ordinary_ones_untouched(scheduler, mix, seed):
    submitted = []
    for item in mix:
        if isinstance(item, int):
            submitted.append((item, scheduler.submit(build(*ORDINARY[item]))))
            continue
        try:
            gen = build([1, 3, 3, 10, 3], {"seed": seed, **item}, max_tokens=6)
        except ParamError as e:  # refused at admission: the message names one of the knobs tried
            assert e.param in item, (e.param, item)
            continue
        submitted.append((item, scheduler.submit(gen)))
    for item, ticket in submitted:
        result = drain(ticket)
        if isinstance(item, int):
            assert not isinstance(result, Exception), f"ordinary request {item} failed beside {mix}: {result!r}"
            assert outcome(result) == alone(item), f"ordinary request {item} changed beside {mix}"
        elif isinstance(result, Exception):
            assert isinstance(result, ParamError) and result.param in item, f"{item} ended in {result!r}"
        else:
            assert all(result.finish_reasons), item
            finite_records(result)
    # The loop is alive: a fresh ordinary request still gets its tokens alone.
    assert outcome(drain(scheduler.submit(build(*ORDINARY[0])))) == alone(0)


def test_the_issues_extremes_beside_a_top_k_row_give_both_rows_their_tokens_alone(scheduler):
    innocent = ORDINARY[1]  # top_k 3
    for knobs in (dict(repetition_penalty=1e-50), dict(top_k=10**20), dict(repetition_penalty=1e-7, temperature=1e-30),
                  dict(mirostat=2, mirostat_tau=1e308)):
        extreme = build([1, 3, 3, 10, 3], {"seed": 11, **knobs})
        for _ in extreme:
            pass
        expected = outcome(extreme)
        tickets = [scheduler.submit(build(*innocent)), scheduler.submit(build([1, 3, 3, 10, 3], {"seed": 11, **knobs}))]
        assert outcome(drain(tickets[0])) == alone(1), knobs
        assert outcome(drain(tickets[1])) == expected, knobs


def test_extremes_cover_every_numeric_knob_at_both_ends():
    tried = {e.knob for e in EXTREMES}
    assert {"repetition_penalty", "top_k", "temperature", "mirostat_tau", "dry_base", "top_n_sigma"} <= tried
    assert any(isinstance(e, Extreme) and e.knob == "top_k" and e.value >= 2**63 for e in LEGAL)
