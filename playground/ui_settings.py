"""From the UI's controls to validated settings: which knob gets which control, and the text parsers.

No Gradio here: `control_spec` says what control a knob needs (the UI builds it), and `collect` turns
the controls' raw values into `SamplingParams` through `SamplingParams.build`, so the UI validates
exactly as the API does and shows the same `ParamError` messages.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Callable

from engine.knobs import GROUPS, KNOBS, REQUEST_KNOBS, STAGE_ORDER, Knob, ParamError, SamplingParams
from engine.stages import PRESETS

# max_completion_tokens is only the newer name of max_tokens: one control for both.
UI_KNOBS = [name for name in KNOBS if name != "max_completion_tokens"]
GROUP_TITLES = {
    "randomness": "Randomness",
    "repetition": "Repetition",
    "more samplers": "More samplers (llama.cpp, text-generation-webui)",
    "length": "Length",
    "output": "Output",
    "advanced": "Advanced",
}
# Slider ends for knobs whose range is unbounded or too wide to be useful on a slider; the API takes more.
UI_MAX = {"top_k": 200, "n": 8, "dynatemp_range": 2.0, "dynatemp_exponent": 5.0, "top_n_sigma": 5.0,
          "dry_multiplier": 5.0, "dry_base": 4.0, "dry_allowed_length": 20, "dry_penalty_last_n": 8192,
          "mirostat_tau": 10.0}
TOOL_CHOICES = ("none", "auto", "required")

# The engines' own default orders (engine/stages.py), for the sampler_order control and for Replay.
ORDER_PRESETS = {("Hugging Face (default)" if name == "Hugging Face" else name): order for name, order in PRESETS.items()}


@dataclass(frozen=True)
class ControlSpec:
    """What the UI builds for a knob: kind is slider | number | checkbox | radio | textbox."""

    kind: str
    label: str
    info: str
    value: Any
    minimum: float | None = None
    maximum: float | None = None
    step: float | None = None
    choices: tuple = ()


def control_spec(knob: Knob) -> ControlSpec:
    """The control for a knob, its range, default and help all taken from the knob itself."""
    value = knob.ui_default if knob.ui_default is not None else knob.default
    rng = knob.range_text()
    info = knob.help + (f" Range {rng}." if rng and knob.kind in ("float", "int", "optional_int") else "")
    if not knob.openai:
        info += " (Playground extension; not in OpenAI's API.)"
    if knob.kind in ("float", "int"):
        # Open bounds are nudged in by one step, so the slider cannot produce an invalid value.
        lo = knob.lo + (knob.step if knob.lo_open else 0)
        hi = UI_MAX.get(knob.name, knob.hi)
        hi = hi - (knob.step if knob.hi_open else 0)
        if knob.name in UI_MAX:
            info += f" The slider stops at {UI_MAX[knob.name]}."
        return ControlSpec("slider", knob.name, info, value, lo, hi, knob.step)
    if knob.kind == "optional_int":
        # A textbox, not a number field: "empty" is a real value here (no limit / a random seed).
        return ControlSpec("number", knob.name, info, "" if value is None else str(value))
    if knob.kind == "bool":
        return ControlSpec("checkbox", knob.name, info, value)
    if knob.kind == "choice":
        return ControlSpec("radio", knob.name, info, value, choices=knob.choices)
    if knob.kind in ("stop", "strings"):
        value = "\n".join(s.replace("\n", "\\n") for s in (knob.default or ()))
        return ControlSpec("textbox", knob.name, info + " One per line; write \\n for a newline.", value)
    if knob.kind == "logit_bias":
        return ControlSpec(
            "textbox", knob.name,
            "One per line, `token: bias`. The token is an id (5 digits) or text; quote text to keep its "
            "spaces (' Paris': -100). Bias in [-100, 100]: -100 bans, +100 all but forces.",
            "",
        )
    if knob.kind == "order":
        return ControlSpec("textbox", knob.name, knob.help + " Comma-separated; pick a preset above.", ", ".join(STAGE_ORDER))
    raise AssertionError(knob.kind)


def parse_stop(text: str) -> list[str] | None:
    """One stop sequence per line; the two-character escapes \\n and \\t stand for newline and tab."""
    lines = [line.replace("\\n", "\n").replace("\\t", "\t") for line in text.splitlines() if line != ""]
    return lines or None


@dataclass(frozen=True)
class BiasEntry:
    key: str  # as typed
    ids: tuple[int, ...]  # the token ids it maps to
    bias: float


def parse_logit_bias(text: str, encode: Callable[[str], list[int]]) -> list[BiasEntry]:
    """Lines of `token: bias`; the token is an id (digits) or text, mapped to ids by `encode`.

    Text that spans several tokens biases each of them. Raises ParamError("logit_bias", ...) with the
    line number for anything it cannot read; the bias range itself is checked by SamplingParams.build.
    """
    entries = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        key, sep, value = line.rpartition(":")
        if not sep or not key.strip():
            raise ParamError("logit_bias", f"logit_bias line {n}: expected `token: bias`, e.g. `Paris: -100`, got {line!r}")
        try:
            bias = float(value)
        except ValueError:
            raise ParamError("logit_bias", f"logit_bias line {n}: the bias must be a number in [-100, 100], got {value.strip()!r}") from None
        key = key.strip()
        if key.isdigit():
            ids = (int(key),)
        else:
            if len(key) >= 2 and key[0] == key[-1] and key[0] in "'\"":
                key = key[1:-1]
            ids = tuple(encode(key))
            if not ids:
                raise ParamError("logit_bias", f"logit_bias line {n}: {key!r} maps to no token")
        entries.append(BiasEntry(key, ids, bias))
    return entries


def bias_map(entries: list[BiasEntry]) -> dict[str, float] | None:
    """The API's logit_bias map {"id": bias}; a later line wins for a token named twice."""
    out = {str(i): e.bias for e in entries for i in e.ids}
    return out or None


def bias_preview(entries: list[BiasEntry], token_text: Callable[[int], str]) -> str:
    """Markdown showing which token ids each line maps to, so a user sees what they really biased."""
    if not entries:
        return ""
    lines = []
    for e in entries:
        pieces = ", ".join(f"{i} `{token_text(i)!r}`" for i in e.ids)
        note = f" ({len(e.ids)} tokens: the bias applies to each)" if len(e.ids) > 1 else ""
        lines.append(f"- `{e.key!r}` → {pieces}{note}: {e.bias:+g}")
    return "\n".join(lines)


def parse_optional_int(value: Any) -> Any:
    """A typed number: empty -> None (off), digits -> int; anything else goes on as typed, so that
    SamplingParams.build rejects it with the knob's name and range."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    if not text:
        return None
    for convert in (int, float):
        try:
            return convert(text)
        except ValueError:
            pass
    return text


def collect(values: dict[str, Any], encode: Callable[[str], list[int]]) -> SamplingParams:
    """The controls' raw values (keyed by knob name) as validated SamplingParams; raises ParamError."""
    raw: dict[str, Any] = {}
    for name in UI_KNOBS:
        value = values.get(name)
        kind = KNOBS[name].kind
        if kind in ("stop", "strings"):
            value = parse_stop(value or "")
        elif kind == "logit_bias":
            value = bias_map(parse_logit_bias(value or "", encode))
        elif kind == "order":
            value = value or None
        elif kind == "optional_int":
            value = parse_optional_int(value)
        raw[name] = value
    return SamplingParams.build(**raw)


def request_extras(tools_text: str, tool_choice: str, reasoning_effort: str | None, response_format: str = "text") -> dict[str, Any]:
    """The request-level settings of a run, as the engine's ChatRequest takes them: tools and
    tool_choice (tools dropped when tool_choice is none), reasoning_effort and response_format."""
    out: dict[str, Any] = {}
    if tools_text and tools_text.strip() and tool_choice != "none":
        try:
            tools = json.loads(tools_text)
        except json.JSONDecodeError as e:
            raise ParamError("tools", f"tools must be a JSON list of function definitions: {e}") from None
        if not isinstance(tools, list) or not all(isinstance(t, dict) and t.get("type") == "function" and isinstance(t.get("function"), dict) and t["function"].get("name") for t in tools):
            raise ParamError("tools", 'tools must be a JSON list like [{"type": "function", "function": {"name": "...", "parameters": {...}}}]')
        out["tools"], out["tool_choice"] = tools, tool_choice
    if reasoning_effort:
        if reasoning_effort not in REQUEST_KNOBS["reasoning_effort"].choices:
            raise ParamError("reasoning_effort", f"reasoning_effort must be {REQUEST_KNOBS['reasoning_effort'].range_text()}, got {reasoning_effort!r}")
        out["reasoning_effort"] = reasoning_effort
    if response_format and response_format != "text":
        out["response_format"] = {"type": response_format}
    return out


def parse_overrides(text: str) -> dict[str, Any]:
    """Settings B of Compare: a JSON object of knob overrides, e.g. {"temperature": 1.5}."""
    try:
        value = json.loads(text or "{}")
    except json.JSONDecodeError as e:
        raise ParamError("settings B", f'settings B must be a JSON object of knob overrides like {{"temperature": 1.5}}: {e}') from None
    if not isinstance(value, dict):
        raise ParamError("settings B", 'settings B must be a JSON object of knob overrides like {"temperature": 1.5}')
    return value


def describe_error(e: ParamError) -> str:
    return f"⚠️ **{e.param}**: {e.message}"


def control_values(params: dict[str, Any]) -> dict[str, Any]:
    """The controls' values that show these settings (a run's params, API shapes): what `collect` reads
    back into the same params."""
    out: dict[str, Any] = {}
    for name in UI_KNOBS:
        knob = KNOBS[name]
        value = params.get(name, knob.default)
        if knob.kind in ("stop", "strings"):
            value = "\n".join(s.replace("\n", "\\n").replace("\t", "\\t") for s in (value or ()))
        elif knob.kind == "logit_bias":
            value = "\n".join(f"{k}: {v:g}" for k, v in (value or {}).items())
        elif knob.kind == "order":
            value = ", ".join(value or STAGE_ORDER)
        elif knob.kind == "optional_int":
            value = "" if value is None else str(value)
        out[name] = value
    return out
