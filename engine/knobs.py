"""Every sampling knob, defined once, and the validated settings built from them.

A sampler stage's knobs are defined with the stage (engine/stages.py); the others (length, output, the
stage order) here. Each `Knob` carries its name, type, default, documented range, "off" value and help
text (engine/knob.py). Validation (`SamplingParams.build`), the UI's controls, the HTTP schema and the
README's table are all derived from `KNOBS`, so a range changes in exactly one place.
"""

from __future__ import annotations

from dataclasses import field, fields, make_dataclass, replace
from typing import Any

from engine.knob import MAX_STOP_SEQUENCES, Knob, ParamError
from engine.stages import DEFAULT_ORDER, STAGE_KNOBS

__all__ = ["KNOBS", "REQUEST_KNOBS", "STAGE_ORDER", "MAX_STOP_SEQUENCES", "MAX_TOP_LOGPROBS", "Knob", "ParamError",
           "SamplingParams", "GROUPS"]

STAGE_ORDER = DEFAULT_ORDER  # the default order of the sampler pipeline; see engine/stages.py
MAX_TOP_LOGPROBS = 20
GROUPS = ("randomness", "repetition", "more samplers", "length", "output", "advanced")  # as the UI and README list them

_GENERAL = [
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
    Knob("top_logprobs", "int", 0, "How many most likely alternatives to return per token, with their log-probabilities (needs logprobs).",
         "output", lo=0, hi=MAX_TOP_LOGPROBS, off=0, step=1),
    # advanced
    Knob("sampler_order", "order", DEFAULT_ORDER, "The order the sampler stages run in (a permutation of all of them).",
         "advanced", off=DEFAULT_ORDER, choices=DEFAULT_ORDER, openai=False),
]

# Grouped as the UI shows them; within a group, stage knobs in pipeline order, then the others.
KNOBS: dict[str, Knob] = {k.name: k for g in GROUPS for k in (*STAGE_KNOBS, *_GENERAL) if k.group == g}

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


class _Methods:
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
        out = {name: KNOBS[name].check(value) for name, value in values.items() if value is not None}
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
        return {f.name: KNOBS[f.name].to_plain(getattr(self, f.name)) for f in fields(self) if f.name in KNOBS}


# Validated engine settings: one field per knob (max_completion_tokens folds into max_tokens), each
# defaulting to its knob's "not given" value, plus how many candidates per stage a step records.
SamplingParams = make_dataclass(
    "SamplingParams",
    [(k.name, Any, field(default=k.empty())) for k in KNOBS.values() if k.name != "max_completion_tokens"]
    + [("record_k", int, field(default=MAX_TOP_LOGPROBS))],
    bases=(_Methods,),
    frozen=True,
)
SamplingParams.__module__ = __name__
