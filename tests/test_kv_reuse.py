"""KV reuse (engine/kvstore.py): a client that steps a sequence through /v1/completions, one token longer
each request, costs one decode step per request and gets exactly the logits local decoding gives."""

from __future__ import annotations

import contextlib
import functools

import pytest
import torch
from fastapi.testclient import TestClient
from transformers.cache_utils import DynamicCache

from engine.generator import Generation
from engine.knobs import SamplingParams
from engine.kvstore import KVStore
from playground.api import ApiSettings, create_api
from playground.api_completions import decode_base64_entry
from playground.models import ModelHost

MESSAGES = [{"role": "user", "content": "Tell me a short story about a fox."}]
STEPS = 8


@contextlib.contextmanager
def serving(lm, **settings):
    host = ModelHost(lm)
    with TestClient(create_api(host, ApiSettings(max_logprobs=-1, logprobs_mode="raw_logits", **settings))) as client:
        yield client
    host.scheduler().close()


@pytest.fixture
def forwards(lm, monkeypatch):
    """The number of tokens of every forward pass the model runs."""
    seen: list[int] = []
    plain = lm.model.forward

    @functools.wraps(plain)  # the engine reads the signature (cache= or past_key_values=)
    def counting(input_ids=None, **kw):
        seen.append(input_ids.shape[1])
        return plain(input_ids=input_ids, **kw)

    monkeypatch.setattr(lm.model, "forward", counting)
    return seen


def remote_logits(client, lm, ids: list[int]) -> torch.Tensor:
    """What a remote playground asks each step: the next position's raw logits over the whole vocabulary."""
    r = client.post("/v1/completions", json={"prompt": ids, "max_tokens": 1, "logprobs": -1,
                                             "logprobs_format": "base64_float32"})
    assert r.status_code == 200, r.text
    _, values = decode_base64_entry(r.json()["choices"][0]["logprobs"]["top_logprobs_base64"][0], lm.vocab_size)
    return torch.from_numpy(values.copy())


@pytest.fixture(scope="module")
def local_run(lm):
    """Local step-wise decoding of one row: its tokens and the raw logits each step drew from."""
    gen = Generation(lm, lm.encode_chat(MESSAGES), SamplingParams.build(max_tokens=STEPS, seed=3), capture=True)
    for _ in gen:
        pass
    tokens = [s.token_id for s in gen.completions[0]]
    assert len(tokens) == STEPS
    return gen.prompt_ids, tokens, [gen.snapshots[k].logits for k in range(STEPS)]


@pytest.mark.model
def test_a_client_stepping_a_sequence_gets_exactly_the_logits_of_local_decoding(lm, local_run):
    # One row alone both ways: the same forward passes, so the same bits in bf16 and in float32.
    prompt, tokens, expected = local_run
    with serving(lm) as client:
        for k in range(STEPS):
            assert torch.equal(remote_logits(client, lm, prompt + tokens[:k]), expected[k]), f"step {k}"


@pytest.mark.model
def test_a_client_stepping_8_tokens_costs_one_prefill_and_one_token_per_step(lm, local_run, forwards):
    prompt, tokens, _ = local_run
    with serving(lm) as client:
        for k in range(STEPS + 1):
            remote_logits(client, lm, prompt + tokens[:k])
    assert forwards == [len(prompt)] + [1] * STEPS


@pytest.mark.model
def test_without_the_store_every_step_prefills_the_whole_sequence(lm, local_run, forwards):
    prompt, tokens, _ = local_run
    with serving(lm, kv_store_bytes=0) as client:
        for k in range(3):
            remote_logits(client, lm, prompt + tokens[:k])
    assert forwards == [len(prompt), len(prompt) + 1, len(prompt) + 2]


@pytest.mark.model
def test_n_completions_of_one_prompt_prefill_it_once(lm, local_run, forwards):
    prompt, _, _ = local_run
    with serving(lm) as client:
        r = client.post("/v1/completions", json={"prompt": prompt, "max_tokens": 1, "n": 3, "seed": 1})
    assert r.status_code == 200 and len(r.json()["choices"]) == 3
    assert forwards == [len(prompt)]


@pytest.mark.model
def test_decoding_on_from_a_kept_sequence_leaves_what_is_kept_as_it_was(lm, local_run, forwards):
    prompt, tokens, _ = local_run
    with serving(lm) as client:
        first = remote_logits(client, lm, prompt)
        r = client.post("/v1/completions", json={"prompt": prompt + tokens[:1], "max_tokens": 6, "n": 2, "seed": 2})
        assert r.status_code == 200
        del forwards[:]
        assert torch.equal(remote_logits(client, lm, prompt), first)
    assert forwards == []  # the same sequence again: the kept logits, no forward pass


def cache_of(length: int, layers: int = 2) -> DynamicCache:
    k = torch.arange(length, dtype=torch.float32).reshape(1, 1, length, 1)  # (B, H, T, D)
    return DynamicCache(ddp_cache_data=[(k.clone(), -k.clone()) for _ in range(layers)])


def entry_bytes(length: int, layers: int = 2, vocab: int = 4) -> int:
    return layers * 2 * length * 4 + vocab * 4


def test_resume_continues_the_longest_kept_sequence_the_prompt_starts_with():
    store = KVStore()
    store.keep([1, 2], cache_of(2), torch.zeros(1, 4))
    store.keep([1, 2, 3], cache_of(3), torch.ones(1, 4))
    store.keep([1, 9, 9, 9], cache_of(4), torch.ones(1, 4))
    done, cache, logits = store.resume([1, 2, 3, 4, 5])
    assert done == 3 and logits is None and cache.get_seq_length() == 3
    assert torch.equal(cache.layers[0].values[0, 0, :, 0], torch.tensor([0.0, -1.0, -2.0]))
    assert store.resume([7, 1, 2]) == (0, None, None)


def test_resume_of_a_kept_sequence_itself_gives_its_logits():
    store = KVStore()
    store.keep([1, 2], cache_of(2), torch.full((1, 4), 5.0))
    done, _, logits = store.resume([1, 2])
    assert done == 2 and torch.equal(logits, torch.full((1, 4), 5.0))


def test_a_resumed_cache_is_a_copy_the_batch_may_change():
    store = KVStore()
    store.keep([1, 2], cache_of(2), torch.zeros(1, 4))
    _, cache, _ = store.resume([1, 2, 3])
    cache.layers[0].keys.add_(100.0)
    _, again, _ = store.resume([1, 2, 3])
    assert torch.equal(again.layers[0].keys[0, 0, :, 0], torch.tensor([0.0, 1.0]))


def test_the_store_drops_the_least_recently_used_past_its_byte_bound():
    store = KVStore(max_bytes=2 * entry_bytes(3))
    store.keep([1, 1, 1], cache_of(3), torch.zeros(1, 4))
    store.keep([2, 2, 2], cache_of(3), torch.zeros(1, 4))
    store.resume([1, 1, 1])  # used: [2, 2, 2] is now the least recent
    store.keep([3, 3, 3], cache_of(3), torch.zeros(1, 4))
    assert store.nbytes == 2 * entry_bytes(3) and len(store) == 2
    assert store.resume([2, 2, 2])[0] == 0 and store.resume([1, 1, 1])[0] == 3


def test_a_sequence_larger_than_the_whole_store_is_not_kept():
    store = KVStore(max_bytes=entry_bytes(3) - 1)
    store.keep([1, 1, 1], cache_of(3), torch.zeros(1, 4))
    assert len(store) == 0 and store.nbytes == 0



@pytest.mark.model
def test_rows_stepped_together_get_the_logits_of_local_decodings_batch_in_one_forward_a_step(lm, forwards):
    # Local decoding of n = 3 runs 3-row forward passes; float32 rounds a row among 3 unlike a row alone,
    # so only a 3-row pass on the server gives completion 0 the same bits there.
    gen = Generation(lm, lm.encode_chat(MESSAGES), SamplingParams.build(n=3, max_tokens=4, seed=6), capture=True)
    for _ in gen:
        pass
    rows = [[s.token_id for s in c] for c in gen.completions]
    assert all(len(r) == 4 for r in rows)
    del forwards[:]
    with serving(lm) as client:
        for k in range(4):
            r = client.post("/v1/completions", json={"prompt": [gen.prompt_ids + row[:k] for row in rows], "max_tokens": 1,
                                                     "logprobs": -1, "logprobs_format": "base64_float32"})
            entry = r.json()["choices"][0]["logprobs"]["top_logprobs_base64"][0]
            got = torch.from_numpy(decode_base64_entry(entry, lm.vocab_size)[1].copy())
            assert torch.equal(got, gen.snapshots[k].logits), f"step {k}"
    assert forwards == [len(gen.prompt_ids)] + [1] * 3  # one pass of 3 rows a step (each of 1 token)
