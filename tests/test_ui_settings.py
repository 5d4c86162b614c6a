"""The settings panel: a control for every knob from KNOBS, and the UI's text parsers."""

from __future__ import annotations

import pytest

from engine.knobs import KNOBS, ParamError, SamplingParams
from playground import ui_settings
from playground.ui_settings import collect, control_spec


def ui_defaults() -> dict:
    return {name: control_spec(KNOBS[name]).value for name in ui_settings.UI_KNOBS}


def no_encoder(text):
    raise AssertionError("no text should need the tokenizer here")


def test_every_knob_but_the_max_tokens_alias_has_a_control_in_its_group():
    assert set(ui_settings.UI_KNOBS) == set(KNOBS) - {"max_completion_tokens"}
    assert {KNOBS[n].group for n in ui_settings.UI_KNOBS} == set(ui_settings.GROUPS)


def test_sliders_take_range_step_default_and_help_from_the_knob():
    spec = control_spec(KNOBS["temperature"])
    assert (spec.kind, spec.minimum, spec.maximum, spec.step, spec.value) == ("slider", 0.0, 2.0, 0.05, 1.0)
    assert spec.info.startswith(KNOBS["temperature"].help) and "Range [0, 2]." in spec.info


def test_open_bounds_are_nudged_in_so_a_slider_cannot_make_an_invalid_value():
    top_p = control_spec(KNOBS["top_p"])
    assert (top_p.minimum, top_p.maximum) == (0.01, 1.0)
    rep = control_spec(KNOBS["repetition_penalty"])
    assert (rep.minimum, rep.maximum) == (0.01, 1.99)
    for spec in (top_p, rep):
        SamplingParams.build(**{spec.label: spec.minimum})
        SamplingParams.build(**{spec.label: spec.maximum})


def test_unbounded_knobs_get_a_finite_slider_end_and_say_so():
    spec = control_spec(KNOBS["top_k"])
    assert spec.maximum == 200 and "The slider stops at 200." in spec.info


def test_extension_knobs_are_labelled_as_not_openai():
    assert "not in OpenAI's API" in control_spec(KNOBS["min_p"]).info
    assert "not in OpenAI's API" not in control_spec(KNOBS["temperature"]).info


def test_the_ui_defaults_are_the_api_defaults_except_a_bounded_max_tokens():
    assert collect(ui_defaults(), no_encoder) == SamplingParams(max_tokens=128)


def test_empty_optional_numbers_mean_off():
    values = ui_defaults() | {"max_tokens": "", "seed": "  "}
    params = collect(values, no_encoder)
    assert params.max_tokens is None and params.seed is None


def test_a_typed_seed_that_is_not_a_number_is_refused_by_name_and_range():
    with pytest.raises(ParamError) as e:
        collect(ui_defaults() | {"seed": "abc"}, no_encoder)
    assert e.value.param == "seed"
    assert e.value.message == "seed must be an integer in [0, 9223372036854775807], got 'abc'"


def test_a_fractional_max_tokens_is_refused():
    with pytest.raises(ParamError, match=r"max_tokens must be an integer in \[1, inf\), got 2.5"):
        collect(ui_defaults() | {"max_tokens": "2.5"}, no_encoder)


def test_top_logprobs_without_logprobs_is_refused_as_in_the_api():
    with pytest.raises(ParamError, match="top_logprobs needs logprobs"):
        collect(ui_defaults() | {"top_logprobs": 3}, no_encoder)


def test_stop_takes_one_sequence_per_line_with_escapes():
    assert ui_settings.parse_stop("END\n\\n\\n\n\nx\\ty") == ["END", "\n\n", "x\ty"]
    assert ui_settings.parse_stop("") is None


def test_five_stop_sequences_are_refused():
    with pytest.raises(ParamError, match="stop takes at most 4 sequences, got 5"):
        collect(ui_defaults() | {"stop": "a\nb\nc\nd\ne"}, no_encoder)


def test_sampler_order_text_is_a_comma_list():
    order = ", ".join(ui_settings.ORDER_PRESETS["llama.cpp"])
    assert collect(ui_defaults() | {"sampler_order": order}, no_encoder).sampler_order == ui_settings.ORDER_PRESETS["llama.cpp"]
    with pytest.raises(ParamError, match="sampler_order must list each of"):
        collect(ui_defaults() | {"sampler_order": "top_k, top_p"}, no_encoder)


def test_every_order_preset_is_a_valid_order():
    for order in ui_settings.ORDER_PRESETS.values():
        SamplingParams.build(sampler_order=list(order))


@pytest.mark.model
def test_logit_bias_by_text_maps_to_the_tokens_the_model_sees(lm):
    encode = lambda t: lm.tokenizer.encode(t, add_special_tokens=False)  # noqa: E731
    entries = ui_settings.parse_logit_bias("' Paris': -100\nParis: 5\n42: 1.5\n# a comment\n", encode)
    assert [(e.key, e.ids, e.bias) for e in entries] == [
        (" Paris", tuple(encode(" Paris")), -100.0),
        ("Paris", tuple(encode("Paris")), 5.0),
        ("42", (42,), 1.5),
    ]
    assert encode(" Paris") != encode("Paris")
    params = collect(ui_defaults() | {"logit_bias": "' Paris': -100"}, encode)
    assert params.logit_bias == tuple((i, -100.0) for i in encode(" Paris"))


@pytest.mark.model
def test_the_bias_preview_shows_the_ids_and_texts_of_each_line(lm):
    encode = lambda t: lm.tokenizer.encode(t, add_special_tokens=False)  # noqa: E731
    entries = ui_settings.parse_logit_bias("' Paris': -100\nantidisestablishment: 2", encode)
    preview = ui_settings.bias_preview(entries, lm.token_text)
    first, second = preview.splitlines()
    assert first == f"- `' Paris'` → {encode(' Paris')[0]} `' Paris'`: -100"
    assert f"({len(encode('antidisestablishment'))} tokens: the bias applies to each)" in second


def test_an_unreadable_logit_bias_line_is_refused_with_its_line_number():
    with pytest.raises(ParamError, match=r"logit_bias line 2: expected `token: bias`"):
        ui_settings.parse_logit_bias("5: 1\nParis -100", no_encoder)
    with pytest.raises(ParamError, match=r"logit_bias line 1: the bias must be a number in \[-100, 100\], got 'lots'"):
        ui_settings.parse_logit_bias("5: lots", no_encoder)


def test_a_bias_outside_its_range_is_refused_by_the_knob():
    with pytest.raises(ParamError, match=r"logit_bias for token 5 must be a number in \[-100, 100\], got 500.0"):
        collect(ui_defaults() | {"logit_bias": "5: 500"}, no_encoder)


def test_tools_must_be_a_list_of_functions_and_are_dropped_when_tool_choice_is_none():
    tools = '[{"type": "function", "function": {"name": "weather", "parameters": {}}}]'
    assert ui_settings.request_extras(tools, "required", "low") == {
        "tools": [{"type": "function", "function": {"name": "weather", "parameters": {}}}], "tool_choice": "required",
        "reasoning_effort": "low"}
    assert ui_settings.request_extras(tools, "none", None) == {}
    assert ui_settings.request_extras("", "auto", None, "json_object") == {"response_format": {"type": "json_object"}}
    with pytest.raises(ParamError, match="tools must be a JSON list"):
        ui_settings.request_extras('{"name": "x"}', "auto", None)
    with pytest.raises(ParamError, match="tools must be a JSON list of function definitions"):
        ui_settings.request_extras("[oops", "auto", None)


def test_compare_overrides_must_be_a_json_object():
    assert ui_settings.parse_overrides('{"temperature": 1.5}') == {"temperature": 1.5}
    with pytest.raises(ParamError, match="settings B must be a JSON object"):
        ui_settings.parse_overrides("[1]")
    with pytest.raises(ParamError, match="settings B must be a JSON object"):
        ui_settings.parse_overrides("{temperature: 1}")
