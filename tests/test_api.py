"""The OpenAI-compatible API, driven with the official openai client against the real app (see
tests/conftest.py `server`). Completions stay a few tokens long: the model runs on a shared 2-core CPU."""

from __future__ import annotations

import inspect
import json
import math

import httpx
import openai
import pytest

from engine.knobs import KNOBS, MAX_STOP_SEQUENCES, STAGE_ORDER, Knob

pytestmark = [pytest.mark.server, pytest.mark.model]

HELLO = [{"role": "user", "content": "Write a short poem about the sea."}]


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.api, api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def model(client):
    return client.models.list().data[0].id


OPENAI_PARAMS = set(inspect.signature(openai.resources.chat.Completions.create).parameters)


def chat(client, model, messages=HELLO, **knobs):
    """A chat completion; knobs that are not OpenAI's travel in extra_body, as a real client sends them."""
    extra = {k: knobs.pop(k) for k in list(knobs) if k not in OPENAI_PARAMS}
    return client.chat.completions.create(model=model, messages=messages, extra_body=extra or None, **knobs)


def stream_chunks(client, model, **knobs):
    return list(chat(client, model, stream=True, **knobs))


def refusal(client, model, **knobs) -> dict:
    with pytest.raises(openai.BadRequestError) as info:
        chat(client, model, **knobs)
    return info.value.body  # the "error" object of the response


# --- shapes --------------------------------------------------------------------------------------------

def test_models_lists_the_loaded_model(client):
    models = client.models.list().data
    assert [m.id for m in models] == ["HuggingFaceTB/SmolLM2-135M-Instruct"]
    assert client.models.retrieve(models[0].id).id == models[0].id


def test_plain_call_answers_in_the_chat_completion_shape(client, model):
    r = chat(client, model, max_tokens=3, seed=1)
    assert r.object == "chat.completion" and r.id.startswith("chatcmpl-") and r.model == model
    assert isinstance(r.created, int) and r.system_fingerprint.startswith("fp_")
    (choice,) = r.choices
    assert choice.index == 0 and choice.message.role == "assistant" and choice.message.content
    assert choice.finish_reason in ("stop", "length")
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    assert 1 <= r.usage.completion_tokens <= 3


def test_max_tokens_ends_the_completion_with_length(client, model):
    r = chat(client, model, messages=[{"role": "user", "content": "Count from one to fifty."}], max_tokens=4, temperature=0)
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 4


def test_system_fingerprint_is_stable_across_requests(client, model):
    assert chat(client, model, max_tokens=1).system_fingerprint == chat(client, model, max_tokens=1).system_fingerprint


def test_same_seed_gives_the_same_completion(client, model):
    a = chat(client, model, max_tokens=6, seed=42, temperature=1.3)
    b = chat(client, model, max_tokens=6, seed=42, temperature=1.3)
    assert a.choices[0].message.content == b.choices[0].message.content
    assert a.model_extra["seed"] == 42


def test_the_returned_seed_reproduces_a_randomly_seeded_answer(client, model):
    first = chat(client, model, max_tokens=6, temperature=1.3)
    seed = first.model_extra["seed"]
    again = chat(client, model, max_tokens=6, temperature=1.3, seed=seed)
    assert again.choices[0].message.content == first.choices[0].message.content


def test_n_gives_separate_indexed_choices(client, model):
    r = chat(client, model, n=3, max_tokens=5, seed=7, temperature=1.5)
    assert [c.index for c in r.choices] == [0, 1, 2]
    assert len({c.message.content for c in r.choices}) > 1  # one seed, yet each choice draws its own tokens


def test_developer_and_content_parts_are_read_as_text(client, model):
    messages = [{"role": "developer", "content": "Answer in French."},
                {"role": "user", "content": [{"type": "text", "text": "Hello"}, {"type": "text", "text": "there"}]}]
    assert chat(client, model, messages=messages, max_tokens=2).choices[0].message.content


# --- streaming -----------------------------------------------------------------------------------------

def test_stream_sends_one_chunk_per_token_per_choice_and_the_same_text(client, model):
    knobs = dict(n=2, max_tokens=5, seed=3, temperature=1.2)
    whole = chat(client, model, **knobs)
    chunks = stream_chunks(client, model, stream_options={"include_usage": True}, **knobs)
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)
    texts, tokens, finish = {0: "", 1: ""}, {0: 0, 1: 0}, {}
    for c in chunks[:-1]:
        (choice,) = c.choices
        if choice.delta.role == "assistant":
            continue
        texts[choice.index] += choice.delta.content or ""
        tokens[choice.index] += 1
        if choice.finish_reason:
            finish[choice.index] = choice.finish_reason
    assert [texts[0], texts[1]] == [c.message.content for c in whole.choices]
    assert [finish[0], finish[1]] == [c.finish_reason for c in whole.choices]
    assert chunks[-1].choices == [] and chunks[-1].usage.model_dump() == whole.usage.model_dump()
    assert tokens[0] + tokens[1] == whole.usage.completion_tokens


def test_stream_is_data_only_events_ending_with_done(server, model):
    body = {"model": model, "messages": HELLO, "max_tokens": 2, "stream": True}
    with httpx.stream("POST", server.api + "/chat/completions", json=body, timeout=60) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = [line for line in r.iter_lines() if line]
    assert all(line.startswith("data: ") for line in events)
    assert events[-1] == "data: [DONE]"
    last = json.loads(events[-2][len("data: "):])
    assert last["choices"][0]["finish_reason"] in ("stop", "length") and "usage" not in last


def test_stream_refuses_bad_input_with_400_before_streaming(client, model):
    assert refusal(client, model, stream=True, temperature=9)["param"] == "temperature"


# --- stop ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def greedy_text(client, model):
    return chat(client, model, max_tokens=12, temperature=0).choices[0].message.content


def _needle(text: str) -> str:
    # A short piece from the middle that first occurs where it is taken, so the expected cut is known.
    for start in range(len(text) // 3, len(text) - 3):
        piece = text[start : start + 3]
        if piece.strip() and text.find(piece) == start:
            return piece
    raise AssertionError(f"no usable stop sequence in {text!r}")


def test_stop_sequence_ends_the_text_and_is_included(client, model, greedy_text):
    stop = _needle(greedy_text)
    r = chat(client, model, max_tokens=12, temperature=0, stop=[stop])
    assert r.choices[0].message.content == greedy_text[: greedy_text.find(stop) + len(stop)]
    assert r.choices[0].finish_reason == "stop"


def test_stop_works_in_streams(client, model, greedy_text):
    stop = _needle(greedy_text)
    chunks = stream_chunks(client, model, max_tokens=12, temperature=0, stop=stop)
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text == greedy_text[: greedy_text.find(stop) + len(stop)]
    assert chunks[-1].choices[0].finish_reason == "stop"


# --- logprobs and the trace extension ------------------------------------------------------------------

def test_logprobs_have_the_openai_shape_and_rebuild_the_text(client, model):
    r = chat(client, model, max_tokens=5, temperature=0, logprobs=True, top_logprobs=3,
             messages=[{"role": "user", "content": "Count from one to fifty."}])
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens == 5
    for entry in content:
        assert isinstance(entry.token, str) and entry.logprob <= 0 and all(0 <= b < 256 for b in entry.bytes)
        assert len(entry.top_logprobs) == 3
        tops = [t.logprob for t in entry.top_logprobs]
        assert tops == sorted(tops, reverse=True)
        assert entry.top_logprobs[0].token == entry.token  # greedy picks the raw top token
    assert bytes(b for e in content for b in e.bytes).decode() == r.choices[0].message.content


def test_logprobs_are_of_the_raw_distribution_whatever_the_temperature(client, model):
    # Both settings pick the raw top token first; under the sampled (final) distributions the
    # alternatives' numbers would differ wildly, under the raw one they are the same.
    greedy = chat(client, model, max_tokens=1, temperature=0, logprobs=True, top_logprobs=3)
    cold = chat(client, model, max_tokens=1, temperature=0.05, seed=1, logprobs=True, top_logprobs=3)
    a, b = greedy.choices[0].logprobs.content[0], cold.choices[0].logprobs.content[0]
    assert a.token == b.token
    assert [t.token for t in a.top_logprobs] == [t.token for t in b.top_logprobs]
    for x, y in zip(a.top_logprobs, b.top_logprobs):
        assert math.isclose(x.logprob, y.logprob, abs_tol=1e-4)


def test_logprobs_stream_with_each_token(client, model):
    chunks = stream_chunks(client, model, max_tokens=3, seed=5, logprobs=True, top_logprobs=2)
    entries = [c.choices[0].logprobs.content[0] for c in chunks if c.choices[0].logprobs]
    whole = chat(client, model, max_tokens=3, seed=5, logprobs=True, top_logprobs=2).choices[0].logprobs.content
    assert [(e.token, len(e.top_logprobs)) for e in entries] == [(e.token, 2) for e in whole]


def test_trace_holds_every_stage_of_every_step(client, model):
    r = chat(client, model, max_tokens=4, seed=11, trace=True, top_k=40, temperature=0.8)
    trace = r.choices[0].model_extra["trace"]
    assert trace["stages"] == ["raw", *STAGE_ORDER]
    assert len(trace["steps"]) == r.usage.completion_tokens
    for step in trace["steps"]:
        cands = step["candidates"]
        assert step["token_id"] in cands and all(str(i) in trace["tokens"] for i in cands)
        assert [s["name"] for s in step["stages"]] == trace["stages"]
        assert all(len(s["probs"]) == len(cands) for s in step["stages"])
        final = step["stages"][-1]["probs"][cands.index(step["token_id"])]
        assert math.isclose(final, math.exp(step["logprob"]), rel_tol=1e-3, abs_tol=1e-5)
        assert step["stages"][STAGE_ORDER.index("top_k") + 1]["kept"] <= 40


def test_trace_streams_one_step_per_chunk(client, model):
    whole = chat(client, model, max_tokens=3, seed=12, trace=True).choices[0].model_extra["trace"]
    chunks = stream_chunks(client, model, max_tokens=3, seed=12, trace=True)
    streamed = [s for c in chunks if "trace" in (c.choices[0].model_extra or {}) for s in c.choices[0].model_extra["trace"]["steps"]]
    assert streamed == whole["steps"]


# --- every knob, in range and out ----------------------------------------------------------------------

def in_range(knob: Knob):
    """A value each knob must accept: its edge where the edge is allowed, else a value inside."""
    return {
        "temperature": 2.0, "top_p": 0.5, "top_k": 1, "min_p": 1.0, "presence_penalty": -2.0,
        "frequency_penalty": 2.0, "repetition_penalty": 1.5, "max_tokens": 1, "max_completion_tokens": 1,
        "stop": ["a", "b", "c", "d"], "context_length_exceeded_behavior": "error", "n": 2, "seed": 2**63 - 1,
        "logprobs": True, "top_logprobs": 20, "logit_bias": {"5": 100, "6": -100},
        "sampler_order": list(reversed(STAGE_ORDER)), "typical_p": 0.5, "top_n_sigma": 1.5, "xtc_probability": 1.0,
        "xtc_threshold": 0.5, "dry_multiplier": 0.8, "dry_base": 1.0, "dry_allowed_length": 1,
        "dry_sequence_breakers": ["\n", "."], "dry_penalty_last_n": 64, "mirostat": 2, "mirostat_tau": 3.0, "mirostat_eta": 1.0,
        "dynatemp_range": 0.5, "dynatemp_exponent": 0.0,
    }[knob.name]


def out_of_range(knob: Knob) -> list:
    """Values each knob must refuse: past each end of its range, and of the wrong type."""
    if knob.kind in ("float", "int", "optional_int"):
        values = ["high"]
        if knob.lo is not None:
            values.append(knob.lo if knob.lo_open else knob.lo - 1)
        if knob.hi is not None:
            values.append(knob.hi if knob.hi_open else knob.hi + 1)
        if knob.kind != "float":
            values.append(1.5)
        return values
    return {
        "bool": ["yes"], "choice": ["sideways", 1], "stop": [["s"] * (MAX_STOP_SEQUENCES + 1), [""]], "strings": [[""], 5],
        "logit_bias": [{"5": 101}, {"five": 1}, {"\u00b2": 1}, {"99999999": 1}], "order": [["temperature"]],
    }[knob.kind]


@pytest.mark.parametrize("name", list(KNOBS))
def test_every_knob_is_accepted_in_range(client, model, name):
    knobs = {name: in_range(KNOBS[name])}
    if name == "top_logprobs":
        knobs["logprobs"] = True
    if name not in ("max_tokens", "max_completion_tokens"):
        knobs["max_tokens"] = 1
    r = chat(client, model, **knobs)
    assert r.choices[0].finish_reason in ("stop", "length")


@pytest.mark.parametrize("name,value", [(k.name, v) for k in KNOBS.values() for v in out_of_range(k)])
def test_every_knob_is_refused_out_of_range_naming_it(client, model, name, value):
    error = refusal(client, model, **{"max_tokens": 1, name: value})
    assert error["param"] == name and error["type"] == "invalid_request_error"
    assert name in error["message"]


def test_the_tiniest_temperature_and_top_p_keep_only_the_top_token(client, model):
    greedy = chat(client, model, max_tokens=3, temperature=0).choices[0].message.content
    assert chat(client, model, max_tokens=3, temperature=5e-324, seed=1).choices[0].message.content == greedy
    assert chat(client, model, max_tokens=3, top_p=5e-324, seed=1).choices[0].message.content == greedy


def test_top_logprobs_without_logprobs_is_refused(client, model):
    assert refusal(client, model, max_tokens=1, top_logprobs=2)["param"] == "top_logprobs"


def test_max_completion_tokens_wins_over_max_tokens(client, model):
    r = chat(client, model, messages=[{"role": "user", "content": "Count from one to fifty."}],
             max_tokens=6, max_completion_tokens=2, temperature=0)
    assert r.usage.completion_tokens == 2


def test_a_completion_that_cannot_fit_the_context_is_refused_when_asked(client, model):
    error = refusal(client, model, max_tokens=9000, context_length_exceeded_behavior="error")
    assert error["param"] == "max_tokens" and error["code"] == "context_length_exceeded"


def test_a_prompt_longer_than_the_context_is_refused(client, model):
    error = refusal(client, model, messages=[{"role": "user", "content": "sea " * 9000}], max_tokens=1)
    assert error["param"] == "messages" and error["code"] == "context_length_exceeded"


# --- malformed requests and what this model cannot do --------------------------------------------------

def post(server, body, **kw) -> httpx.Response:
    return httpx.post(server.api + "/chat/completions", timeout=60, **({"json": body} if body is not None else {}), **kw)


def test_malformed_json_is_400_in_the_openai_shape(server):
    r = post(server, None, content=b'{"messages": [', headers={"content-type": "application/json"})
    assert r.status_code == 400 and set(r.json()["error"]) == {"message", "type", "param", "code"}
    assert "JSON" in r.json()["error"]["message"]


def test_missing_messages_is_400_naming_them(server):
    r = post(server, {"max_tokens": 1})
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages"


def test_a_malformed_message_is_400_naming_its_field(server):
    r = post(server, {"messages": [{"role": "user", "content": 5}]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages[0].content"


def test_an_unknown_parameter_is_400_naming_it(client, model):
    error = refusal(client, model, max_tokens=1, temprature=0.5)
    assert error["param"] == "temprature" and error["code"] == "unknown_parameter"


def test_an_unknown_model_is_404(client):
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="no-such-model", messages=HELLO, max_tokens=1)
    assert info.value.body["param"] == "model" and info.value.body["code"] == "model_not_found"


def test_an_unknown_path_is_404_in_the_openai_shape(server):
    r = httpx.get(server.api + "/embeddings", timeout=10)
    assert r.status_code == 404 and r.json()["error"]["code"] == "unknown_url"


def test_an_image_part_is_refused_naming_it(client, model):
    messages = [{"role": "user", "content": [{"type": "text", "text": "What is this?"},
                                             {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA=="}}]}]
    assert refusal(client, model, messages=messages, max_tokens=1)["param"].startswith("messages[0].content")


ADD = {"type": "function", "function": {"name": "add", "parameters": {
    "type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}, "required": ["a", "b"]}}}
ADD_QUESTION = [{"role": "user", "content": "Add 2 and 3."}]


def test_a_required_tool_call_comes_back_as_tool_calls(client, model):
    r = chat(client, model, messages=ADD_QUESTION, tools=[ADD], tool_choice="required", temperature=0, max_tokens=40)
    (choice,) = r.choices
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls
    assert call.id.startswith("call_") and call.function.name == "add"
    assert set(json.loads(call.function.arguments)) == {"a", "b"}


def test_a_streamed_tool_call_arrives_whole_in_the_last_chunk(client, model):
    chunks = stream_chunks(client, model, messages=ADD_QUESTION, tools=[ADD], tool_choice="required", temperature=0, max_tokens=40)
    last = chunks[-1].choices[0]
    assert last.finish_reason == "tool_calls" and last.delta.tool_calls[0].index == 0
    assert last.delta.tool_calls[0].function.name == "add"
    assert all(not (c.choices[0].delta.content or "") for c in chunks)  # the call's raw text is not leaked as content


def test_tools_with_tool_choice_none_answer_in_text(client, model):
    r = chat(client, model, messages=ADD_QUESTION, max_tokens=2, tools=[ADD], tool_choice="none")
    assert r.choices[0].message.tool_calls is None and r.choices[0].message.content


def test_a_tool_choice_naming_an_unknown_tool_is_refused(client, model):
    error = refusal(client, model, max_tokens=1, tools=[ADD], tool_choice={"type": "function", "function": {"name": "mul"}})
    assert error["param"] == "tool_choice"


def test_a_malformed_tool_is_refused(client, model):
    assert refusal(client, model, max_tokens=1, tools=[{"type": "function", "function": {"name": "bad name!"}}])["param"].startswith("tools")


def test_a_json_schema_response_format_gives_matching_json(client, model):
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"], "additionalProperties": False}
    r = chat(client, model, temperature=0, max_tokens=20,
             response_format={"type": "json_schema", "json_schema": {"name": "answer", "schema": schema, "strict": True}})
    assert r.choices[0].finish_reason == "stop"
    assert set(json.loads(r.choices[0].message.content)) == {"ok"}


def test_audio_output_is_refused_naming_modalities(client, model):
    assert refusal(client, model, max_tokens=1, modalities=["text", "audio"])["param"] == "modalities"
    assert chat(client, model, max_tokens=1, modalities=["text"]).choices[0].message.content is not None


def test_reasoning_effort_is_refused_for_a_model_that_does_not_think(client, model):
    error = refusal(client, model, max_tokens=1, reasoning_effort="low")
    assert error["param"] == "reasoning_effort" and "template" in error["message"]


# --- the published schema ------------------------------------------------------------------------------

def test_openapi_schema_publishes_every_knob_with_its_range(server):
    spec = httpx.get(server.url + "/openapi.json", timeout=10).json()
    ref = spec["paths"]["/v1/chat/completions"]["post"]["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    props = spec["components"]["schemas"][ref.rsplit("/", 1)[1]]["properties"]
    assert set(KNOBS) <= set(props)
    temperature = props["temperature"]["anyOf"][0]
    assert (temperature["minimum"], temperature["maximum"]) == (KNOBS["temperature"].lo, KNOBS["temperature"].hi)
    assert props["top_p"]["anyOf"][0]["exclusiveMinimum"] == 0
    assert "extra_body" in props["top_k"]["description"]
