"""Faults stay with their job, on the fake model (exact in any dtype): a job whose sampling raises, whose
logits turn NaN or infinite, or whose listener fails ends alone, and every other row draws exactly what it
draws alone; a failed forward pass ends only the jobs in it; the loop serves on. Then the same through the
HTTP API: 400 naming the parameter for a bad value found mid-run, 500 for a bug, 200 for the others, and a
stream that fails ends with an error event and [DONE]."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from fastapi.testclient import TestClient

from engine.batch import NonFiniteLogits
from engine.generator import Generation
from engine.knob import ParamError
from engine.knobs import SamplingParams
from engine.sampler import STAGES
from engine.scheduler import END, Limits, Scheduler
from playground.api import ApiSettings, create_api
from playground.models import ModelHost
from tests import fakes
from tests.fakes import EOS, fake_lm, outcome

LETTERS = [b"<eos>", b"<p>"] + [bytes([c]) for c in b"abcdefgh"]  # ids 2..9 = a..h
MARK = len(LETTERS)  # a token the model never predicts: a prompt holding it marks the culprit
UNLUCKY = 7  # the top_k that the poisoned stage below fails on


def chatty(history):
    """fakes.chatty over the letters; the marker token is never predicted."""
    return torch.cat([letters(history), torch.tensor([float("-inf")])])


letters = fakes.chatty(len(LETTERS))


def lm_(next_logits=chatty):
    return fake_lm(next_logits, LETTERS + [b"!"], context_length=256)


pytestmark = pytest.mark.usefixtures("closes_schedulers")


def job(lm, prompt, knobs):
    return Generation(lm, prompt, SamplingParams.build(**{"max_tokens": 10, **knobs}))


def alone(lm, prompt, knobs):
    gen = job(lm, prompt, knobs)
    for _ in gen:
        pass
    return outcome(gen)


def result(ticket):
    """(the job's outcome, None) when it ended well, or (None, its error)."""
    try:
        for _ in ticket:
            pass
    except Exception as e:
        return None, e
    return outcome(ticket.job), None


def wait_for(condition, timeout: float = 60.0) -> None:
    done = threading.Event()
    for _ in range(int(timeout / 0.01)):
        if condition():
            return
        done.wait(0.01)
    raise AssertionError("timed out")


@contextlib.contextmanager
def paused(scheduler):
    """The loop held between two steps: jobs submitted meanwhile are admitted, and step, together."""
    gate, holding = threading.Event(), threading.Event()
    thread = threading.Thread(target=scheduler.call, args=(lambda: (holding.set(), gate.wait()),))
    thread.start()
    holding.wait()
    try:
        yield
    finally:
        gate.set()
        thread.join()


INNOCENT = [  # (prompt, knobs): beside the culprit, in its pipeline group
    ([1, 2], dict(top_k=3, seed=1)),
    ([1, 4, 4], dict(top_k=5, temperature=0.8, n=2, seed=2)),
    ([1], dict(top_k=4, repetition_penalty=1.3, mirostat=2, seed=3)),
]


def poison_top_k(monkeypatch, error):
    """The top-k stage raises `error` for a batch holding a row with top_k = UNLUCKY, from its third token."""
    stage = STAGES["top_k"]

    def apply(logits, ctx):
        for p, (_, _, position) in zip(ctx.knobs.params, ctx.coords):
            if p.top_k == UNLUCKY and position >= 2:
                raise error
        return stage.apply(logits, ctx)

    monkeypatch.setitem(STAGES, "top_k", dataclasses.replace(stage, apply=apply))


def run_beside(lm, culprit, innocent=INNOCENT, limits=Limits()):
    """Submit the culprit and the innocent jobs so that they share every step; their results."""
    scheduler = Scheduler(lm, limits)
    result(scheduler.submit(job(lm, [1], dict(max_tokens=1))))  # now the loop knows jobs can share a batch
    with paused(scheduler):
        tickets = [scheduler.submit(job(lm, *culprit))] + [scheduler.submit(job(lm, p, k)) for p, k in innocent]
    results = [result(t) for t in tickets]
    assert scheduler.stats["most_jobs_in_a_step"] == 1 + len(innocent)
    return scheduler, results[0], results[1:]


# --- sampling ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("error", [ParamError("top_k", "top_k = 7 is unlucky"), IndexError("a bug in top-k")],
                         ids=["bad value", "bug"])
def test_a_job_whose_sampling_raises_ends_alone_and_the_others_draw_what_they_draw_alone(monkeypatch, error):
    lm = lm_()
    expected = [alone(lm, p, k) for p, k in INNOCENT]
    poison_top_k(monkeypatch, error)
    scheduler, (_, failure), others = run_beside(lm, ([1, 3], dict(top_k=UNLUCKY, seed=9)))
    assert failure is error
    assert [got for got, _ in others] == expected
    # The loop is alive and serves the next job as before.
    assert result(scheduler.submit(job(lm, *INNOCENT[0])))[0] == expected[0]


def test_a_bug_in_a_job_is_logged_with_its_traceback_and_a_bad_value_is_not(monkeypatch, caplog):
    lm = lm_()
    poison_top_k(monkeypatch, IndexError("a bug in top-k"))
    with caplog.at_level(logging.ERROR, logger="engine"):
        run_beside(lm, ([1, 3], dict(top_k=UNLUCKY, seed=9)))
    bugs = [r for r in caplog.records if r.exc_info and r.exc_info[0] is IndexError]
    assert len(bugs) == 1 and "a bug in top-k" in caplog.text
    caplog.clear()
    poison_top_k(monkeypatch, ParamError("top_k", "top_k = 7 is unlucky"))
    with caplog.at_level(logging.ERROR, logger="engine"):
        run_beside(lm, ([1, 3], dict(top_k=UNLUCKY, seed=9)))
    assert not caplog.records


def test_mirostat_state_is_learned_once_when_its_group_is_sampled_again(monkeypatch):
    # The group fails after mirostat learned from its draw: each job is sampled again, from the mu it had.
    lm = lm_()
    miro = ([1], dict(mirostat=2, mirostat_eta=0.5, seed=4))
    expected = alone(lm, *miro)
    original = STAGES["mirostat"]

    def learn_then_fail(ctx, out, tokens):
        original.after_draw(ctx, out, tokens)
        for p, (_, _, position) in zip(ctx.knobs.params, ctx.coords):
            if p.top_k == UNLUCKY and position >= 2:
                raise RuntimeError("after mirostat learned")

    monkeypatch.setitem(STAGES, "mirostat", dataclasses.replace(original, after_draw=learn_then_fail))
    _, (_, failure), [(got, _)] = run_beside(lm, ([1, 3], dict(top_k=UNLUCKY, mirostat=2, seed=9)), [miro])
    assert isinstance(failure, RuntimeError) and got == expected


# --- logits the draw cannot use ----------------------------------------------------------------------


def poisoned_model(kind: str):
    """The fake model, whose logits for a prompt holding MARK go bad from the third token on."""

    def next_logits(history):
        out = chatty(history)
        if MARK in history and len(history) - history.index(MARK) > 2:
            out = out.clone()
            if kind == "all -inf":
                out[:] = float("-inf")
            else:
                out[3] = float(kind)
        return out

    return next_logits


@pytest.mark.parametrize("kind,said", [("nan", "NaN"), ("inf", "+inf"), ("all -inf", "-inf for every token")])
def test_a_row_whose_logits_are_not_finite_ends_its_job_alone_with_a_clear_error(kind, said):
    lm = lm_(poisoned_model(kind))
    expected = [alone(lm, p, k) for p, k in INNOCENT]
    _, (_, failure), others = run_beside(lm, ([1, MARK], dict(seed=9)))
    assert isinstance(failure, NonFiniteLogits)
    assert f"the model returned logits that are {said}" in str(failure) and "position 2" in str(failure)
    assert [got for got, _ in others] == expected


def test_a_stage_that_makes_a_row_infinite_is_named_in_its_error(monkeypatch):
    lm = lm_()
    expected = [alone(lm, p, k) for p, k in INNOCENT]
    stage = STAGES["top_k"]

    def apply(logits, ctx):
        out = stage.apply(logits, ctx)
        bad = torch.tensor([p.top_k == UNLUCKY for p in ctx.knobs.params])
        return torch.where(bad[:, None], float("inf"), out)

    monkeypatch.setitem(STAGES, "top_k", dataclasses.replace(stage, apply=apply))
    _, (_, failure), others = run_beside(lm, ([1, 3], dict(top_k=UNLUCKY, seed=9)))
    assert isinstance(failure, NonFiniteLogits) and "after the top_k stage (top_k)" in str(failure)
    assert [got for got, _ in others] == expected


def test_a_job_alone_whose_logits_turn_nan_raises_the_clear_error_not_an_index_error():
    lm = lm_(poisoned_model("nan"))
    with pytest.raises(NonFiniteLogits, match="NaN"):
        alone(lm, [1, MARK], dict(top_k=40, seed=9))


# --- the model ---------------------------------------------------------------------------------------


def failing_once(lm, when):
    """The model's forward raises once, at the first call for which when(input_ids) is true."""
    model = lm.model
    plain = model.forward
    armed = [True]

    def forward(input_ids, **kw):
        if armed[0] and when(input_ids):
            armed[0] = False
            raise RuntimeError("the model broke")
        return plain(input_ids, **kw)

    model.forward = forward


ENDLESS = dict(logit_bias={str(EOS): -100})  # no end token: a job runs its whole max_tokens


def test_a_failed_decode_forward_ends_the_jobs_in_it_and_a_job_still_prefilling_goes_on():
    lm = lm_()
    long_prompt = [1] + [2, 3, 4, 5] * 8  # 33 tokens: eight chunks of 4, then one of 1
    expected_long = alone(lm, long_prompt, dict(seed=5))
    expected_after = alone(lm, *INNOCENT[0])
    prefilling = threading.Event()
    # Chunks of the long prompt are the only 4-token inputs; after the first, the next two-row decode
    # forward fails.
    failing_once(lm, lambda ids: prefilling.set() if ids.shape[1] == 4 else prefilling.is_set() and ids.shape[0] == 2)
    scheduler = Scheduler(lm, Limits(prefill_chunk=4))
    with paused(scheduler):
        decoding = [scheduler.submit(job(lm, [1, k], dict(seed=k, max_tokens=200, **ENDLESS))) for k in (2, 3)]
    for t in decoding:
        t.get()  # both rows are decoding
    long = scheduler.submit(job(lm, long_prompt, dict(seed=5)))
    assert [str(result(t)[1]) for t in decoding] == ["the model broke"] * 2
    assert result(long) == (expected_long, None)
    assert result(scheduler.submit(job(lm, *INNOCENT[0]))) == (expected_after, None)


def test_a_prompt_the_model_cannot_prefill_ends_only_its_own_job():
    lm = lm_()
    innocent = [(p, {**k, **ENDLESS}) for p, k in INNOCENT]
    expected = [alone(lm, p, k) for p, k in innocent]
    failing_once(lm, lambda ids: MARK in ids[0].tolist())
    scheduler = Scheduler(lm)
    with paused(scheduler):
        running = [scheduler.submit(job(lm, p, k)) for p, k in innocent]
    running[0].get()  # decoding; the culprit's prefill comes between two of their steps
    with paused(scheduler):
        culprit = scheduler.submit(job(lm, [1, MARK], dict(seed=9)))
    assert str(result(culprit)[1]) == "the model broke"
    assert [result(t) for t in running] == [(e, None) for e in expected]


# --- clients that leave ------------------------------------------------------------------------------


def test_a_client_that_leaves_mid_prefill_is_dropped_and_the_others_are_untouched():
    lm = lm_()
    expected = alone(lm, *INNOCENT[1])
    long_prompt = [1] + [2, 3, 4, 5] * 8
    scheduler = Scheduler(lm, Limits(prefill_chunk=4))
    chunks = []

    def forward_counting(plain=lm.model.forward):
        def forward(input_ids, **kw):
            if input_ids.shape[1] == 4:
                chunks.append(1)
                if len(chunks) == 2:
                    leaving.job.stop()  # the client disconnects between its second and third chunk
            return plain(input_ids, **kw)
        return forward

    lm.model.forward = forward_counting()
    with paused(scheduler):
        leaving = scheduler.submit(job(lm, long_prompt, dict(seed=5)))
        staying = scheduler.submit(job(lm, *INNOCENT[1]))
    assert result(leaving) == (([[]], [""], ["cancelled"]), None)
    assert len(chunks) == 2  # its prompt went no further
    assert result(staying) == (expected, None)


def test_a_client_that_leaves_mid_decode_is_dropped_within_a_step_and_the_others_are_untouched():
    lm = lm_()
    expected = [alone(lm, p, k) for p, k in INNOCENT]
    scheduler = Scheduler(lm)
    made = []

    def listener(item):
        if isinstance(item, list):
            made.append(item)
            if len(made) == 3:
                leaving.job.stop()
        items.append(item)

    items: list = []
    with paused(scheduler):
        leaving = scheduler.submit(job(lm, [1], dict(seed=8, max_tokens=50, **ENDLESS)), listener=listener)
        staying = [scheduler.submit(job(lm, p, k)) for p, k in INNOCENT]
    assert [result(t) for t in staying] == [(e, None) for e in expected]
    wait_for(lambda: END in items)
    assert leaving.job.finish_reasons == ["cancelled"] and len(leaving.job.completions[0]) in (3, 4)


def test_a_listener_that_fails_stops_its_own_job_only():
    lm = lm_()
    expected = [alone(lm, p, k) for p, k in INNOCENT]
    scheduler = Scheduler(lm)
    calls = []

    def gone(item):  # the client's event loop has closed: every delivery raises
        calls.append(item)
        raise RuntimeError("Event loop is closed")

    with paused(scheduler):
        leaving = scheduler.submit(job(lm, [1], dict(seed=8, max_tokens=50, **ENDLESS)), listener=gone)
        staying = [scheduler.submit(job(lm, p, k)) for p, k in INNOCENT]
    assert [result(t) for t in staying] == [(e, None) for e in expected]
    wait_for(lambda: END in calls)
    assert leaving.job.finish_reasons == ["cancelled"] and len(leaving.job.completions[0]) <= 2


def test_a_cancel_racing_the_last_step_leaves_the_finish_reason_and_ends_the_job_once():
    lm = lm_()
    scheduler = Scheduler(lm)
    items: list = []

    def listener(item):
        if isinstance(item, list) and any(s.finish_reason for s in item):
            racing.job.stop()  # the client leaves while its last step is being delivered
        items.append(item)

    racing = scheduler.submit(job(lm, [1], dict(seed=8, max_tokens=4, **ENDLESS)), listener=listener)
    after = scheduler.submit(job(lm, *INNOCENT[0]))
    assert result(after) == (alone(lm, *INNOCENT[0]), None)
    racing.job.stop()  # and again once it has ended
    assert result(scheduler.submit(job(lm, *INNOCENT[2])))[1] is None
    assert items.count(END) == 1 and racing.job.finish_reasons == ["length"]
    assert len(racing.job.completions[0]) == 4


# --- through the HTTP API ----------------------------------------------------------------------------


def poison_top_k_by_value(monkeypatch, errors: dict[int, Exception]):
    """The top-k stage raises errors[top_k] for a batch holding a row with that top_k, from its third token."""
    stage = STAGES["top_k"]

    def apply(logits, ctx):
        for p, (_, _, position) in zip(ctx.knobs.params, ctx.coords):
            if p.top_k in errors and position >= 2:
                raise errors[p.top_k]
        return stage.apply(logits, ctx)

    monkeypatch.setitem(STAGES, "top_k", dataclasses.replace(stage, apply=apply))


def api_on(lm):
    host = ModelHost(lm)
    return host.scheduler(lm.name), TestClient(create_api(host, ApiSettings()), raise_server_exceptions=False)


def chat(**knobs) -> dict:
    return {"model": "fake", "messages": [{"role": "user", "content": "abc"}], "max_tokens": 8, "seed": 3,
            "logit_bias": {str(EOS): -100}, **knobs}


def test_mid_run_a_bad_value_is_400_naming_it_a_bug_is_500_and_the_requests_beside_them_are_200(monkeypatch):
    lm = lm_()
    scheduler, api = api_on(lm)
    url = "/v1/chat/completions"
    innocent = [chat(top_k=3), chat(top_k=4, temperature=0.7, n=2)]
    expected = [api.post(url, json=b).json()["choices"] for b in innocent]
    poison_top_k_by_value(monkeypatch, {5: ParamError("top_k", "top_k = 5 cannot be used mid-run"), 6: KeyError("bug")})
    bodies = [chat(top_k=5), chat(top_k=6), *innocent]
    with ThreadPoolExecutor(len(bodies)) as pool:
        with paused(scheduler):  # every request is waiting before the first of them runs: they share the batch
            futures = [pool.submit(api.post, url, json=b) for b in bodies]
            wait_for(lambda: scheduler.waiting == len(bodies))
        bad, bug, *fine = [f.result() for f in futures]
    assert scheduler.stats["most_jobs_in_a_step"] == len(bodies)
    assert bad.status_code == 400 and bad.json()["error"] == {
        "message": "top_k = 5 cannot be used mid-run", "type": "invalid_request_error", "param": "top_k", "code": "invalid_value"}
    assert bug.status_code == 500 and bug.json()["error"]["type"] == "server_error"
    assert [r.status_code for r in fine] == [200, 200]
    assert [r.json()["choices"] for r in fine] == expected


@pytest.mark.parametrize("error,shape", [
    (ParamError("top_k", "top_k = 7 cannot be used mid-run"),
     {"message": "top_k = 7 cannot be used mid-run", "type": "invalid_request_error", "param": "top_k", "code": "invalid_value"}),
    (ZeroDivisionError("a bug"),
     {"message": "internal error: ZeroDivisionError: a bug", "type": "server_error", "param": None, "code": None}),
], ids=["bad value", "bug"])
def test_a_stream_that_fails_after_its_first_chunks_ends_with_an_error_event_then_done(monkeypatch, error, shape):
    lm = lm_()
    _, api = api_on(lm)
    poison_top_k_by_value(monkeypatch, {UNLUCKY: error})
    body = chat(top_k=UNLUCKY, stream=True, stream_options={"include_usage": True})
    with api.stream("POST", "/v1/chat/completions", json=body) as r:
        assert r.status_code == 200
        events = [line.removeprefix("data: ") for line in r.iter_lines() if line.startswith("data: ")]
    *chunks, last, done = events
    assert done == "[DONE]" and json.loads(last) == {"error": shape}
    deltas = [json.loads(c)["choices"][0]["delta"] for c in chunks]
    assert deltas[0]["role"] == "assistant" and len(deltas) == 3  # the role, then the two tokens before the fault
