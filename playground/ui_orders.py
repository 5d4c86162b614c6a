"""The "All engine orders" view: the selected step under each engine's sampler order (engine/stages.py
PRESETS: Hugging Face, vLLM, llama.cpp, text-generation-webui), side by side, with the run's own random
number: what survives, the final top tokens, the token each picks, and a sentence on which orders
disagree and why.

Each order is the what-if of the step (playground/ui_runs.what_if: its snapshot, the current settings
with that order, the run's random number), so it needs the step's exact logits and so the model. The
sentence and the table are pure functions of the resulting step records.
"""

from __future__ import annotations

from html import escape
from typing import Any, Iterator

from engine.knobs import ParamError, SamplingParams
from engine.stages import PRESETS, STAGES, token_label
from playground import ui_runs
from playground.draws_figures import orders_figure
from playground.models import ModelHost
from playground.ui_events import Inputs, _encoder, _selected
from playground.ui_settings import collect, describe_error
from playground.ui_snapshot import At, fetch, model_of, settings_words

TOP = 5  # final top tokens listed per order


def on_stages(params: SamplingParams, vocab: int) -> list[str]:
    """The stages these settings turn on, in the default order: the only ones whose order can matter."""
    return [name for name, stage in STAGES.items() if stage.on(params, vocab)]


def swapped(a: tuple[str, ...], b: tuple[str, ...], on: list[str]) -> list[tuple[str, str]]:
    """Pairs (x, y) of stages that are on, x before y in order `a` and after it in order `b`."""
    pa, pb = {s: i for i, s in enumerate(a)}, {s: i for i, s in enumerate(b)}
    return [(x, y) for x in on for y in on if pa[x] < pa[y] and pb[x] > pb[y]]


def _label(name: str) -> str:
    return STAGES[name].label


def _and(words: list[str]) -> str:
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def _kept(step: dict) -> int:
    """Tokens left in the final distribution."""
    return step["stages"][-1]["kept"]


def why(a: str, b: str, steps: dict[str, dict], orders: dict[str, tuple[str, ...]], on: list[str]) -> str:
    """Why order `b` differs from order `a` at this step: the stages it runs the other way round, and
    what that did to the survivors."""
    pairs = swapped(orders[a], orders[b], on)
    if not pairs:
        return f"{b} runs the stages that are on in the same order as {a}"
    firsts: dict[str, list[str]] = {}
    for x, y in pairs:
        firsts.setdefault(x, []).append(_label(y))
    parts = [f"{_and(ys)} before {_label(x)}" for x, ys in firsts.items()]
    text = f"{b} applies {'; '.join(parts)}, where {a} does the opposite"
    ka, kb = _kept(steps[a]), _kept(steps[b])
    if ka != kb:
        return text + f", so {kb:,} token{'s' * (kb != 1)} survive{'s' * (kb == 1)} in {b}'s order against {ka:,} in {a}'s"
    return text + f", so the same number of tokens ({ka:,}) survive with other probabilities"


def explain(steps: dict[str, dict], orders: dict[str, tuple[str, ...]], on: list[str], texts: dict[int, str]) -> str:
    """Which orders disagree at this step and why, in words a student can read. steps: {engine: the step
    under its order}, in the order of `orders`."""
    engines = list(steps)
    first = steps[engines[0]]
    u = "greedy, no random number" if first["draw"] is None else f"the run's random number {first['draw']:.3f}"
    groups: dict[int, list[str]] = {}
    for name in engines:
        groups.setdefault(steps[name]["token_id"], []).append(name)
    if len(groups) == 1:
        text = f"With {u}, all four orders pick '{token_label(texts, first['token_id'])}'. "
        if len(on) < 2:
            return text + (f"Only {_label(on[0])} is on, so the order cannot matter here. " if on else
                           "No stage is on: all four draw from the raw distribution. ") + _HINT
        kept = {name: _kept(steps[name]) for name in engines}
        if len(set(kept.values())) > 1:
            a = engines[0]
            b = next(name for name in engines if kept[name] != kept[a])
            return text + f"Their final distributions still differ: {why(a, b, steps, orders, on)}."
        if not any(swapped(orders[engines[0]], orders[name], on) for name in engines[1:]):
            return text + f"The stages that are on ({_and([_label(s) for s in on])}) run in the same relative order in all four. " + _HINT
        return text + f"Their final distributions keep {kept[engines[0]]:,} tokens each, with other probabilities."
    said = [f"{_and(names)} pick{'s' * (len(names) == 1)} '{token_label(texts, t)}'" for t, names in groups.items()]
    text = f"With {u}, " + "; ".join(said) + ". "
    ref = max(groups.values(), key=len)[0]  # the largest group (the first on a tie) is the reference
    reasons = [why(ref, names[0], steps, orders, on) for names in groups.values() if ref not in names]
    return text + "They disagree because " + "; and ".join(reasons) + "."


_HINT = "Orders disagree when a truncation and temperature are both on: try temperature 1.5 with min_p 0.1 or top_p 0.8."


def table_html(steps: dict[str, dict], orders: dict[str, tuple[str, ...]], on: list[str], texts: dict[int, str]) -> str:
    """One row per engine: its order (the stages that are on), survivors, final top tokens, its pick."""
    rows = []
    majority = max((s["token_id"] for s in steps.values()), key=lambda t: sum(s["token_id"] == t for s in steps.values()))
    for name, step in steps.items():
        final = step["stages"][-1]["probs"]
        top = sorted(range(len(final)), key=lambda j: -final[j])[:TOP]
        tops = ", ".join(f"<code>{escape(token_label(texts, step['candidates'][j]))}</code> {final[j]:.3f}"
                         for j in top if final[j] > 0)
        chain = " → ".join(_label(s) for s in orders[name] if s in on) or "(no stage on)"
        # The pick that differs from most orders' in the chosen-token orange of the charts.
        style = " style='color:#ea580c;font-weight:700'" if step["token_id"] != majority else ""
        pick = f"<code{style}>{escape(token_label(texts, step['token_id']))}</code>"
        rows.append(f"<tr><td><b>{escape(name)}</b></td><td>{escape(chain)}</td><td>{_kept(step):,}</td><td>{tops}</td>"
                    f"<td>{pick}</td></tr>")
    return ("<table class='alts orders'><thead><tr><th>engine</th><th>order of the stages that are on</th>"
            "<th>survivors</th><th>final top tokens</th><th>picks</th></tr></thead><tbody>" + "".join(rows) + "</tbody></table>")


def all_orders(host: ModelHost, stops, ui: Inputs, runs: list[dict], view: Any, completion: Any, step: Any,
               session: str) -> Iterator[dict[str, Any]]:
    """The selected step under each engine's order, with the current settings and the run's random number."""
    try:
        run, c, pos = _selected(runs, view, completion, step)
    except ValueError as e:
        yield {"orders_note": str(e)}
        return
    lm, missing = model_of(host, run)
    if lm is None:
        yield {"orders_note": f"Comparing the engines' orders needs the step's exact logits, so the model: {missing}. "
                              "A saved run keeps only each stage's top candidates, under its own order."}
        return
    try:
        params = collect(ui.knobs, _encoder(lm))
    except ParamError as e:
        yield {"orders_note": describe_error(e)}
        return
    at = At(run, c, pos)
    for snap in fetch(host, stops, lm, at, session):
        if isinstance(snap, str):
            yield {"orders_note": snap}
    if isinstance(snap, str):
        return
    scheduler, texts, steps = host.scheduler(lm.name), dict(run["texts"]), {}
    for name, order in PRESETS.items():
        out = ui_runs.what_if(lm, scheduler, snap, run, c, pos, params.with_(sampler_order=tuple(order)))
        steps[name] = out["step"]
        texts.update(out["texts"])
    on = on_stages(params, lm.vocab_size)
    as_run = params.with_(sampler_order=tuple(run["params"]["sampler_order"]))  # each engine replaces the order
    yield {"orders_note": f"**Step {pos}** under {settings_words(run, as_run)}, in each engine's order: "
                          f"{explain(steps, PRESETS, on, texts)}",
           "orders_table": table_html(steps, PRESETS, on, texts),
           "orders_plot": orders_figure(list(steps.items()), texts)}


def follow_step(host: ModelHost, stops, ui: Inputs, runs: list[dict], view: Any, completion: Any, step: Any,
                session: str, note: str) -> Iterator[dict[str, Any]]:
    """`all_orders` for a newly selected step, once the view has been drawn (its note is not empty)."""
    if note:
        yield from all_orders(host, stops, ui, runs, view, completion, step, session)
