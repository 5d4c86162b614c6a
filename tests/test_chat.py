"""A chat request end to end on the embedded model: messages checked, tools offered, messages returned."""

import json

import pytest

from engine.chat import ChatRequest, check_messages, check_modalities
from engine.knobs import ParamError, SamplingParams

ADD = {"type": "function", "function": {"name": "add", "parameters": {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}, "required": ["a", "b"]}}}


def test_text_parts_are_joined_and_developer_is_a_system_message():
    msgs = check_messages([{"role": "developer", "content": "Be brief."}, {"role": "user", "content": [{"type": "text", "text": "Hi "}, {"type": "text", "text": "there"}]}])
    assert msgs == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"}]


@pytest.mark.parametrize(
    "messages, param",
    [
        ([], "messages"),
        ([{"role": "wizard", "content": "x"}], "messages[0].role"),
        ([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}], "messages[0].content"),
        ([{"role": "user"}], "messages[0].content"),
        ([{"role": "user", "content": 5}], "messages[0].content"),
    ],
)
def test_bad_messages_are_refused_naming_the_field(messages, param):
    with pytest.raises(ParamError) as e:
        check_messages(messages)
    assert e.value.param == param


def test_text_modality_works_and_audio_is_refused_clearly():
    check_modalities(["text"])
    with pytest.raises(ParamError) as e:
        check_modalities(["text", "audio"])
    assert e.value.param == "modalities" and "audio" in e.value.message


@pytest.mark.model
def test_required_tool_choice_returns_a_tool_call_message(lm):
    chat = ChatRequest.build(lm, [{"role": "user", "content": "Add 2 and 3."}], SamplingParams.build(temperature=0, max_tokens=40),
                             tools=[ADD], tool_choice="required")
    gen = chat.generation()
    for _ in gen:
        pass
    msg = chat.message(gen.texts[0], gen.finish_reasons[0])
    assert msg["finish_reason"] == "tool_calls" and msg["content"] is None
    call = msg["tool_calls"][0]["function"]
    assert call["name"] == "add" and set(json.loads(call["arguments"])) == {"a", "b"}


@pytest.mark.model
def test_tool_results_can_be_sent_back(lm):
    history = [
        {"role": "user", "content": "Add 2 and 3."},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "add", "arguments": '{"a": 2, "b": 3}'}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "5"},
    ]
    chat = ChatRequest.build(lm, history, SamplingParams.build(temperature=0, max_tokens=30), tools=[ADD], tool_choice="none")
    text = lm.tokenizer.decode(chat.prompt_ids)
    assert "<|im_start|>tool\n5<|im_end|>" in text and '"name": "add"' in text
    gen = chat.generation()
    for _ in gen:
        pass
    assert chat.message(gen.texts[0], gen.finish_reasons[0])["tool_calls"] == []


@pytest.mark.model
def test_reasoning_effort_on_a_model_without_thinking_names_the_knob(lm):
    with pytest.raises(ParamError) as e:
        ChatRequest.build(lm, [{"role": "user", "content": "Hi"}], SamplingParams.build(), reasoning_effort="high")
    assert e.value.param == "reasoning_effort"
