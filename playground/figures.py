"""Figures and plain-language summaries of recorded steps: pure functions, records -> plotly figure JSON.

No Gradio here (STYLE.md 9), so the tests build every figure from recorded steps. A step is the dict
described in playground/ui_records.py; `params` is `SamplingParams.to_dict()` of the run.

Every finished run draws a timeline, an inspector and a draw chart, and its what-if two more (issue 17):
plotly's graph objects spent about 10 ms a figure validating every property. So the figures here are the
JSON those objects emitted (the same traces, make_subplots' axes and titles, add_hline's line and note),
written as plain dicts, with no plotly import. `plotly.graph_objects.Figure(fig)` reads one back, and
validates it against plotly's schema; the tests do.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import orjson

from engine.knobs import SamplingParams
from engine.stages import ALL, ANY_VOCAB, Said, count
from playground.ui_records import STAGE_LABELS, Step, prob, token_label, visible

CHOSEN = "#ea580c"  # orange: the token that was picked
KEPT = "#2563eb"  # blue: still possible after this stage
REMOVED = "#cbd5e1"  # grey: a stage set it to zero
FORCED = "#9333ea"  # purple: a token the user picked when branching

# plotly.py's default template ("plotly"), which its figures carry in layout.template: the fonts, axis lines
# and hover labels the charts were designed with. Read from plotly's package data (no plotly import).
_PLOTLY = Path(importlib.util.find_spec("plotly").submodule_search_locations[0])
TEMPLATE = orjson.loads((_PLOTLY / "package_data" / "templates" / "plotly.json").read_bytes())

# plotly.py's "Blues" (ColorBrewer) spelled out: plotly.js knows "Blues" by name too, but as another scale.
BLUES = [[0.0, "rgb(247,251,255)"], [0.125, "rgb(222,235,247)"], [0.25, "rgb(198,219,239)"],
         [0.375, "rgb(158,202,225)"], [0.5, "rgb(107,174,214)"], [0.625, "rgb(66,146,198)"],
         [0.75, "rgb(33,113,181)"], [0.875, "rgb(8,81,156)"], [1.0, "rgb(8,48,107)"]]


class Figure(dict):
    """A plotly figure as plain JSON: {"data": [trace, ...], "layout": {...}}.

    gr.Plot takes it as it takes a plotly figure (it calls `to_json`). Every figure shares one
    layout.template: read it, never write into it.
    """

    def __init__(self, data: list[dict], layout: dict[str, Any]):
        super().__init__(data=data, layout={**layout, "template": TEMPLATE})

    def to_json(self) -> str:
        # numpy scalars too, as plotly took them (NaN and infinity become null, as there)
        return orjson.dumps(self, option=orjson.OPT_SERIALIZE_NUMPY).decode()


def _layout(height: int, title: str, **more: Any) -> dict[str, Any]:
    return {
        "height": height,
        "title": {"text": title, "x": 0.01, "font": {"size": 14}},
        "margin": {"l": 50, "r": 20, "t": 50, "b": 40},
        "plot_bgcolor": "white",
        "showlegend": False,
        "bargap": 0.25,
        **more,
    }


def _subplots(rows: int, cols: int, hspace: float, vspace: float, titles: list[str] = ()) -> tuple[dict[str, dict], list[dict]]:
    """make_subplots' grid: the axes of each cell (x, y for the first, then x2, y2, ... row by row from the
    top) and the subplot titles as annotations above the cells. Its arithmetic, to the last bit."""
    w = (1.0 - hspace * (cols - 1)) / cols
    h = (1.0 - vspace * (rows - 1)) / rows
    axes, titled = {}, []
    for r in range(rows):
        below = rows - 1 - r  # row 1 is on top
        bottom = sum([h] * below) + below * vspace
        y = [max(0.0, bottom), min(1.0, bottom + h)]
        for c in range(cols):
            left = sum([w] * c) + c * hspace
            x = [max(0.0, left), min(1.0, left + w)]
            n = _axis(r * cols + c + 1)
            axes[f"xaxis{n}"] = {"anchor": f"y{n}", "domain": x}
            axes[f"yaxis{n}"] = {"anchor": f"x{n}", "domain": y}
            if r * cols + c < len(titles):
                titled.append({"text": titles[r * cols + c], "font": {"size": 16}, "showarrow": False,
                               "x": (x[0] + x[1]) / 2, "xanchor": "center", "xref": "paper",
                               "y": y[1], "yanchor": "bottom", "yref": "paper"})
    return axes, titled


def _axis(n: int) -> str:
    """The suffix of subplot n's axes: x, y for the first, x2, y2 for the second."""
    return "" if n == 1 else str(n)


def _unique_labels(ids: list[int], texts: dict[int, str]) -> list[str]:
    # Two ids can decode to the same text; a categorical axis would merge them.
    labels, seen = [], set()
    for i in ids:
        label = token_label(texts, i)
        if label in seen:
            label = f"{label} #{i}"
        seen.add(label)
        labels.append(label)
    return labels


def shown_stages(step: Step) -> list[int]:
    """Indices of the stages worth a chart row: raw, and every stage that changed the distribution."""
    stages = step["stages"]
    keep = [0]
    for s in range(1, len(stages)):
        if stages[s]["probs"] != stages[s - 1]["probs"] or stages[s]["removed_mass"] > 0:
            keep.append(s)
    return keep


def inspector_figure(step: Step, texts: dict[int, str], params: dict[str, Any], max_tokens: int = 12) -> Figure:
    """The top candidates' probabilities after each stage, one row per stage that did something.

    The chosen token is orange; a token some stage removed is a grey ghost at the height it had
    before it was removed; stages that were off (changed nothing) get no row, and the title names them.
    """
    # The tokens that mattered at any stage (so removed ones show too), kept in the record's order
    # (final probability, then raw); the chosen token always, even a low-ranked one forced by a branch.
    peak = [max(st["probs"][j] for st in step["stages"]) for j in range(len(step["candidates"]))]
    chosen_col = step["candidates"].index(step["token_id"])
    top = sorted(range(len(peak)), key=lambda j: (j != chosen_col, -peak[j]))[:max_tokens]
    cols = sorted(top)
    ids = [step["candidates"][j] for j in cols]
    labels = _unique_labels(ids, texts)
    rows = shown_stages(step)
    stages = step["stages"]
    titles = [_row_title(stages[s], params, s == rows[-1]) for s in rows]
    axes, annotations = _subplots(len(rows), 1, 0.2, 0.35 / max(len(rows), 1) / 2 + 0.02, titles)
    for note in annotations:
        note["font"] = {"size": 11}
    bottom = f"x{_axis(len(rows))}"
    chosen_colour = FORCED if step.get("forced") else CHOSEN
    data = []
    for r, s in enumerate(rows, start=1):
        heights, colours, hover = [], [], []
        for tok, j in zip(ids, cols):
            p = stages[s]["probs"][j]
            gone = _removed_at(step, j, s)
            if gone is not None:
                # Ghost bar: what the token had before the stage that removed it.
                heights.append(stages[gone - 1]["probs"][j])
                colours.append(REMOVED)
                hover.append(f"removed by {STAGE_LABELS[stages[gone]['name']]}")
            else:
                heights.append(p)
                colours.append(chosen_colour if tok == step["token_id"] else KEPT)
                hover.append(f"p = {p:.4f}")
        n = _axis(r)
        data.append({"type": "bar", "x": labels, "y": heights, "marker": {"color": colours}, "hovertext": hover,
                     "hoverinfo": "x+text", "name": STAGE_LABELS[stages[s]["name"]], "xaxis": f"x{n}", "yaxis": f"y{n}"})
        axes[f"yaxis{n}"].update(rangemode="tozero", tickformat=".2f", nticks=3, gridcolor="#eef2f7")
        axes[f"xaxis{n}"].update(tickangle=-35, tickfont={"size": 11})
        if f"x{n}" != bottom:  # make_subplots' shared_xaxes: every row follows the bottom one, labelled once
            axes[f"xaxis{n}"].update(matches=bottom, showticklabels=False)
    chosen = token_label(texts, step["token_id"])
    p = _params(params)
    quiet = [st["name"] for s, st in enumerate(stages) if s not in rows]
    idle = [STAGE_LABELS[n] for n in quiet if n == "constraint" or ALL[n].on(p, ANY_VOCAB)]  # on, but changed nothing
    off = len(quiet) - len(idle)
    notes = ([f"no change from: {', '.join(idle)}"] if idle else []) + ([f"{count(off, 'stage')} off"] if off else [])
    title = f"Step {step['position']}: how the sampler picked '{chosen}'"
    if notes:
        title += f"<br><span style='font-size:11px;color:#64748b'>{' · '.join(notes)}</span>"
    layout = _layout(130 + 125 * len(rows), title, **axes, annotations=annotations)
    layout["margin"]["t"] = 80 if off else 60
    return Figure(data, layout)


def _removed_at(step: Step, j: int, s: int) -> int | None:
    """The stage index (<= s) that zeroed candidate j, if its probability is 0 after stage s."""
    stages = step["stages"]
    if stages[s]["probs"][j] > 0:
        return None
    for t in range(1, s + 1):
        if stages[t]["probs"][j] == 0 and stages[t - 1]["probs"][j] > 0:
            return t
    return None


def _row_title(stage: dict, params: dict[str, Any], last: bool) -> str:
    name = stage["name"]
    if name == "raw":
        text = "raw (the model's own distribution)"
    else:
        text = f"after {STAGE_LABELS[name]}{ALL[name].setting(_params(params))}"
    if last:
        text += " = final"
    approximate = " · approximate (the server sent only its top tokens)" if stage.get("exact") is False else ""
    return f"{text}: {stage['kept']} tokens possible, entropy {stage['entropy']:.2f} nats{approximate}"


def _params(params: dict[str, Any]) -> SamplingParams:
    return SamplingParams.build(**params)


def stage_sentences(step: Step, texts: dict[int, str], params: dict[str, Any]) -> list[str]:
    """One plain sentence per stage, then one on the draw: what each stage did at this step."""
    stages = step["stages"]
    top = max(range(len(step["candidates"])), key=lambda j: stages[0]["probs"][j])
    out = [
        f"The model's raw distribution put {stages[0]['probs'][top]:.2f} on '{token_label(texts, step['candidates'][top])}' "
        f"(entropy {stages[0]['entropy']:.2f} nats)."
    ]
    p = _params(params)
    for prev, cur in zip(stages, stages[1:]):
        stage = ALL[cur["name"]]
        if stage.name != "constraint" and not stage.on(p, ANY_VOCAB):
            out.append(f"{stage.label} was off.")
        else:
            said = stage.describe(Said(prev, cur, step, texts, p))
            if cur.get("exact") is False:  # a remote model's top K only (engine/remote.py)
                said += (" Approximate: this depended on the tokens the server did not send, shown as one rest "
                         "spread evenly.")
            out.append(said)
    out.append(_draw_sentence(step, texts))
    if step.get("rest_redrawn"):
        out.append("The draw first landed in that rest, which names no token, so it was drawn again within the "
                   "tokens the server sent.")
    return out


def _draw_sentence(step: Step, texts: dict[int, str]) -> str:
    chosen = token_label(texts, step["token_id"])
    if step.get("forced"):
        return f"You picked '{chosen}' here to branch (the raw distribution's #{step['rank']})."
    if step["draw"] is None:
        return f"Greedy decoding took the top token '{chosen}' without a random draw."
    return (
        f"The random draw landed at {step['draw']:.2f} on the final cumulative distribution, inside the band of "
        f"'{chosen}' (p = {prob(step['logprob']):.2f}, the raw distribution's #{step['rank']})."
    )


def draw_figure(step: Step, texts: dict[int, str], max_tokens: int = 15) -> Figure:
    """The final distribution as stacked bands of a cumulative bar (most likely first), and the draw.

    Each token's bar spans [mass of the tokens above it, that + its probability]; the draw is a line at
    the height where the uniform landed, so it crosses the chosen token's band.
    """
    final = step["stages"][-1]["probs"]
    ranked = sorted((j for j in range(len(final)) if final[j] > 0), key=lambda j: -final[j])
    chosen = step["candidates"].index(step["token_id"]) if step["token_id"] in step["candidates"] else None
    order: list[int | str] = ranked[:max_tokens]
    if chosen in ranked and chosen not in order:
        # The draw landed far down: the top tokens, the ones between as one band, then the chosen one.
        k = ranked.index(chosen)
        order = [*ranked[: max_tokens - 2], f"({k - max_tokens + 2} more)", chosen]
        between = sum(final[j] for j in ranked[max_tokens - 2 : k])
    ids = [step["candidates"][j] for j in order if isinstance(j, int)]
    names = iter(_unique_labels(ids, texts))
    labels, heights, colours = [], [], []
    for j in order:
        labels.append(next(names) if isinstance(j, int) else j)
        heights.append(final[j] if isinstance(j, int) else between)
        colours.append(CHOSEN if j == chosen else KEPT if isinstance(j, int) else REMOVED)
    base = sum(heights)
    if base < 0.999:  # the tail beyond the recorded candidates
        labels.append("(all others)")
        heights.append(1.0 - base)
        colours.append(REMOVED)
    bases = [sum(heights[:i]) for i in range(len(heights))]
    bars = {"type": "bar", "x": labels, "y": heights, "base": bases, "marker": {"color": colours},
            "hovertext": [f"p = {h:.4f}, cumulative {b + h:.3f}" for h, b in zip(heights, bases)], "hoverinfo": "x+text"}
    axes = {"xaxis": {"tickangle": -35, "tickfont": {"size": 11}},
            "yaxis": {"range": [0, 1.02], "title": {"text": "cumulative probability"}, "gridcolor": "#eef2f7"}}
    if step["draw"] is None:
        return Figure([bars], _layout(320, "Greedy: no random draw (temperature 0 takes the top token)", **axes))
    # add_hline: a line across the plot at the draw, its label above the line's right end.
    line = {"type": "line", "xref": "x domain", "x0": 0, "x1": 1, "yref": "y", "y0": step["draw"], "y1": step["draw"],
            "line": {"color": "#111827", "dash": "dash"}}
    label = {"text": f"draw {step['draw']:.3f}", "showarrow": False, "xref": "x domain", "x": 1, "xanchor": "right",
             "yref": "y", "y": step["draw"], "yanchor": "bottom"}
    title = f"Where the random draw landed: {step['draw']:.3f} on the final cumulative distribution"
    return Figure([bars], _layout(320, title, **axes, shapes=[line], annotations=[label]))


def timeline_figure(steps: list[Step], texts: dict[int, str], selected: int | None = None) -> Figure:
    """Chosen-token probability (raw and final) and raw entropy over the completion; x = step.

    Clicking a point selects that step: the UI reads the point's x (the step's position in the list).
    """
    x = list(range(len(steps)))
    words = [visible(s["shown"]) if "shown" in s else token_label(texts, s["token_id"]) for s in steps]
    data = [
        {"type": "scatter", "x": x, "y": [prob(s["raw_logprob"]) for s in steps], "mode": "lines+markers",
         "name": "raw p(chosen)", "line": {"color": KEPT}, "marker": {"size": 7}, "text": words,
         "hovertemplate": "%{x}: '%{text}' raw p = %{y:.3f}<extra></extra>"},
        {"type": "scatter", "x": x, "y": [prob(s["logprob"]) for s in steps], "mode": "lines+markers",
         "name": "final p(chosen)", "line": {"color": CHOSEN, "dash": "dot"}, "marker": {"size": 6}, "text": words,
         "hovertemplate": "%{x}: '%{text}' final p = %{y:.3f}<extra></extra>"},
        {"type": "scatter", "x": x, "y": [s["stages"][0]["entropy"] for s in steps], "mode": "lines",
         "name": "raw entropy (nats)", "line": {"color": "#94a3b8", "width": 1.5}, "text": words,
         "hovertemplate": "%{x}: '%{text}' entropy %{y:.2f} nats<extra></extra>", "xaxis": "x", "yaxis": "y2"},
    ]
    # make_subplots' secondary y: the x axis leaves 6% on the right for the entropy axis's title.
    axes = {
        "xaxis": {"anchor": "y", "domain": [0.0, 0.94], "title": {"text": "step (click a point to inspect it)"}},
        "yaxis": {"anchor": "x", "domain": [0.0, 1.0], "range": [0, 1.05], "title": {"text": "probability"},
                  "gridcolor": "#eef2f7"},
        "yaxis2": {"anchor": "x", "overlaying": "y", "side": "right", "title": {"text": "entropy (nats)"},
                   "rangemode": "tozero", "showgrid": False},
    }
    layout = _layout(280, "Timeline: how sure the model was of each chosen token", **axes, showlegend=True,
                     legend={"orientation": "h", "y": 1.12, "x": 1, "xanchor": "right"}, hovermode="closest")
    if selected is not None and 0 <= selected < len(steps):  # add_vline: top to bottom at the selected step
        layout["shapes"] = [{"type": "line", "xref": "x", "x0": selected, "x1": selected, "yref": "y domain", "y0": 0,
                             "y1": 1, "line": {"color": "#111827", "width": 1.5}, "opacity": 0.6}]
    return Figure(data, layout)


def sweep_figure(points: list[dict[str, Any]], selected: int | None = None) -> Figure:
    """One small chart per sweep metric (playground/sweeps.py): against the knob's value, or a heatmap
    over two knobs' values. Clicking a point (or cell) shows its samples: the UI reads its customdata,
    the point's index."""
    from playground.sweeps import METRICS

    knobs = list(points[0]["settings"]) if points else ["value"]
    axes, titles = _subplots(2, 3, 0.1, 0.2, [title for title, _ in METRICS.values()])
    data = []
    for k, (name, (title, _)) in enumerate(METRICS.items()):
        n = _axis(k + 1)
        traces = [_sweep_line(knobs[0], points, name, title, selected)] if len(knobs) == 1 else \
            _sweep_heatmap(knobs, points, name, title, selected, k)
        data += [{**trace, "xaxis": f"x{n}", "yaxis": f"y{n}"} for trace in traces]
        axes[f"xaxis{n}"].update(title={"text": knobs[0], "font": {"size": 11}}, gridcolor="#eef2f7")
        if len(knobs) == 1:
            axes[f"yaxis{n}"].update(gridcolor="#eef2f7", rangemode="tozero")
        else:
            axes[f"yaxis{n}"].update(title={"text": knobs[1], "font": {"size": 11}})
    about = knobs[0] if len(knobs) == 1 else f"{knobs[0]} × {knobs[1]}"
    samples = points[0]["samples"] if points else 0
    title = f"Sweep of {about}: {samples} sample{'s' * (samples != 1)} per point (click a point for its texts)"
    return Figure(data, _layout(520, title, **axes, annotations=titles, hovermode="closest"))


def _sweep_line(knob: str, points: list[dict], name: str, title: str, selected: int | None) -> dict:
    colors = [CHOSEN if i == selected else KEPT for i in range(len(points))]
    return {"type": "scatter", "x": [p["settings"][knob] for p in points], "y": [p["metrics"][name] for p in points],
            "mode": "lines+markers", "name": title, "customdata": list(range(len(points))),
            "line": {"color": "#94a3b8", "width": 1.5}, "marker": {"size": 10, "color": colors},
            "hovertemplate": f"{knob} %{{x}}: {title} %{{y:.3f}}<extra></extra>"}


def _sweep_heatmap(knobs: list[str], points: list[dict], name: str, title: str, selected: int | None, k: int) -> list[dict]:
    xs = list(dict.fromkeys(p["settings"][knobs[0]] for p in points))
    ys = list(dict.fromkeys(p["settings"][knobs[1]] for p in points))
    z = [[None] * len(xs) for _ in ys]
    index = [[None] * len(xs) for _ in ys]
    for i, p in enumerate(points):
        r, c = ys.index(p["settings"][knobs[1]]), xs.index(p["settings"][knobs[0]])
        z[r][c], index[r][c] = p["metrics"][name], i
    # Categorical axes: every value gets a cell of the same size, however uneven the values.
    out = [{"type": "heatmap", "x": [str(x) for x in xs], "y": [str(y) for y in ys], "z": z, "customdata": index,
            "colorscale": BLUES, "showscale": False, "name": title, "texttemplate": "%{z:.2f}", "textfont": {"size": 9},
            "hovertemplate": f"{knobs[0]} %{{x}}, {knobs[1]} %{{y}}: {title} %{{z:.3f}}<extra></extra>"}]
    if selected is not None and 0 <= selected < len(points):
        p = points[selected]["settings"]
        out.append({"type": "scatter", "x": [str(p[knobs[0]])], "y": [str(p[knobs[1]])], "mode": "markers",
                    "hoverinfo": "skip",
                    "marker": {"symbol": "square-open", "size": 22, "color": CHOSEN, "line": {"width": 3}}})
    return out
