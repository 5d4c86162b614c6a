"""Extreme values of every numeric knob, read from the registry: at its bounds, tiny and huge legal values,
and values just outside. Shared by the fault-injection tests (engine, real model, HTTP fuzz)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from engine.knobs import KNOBS, Knob

# Knobs whose stage only runs when another knob turns it on: an extreme value of these is tried with its
# stage on, or it would test nothing.
COMPANIONS = {
    "dry_base": {"dry_multiplier": 1.0},
    "dry_allowed_length": {"dry_multiplier": 1.0},
    "dry_penalty_last_n": {"dry_multiplier": 1.0},
    "dry_sequence_breakers": {"dry_multiplier": 1.0},
    "mirostat_tau": {"mirostat": 2},
    "mirostat_eta": {"mirostat": 2},
    "dynatemp_exponent": {"dynatemp_range": 0.5},
    "xtc_threshold": {"xtc_probability": 1.0},
    "top_logprobs": {"logprobs": True},
}
# Not sampling values (how many, how long, which numbers): tried at their bounds elsewhere.
SKIP = {"n", "max_tokens", "max_completion_tokens"}
HUGE_INTS = (10**20, 2**63, 10**30)


@dataclass(frozen=True)
class Extreme:
    knob: str
    value: float | int
    legal: bool

    def knobs(self) -> dict:
        return {**COMPANIONS.get(self.knob, {}), self.knob: self.value}


def _float_values(k: Knob) -> list[tuple[float, bool]]:
    out = []
    if k.lo is not None:
        lo = float(k.lo)
        if k.lo_open:
            out += [(lo, False), (math.nextafter(lo, math.inf), True), (lo + 1e-300 if lo == 0 else lo + 1e-9, True)]
        else:
            out += [(lo, True), (math.nextafter(lo, math.inf), True), (math.nextafter(lo, -math.inf), False)]
            if lo == 0:
                out.append((-1e-300, False))
    if k.hi is not None:
        hi = float(k.hi)
        if k.hi_open:
            out += [(hi, False), (math.nextafter(hi, -math.inf), True)]
        else:
            out += [(hi, True), (math.nextafter(hi, math.inf), False)]
    else:
        out += [(1e38, True), (3.5e38, True), (1e308, True), (math.inf, False)]
    out.append((math.nan, False))
    return out


def _int_values(k: Knob) -> list[tuple[int, bool]]:
    out = []
    if k.lo is not None:
        out += [(int(k.lo), True), (int(k.lo) - 1, False)]
    if k.hi is not None:
        out += [(int(k.hi), True), (int(k.hi) + 1, False)]
    else:
        out += [(v, True) for v in HUGE_INTS]
    return out


def extremes() -> list[Extreme]:
    found = []
    for k in KNOBS.values():
        if k.name in SKIP:
            continue
        if k.kind == "float":
            found += [Extreme(k.name, v, ok) for v, ok in _float_values(k)]
        elif k.kind in ("int", "optional_int"):
            found += [Extreme(k.name, v, ok) for v, ok in _int_values(k)]
        elif k.kind == "choice" and all(isinstance(c, int) for c in k.choices):
            found += [Extreme(k.name, c, True) for c in k.choices]
            found.append(Extreme(k.name, max(k.choices) + 7, False))
        elif k.kind == "logit_bias":
            found += [Extreme(k.name, {"3": k.hi, "4": k.lo}, True), Extreme(k.name, {"3": k.hi + 1e-9}, False)]
    return found


EXTREMES = extremes()
LEGAL = [e for e in EXTREMES if e.legal]
ILLEGAL = [e for e in EXTREMES if not e.legal]
