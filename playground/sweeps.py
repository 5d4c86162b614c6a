"""Knob sweeps: one knob over a range of values, k samples each, and what it did to the texts.

Pure functions over runs as the UI keeps them (playground/ui_runs.py). Per value:
- entropy: mean entropy (nats) of the distribution each token was drawn from;
- perplexity: exp(-mean raw logprob of the tokens chosen), the model's own surprise at the text;
- distinct-1, distinct-2: distinct n-grams / n-grams over the k samples together (Li et al. 2016);
- repetition: the share of each sample's 3-grams that repeat an earlier 3-gram of that sample (seq-rep-3,
  Welleck et al. 2019), averaged over the samples;
- length: mean tokens per sample.
End-of-text tokens count for length and entropy but not as words of the text.
"""

from __future__ import annotations

import csv
import io
import math
from typing import Any, Iterable

from engine.knobs import KNOBS, ParamError

METRICS = {  # name: (chart title, what it says)
    "entropy": ("mean entropy (nats)", "how spread out the distribution each token was drawn from was"),
    "perplexity": ("perplexity", "exp(-mean raw logprob of the chosen tokens): how surprised the model itself is by the text"),
    "distinct_1": ("distinct-1", "distinct tokens / tokens over the samples"),
    "distinct_2": ("distinct-2", "distinct token pairs / token pairs over the samples"),
    "repetition": ("repetition (seq-rep-3)", "share of each sample's 3-grams repeating an earlier one"),
    "length": ("length (tokens)", "mean tokens per sample"),
}
MAX_VALUES = 16
MAX_SAMPLES = 16
MAX_COMPLETIONS = 512  # values x values of the second knob x samples: one sweep's share of the batch
# Numeric knobs of the sampler stages: the ones a sweep can vary.
SWEEPABLE = [name for name, k in KNOBS.items()
             if k.kind in ("float", "int") and k.group in ("randomness", "repetition", "more samplers")]


def sweep_values(knob: str, start: float, stop: float, count: int) -> list[float | int]:
    """`count` evenly spaced values from start to stop, each checked against the knob's range (ParamError
    naming the knob); integer knobs are rounded and repeats dropped."""
    if knob not in SWEEPABLE:
        raise ParamError("sweep knob", f"sweep knob must be one of {', '.join(SWEEPABLE)}; got {knob!r}")
    if not isinstance(count, (int, float)) or int(count) != count or not 2 <= count <= MAX_VALUES:
        raise ParamError("sweep values", f"sweep values must be an integer in [2, {MAX_VALUES}], got {count!r}")
    count = int(count)
    spec = KNOBS[knob]
    values: list[float | int] = []
    for i in range(count):
        x = start + (stop - start) * i / (count - 1)
        x = int(round(x)) if spec.kind == "int" else round(x, 6)
        spec.check(x)  # the knob's own range, with its own message
        if x not in values:
            values.append(x)
    return values


def check_samples(k: Any) -> int:
    if not isinstance(k, (int, float)) or int(k) != k or not 1 <= k <= MAX_SAMPLES:
        raise ParamError("samples per value", f"samples per value must be an integer in [1, {MAX_SAMPLES}], got {k!r}")
    return int(k)


def grid(knob: str, values: list, knob2: str | None = None, values2: list | None = None, samples: int = 1) -> list[dict[str, Any]]:
    """The settings of every point: {knob: value} for one knob, {knob: v, knob2: w} for every pair with
    two (a heatmap). ParamError when the same knob is given twice or the sweep is too large."""
    if not knob2:
        return [{knob: v} for v in values]
    if knob2 == knob:
        raise ParamError("second knob", f"the second knob must differ from the first ({knob})")
    total = len(values) * len(values2 or []) * samples
    if total > MAX_COMPLETIONS:
        raise ParamError("sweep size", f"values x second values x samples = {len(values)} x {len(values2)} x {samples} = "
                                       f"{total} completions; a sweep makes at most {MAX_COMPLETIONS}")
    return [{knob: v, knob2: w} for v in values for w in values2]


def label(settings: dict[str, Any]) -> str:
    return ", ".join(f"{k} = {v}" for k, v in settings.items())


def metrics(completions: list[dict[str, Any]], eos_ids: Iterable[int] = ()) -> dict[str, float]:
    """The sweep's metrics for the completions of one value (a run's "completions")."""
    eos = set(eos_ids)
    steps = [s for c in completions for s in c["steps"]]
    words = [[s["token_id"] for s in c["steps"] if s["token_id"] not in eos] for c in completions]
    raw = [s["raw_logprob"] for s in steps if s["raw_logprob"] is not None]
    reps = [_repeated_share(w, 3) for w in words if len(w) >= 3]
    return {
        "entropy": _mean([s["stages"][-1]["entropy"] for s in steps]),
        "perplexity": math.exp(-_mean(raw)) if raw else math.nan,
        "distinct_1": _distinct(words, 1),
        "distinct_2": _distinct(words, 2),
        "repetition": _mean(reps) if reps else 0.0,
        "length": _mean([len(c["steps"]) for c in completions]),
    }


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else math.nan


def _ngrams(tokens: list[int], n: int) -> list[tuple[int, ...]]:
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def _distinct(texts: list[list[int]], n: int) -> float:
    grams = [g for t in texts for g in _ngrams(t, n)]
    return len(set(grams)) / len(grams) if grams else math.nan


def _repeated_share(tokens: list[int], n: int) -> float:
    grams = _ngrams(tokens, n)
    return 1 - len(set(grams)) / len(grams)


def table(points: list[dict[str, Any]]) -> str:
    """CSV: one row per point (its knob values, samples, every metric), for a spreadsheet."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    knobs = list(points[0]["settings"]) if points else []
    writer.writerow([*knobs, "samples", *METRICS])
    for p in points:
        writer.writerow([*(p["settings"][k] for k in knobs), p["samples"], *(_cell(p["metrics"][m]) for m in METRICS)])
    return out.getvalue()


def _cell(x: float) -> str:
    return "" if x != x else f"{x:.6g}"
