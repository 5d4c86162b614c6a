"""The shared decode loop on a fake model: rows of different requests, knobs and prompt lengths share
each forward pass, and every row's tokens are exactly those of its job run alone."""

from __future__ import annotations

import threading

import pytest
import torch
from transformers.cache_utils import Cache, DynamicLayer

from engine.batch import Batch, Prefill
from engine.generator import Generation
from engine.knobs import SamplingParams
from engine.scheduler import END, Limits, Refused, Scheduler
from engine.stages import PRESETS
from tests import fakes
from tests.fakes import EOS, FakeModel, fake_lm, outcome

LETTERS = [b"<eos>", b"<p>"] + [bytes([c]) for c in b"abcdefgh"]  # ids 2..9 = a..h
LLAMA_CPP = PRESETS["llama.cpp"]


chatty = fakes.chatty(len(LETTERS))


def lm_():
    return fake_lm(chatty, LETTERS, context_length=256)


JOBS = [  # (prompt, knobs): every knob the sampler has, on prompts of different lengths
    ([1], dict(temperature=0.0)),
    ([1, 2, 3], dict(top_k=3, temperature=1.3, seed=1)),
    ([1, 4], dict(top_p=0.5, seed=2, n=3)),
    ([1, 5, 5, 5, 6], dict(min_p=0.2, seed=3)),
    ([1, 7], dict(presence_penalty=1.0, frequency_penalty=0.5, repetition_penalty=1.3, seed=4)),
    ([1, 2], dict(logit_bias={"3": 5, "4": -100}, seed=5, n=2)),
    ([1, 3, 3], dict(stop=["ab", "h"], seed=6)),
    ([1, 9, 8, 7, 6, 5, 4], dict(sampler_order=LLAMA_CPP, temperature=0.7, min_p=0.1, seed=7)),
]


pytestmark = pytest.mark.usefixtures("closes_schedulers")


def job(lm, prompt, knobs, **kw):
    return Generation(lm, prompt, SamplingParams.build(**{"max_tokens": 14, **knobs}), **kw)


def alone(lm, prompt, knobs):
    gen = job(lm, prompt, knobs)
    for _ in gen:
        pass
    return outcome(gen)


def drain(ticket):
    for _ in ticket:
        pass
    return ticket.job


def test_every_row_of_a_mixed_knob_batch_equals_its_job_run_alone():
    lm = lm_()
    expected = [alone(lm, p, k) for p, k in JOBS]
    scheduler = Scheduler(lm)
    tickets = [scheduler.submit(job(lm, p, k)) for p, k in JOBS]
    assert [outcome(drain(t)) for t in tickets] == expected
    assert max(lm.model.rows_seen) > 4  # they really shared forward passes


def test_jobs_that_join_mid_flight_and_a_job_stopped_midway_leave_the_others_untouched():
    lm = lm_()
    expected = [alone(lm, p, k) for p, k in JOBS]
    scheduler = Scheduler(lm)
    tickets: dict[int, object] = {}
    steps_of_first = []

    def first_listener(item):
        # Each later job joins after the first has made one more step: joins at many widths.
        if isinstance(item, list):
            steps_of_first.append(item)
            k = len(steps_of_first)
            if k < len(JOBS):
                tickets[k] = scheduler.submit(job(lm, *JOBS[k]))
        first_items.append(item)

    first_items: list = []
    stopped = job(lm, [1, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2], dict(seed=9, logit_bias={str(EOS): -100}, max_tokens=None))
    stop_ticket = scheduler.submit(stopped)
    tickets[0] = scheduler.submit(job(lm, *JOBS[0]), listener=first_listener)
    made = 0
    for _ in stop_ticket:
        made += 1
        if made == 5:
            stop_ticket.cancel()
    assert stopped.finish_reasons == ["cancelled"] and len(stopped.completions[0]) in (5, 6)
    for k in range(1, len(JOBS)):
        while k not in tickets:
            threading.Event().wait(0.01)
        assert outcome(drain(tickets[k])) == expected[k], f"job {k}"
    while END not in first_items:
        threading.Event().wait(0.01)
    assert outcome(tickets[0].job) == expected[0]


def test_a_long_prompt_pads_the_batch_and_its_columns_leave_with_it():
    lm = lm_()
    batch = Batch(lm)
    short = job(lm, [1, 2], dict(seed=1, logit_bias={str(EOS): -100}, max_tokens=10))
    long = job(lm, [1] + [3] * 20, dict(seed=2, logit_bias={str(EOS): -100}, max_tokens=2))
    for gen in (short, long):
        prefill = Prefill(gen)
        while not prefill.advance():
            pass
        batch.advance()
        batch.join(gen, prefill.cache, prefill.logits)
        batch.sample()
    assert batch.width == 21  # the short row is padded to the long prompt
    while long.finish_reasons[0] is None:
        batch.advance()
        batch.sample()
    # Trimmed to the short row: its prompt and its tokens but the last, which waits for the next pass.
    assert len(batch.rows) == 1 and batch.width == len(short.prompt_ids) + len(short.completions[0]) - 1
    while batch.rows:
        batch.advance()
        batch.sample()
    assert outcome(short) == alone(lm, [1, 2], dict(seed=1, logit_bias={str(EOS): -100}, max_tokens=10))


def test_a_long_prompt_is_prefilled_in_chunks_between_the_others_steps():
    lm = lm_()
    scheduler = Scheduler(lm, Limits(prefill_chunk=4))
    running = scheduler.submit(job(lm, [1], dict(seed=1, logit_bias={str(EOS): -100}, max_tokens=30)))
    next(iter(running))  # generating
    long = scheduler.submit(job(lm, [1] + [2] * 30, dict(seed=2, max_tokens=3)))
    drain(long)
    drain(running)
    # The 31-token prompt went in as chunks of 4, each a one-row forward between two-row steps.
    sizes = lm.model.rows_seen
    assert sizes.count(1) >= 31 // 4
    assert outcome(long.job) == alone(lm, [1] + [2] * 30, dict(seed=2, max_tokens=3))


def test_prompts_that_arrive_together_go_in_a_few_per_turn_on_a_slow_machine_while_the_batch_steps():
    """Each prefill here takes 60 ms of a fake clock and a turn's prompt work stops after 100 ms: six jobs
    submitted at once join two a turn, with a step of the running row between, and not six in one long
    turn that the running row would wait through."""
    lm = lm_()
    now, shapes = [0.0], []
    forward = lm.model.forward

    def timed(input_ids, **kw):
        shapes.append(input_ids.shape[1])
        if input_ids.shape[1] > 1:  # a prompt going in
            now[0] += 0.06
        return forward(input_ids, **kw)

    lm.model.forward = timed
    scheduler = Scheduler(lm, Limits(prefill_turn_s=0.1), clock=lambda: now[0])
    running = scheduler.submit(job(lm, [1], dict(seed=1, logit_bias={str(EOS): -100}, max_tokens=30)))
    next(iter(running))  # generating
    knobs = [dict(seed=10 + k, max_tokens=3) for k in range(6)]
    # submitted between two steps, on the loop's own thread: all six wait for the same turn
    joining = scheduler.call(lambda: [scheduler.submit(job(lm, [1, 2, 3], kn)) for kn in knobs])
    reading = [scheduler.call(lambda: [t.reading for t in joining]) for _ in range(2)]  # a turn apart
    outcomes = [outcome(drain(t)) for t in joining]
    drain(running)
    prefills_in_a_row = max(len(run) for run in "".join("p" if q > 1 else " " for q in shapes).split())
    assert prefills_in_a_row == 2, shapes
    assert outcomes == [alone(lm, [1, 2, 3], kn) for kn in knobs]
    # what their pages show meanwhile: how many prompts go in before each one's own
    assert reading == [[0, 1, 2, 3, 4, 5], [None, None, 0, 1, 2, 3]]


# --- the queue --------------------------------------------------------------------------------


def test_past_the_rows_jobs_wait_in_order_and_past_the_queue_they_are_refused():
    lm = lm_()
    scheduler = Scheduler(lm, Limits(max_rows=2, max_queue=2))
    endless = dict(logit_bias={str(EOS): -100}, max_tokens=None)
    running = [scheduler.submit(job(lm, [1], dict(seed=s, **endless))) for s in (1, 2)]
    for t in running:
        t.get()  # each has made a step: both rows are taken
    third, fourth = scheduler.submit(job(lm, [1], dict(seed=3))), scheduler.submit(job(lm, [1], dict(seed=4)))
    assert (third.ahead, fourth.ahead) == (0, 1) and not third.admitted.is_set()
    with pytest.raises(Refused) as refused:
        scheduler.submit(job(lm, [1], dict(seed=5)))
    assert refused.value.retry
    third.cancel()  # a client that leaves while waiting is dropped from the queue
    fifth = scheduler.submit(job(lm, [1], dict(seed=5)))
    for t in running:
        t.cancel()
    assert drain(third).finish_reasons == ["cancelled"] and third.job.completions == [[]]
    assert all(r in ("stop", "length") for t in (fourth, fifth) for r in drain(t).finish_reasons)


def test_a_job_larger_than_the_limits_is_refused_at_once_naming_the_knob():
    lm = lm_()
    scheduler = Scheduler(lm, Limits(max_rows=4, max_tokens=40))
    with pytest.raises(Refused) as too_many:
        scheduler.submit(job(lm, [1], dict(n=5)))
    assert too_many.value.param == "n" and not too_many.value.retry
    with pytest.raises(Refused) as too_long:
        scheduler.submit(job(lm, [1] * 30, dict(n=2)))
    assert too_long.value.param == "messages"
    with pytest.raises(Refused) as too_much:
        scheduler.submit(job(lm, [1], dict(n=2, max_tokens=30)))
    assert too_much.value.param == "max_tokens"


def test_a_plain_request_on_a_long_context_model_is_served_under_the_default_limits():
    lm = fake_lm(chatty, LETTERS, context_length=131072)
    gen = Generation(lm, [1, 2, 3], SamplingParams.build(seed=0))  # no max_tokens: up to the context
    assert gen.max_tokens > Limits().max_tokens
    scheduler = Scheduler(lm)
    assert drain(scheduler.submit(gen)).finish_reasons == ["stop"]


# --- failures and models that cannot share a batch --------------------------------------------


def test_a_model_error_in_a_prefill_fails_that_job_and_the_loop_keeps_serving():
    def fragile(history):
        if 99 in history:
            raise RuntimeError("the model broke")
        return torch.cat([chatty(history), torch.full((90,), -30.0)])

    lm = fake_lm(fragile, LETTERS + [b"!"] * 90, context_length=256)
    scheduler = Scheduler(lm)
    with pytest.raises(RuntimeError, match="the model broke"):
        drain(scheduler.submit(job(lm, [1, 99], dict(seed=1))))
    assert drain(scheduler.submit(job(lm, [1, 2], dict(seed=2, max_tokens=3)))).finish_reasons[0] in ("stop", "length")


class SlidingLike(DynamicLayer):
    """Stands for a cache layer with state that padding would break (sliding window, linear attention)."""


def test_a_model_whose_cache_cannot_mix_jobs_runs_them_one_at_a_time():
    lm = lm_()
    model: FakeModel = lm.model
    plain_forward = model.forward

    def forward(input_ids, past_key_values=None, **kw):
        if past_key_values is None:
            past_key_values = Cache(layer_class_to_replicate=SlidingLike)
        return plain_forward(input_ids, past_key_values=past_key_values, **kw)

    model.forward = forward
    expected = [alone(lm, p, k) for p, k in JOBS[:3]]
    lm.model.rows_seen.clear()
    scheduler = Scheduler(lm)
    tickets = [scheduler.submit(job(lm, p, k)) for p, k in JOBS[:3]]
    assert [outcome(drain(t)) for t in tickets] == expected
    assert max(lm.model.rows_seen) == 3  # never more than one job's rows (the n=3 job) in a pass
