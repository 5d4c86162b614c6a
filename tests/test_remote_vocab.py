"""A remote model with no local tokenizer (engine/remote_vocab.py): its vocabulary read once from a fake
vLLM-speaking server's /detokenize, its text the same as the server's tokenizer gives, grammars refused by
naming the knob, and the table cached on disk so a second connect reads nothing."""

from __future__ import annotations

import json

import httpx
import pytest

from engine.constraints import Grammar
from engine.generator import Generation
from engine.knob import ParamError
from engine.knobs import SamplingParams
from engine.remote import RemoteError, connect
from tests.fakes import EOS, FakeTokenizer, chatty, fake_lm, outcome
from tests.test_remote import fake_server

# "é" is 0xC3 0xA9: ids 5 and 6 are each half a character, 7 the whole one.
PIECES = [b"<eos>", b"<p>", b"a", b"b", b" c", b"\xc3", b"\xa9", b"\xc3\xa9", b"d", b"q", b"z", b"e"]
V = len(PIECES)


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    # The model's name "fake" is no Hub id: fail at once instead of asking the network (the hub reads the
    # HF_HUB_OFFLINE variable only when imported); cache in tmp_path.
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("PLAYGROUND_CACHE", str(tmp_path))


def vocab_server(next_logits, seen: list[str], detokenize: bool = True) -> httpx.MockTransport:
    """fake_server plus vLLM's /tokenize (text, or messages: each content then <eos>, the assistant's turn <p>)
    and /detokenize, over FakeTokenizer(PIECES); `seen` collects each request's path."""
    tok = FakeTokenizer(PIECES)
    completions = fake_server(next_logits).handler

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.path)
        body = json.loads(request.content) if request.content else {}
        if request.url.path == "/detokenize" and detokenize:
            return httpx.Response(200, json={"prompt": tok.decode(body["tokens"])})
        if request.url.path == "/tokenize" and "messages" in body:
            ids = [i for m in body["messages"] for i in tok.encode(m["content"]) + [EOS]]
            return httpx.Response(200, json={"tokens": ids + ([1] if body.get("add_generation_prompt") else [])})
        if request.url.path == "/tokenize":
            return httpx.Response(200, json={"tokens": tok.encode(body["prompt"])})
        return completions(request)

    return httpx.MockTransport(handle)


def far(seen: list[str] | None = None, **kw):
    return connect("http://fake", "fake", transport=vocab_server(chatty(V), [] if seen is None else seen, **kw),
                   say=lambda msg: None)


def test_without_a_local_tokenizer_the_vocabulary_comes_from_the_servers_detokenize():
    lm = far()
    tok = FakeTokenizer(PIECES)
    assert lm.name == "fake · remote · exact" and lm.vocab_size == V and lm.eos_ids == {EOS}
    assert [lm.token_text(i) for i in range(V)] == [p.decode("utf-8", errors="replace") for p in PIECES]
    assert lm.tokenizer.inexact == 2  # the two halves of "é"
    for ids in ([2, 3, 4], [5, 6, 4], [7, 5], [1, 11, 6]):
        assert lm.tokenizer.decode(ids) == tok.decode(ids)
    assert lm.tokenizer.encode("ab cé") == tok.encode("ab cé")


def test_a_run_on_a_detokenised_vocabulary_gives_the_tokens_and_text_of_the_servers_tokenizer():
    params = SamplingParams.build(seed=7, n=3, max_tokens=12, temperature=1.2, stop=[" cé"])
    here = Generation(fake_lm(chatty(V), PIECES), [1, 2, 3], params)
    there = Generation(far(), [1, 2, 3], params)
    for gen in (here, there):
        for _ in gen:
            pass
    assert outcome(there) == outcome(here)
    assert "stop" in there.finish_reasons  # the stop sequence matched on the table's strings
    assert {5, 6} & {s.token_id for c in there.completions for s in c}  # halves of "é": the server decoded those


@pytest.mark.parametrize("make, knob", [(lambda: Grammar.json_schema({"type": "object"}, label="json_object"), "response_format"),
                                        (lambda: Grammar.lark('start: "a"', label="tool call", param="tools"), "tools")])
def test_a_grammar_on_a_detokenised_vocabulary_is_refused_naming_its_knob(make, knob):
    with pytest.raises(ParamError, match="--remote-tokenizer") as e:
        Generation(far(), [1, 2], SamplingParams.build(seed=1, max_tokens=3), grammar=make())
    assert e.value.param == knob


def test_the_vocabulary_is_read_once_and_a_second_connect_reads_the_cache():
    first, second = [], []
    far(first)
    far(second)
    # The first: a probe, the anchor's own text, then every id once; the second only the probe.
    assert first.count("/detokenize") == 1 + 1 + V
    assert second.count("/detokenize") == 1


def test_a_server_without_detokenize_or_local_tokenizer_is_refused_as_before():
    with pytest.raises(RemoteError, match="--remote-tokenizer"):
        far(detokenize=False)
