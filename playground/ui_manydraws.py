"""The "Sample N times" view: the selected step drawn N times (10 … 100,000) from its exact final
distribution, beside that distribution and the raw one, with how close the counts come.

The distribution is the step's snapshot under the current settings (a what-if, when they differ from the
run's). A run whose model is not here (or an API response without its prompt) has only its compact
record: then the draws use the recorded candidates plus one "rest" band for every other token, and the
view says so. Handlers return {output name: value} (see playground/ui_events.py).
"""

from __future__ import annotations

from typing import Any, Iterator

import numpy as np

from engine.knobs import ParamError
from engine.manydraws import MAX_DRAWS, chi_square, distributions, tally, total_variation, uniforms
from playground.draws_figures import many_draws_figure
from playground.figures import _unique_labels
from playground.models import ModelHost
from playground.ui_events import Inputs, _encoder, _selected
from playground.ui_settings import collect, describe_error
from playground.ui_snapshot import At, fetch, model_of, settings_words

MIN_DRAWS = 10
SHOWN = 15  # tokens with a bar of their own; the others share the "rest" bar
REST = "rest"


def draws_for(log10_n: Any) -> int:
    """N for the slider's value (log10 N, so a class can sweep 10 to 100,000 in one drag)."""
    return int(min(MAX_DRAWS, max(MIN_DRAWS, round(10 ** float(log10_n)))))


def check_seed(seed: Any) -> int:
    try:
        value = int(seed)
        if value != float(seed) or value < 0:
            raise ValueError
    except (TypeError, ValueError):
        raise ParamError("draws_seed", f"must be a whole number in [0, 2^64), got {seed!r}") from None
    if value >= 2**64:
        raise ParamError("draws_seed", f"must be a whole number in [0, 2^64), got {seed!r}")
    return value


def bars(counts: np.ndarray, final: np.ndarray, raw: np.ndarray, labels: dict[int, str], shown: int = SHOWN,
         rest_label: str = REST) -> list[dict[str, Any]]:
    """The chart's bars: the `shown` most likely of the labelled categories (final probability, then raw:
    a token a truncation removed still shows its raw bar), then one bar for every other category.
    counts, final, raw: (C,) per category; labels: {category: label} for those that may get a bar of
    their own (at least the `shown` most likely by final and by raw probability)."""
    order = sorted(labels, key=lambda j: (-final[j], -raw[j], j))[:shown]
    out = [{"label": labels[j], "count": int(counts[j]), "final": float(final[j]), "raw": float(raw[j])} for j in order]
    rest = np.ones(len(counts), dtype=bool)
    rest[order] = False
    if rest.any():
        out.append({"label": rest_label, "count": int(counts[rest].sum()), "final": float(final[rest].sum()),
                    "raw": float(raw[rest].sum())})
    return out


def describe(n: int, seed: int, counts: np.ndarray, final: np.ndarray) -> str:
    """How close N draws come to the probabilities, in words a student can read."""
    tv = total_variation(counts, final)
    chi = chi_square(counts, final)
    text = (f"Total-variation distance **{tv:.3f}**: {100 * tv:.1f}% of the draws would have to move to other "
            "tokens for the shares to match the probabilities exactly. ")
    if chi is None:
        text += "Too few draws for a χ² test (it needs two groups of tokens each expected at least 5 times). "
    else:
        verdict = ("a gap this size is rare by chance: try another seed" if chi.p_value < 0.001 else
                   f"a gap this size is ordinary chance for {n:,} draws")
        text += f"χ² = {chi.statistic:.1f} on {chi.dof} degrees of freedom, p = {chi.p_value:.2f}: {verdict}. "
    return text + f"The gap shrinks like 1/√N: move N and watch the orange bars settle on the blue ones (seed {seed})."


def sample_step(host: ModelHost, stops, ui: Inputs, runs: list[dict], view: Any, completion: Any, step: Any,
                draws: Any, draws_seed: Any, session: str) -> Iterator[dict[str, Any]]:
    """Draw the selected step N times: from its exact final distribution under the current settings when
    the run's model is here, else from its recorded candidates and a rest band."""
    try:
        run, c, pos = _selected(runs, view, completion, step)
        n, seed = draws_for(draws), check_seed(draws_seed)
    except ValueError as e:  # ParamError is one
        yield {"draws_note": describe_error(e) if isinstance(e, ParamError) else str(e)}
        return
    at = At(run, c, pos)
    lm, missing = model_of(host, run)
    if lm is None:
        final, raw, labels, source = recorded(at.step, run["texts"])
        source = f"Without the model ({missing}), these draws use {source}"
    else:
        try:
            params = collect(ui.knobs, _encoder(lm))
        except ParamError as e:
            yield {"draws_note": describe_error(e)}
            return
        for snap in fetch(host, stops, lm, at, session):
            if isinstance(snap, str):
                yield {"draws_note": snap}
        if isinstance(snap, str):
            return
        raw, final = host.scheduler(lm.name).call(lambda: distributions(
            lm, snap, params, run["prompt_ids"], at.earlier, at.coords, at.memory, at.constrained))
        labels = _token_labels(lm, final, raw, run["texts"])
        source = f"These draws use step {pos}'s exact final distribution over all {len(final):,} tokens, under {settings_words(run, params)}"
    counts = tally(final, uniforms(seed, pos, n))
    title = f"Step {pos} drawn {n:,} times (seed {seed}): share of draws, final and raw probability"
    shown = bars(counts, final, raw, labels, rest_label=REST if lm is None else "all other tokens")
    yield {"draws_note": f"**{n:,} draws** from step {pos}. {source}. {describe(n, seed, counts, final)}",
           "draws_plot": many_draws_figure(shown, n, title)}



def follow_step(host: ModelHost, stops, ui: Inputs, runs: list[dict], view: Any, completion: Any, step: Any, draws: Any,
                draws_seed: Any, session: str, note: str) -> Iterator[dict[str, Any]]:
    """`sample_step` for a newly selected step, once the view has been drawn (its note is not empty), so
    the histogram follows the selection; nothing for a page that never opened it."""
    if note:
        yield from sample_step(host, stops, ui, runs, view, completion, step, draws, draws_seed, session)

def recorded(step: dict, texts: dict[int, str]) -> tuple[np.ndarray, np.ndarray, dict[int, str], str]:
    """(final, raw, labels, what they are) over the step's recorded candidates plus one rest category:
    what a run holds without its model."""
    final = np.array(step["stages"][-1]["probs"], dtype=np.float64)
    raw = np.array(step["stages"][0]["probs"], dtype=np.float64)
    rest_final, rest_raw = max(0.0, 1.0 - final.sum()), max(0.0, 1.0 - raw.sum())
    labels = dict(enumerate(_unique_labels(step["candidates"], texts)))
    k = len(labels)
    what = (f"the step's {k} recorded candidates and one band for every other token (final probability "
            f"{rest_final:.3f}, raw {rest_raw:.3f}): what a saved run keeps of the distribution, under the run's own "
            f"settings (other settings need the model). The \"{REST}\" bar holds that band and the candidates "
            "without a bar of their own")
    return np.append(final, rest_final), np.append(raw, rest_raw), labels, what


def _token_labels(lm, final: np.ndarray, raw: np.ndarray, texts: dict[int, str]) -> dict[int, str]:
    """{token id: label} for the tokens that may get a bar: the most likely by final and by raw probability."""
    top = sorted(set(np.argsort(-final, kind="stable")[:SHOWN].tolist()) | set(np.argsort(-raw, kind="stable")[:SHOWN].tolist()))
    return dict(zip(top, _unique_labels(top, {t: texts.get(t) or lm.token_text(t) for t in top})))

