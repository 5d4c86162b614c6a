"""Tools, tool_choice and response_format on the embedded model: guaranteed calls and valid JSON."""

import json

import jsonschema_rs
import numpy as np
import pytest

from engine.generator import Generation
from engine.knobs import ParamError, SamplingParams
from engine import tools as T

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["C", "F"]}},
            "required": ["city", "unit"],
        },
    },
}
ADD = {
    "type": "function",
    "function": {
        "name": "add",
        "parameters": {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}, "required": ["a", "b"]},
    },
}
FUNCTIONS = T.check_tools([WEATHER, ADD])


def run(lm, messages, grammar, functions=(), **knobs):
    msgs, kw = T.prompt_messages(messages, list(functions), lm.tokenizer)
    gen = Generation(lm, lm.encode_chat(msgs, **kw), SamplingParams.build(**knobs), grammar=grammar)
    for _ in gen:
        pass
    return gen


def assert_valid_call(text, allowed_names):
    content, calls = T.parse_tool_calls(text, FUNCTIONS)
    assert content is None and len(calls) == 1, text
    fn = calls[0]["function"]
    assert fn["name"] in allowed_names
    schema = T.closed(next(f["parameters"] for f in FUNCTIONS if f["name"] == fn["name"]))
    assert jsonschema_rs.validator_for(schema).is_valid(json.loads(fn["arguments"]))


@pytest.mark.model
def test_tool_choice_required_always_yields_a_schema_valid_call(lm):
    ask = [{"role": "user", "content": "What is the weather like in Paris?"}]
    gen = run(lm, ask, T.call_grammar(FUNCTIONS, "required"), FUNCTIONS, temperature=1.2, n=6, seed=0, max_tokens=80)
    assert gen.finish_reasons == ["stop"] * 6
    for text in gen.texts:
        assert_valid_call(text, {"get_weather", "add"})


@pytest.mark.model
def test_a_named_tool_choice_always_calls_that_function(lm):
    ask = [{"role": "user", "content": "Tell me a joke."}]
    choice = T.check_tool_choice({"type": "function", "function": {"name": "add"}}, FUNCTIONS)
    gen = run(lm, ask, T.call_grammar(FUNCTIONS, choice), FUNCTIONS, temperature=1.0, n=4, seed=1, max_tokens=60)
    for text in gen.texts:
        assert_valid_call(text, {"add"})


@pytest.mark.model
def test_json_schema_output_always_parses_and_validates(lm):
    # Bounded fields, so every completion finishes well within max_tokens whatever the seed.
    schema = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 20}, "age": {"type": "integer", "minimum": 0, "maximum": 120}},
              "required": ["name", "age"]}
    grammar = T.response_grammar({"type": "json_schema", "json_schema": {"name": "person", "schema": schema, "strict": True}})
    gen = run(lm, [{"role": "user", "content": "Describe a person as JSON."}], grammar, temperature=1.0, n=4, seed=2, max_tokens=60)
    assert gen.finish_reasons == ["stop"] * 4
    for text in gen.texts:
        assert jsonschema_rs.validator_for(schema).is_valid(json.loads(text))


@pytest.mark.model
def test_json_object_output_is_an_object(lm):
    gen = run(lm, [{"role": "user", "content": "Give the colour of a banana as JSON."}], T.response_grammar({"type": "json_object"}),
              temperature=0.7, seed=3, n=8, max_tokens=100)
    finished = [t for t, r in zip(gen.texts, gen.finish_reasons) if r == "stop"]
    assert finished  # an unbounded object may run out of tokens; the ones that end are objects
    for text in finished:
        assert isinstance(json.loads(text), dict)


@pytest.mark.model
def test_the_constraint_stage_records_what_the_mask_removed(lm):
    gen = run(lm, [{"role": "user", "content": "Weather in Rome?"}], T.call_grammar(FUNCTIONS, "required"), FUNCTIONS,
              temperature=0, max_tokens=40)
    c = gen.stages.index("constraint")
    assert c == 1
    for s in gen.completions[0]:
        raw, masked = s.stage_probs[0], s.stage_probs[c]
        # What survived is the raw distribution renormalised over the allowed tokens...
        allowed_mass = 1.0 - s.stage_removed[c]
        survivors = masked > 0
        assert np.allclose(masked[survivors] * allowed_mass, raw[survivors], rtol=1e-3, atol=1e-4)
        # ...and the removed mass is the raw mass of everything forbidden.
        assert 0.0 <= s.stage_removed[c] <= 1.0
        assert s.stage_kept[c] >= 1 and s.stage_probs[c].sum() <= 1.0 + 1e-5
    first = gen.completions[0][0]
    assert first.stage_kept[c] == 1 and first.stage_removed[c] > 0.5  # only "<" of "<tool_call>" may start


def test_tool_choice_none_or_auto_adds_no_grammar():
    assert T.call_grammar(FUNCTIONS, "none") is None and T.call_grammar(FUNCTIONS, "auto") is None


@pytest.mark.parametrize(
    "tools, param",
    [
        ([{"type": "retrieval"}], "tools[0]"),
        ([{"type": "function", "function": {"name": "has space"}}], "tools[0].function.name"),
        ([WEATHER, WEATHER], "tools[1].function.name"),
        ("get_weather", "tools"),
    ],
)
def test_malformed_tools_are_refused_naming_the_field(tools, param):
    with pytest.raises(ParamError) as e:
        T.check_tools(tools)
    assert e.value.param == param


def test_tool_choice_must_name_a_known_function():
    with pytest.raises(ParamError) as e:
        T.check_tool_choice({"type": "function", "function": {"name": "nope"}}, FUNCTIONS)
    assert e.value.param == "tool_choice"
    with pytest.raises(ParamError):
        T.check_tool_choice("required", [])
    assert T.check_tool_choice(None, FUNCTIONS) == "auto" and T.check_tool_choice(None, []) == "none"


def test_tool_calls_are_parsed_with_their_arguments_as_json_text():
    text = 'Sure.\n<tool_call>\n{"name": "add", "arguments": {"a": 1, "b": 2}}\n</tool_call>'
    content, calls = T.parse_tool_calls(text, FUNCTIONS)
    assert content == "Sure."
    assert calls[0]["type"] == "function" and calls[0]["id"].startswith("call_")
    assert json.loads(calls[0]["function"]["arguments"]) == {"a": 1, "b": 2}


def test_calls_to_unknown_functions_stay_text():
    text = '<tool_call>{"name": "rm_rf", "arguments": {}}</tool_call>'
    assert T.parse_tool_calls(text, FUNCTIONS) == (text, [])


def test_without_template_support_tools_and_results_are_written_into_the_conversation():
    class NoTools:
        chat_template = "{{ messages }}"

    history = [
        {"role": "user", "content": "1+2?"},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "add", "arguments": '{"a": 1, "b": 2}'}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "3"},
    ]
    msgs, kw = T.prompt_messages(history, FUNCTIONS, NoTools())
    assert kw == {} and msgs[0]["role"] == "system" and "get_weather" in msgs[0]["content"]
    assert '<tool_call>\n{"name": "add", "arguments": {"a": 1, "b": 2}}\n</tool_call>' == msgs[2]["content"]
    assert msgs[3] == {"role": "tool", "tool_call_id": "c1", "content": "3"}


def test_a_template_that_knows_tools_gets_them_natively():
    class WithTools:
        chat_template = "{% for t in tools %}{{ t }}{% endfor %}"

    msgs, kw = T.prompt_messages([{"role": "user", "content": "hi"}], FUNCTIONS, WithTools())
    assert msgs == [{"role": "user", "content": "hi"}]
    assert [t["function"]["name"] for t in kw["tools"]] == ["get_weather", "add"]


def test_response_format_shapes_are_checked():
    assert T.response_grammar({"type": "text"}) is None
    with pytest.raises(ParamError) as e:
        T.response_grammar({"type": "xml"})
    assert e.value.param == "response_format"
    with pytest.raises(ParamError):
        T.response_grammar({"type": "json_schema", "json_schema": {"name": "x"}})


@pytest.mark.model
def test_a_branch_inside_a_tool_call_continues_under_the_same_grammar(lm):
    ask = [{"role": "user", "content": "What is the weather like in Paris?"}]
    grammar = T.call_grammar(FUNCTIONS, "required")
    first = run(lm, ask, grammar, FUNCTIONS, temperature=0, max_tokens=60)
    ids = [s.token_id for s in first.completions[0]]
    at = next(k for k, s in enumerate(first.completions[0]) if "get" in lm.token_text(s.token_id) or "add" in lm.token_text(s.token_id))
    add = lm.tokenizer.encode("add", add_special_tokens=False)
    msgs, kw = T.prompt_messages(ask, FUNCTIONS, lm.tokenizer)
    gen = Generation(lm, lm.encode_chat(msgs, **kw), SamplingParams.build(temperature=0, max_tokens=60),
                     grammar=T.call_grammar(FUNCTIONS, "required"), prefix_ids=ids[:at] + add)
    for _ in gen:
        pass
    assert_valid_call(lm.tokenizer.decode(ids[:at] + add) + gen.texts[0], {"add"})


@pytest.mark.model
def test_a_branch_token_the_grammar_forbids_is_refused_by_name(lm):
    ask = [{"role": "user", "content": "Hi"}]
    msgs, kw = T.prompt_messages(ask, FUNCTIONS, lm.tokenizer)
    bad = lm.tokenizer.encode("Hello", add_special_tokens=False)
    with pytest.raises(ParamError) as e:
        Generation(lm, lm.encode_chat(msgs, **kw), SamplingParams.build(), grammar=T.call_grammar(FUNCTIONS, "required"), prefix_ids=bad)
    assert e.value.param == "prefix_ids"
