"""Share links: the settings and the prompt in a URL's query string, and back.

    ?message=Write+a+poem&temperature=0.7&top_k=40&stop=%5Cn     (only what differs from the defaults)

Values are the controls' own text (playground/ui_settings.py), so a link reads like the settings panel
and restores exactly what it showed. Unknown names and bad values are reported, never applied.
"""

from __future__ import annotations

from typing import Any, Mapping
from urllib.parse import urlencode

from engine.knobs import KNOBS, ParamError
from playground.ui_settings import UI_KNOBS, control_spec, parse_optional_int

TEXT_FIELDS = ("model", "system", "message")  # besides the knobs


def query(fields: Mapping[str, Any], controls: Mapping[str, Any]) -> str:
    """The query string (no leading '?') for these text fields and control values."""
    pairs = [(name, fields[name]) for name in TEXT_FIELDS if fields.get(name)]
    for name in UI_KNOBS:
        value = controls.get(name)
        if value is None or value == control_spec(KNOBS[name]).value:
            continue
        pairs.append((name, _text(value)))
    return urlencode(pairs)


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def parse(params: Mapping[str, str]) -> tuple[dict[str, str], dict[str, Any], list[str]]:
    """(text fields, control values, problems) from a link's query parameters. A knob's value is
    checked against its range; one that fails is left out and named in `problems`."""
    fields = {name: params[name] for name in TEXT_FIELDS if name in params}
    controls: dict[str, Any] = {}
    problems = []
    for name, raw in params.items():
        if name in TEXT_FIELDS or name.startswith("__"):
            continue
        if name not in UI_KNOBS:
            problems.append(f"unknown setting {name!r}")
            continue
        try:
            controls[name] = _control_value(name, raw)
        except ParamError as e:
            problems.append(f"{e.param}: {e.message}")
    return fields, controls, problems


def _control_value(name: str, raw: str) -> Any:
    knob, spec = KNOBS[name], control_spec(KNOBS[name])
    if spec.kind == "slider":
        value = parse_optional_int(raw)
        if not isinstance(value, (int, float)):
            raise ParamError(name, f"{name} must be a number in {knob.range_text()}, got {raw!r}")
        knob.check(value)
        return value
    if spec.kind == "checkbox":
        if raw.lower() not in ("true", "false"):
            raise ParamError(name, f"{name} must be true or false, got {raw!r}")
        return raw.lower() == "true"
    if spec.kind == "radio":
        value = next((c for c in spec.choices if str(c) == raw), None)
        if value is None:
            raise ParamError(name, f"{name} must be {knob.range_text()}, got {raw!r}")
        return value
    if spec.kind == "number":
        knob.check(parse_optional_int(raw))
    return raw
