"""The one source of truth for the knobs: defaults are off, and bad values name the knob and range."""

import pytest

from engine.knobs import KNOBS, STAGE_ORDER, ParamError, SamplingParams
from engine.stages import PRESETS, STAGES


def error(**values) -> ParamError:
    with pytest.raises(ParamError) as e:
        SamplingParams.build(**values)
    return e.value


def test_every_knob_defaults_to_its_off_value():
    p = SamplingParams.build()
    for name, knob in KNOBS.items():
        if name != "max_completion_tokens":
            assert getattr(p, name) in (knob.off, (), None), name


def test_every_knob_has_help_text_and_a_group():
    for knob in KNOBS.values():
        assert knob.help and knob.group


@pytest.mark.parametrize(
    "name, bad, range_text",
    [
        ("temperature", 2.5, "[0, 2]"),
        ("temperature", -0.1, "[0, 2]"),
        ("top_p", 0.0, "(0, 1]"),
        ("top_p", 1.2, "(0, 1]"),
        ("min_p", 1.5, "[0, 1]"),
        ("presence_penalty", -2.5, "[-2, 2]"),
        ("frequency_penalty", 3, "[-2, 2]"),
        ("repetition_penalty", 0.0, "(0, 2)"),
        ("repetition_penalty", 2.0, "(0, 2)"),
        ("n", 0, "[1, 128]"),
        ("n", 129, "[1, 128]"),
        ("top_k", -1, "[0, inf)"),
        ("top_logprobs", 21, "[0, 20]"),
        ("max_tokens", 0, "[1, inf)"),
    ],
)
def test_out_of_range_value_names_the_knob_and_its_range(name, bad, range_text):
    extra = {"logprobs": True} if name == "top_logprobs" else {}
    e = error(**{name: bad}, **extra)
    assert e.param == name
    assert name in e.message and range_text in e.message


@pytest.mark.parametrize("name, bad", [("temperature", "hot"), ("n", 1.5), ("n", True), ("logprobs", 1), ("temperature", float("nan"))])
def test_wrong_type_is_refused_with_the_knob_named(name, bad):
    assert error(**{name: bad}).param == name


@pytest.mark.parametrize("name", ["dynatemp_range", "dynatemp_exponent", "top_n_sigma", "dry_multiplier", "dry_base", "mirostat_tau"])
def test_an_integer_beyond_the_largest_float_is_refused_for_a_float_knob_with_the_reason(name):
    # JSON can carry 10**400; float() of it raises OverflowError, which was a 500.
    e = error(**{name: 10**400})
    assert e.param == name and "beyond the largest float" in e.message and "inf)" in e.message


def test_an_integer_knob_takes_any_integer_its_range_allows_and_shows_it():
    p = SamplingParams.build(top_k=10**400, dry_allowed_length=10**400)
    assert p.top_k == 10**400 and STAGES["top_k"].setting(p) == f" {10**400}"
    assert error(n=10**400).message.startswith("n must be in [1, 128]")
    assert "an integer of" in error(n=10**5000).message  # too long to print: named by its size


def test_edges_of_each_range_are_accepted():
    p = SamplingParams.build(temperature=2, top_p=1, min_p=1, presence_penalty=-2, frequency_penalty=2, n=128, top_k=0)
    assert (p.temperature, p.n) == (2.0, 128)


def test_max_completion_tokens_wins_over_max_tokens():
    assert SamplingParams.build(max_tokens=10, max_completion_tokens=20).max_tokens == 20
    assert SamplingParams.build(max_tokens=10).max_tokens == 10


def test_stop_accepts_a_string_or_up_to_four_sequences():
    assert SamplingParams.build(stop="END").stop == ("END",)
    assert SamplingParams.build(stop=["a", "b", "c", "d"]).stop == ("a", "b", "c", "d")
    assert error(stop=["a", "b", "c", "d", "e"]).param == "stop"
    assert error(stop=[""]).param == "stop"
    assert error(stop=[1]).param == "stop"


def test_logit_bias_takes_string_or_int_token_ids_and_biases_in_range():
    assert SamplingParams.build(logit_bias={"5": 10, 7: -100}).logit_bias == ((5, 10.0), (7, -100.0))
    assert "[-100, 100]" in error(logit_bias={"5": 101}).message
    assert error(logit_bias={"x": 1}).param == "logit_bias"
    assert error(logit_bias={"-3": 1}).param == "logit_bias"
    assert error(logit_bias={"²": 1}).param == "logit_bias"
    assert error(logit_bias=[1, 2]).param == "logit_bias"


def test_top_logprobs_needs_logprobs():
    assert error(top_logprobs=3).param == "top_logprobs"
    assert SamplingParams.build(logprobs=True, top_logprobs=3).top_logprobs == 3


def test_sampler_order_must_be_a_permutation_of_all_stages():
    llama = PRESETS["llama.cpp"]
    assert SamplingParams.build(sampler_order=list(llama)).sampler_order == llama
    assert SamplingParams.build(sampler_order=",".join(llama)).sampler_order == llama
    assert error(sampler_order=list(STAGE_ORDER[:-1])).param == "sampler_order"
    assert error(sampler_order=list(STAGE_ORDER) + ["top_k"]).param == "sampler_order"


def test_context_length_behaviour_is_truncate_or_error():
    assert SamplingParams.build().context_length_exceeded_behavior == "truncate"
    assert error(context_length_exceeded_behavior="shrink").param == "context_length_exceeded_behavior"


def test_unknown_parameter_is_named():
    assert error(temprature=1).param == "temprature"


def test_params_round_trip_through_their_dict():
    p = SamplingParams.build(temperature=0.7, stop=["x"], logit_bias={"3": 2}, n=2, seed=5)
    d = p.to_dict()
    d.pop("max_completion_tokens", None)
    assert SamplingParams.build(**d) == p
