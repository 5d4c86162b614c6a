"""Every sampling knob, defined once.

Each `Knob` carries its name, type, default, documented range, "off" value and one-line help text.
Validation (`SamplingParams.build`), the UI sliders and the HTTP schema are all derived from `KNOBS`,
so a range changes in exactly one place.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import Any

# The default order of the sampler pipeline; see engine/sampler.py and the README for why.
STAGE_ORDER = (
    "logit_bias",
    "repetition_penalty",
    "presence_frequency",
    "temperature",
    "top_k",
    "top_p",
    "min_p",
)

MAX_STOP_SEQUENCES = 4
MAX_TOP_LOGPROBS = 20


class ParamError(ValueError):
    """Bad input for one knob. `param` names it; the message names the allowed range."""

    def __init__(self, param: str, message: str, code: str = "invalid_value"):
        super().__init__(message)
        self.param = param
        self.message = message
        self.code = code


@dataclass(frozen=True)
class Knob:
    name: str
    kind: str  # float | int | bool | choice | stop | logit_bias | order | optional_int
    default: Any
    help: str
    group: str
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False  # True: the lower bound itself is not allowed
    hi_open: bool = False
    off: Any = None  # the value at which the knob does nothing
    choices: tuple = ()
    step: float | None = None  # slider step for the UI
    ui_default: Any = None  # what the UI starts at when it differs from the API default
    openai: bool = True  # part of OpenAI's documented API (else a playground extension)

    def range_text(self) -> str:
        if self.kind == "choice":
            return "one of " + ", ".join(repr(c) for c in self.choices)
        if self.lo is None:
            return ""
        left = "(" if self.lo_open else "["
        right = ")" if self.hi_open or self.hi is None else "]"
        hi = "inf" if self.hi is None else _num(self.hi)
        return f"{left}{_num(self.lo)}, {hi}{right}"

    def check_number(self, value: Any) -> float | int:
        is_int = self.kind in ("int", "optional_int")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            kind = "an integer" if is_int else "a number"
            raise ParamError(self.name, f"{self.name} must be {kind} in {self.range_text()}, got {value!r}")
        if is_int and isinstance(value, float):
            if not value.is_integer():
                raise ParamError(self.name, f"{self.name} must be an integer in {self.range_text()}, got {value!r}")
            value = int(value)
        if isinstance(value, float) and not math.isfinite(value):
            raise ParamError(self.name, f"{self.name} must be a finite number in {self.range_text()}, got {value!r}")
        too_low = self.lo is not None and (value <= self.lo if self.lo_open else value < self.lo)
        too_high = self.hi is not None and (value >= self.hi if self.hi_open else value > self.hi)
        if too_low or too_high:
            raise ParamError(self.name, f"{self.name} must be in {self.range_text()}, got {value!r}")
        return value


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


_KNOB_LIST = [
    # randomness
    Knob("temperature", "float", 1.0, "Divides the logits before softmax: below 1 sharpens, above 1 flattens; 0 is greedy (always the top token).",
         "randomness", lo=0.0, hi=2.0, off=1.0, step=0.05),
    Knob("top_p", "float", 1.0, "Nucleus sampling: keep the fewest top tokens whose probabilities add up to at least top_p.",
         "randomness", lo=0.0, hi=1.0, lo_open=True, off=1.0, step=0.01),
    Knob("top_k", "int", 0, "Keep only the k most likely tokens; 0 keeps all.",
         "randomness", lo=0, hi=None, off=0, step=1, openai=False),
    Knob("min_p", "float", 0.0, "Keep tokens at least min_p times as likely as the most likely one (min-p sampling, Nguyen et al. 2024); 0 keeps all.",
         "randomness", lo=0.0, hi=1.0, off=0.0, step=0.01, openai=False),
    # repetition
    Knob("presence_penalty", "float", 0.0, "Subtracted once from the logit of every token already generated (OpenAI); negative values encourage repeats.",
         "repetition", lo=-2.0, hi=2.0, off=0.0, step=0.05),
    Knob("frequency_penalty", "float", 0.0, "Subtracted from a token's logit once per time it was already generated (OpenAI).",
         "repetition", lo=-2.0, hi=2.0, off=0.0, step=0.05),
    Knob("repetition_penalty", "float", 1.0, "CTRL's penalty on every token seen in prompt or output: positive logits divided by it, negative multiplied; 1 is off.",
         "repetition", lo=0.0, hi=2.0, lo_open=True, hi_open=True, off=1.0, step=0.01, openai=False),
    # length
    Knob("max_tokens", "optional_int", None, "Most tokens to generate per completion; empty means until the context is full.",
         "length", lo=1, hi=None, off=None, step=1, ui_default=128),
    Knob("max_completion_tokens", "optional_int", None, "Newer name for max_tokens; when both are given, max_completion_tokens wins.",
         "length", lo=1, hi=None, off=None, step=1),
    Knob("stop", "stop", None, f"Up to {MAX_STOP_SEQUENCES} sequences that end a completion; the returned text includes the stop sequence.",
         "length", off=None),
    Knob("context_length_exceeded_behavior", "choice", "truncate", "When prompt + max_tokens exceed the context: 'truncate' shrinks max_tokens to fit, 'error' refuses.",
         "length", choices=("truncate", "error"), off="truncate", openai=False),
    # output
    Knob("n", "int", 1, "How many completions to generate for the prompt, batched together.",
         "output", lo=1, hi=128, off=1, step=1),
    Knob("seed", "optional_int", None, "Same seed, settings and model give the same output; empty picks a random seed (returned with the answer).",
         "output", lo=0, hi=2**63 - 1, off=None, step=1),
    Knob("logprobs", "bool", False, "Return the log-probability of each chosen token.", "output", off=False),
    Knob("top_logprobs", "int", 0, f"How many most likely alternatives to return per token, with their log-probabilities (needs logprobs).",
         "output", lo=0, hi=MAX_TOP_LOGPROBS, off=0, step=1),
    # advanced
    Knob("logit_bias", "logit_bias", None, "Map of token id to a bias in [-100, 100] added to that token's logit; -100 bans it, 100 all but forces it.",
         "advanced", lo=-100.0, hi=100.0, off=None),
    Knob("sampler_order", "order", STAGE_ORDER, "The order the sampler stages run in (a permutation of all of them).",
         "advanced", off=STAGE_ORDER, openai=False),
]

KNOBS: dict[str, Knob] = {k.name: k for k in _KNOB_LIST}

# Request-level knobs of the chat-completions API that are not sampling settings; listed here so the
# API schema, README and UI describe them from the same place.
REQUEST_KNOBS: dict[str, Knob] = {
    k.name: k
    for k in [
        Knob("model", "str", None, "Which model answers; GET /v1/models lists the one loaded.", "model"),
        Knob("messages", "messages", None, "The conversation so far: system, user, assistant and tool messages.", "model"),
        Knob("stream", "bool", False, "Send tokens as server-sent events as they are generated, ending with data: [DONE].", "output", off=False),
        Knob("stream_options", "dict", None, "{include_usage: true} adds a final chunk with token usage to a stream.", "output"),
        Knob("tools", "tools", None, "Functions (JSON-schema parameters) the model may call.", "advanced"),
        Knob("tool_choice", "tool_choice", None, "none, auto, required, or a named function.", "advanced"),
        Knob("reasoning_effort", "choice", None, "low, medium or high thinking budget, for models whose template supports thinking.", "advanced",
             choices=("low", "medium", "high")),
        Knob("modalities", "modalities", None, "Output modalities: only [\"text\"] is supported.", "output"),
        Knob("response_format", "response_format", None, "text, json_object, or json_schema: JSON output guaranteed by a grammar.", "advanced"),
    ]
}


@dataclass(frozen=True)
class SamplingParams:
    """Validated engine settings. `None` means off wherever a knob has no neutral number."""

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    max_tokens: int | None = None
    stop: tuple[str, ...] = ()
    context_length_exceeded_behavior: str = "truncate"
    n: int = 1
    seed: int | None = None
    logprobs: bool = False
    top_logprobs: int = 0
    logit_bias: tuple[tuple[int, float], ...] = ()
    sampler_order: tuple[str, ...] = STAGE_ORDER
    record_k: int = MAX_TOP_LOGPROBS  # top candidates per stage kept in each step's record

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    @classmethod
    def build(cls, **values: Any) -> "SamplingParams":
        """Validate raw knob values (API/UI shapes) into params. Raises ParamError naming the knob."""
        unknown = set(values) - set(KNOBS)
        if unknown:
            name = sorted(unknown)[0]
            raise ParamError(name, f"unknown sampling parameter {name!r}")
        out: dict[str, Any] = {}
        for name, value in values.items():
            if value is None:
                continue
            out[name] = _check(KNOBS[name], value)
        # One length: max_completion_tokens is the newer name and wins (as in vLLM).
        mct = out.pop("max_completion_tokens", None)
        if mct is not None:
            out["max_tokens"] = mct
        if out.get("top_logprobs", 0) > 0 and not values.get("logprobs"):
            raise ParamError("top_logprobs", "top_logprobs needs logprobs set to true")
        return cls(**out)

    def with_(self, **changes: Any) -> "SamplingParams":
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain values, in API shapes (lists, string keys), for JSON and UI state."""
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name in KNOBS}
        d["stop"] = list(self.stop)
        d["logit_bias"] = {str(k): v for k, v in self.logit_bias}
        d["sampler_order"] = list(self.sampler_order)
        return d


def _check(knob: Knob, value: Any) -> Any:
    if knob.kind in ("float", "int", "optional_int"):
        v = knob.check_number(value)
        return float(v) if knob.kind == "float" else int(v)
    if knob.kind == "bool":
        if not isinstance(value, bool):
            raise ParamError(knob.name, f"{knob.name} must be true or false, got {value!r}")
        return value
    if knob.kind == "choice":
        if value not in knob.choices:
            raise ParamError(knob.name, f"{knob.name} must be {knob.range_text()}, got {value!r}")
        return value
    if knob.kind == "stop":
        return _check_stop(value)
    if knob.kind == "logit_bias":
        return _check_logit_bias(knob, value)
    if knob.kind == "order":
        return _check_order(value)
    raise AssertionError(knob.kind)


def _check_stop(value: Any) -> tuple[str, ...]:
    seqs = [value] if isinstance(value, str) else value
    if not isinstance(seqs, (list, tuple)) or not all(isinstance(s, str) for s in seqs):
        raise ParamError("stop", f"stop must be a string or a list of up to {MAX_STOP_SEQUENCES} strings")
    if len(seqs) > MAX_STOP_SEQUENCES:
        raise ParamError("stop", f"stop takes at most {MAX_STOP_SEQUENCES} sequences, got {len(seqs)}")
    if any(s == "" for s in seqs):
        raise ParamError("stop", "stop sequences must not be empty strings")
    return tuple(dict.fromkeys(seqs))


def _check_logit_bias(knob: Knob, value: Any) -> tuple[tuple[int, float], ...]:
    if not isinstance(value, dict):
        raise ParamError("logit_bias", "logit_bias must be a map from token id to a bias in [-100, 100]")
    out = {}
    for key, bias in value.items():
        is_id = (isinstance(key, int) and not isinstance(key, bool) and key >= 0) or (
            isinstance(key, str) and key.strip().isascii() and key.strip().isdigit()  # not "²", which int() refuses
        )
        if not is_id:
            raise ParamError("logit_bias", f"logit_bias keys must be token ids (integers >= 0), got {key!r}")
        token = int(key)
        if isinstance(bias, bool) or not isinstance(bias, (int, float)) or not math.isfinite(bias) or not -100 <= bias <= 100:
            raise ParamError("logit_bias", f"logit_bias for token {token} must be a number in [-100, 100], got {bias!r}")
        out[token] = float(bias)
    return tuple(sorted(out.items()))


def _check_order(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [s.strip() for s in value.split(",") if s.strip()]
    if not isinstance(value, (list, tuple)) or sorted(value) != sorted(STAGE_ORDER):
        raise ParamError("sampler_order", "sampler_order must list each of " + ", ".join(STAGE_ORDER) + " exactly once")
    return tuple(value)
