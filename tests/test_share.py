"""Share links: settings and prompt to a query string and back."""

from __future__ import annotations

from urllib.parse import parse_qsl

from playground import share
from playground.ui_settings import UI_KNOBS, collect, control_spec, control_values
from engine.knobs import KNOBS, SamplingParams


def defaults() -> dict:
    return {name: control_spec(KNOBS[name]).value for name in UI_KNOBS}


def test_a_link_holds_only_what_differs_from_the_defaults():
    controls = {**defaults(), "temperature": 0.7, "top_k": 40.0, "stop": "\\n"}
    q = share.query({"message": "Hi there", "system": "", "model": "m"}, controls)
    assert dict(parse_qsl(q)) == {"model": "m", "message": "Hi there", "temperature": "0.7", "top_k": "40", "stop": "\\n"}


def test_a_link_round_trips_to_the_same_controls():
    controls = {**defaults(), "temperature": 0.3, "min_p": 0.05, "seed": "42", "logprobs": True, "mirostat": 2,
                "logit_bias": "13: -100", "sampler_order": ", ".join(reversed(KNOBS["sampler_order"].default))}
    fields, back, problems = share.parse(dict(parse_qsl(share.query({"message": "x"}, controls))))
    assert problems == [] and fields == {"message": "x"}
    assert {**defaults(), **back} == controls


def test_bad_values_and_unknown_names_are_reported_not_applied():
    fields, controls, problems = share.parse({"temperature": "9", "top_p": "abc", "colour": "red", "top_k": "5"})
    assert controls == {"top_k": 5}
    assert any("temperature must be in [0, 2], got 9" in p for p in problems)
    assert any("top_p must be a number" in p for p in problems)
    assert "unknown setting 'colour'" in problems


def test_control_values_show_a_runs_settings_as_collect_reads_them():
    params = SamplingParams.build(temperature=0.5, stop=["\n\n", "END"], logit_bias={"13": -100}, seed=9, max_tokens=20,
                                  dry_sequence_breakers=["\n"])
    back = collect(control_values(params.to_dict()), encode=lambda text: [])
    assert back == params
