"""The shared batch on the real embedded model, in the app's default dtype (bfloat16 on this CPU): each
request's rows equal the same request run alone, token for token, whatever else shares the forward pass,
and completion i does not depend on n. Rows of different lengths attend exactly as alone
(engine/attention.py); the README says where float32 and GPUs differ."""

from __future__ import annotations

import pytest
import torch

from engine.chat import ChatRequest
from engine.knobs import SamplingParams
from engine.scheduler import Scheduler

pytestmark = pytest.mark.model

ASK = [
    [{"role": "user", "content": "Name three colours."}],
    [{"role": "user", "content": "Write one sentence about the sea, and make it a long one please."}],
    [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "What is 2 + 2?"}],
    [{"role": "user", "content": "Give the colour of a banana as JSON."}],
]
EOS = {"2": -100}  # rows run their full length, so they overlap in the batch
JOBS = [  # (messages, knobs, extras): every kind of knob, one per row or job
    (ASK[0], dict(temperature=0.0), {}),
    (ASK[1], dict(top_k=20, temperature=0.9, seed=1, logit_bias=EOS), {}),
    (ASK[2], dict(top_p=0.8, seed=2, n=2, logit_bias=EOS), {}),
    (ASK[0], dict(min_p=0.1, temperature=1.2, seed=3, logit_bias=EOS), {}),
    (ASK[1], dict(presence_penalty=0.8, frequency_penalty=0.6, repetition_penalty=1.3, seed=4, logit_bias={"2": -100, "28": 4}), {}),
    (ASK[2], dict(stop=["4", "."], seed=5), {}),
    (ASK[3], dict(temperature=0.7, seed=6), {"response_format": {"type": "json_object"}}),
]


def request(lm, messages, knobs, extras):
    return ChatRequest.build(lm, messages, SamplingParams.build(max_tokens=10, **knobs), **extras).generation()


def outcome(gen):
    return [[s.token_id for s in c] for c in gen.completions], gen.texts, gen.finish_reasons


def test_each_row_of_a_mixed_batch_equals_its_request_run_alone(lm):
    alone = []
    for m, k, e in JOBS:
        gen = request(lm, m, k, e)
        for _ in gen:
            pass
        alone.append(outcome(gen))
    scheduler = Scheduler(lm)
    try:
        tickets = [scheduler.submit(request(lm, m, k, e)) for m, k, e in JOBS]
        together = []
        for t in tickets:
            for _ in t:
                pass
            together.append(outcome(t.job))
    finally:
        scheduler.close()
    assert together == alone
    assert together[-1][2] == ["stop"] or together[-1][2] == ["length"]


def test_completion_i_is_the_same_for_n_1_2_and_5(lm):
    texts = {}
    for n in (1, 2, 5):
        gen = request(lm, ASK[1], dict(seed=11, temperature=1.0, n=n, logit_bias=EOS), {})
        for _ in gen:
            pass
        texts[n] = gen.texts
    assert texts[1][0] == texts[2][0] == texts[5][0]
    assert texts[2][1] == texts[5][1]
    assert len(set(texts[5])) > 1


def test_a_prompt_prefilled_in_chunks_attends_to_all_of_itself(lm):
    from engine.batch import Prefill
    from engine.generator import Generation

    ids = lm.encode_chat([{"role": "user", "content": "Tell me a long story about a lighthouse keeper and the sea, "
                                                      "please, with many details."}])
    gen = Generation(lm, ids, SamplingParams.build(max_tokens=1))
    whole, chunked = Prefill(gen), Prefill(gen, chunk=7)
    while not whole.advance():
        pass
    while not chunked.advance():
        pass
    # Only rounding apart (a chunk that saw only part of the cache would be far off).
    assert (whole.logits - chunked.logits).abs().max() < 1.0
    assert whole.logits.argmax() == chunked.logits.argmax()


def test_where_a_prompt_is_cut_into_chunks_does_not_depend_on_what_joins_beside_it(lm):
    from engine.scheduler import Limits

    def outcomes(scheduler, jobs):
        tickets = [scheduler.submit(request(lm, m, k, {})) for m, k in jobs]
        for t in tickets:
            for _ in t:
                pass
        return [outcome(t.job) for t in tickets]

    jobs = [(ASK[2], dict(seed=1, temperature=1.0, logit_bias=EOS)), (ASK[1], dict(seed=2, temperature=1.0, logit_bias=EOS)),
            (ASK[0], dict(seed=3, temperature=1.0, logit_bias=EOS))]
    limits = Limits(prefill_chunk=8)  # several chunks per prompt, and several prompts per turn
    scheduler = Scheduler(lm, limits)
    try:
        alone = [outcomes(scheduler, [job])[0] for job in jobs]
        assert outcomes(scheduler, jobs) == alone
    finally:
        scheduler.close()


def test_a_rows_logits_are_the_same_alone_and_beside_a_request_that_joins_after_its_first_step(lm):
    """The case that broke bf16 on an avx512_bf16 CPU: one row decodes alone (one-row matrix products),
    then a longer prompt joins. In bf16 every step's logits must be the same bits as alone; float32's
    matrix products round by the batch's row count (README, "The seed contract"), within 1e-3 here."""

    def run(jobs):
        scheduler = Scheduler(lm)
        try:
            for ticket in [scheduler.submit(j) for j in jobs]:
                for _ in ticket:
                    pass
        finally:
            scheduler.close()

    def capturing():
        return ChatRequest.build(lm, ASK[0], SamplingParams.build(max_tokens=6, seed=42, top_k=40)).generation(capture=True)

    alone = capturing()
    run([alone])
    beside = capturing()
    run([beside, request(lm, ASK[1], dict(seed=7), {})])
    exact = lm.dtype == torch.bfloat16
    for position in range(6):
        a, b = alone.snapshots[position].logits, beside.snapshots[position].logits
        assert torch.equal(a, b) if exact else (a - b).abs().max() < 1e-3, position
    if exact:
        assert outcome(beside) == outcome(alone)
