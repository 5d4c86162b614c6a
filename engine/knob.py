"""What a knob is: its name, type, default, documented range, "off" value and help text, and how a raw
value (API or UI shape) is checked and turned into the engine's value. The knobs themselves are defined
where they belong: a sampler stage's knobs with the stage (engine/stages.py), the rest in engine/knobs.py.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from typing import Any

MAX_STOP_SEQUENCES = 4


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
    kind: str  # float | int | bool | choice | stop | strings | logit_bias | order | optional_int
    default: Any
    help: str
    group: str
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False  # True: the lower bound itself is not allowed
    hi_open: bool = False
    off: Any = None  # the value at which the knob does nothing
    choices: tuple = ()  # for choice: the allowed values; for order: the stage names
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

    def empty(self) -> Any:
        """The engine's value when the knob is not given."""
        if self.kind in ("stop", "strings", "logit_bias") and self.default is None:
            return ()
        return tuple(self.default) if isinstance(self.default, list) else self.default

    def check(self, value: Any) -> Any:
        """The engine's value for a raw value; ParamError naming the knob and its range if it is bad."""
        if self.kind in ("float", "int", "optional_int"):
            v = self.check_number(value)
            return float(v) if self.kind == "float" else int(v)
        if self.kind == "bool":
            if not isinstance(value, bool):
                raise ParamError(self.name, f"{self.name} must be true or false, got {value!r}")
            return value
        if self.kind == "choice":
            if isinstance(value, bool) or value not in self.choices:
                raise ParamError(self.name, f"{self.name} must be {self.range_text()}, got {value!r}")
            return value
        if self.kind == "stop":
            return _check_strings(self.name, value, MAX_STOP_SEQUENCES)
        if self.kind == "strings":
            return _check_strings(self.name, value, None)
        if self.kind == "logit_bias":
            return _check_logit_bias(self, value)
        if self.kind == "order":
            return _check_order(self, value)
        raise AssertionError(self.kind)

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
            raise ParamError(self.name, f"{self.name} must be in {self.range_text()}, got {_shown(value)}")
        if not is_int and abs(value) > sys.float_info.max:  # an integer no float can hold: float() would raise
            raise ParamError(self.name, f"{self.name} must be a finite number in {self.range_text()}, got {_shown(value)}, "
                             f"beyond the largest float ({sys.float_info.max:g})")
        return value

    def to_plain(self, value: Any) -> Any:
        """The engine's value in API shape (lists, string keys), for JSON and UI state."""
        if self.kind == "logit_bias":
            return {str(k): v for k, v in value}
        if self.kind in ("stop", "strings", "order"):
            return list(value)
        return value


def _shown(value: float | int) -> str:
    try:
        return repr(value)
    except ValueError:  # Python refuses to print an integer of more than 4300 digits
        return f"an integer of {value.bit_length()} bits"


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def _check_strings(name: str, value: Any, most: int | None) -> tuple[str, ...]:
    seqs = [value] if isinstance(value, str) else value
    if not isinstance(seqs, (list, tuple)) or not all(isinstance(s, str) for s in seqs):
        up_to = f"up to {most} " if most else ""
        raise ParamError(name, f"{name} must be a string or a list of {up_to}strings")
    if most is not None and len(seqs) > most:
        raise ParamError(name, f"{name} takes at most {most} sequences, got {len(seqs)}")
    if any(s == "" for s in seqs):
        raise ParamError(name, f"{name} must not contain empty strings")
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
        if isinstance(bias, bool) or not isinstance(bias, (int, float)) or not math.isfinite(bias) or not knob.lo <= bias <= knob.hi:
            raise ParamError("logit_bias", f"logit_bias for token {token} must be a number in [-100, 100], got {bias!r}")
        out[token] = float(bias)
    return tuple(sorted(out.items()))


def _check_order(knob: Knob, value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [s.strip() for s in value.split(",") if s.strip()]
    if not isinstance(value, (list, tuple)) or sorted(value) != sorted(knob.choices):
        raise ParamError(knob.name, f"{knob.name} must list each of " + ", ".join(knob.choices) + " exactly once")
    return tuple(value)
