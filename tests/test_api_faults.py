"""Containment on the real model, through the HTTP API: an innocent seeded request shares the batch with
extreme ones (legal values at the edges of their ranges, and a DRY request on a long repetitive prompt).
No request gets a 5xx, the innocent one gets its answer alone, and the server serves afterwards."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import torch

from engine.model import pick_dtype

pytestmark = [pytest.mark.server, pytest.mark.model]

HELLO = [{"role": "user", "content": "Name three colours."}]
INNOCENT = dict(messages=HELLO, seed=42, max_tokens=12, top_k=40, logprobs=True)
EXTREME = [  # the outages and their neighbours, each a legal request
    dict(repetition_penalty=1e-50),
    dict(repetition_penalty=1e-50, top_k=40),
    dict(top_k=10**20),
    dict(repetition_penalty=1e-7, temperature=1e-30),
    dict(mirostat=2, mirostat_tau=1e308, trace=True),
    dict(dry_multiplier=1e308, dry_base=1e308, dry_allowed_length=1, trace=True),
    dict(top_n_sigma=1e308, dynatemp_range=1e308, dynatemp_exponent=1e308),
    dict(xtc_probability=1.0, xtc_threshold=0.0, frequency_penalty=-2.0, presence_penalty=2.0),
    dict(logit_bias={"1": 100, "2": -100}, temperature=5e-324),
    dict(dry_multiplier=0.8, messages=[{"role": "user", "content": "ha" * 1500}], max_tokens=4),
]


def post(url: str, body: dict) -> httpx.Response:
    return httpx.post(url + "/v1/chat/completions", json=body, timeout=600)


def with_defaults(knobs: dict) -> dict:
    return {"messages": HELLO, "seed": 7, "max_tokens": 8, **knobs}


def tokens_and_logprobs(response: httpx.Response) -> tuple[list[str], list[float]]:
    content = response.json()["choices"][0]["logprobs"]["content"]
    return [c["token"] for c in content], [c["logprob"] for c in content]


def test_an_innocent_request_beside_ten_extreme_ones_gets_its_answer_alone(server):
    alone = post(server.url, INNOCENT)
    assert alone.status_code == 200, alone.text
    with ThreadPoolExecutor(len(EXTREME) + 1) as pool:
        innocent = pool.submit(post, server.url, INNOCENT)
        others = [pool.submit(post, server.url, with_defaults(k)) for k in EXTREME]
        responses = [f.result() for f in others]
        beside = innocent.result()
    for knobs, r in zip(EXTREME, responses):
        assert r.status_code < 500, (knobs, r.text[:500])
        json.loads(r.text)  # strict JSON: no NaN or Infinity anywhere, trace included
    assert beside.status_code == 200, beside.text
    words, logprobs = tokens_and_logprobs(alone)
    words_beside, logprobs_beside = tokens_and_logprobs(beside)
    if pick_dtype(torch.device("cpu")) == torch.bfloat16:  # the server's dtype: bf16 rows are bit-identical alone and in any batch
        assert words_beside == words
    else:  # fp32: logits move by ~1e-5 under load (README, "The seed contract"), tokens agree until a rare flip
        same = next((i for i, (a, b) in enumerate(zip(words, words_beside)) if a != b), len(words))
        assert same >= 1 and all(abs(a - b) < 1e-3 for a, b in zip(logprobs[:same], logprobs_beside[:same]))
    again = post(server.url, INNOCENT)
    assert again.status_code == 200 and tokens_and_logprobs(again)[0] == words
