"""POST /v1/completions, /tokenize and /detokenize on the real embedded model: vLLM's shapes, the logprobs
cap, raw and processed values, the base64 form, and clear refusals."""

from __future__ import annotations

import contextlib
import json

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

import app as app_module
from engine.batch import forward
from playground.api import ApiSettings, create_api
from playground.api_completions import LOGPROBS_MODES, decode_base64_entry
from playground.models import ModelHost

pytestmark = pytest.mark.model
MESSAGES = [{"role": "user", "content": "Name a colour."}]


@contextlib.contextmanager
def serving(lm, **settings):
    host = ModelHost(lm)
    with TestClient(create_api(host, ApiSettings(**settings))) as client:
        yield client
    host.scheduler().close()


@pytest.fixture(scope="module")
def api(lm):
    with serving(lm) as client:
        yield client


@pytest.fixture(scope="module")
def uncapped(lm):
    """A server as a remote playground wants it: the whole vocabulary, raw logits."""
    with serving(lm, max_logprobs=-1, logprobs_mode="raw_logits") as client:
        yield client


@pytest.fixture(scope="module")
def prompt(lm):
    return lm.encode_chat(MESSAGES)


def complete(client, **body) -> dict:
    r = client.post("/v1/completions", json=body)
    assert r.status_code == 200, r.text
    return r.json()


def refused(client, **body) -> dict:
    r = client.post("/v1/completions", json=body)
    assert r.status_code == 400, r.text
    return r.json()["error"]


def local_logits(lm, ids: list[int]) -> torch.Tensor:
    """The model's next-token logits after `ids`, from one forward pass here (as a prompt's prefill runs)."""
    with torch.inference_mode():
        out = forward(lm.model, torch.tensor([ids]), None, position_ids=torch.arange(len(ids))[None], logits_to_keep=1)
    return out.logits[0, -1].float()


def test_a_token_prompt_answers_in_vllms_completion_shape(api, prompt):
    body = complete(api, prompt=prompt, max_tokens=3, seed=1)
    assert body["object"] == "text_completion" and body["id"].startswith("cmpl-")
    (choice,) = body["choices"]
    assert choice["index"] == 0 and isinstance(choice["text"], str) and choice["text"]
    assert choice["logprobs"] is None and choice["finish_reason"] == "length"
    assert body["usage"] == {"prompt_tokens": len(prompt), "completion_tokens": 3, "total_tokens": len(prompt) + 3}


def test_a_text_prompt_is_the_tokens_tokenize_gives(api):
    ids = api.post("/tokenize", json={"prompt": "The sky is"}).json()["tokens"]
    by_text = complete(api, prompt="The sky is", max_tokens=4, seed=3)
    by_ids = complete(api, prompt=ids, max_tokens=4, seed=3)
    assert by_text["choices"][0]["text"] == by_ids["choices"][0]["text"]
    assert by_text["usage"]["prompt_tokens"] == len(ids)


def test_the_same_seed_and_knobs_give_the_chat_endpoints_text(api, prompt):
    knobs = dict(max_tokens=6, seed=7, temperature=0.9, top_k=40, repetition_penalty=1.2)
    chat = api.post("/v1/chat/completions", json={"messages": MESSAGES, **knobs}).json()
    assert complete(api, prompt=prompt, **knobs)["choices"][0]["text"] == chat["choices"][0]["message"]["content"]


def test_several_prompts_and_n_give_prompt_major_indexed_choices(api, prompt):
    other = prompt[:-3]
    body = complete(api, prompt=[prompt, other], n=2, max_tokens=4, seed=5)
    assert [c["index"] for c in body["choices"]] == [0, 1, 2, 3]
    alone = complete(api, prompt=other, n=2, max_tokens=4, seed=5)
    assert [c["text"] for c in body["choices"][2:]] == [c["text"] for c in alone["choices"]]
    assert body["usage"]["prompt_tokens"] == len(prompt) + len(other)


def events(client, **body) -> list[dict]:
    with client.stream("POST", "/v1/completions", json={**body, "stream": True}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in r.iter_lines() if line]
    assert lines[-1] == "data: [DONE]" and all(line.startswith("data: ") for line in lines)
    return [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]


def test_a_stream_sends_each_token_of_each_choice_with_its_logprobs_and_the_same_text(api, prompt):
    knobs = dict(prompt=[prompt, prompt[:-2]], n=2, max_tokens=4, seed=8, logprobs=2)
    whole = complete(api, **knobs)
    chunks = events(api, **knobs, stream_options={"include_usage": True})
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == whole["usage"]
    for choice in whole["choices"]:
        mine = [c["choices"][0] for c in chunks[:-1] if c["choices"][0]["index"] == choice["index"]]
        assert all(c["object"] == "text_completion" for c in chunks)
        assert "".join(c["text"] for c in mine) == choice["text"]
        assert mine[-1]["finish_reason"] == choice["finish_reason"]
        for field in ("tokens", "token_logprobs", "top_logprobs", "text_offset"):
            assert sum((c["logprobs"][field] for c in mine), []) == choice["logprobs"][field]


def test_logprobs_have_vllms_completions_shape(api, prompt):
    body = complete(api, prompt=prompt, max_tokens=4, seed=2, logprobs=5)
    choice = body["choices"][0]
    lp = choice["logprobs"]
    assert len(lp["tokens"]) == len(lp["token_logprobs"]) == len(lp["top_logprobs"]) == len(lp["text_offset"]) == 4
    assert lp["text_offset"] == sorted(lp["text_offset"]) and lp["text_offset"][0] == 0
    for token, value, top in zip(lp["tokens"], lp["token_logprobs"], lp["top_logprobs"]):
        assert 5 <= len(top) <= 6  # the top 5, and the chosen token when it is not among them (as vLLM)
        assert top[token] == value
        assert list(top.values())[:5] == sorted(list(top.values())[:5], reverse=True)


def test_raw_logprobs_are_the_models_distribution_whatever_the_knobs(api, lm, prompt):
    body = complete(api, prompt=prompt, max_tokens=1, seed=2, logprobs=3, temperature=0.3, top_k=2,
                    presence_penalty=2.0, return_tokens_as_token_ids=True)
    top = body["choices"][0]["logprobs"]["top_logprobs"][0]
    expected = torch.log_softmax(local_logits(lm, prompt), dim=-1).topk(3)
    assert [int(k.removeprefix("token_id:")) for k in list(top)[:3]] == expected.indices.tolist()
    assert list(top.values())[:3] == expected.values.tolist()


def test_raw_logits_are_the_models_logits_for_the_position(uncapped, lm, prompt):
    body = complete(uncapped, prompt=prompt, max_tokens=1, logprobs=-1, logprobs_format="base64_float32")
    (entry,) = body["choices"][0]["logprobs"]["top_logprobs_base64"]
    ids, values = decode_base64_entry(entry, lm.vocab_size)
    assert entry["ids"] is None and len(values) == lm.vocab_size
    assert torch.equal(torch.from_numpy(values.copy()), local_logits(lm, prompt))


def test_the_whole_vocabulary_as_json_equals_the_base64_form(uncapped, lm, prompt):
    as_json = complete(uncapped, prompt=prompt, max_tokens=1, logprobs=-1, return_tokens_as_token_ids=True, seed=4)
    as_b64 = complete(uncapped, prompt=prompt, max_tokens=1, logprobs=-1, logprobs_format="base64_float32", seed=4)
    top = as_json["choices"][0]["logprobs"]["top_logprobs"][0]
    assert len(top) == lm.vocab_size
    dense = np.empty(lm.vocab_size, dtype=np.float32)
    for name, value in top.items():
        dense[int(name.removeprefix("token_id:"))] = value
    _, values = decode_base64_entry(as_b64["choices"][0]["logprobs"]["top_logprobs_base64"][0], lm.vocab_size)
    assert np.array_equal(dense, values)


def test_base64_top_k_sends_ids_in_token_id_order_with_their_values(uncapped, lm, prompt):
    body = complete(uncapped, prompt=prompt, max_tokens=1, logprobs=10, logprobs_format="base64_float32")
    ids, values = decode_base64_entry(body["choices"][0]["logprobs"]["top_logprobs_base64"][0], lm.vocab_size)
    logits = local_logits(lm, prompt)
    assert list(ids) == sorted(logits.topk(10).indices.tolist())
    assert values.tolist() == logits[torch.from_numpy(ids.astype(np.int64))].tolist()


def test_processed_logprobs_are_the_distribution_each_token_was_drawn_from(lm, prompt):
    knobs = dict(prompt=prompt, max_tokens=5, seed=9, temperature=0.8, top_k=4, frequency_penalty=1.5, mirostat_tau=3.0,
                 logprobs=-1, logprobs_format="base64_float32")
    with serving(lm, max_logprobs=-1, logprobs_mode="processed_logprobs") as client:
        body = complete(client, **knobs)
    with serving(lm) as client:  # the chat endpoint's trace records each step's final logprob of the chosen token
        trace = client.post("/v1/chat/completions", json={"messages": MESSAGES, "trace": True, **{
            k: v for k, v in knobs.items() if k not in ("prompt", "logprobs", "logprobs_format")}}).json()
    lp = body["choices"][0]["logprobs"]
    for entry, chosen, step in zip(lp["top_logprobs_base64"], lp["token_logprobs"], trace["choices"][0]["trace"]["steps"]):
        _, values = decode_base64_entry(entry, lm.vocab_size)
        assert np.isfinite(values).sum() <= 4  # top_k removed the rest
        assert float(np.logaddexp.reduce(values[np.isfinite(values)])) == pytest.approx(0.0, abs=1e-5)
        assert chosen == pytest.approx(step["logprob"], abs=1e-5)


def test_logprobs_above_the_cap_are_refused_naming_the_cap(api):
    error = refused(api, prompt=[1, 2], logprobs=21)
    assert error["param"] == "logprobs" and "[0, 20]" in error["message"]
    error = refused(api, prompt=[1, 2], logprobs=-1)
    assert error["param"] == "logprobs" and "--max-logprobs -1" in error["message"]


@pytest.mark.parametrize("body, param, said", [
    (dict(prompt=[1, 49152]), "prompt", "outside the vocabulary"),
    (dict(prompt=[[1, 2], [-1]]), "prompt[1]", "outside the vocabulary"),
    (dict(prompt=[]), "prompt", "empty"),
    (dict(prompt=""), "prompt", "empty"),
    (dict(prompt=[1] * 8192), "prompt", "context window"),
    (dict(prompt=[1, 2], echo=True), "echo", "not supported"),
    (dict(prompt=[1, 2], stream_options={"include_usage": True}), "stream_options", "stream is true"),
    (dict(prompt=[1, 2], logprobs_mode="raw_logits"), "logprobs_mode", "Unknown parameter"),  # a server flag only
    (dict(prompt=[1, 2], temperature=-1), "temperature", "temperature"),
    (dict(prompt=[1, 2], best_of=3), "best_of", "n"),
    (dict(prompt=[1, 2], logprobz=3), "logprobz", "Unknown parameter"),
])
def test_bad_input_is_400_naming_the_parameter(api, body, param, said):
    error = refused(api, **body)
    assert error["param"] == param and said in error["message"]


def test_tokenize_applies_the_chat_template_and_detokenize_inverts_it(api, lm):
    ids = api.post("/tokenize", json={"messages": MESSAGES, "add_generation_prompt": True}).json()
    assert ids["tokens"] == lm.encode_chat(MESSAGES) and ids["count"] == len(ids["tokens"])
    assert ids["max_model_len"] == lm.context_length
    text = api.post("/detokenize", json={"tokens": ids["tokens"]}).json()["prompt"]
    assert text.endswith("<|im_start|>assistant\n")
    assert api.post("/tokenize", json={"prompt": text}).json()["tokens"] == ids["tokens"]


def test_tokenize_without_the_generation_prompt_ends_with_the_last_message(api):
    ids = api.post("/tokenize", json={"messages": MESSAGES, "add_generation_prompt": False,
                                      "return_token_strs": True}).json()
    assert "assistant" not in "".join(ids["token_strs"][-3:])


def test_the_model_card_carries_the_context_window_as_vllms_does(api, lm):
    (card,) = api.get("/v1/models").json()["data"]
    assert card["max_model_len"] == lm.context_length


def test_detokenize_refuses_ids_outside_the_vocabulary(api):
    r = api.post("/detokenize", json={"tokens": [1, 10**6]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "tokens"


def test_tokenize_and_completions_need_the_key_on_a_server_with_one(lm):
    with serving(lm, api_key="sesame") as client:
        assert client.post("/tokenize", json={"prompt": "hi"}).status_code == 401
        assert client.post("/detokenize", json={"tokens": [1]}).status_code == 401
        assert client.post("/v1/completions", json={"prompt": [1]}).status_code == 401
        ok = client.post("/tokenize", json={"prompt": "hi"}, headers={"Authorization": "Bearer sesame"})
        assert ok.status_code == 200


def test_the_server_flags_offer_vllms_logprobs_modes():
    assert app_module.LOGPROBS_MODES == LOGPROBS_MODES
    args = app_module.parse_args(["--max-logprobs", "-1", "--logprobs-mode", "raw_logits", "--kv-store-mb", "0"])
    assert (args.max_logprobs, args.logprobs_mode, args.kv_store_mb) == (-1, "raw_logits", 0)
    assert app_module.parse_args([]).max_logprobs == 20
    with pytest.raises(SystemExit):
        app_module.parse_args(["--max-logprobs", "-2"])


@pytest.mark.server
def test_the_official_openai_client_drives_completions_with_token_prompts(server, prompt):
    import openai

    client = openai.OpenAI(base_url=server.api, api_key="unused", max_retries=0, timeout=120)
    model = client.models.list().data[0].id
    got = client.completions.create(model=model, prompt=[prompt, prompt[:-1]], max_tokens=2, seed=4, logprobs=3,
                                    extra_body={"top_k": 20, "return_tokens_as_token_ids": True})
    assert [c.index for c in got.choices] == [0, 1] and got.usage.completion_tokens == 4
    for choice in got.choices:
        assert all(t.startswith("token_id:") for t in choice.logprobs.tokens)
        assert len(choice.logprobs.top_logprobs) == 2 and all(len(top) >= 3 for top in choice.logprobs.top_logprobs)
    streamed = client.completions.create(model=model, prompt=prompt, max_tokens=2, seed=4, stream=True,
                                         extra_body={"top_k": 20})
    assert "".join(chunk.choices[0].text for chunk in streamed) == got.choices[0].text
