"""Figures and plain-language summaries of recorded steps: pure functions, records -> plotly Figure.

No Gradio here (STYLE.md 9), so the tests build every figure from recorded steps. A step is the dict
described in playground/ui_records.py; `params` is `SamplingParams.to_dict()` of the run.
"""

from __future__ import annotations

from typing import Any

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from engine.knobs import SamplingParams
from engine.stages import ALL, ANY_VOCAB, Said, count
from playground.ui_records import STAGE_LABELS, Step, prob, token_label, visible

CHOSEN = "#ea580c"  # orange: the token that was picked
KEPT = "#2563eb"  # blue: still possible after this stage
REMOVED = "#cbd5e1"  # grey: a stage set it to zero
FORCED = "#9333ea"  # purple: a token the user picked when branching


def _layout(fig: go.Figure, height: int, title: str) -> go.Figure:
    fig.update_layout(
        height=height,
        title={"text": title, "x": 0.01, "font": {"size": 14}},
        margin={"l": 50, "r": 20, "t": 50, "b": 40},
        plot_bgcolor="white",
        showlegend=False,
        bargap=0.25,
    )
    return fig


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


def inspector_figure(step: Step, texts: dict[int, str], params: dict[str, Any], max_tokens: int = 12) -> go.Figure:
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
    fig = make_subplots(rows=len(rows), cols=1, shared_xaxes=True, vertical_spacing=0.35 / max(len(rows), 1) / 2 + 0.02,
                        subplot_titles=titles)
    chosen_colour = FORCED if step.get("forced") else CHOSEN
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
        fig.add_trace(
            go.Bar(x=labels, y=heights, marker_color=colours, hovertext=hover, hoverinfo="x+text",
                   name=STAGE_LABELS[stages[s]["name"]]),
            row=r, col=1,
        )
        fig.update_yaxes(rangemode="tozero", tickformat=".2f", nticks=3, row=r, col=1, gridcolor="#eef2f7")
    chosen = token_label(texts, step["token_id"])
    p = _params(params)
    quiet = [st["name"] for s, st in enumerate(stages) if s not in rows]
    idle = [STAGE_LABELS[n] for n in quiet if n == "constraint" or ALL[n].on(p, ANY_VOCAB)]  # on, but changed nothing
    off = len(quiet) - len(idle)
    notes = ([f"no change from: {', '.join(idle)}"] if idle else []) + ([f"{count(off, 'stage')} off"] if off else [])
    title = f"Step {step['position']}: how the sampler picked '{chosen}'"
    if notes:
        title += f"<br><span style='font-size:11px;color:#64748b'>{' · '.join(notes)}</span>"
    fig.update_xaxes(tickangle=-35, tickfont={"size": 11})
    fig.update_annotations(font_size=11)
    fig = _layout(fig, 130 + 125 * len(rows), title)
    fig.update_layout(margin={"t": 80 if off else 60})
    return fig


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


def draw_figure(step: Step, texts: dict[int, str], max_tokens: int = 15) -> go.Figure:
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
    fig = go.Figure(go.Bar(x=labels, y=heights, base=bases, marker_color=colours,
                           hovertext=[f"p = {h:.4f}, cumulative {b + h:.3f}" for h, b in zip(heights, bases)],
                           hoverinfo="x+text"))
    if step["draw"] is None:
        title = "Greedy: no random draw (temperature 0 takes the top token)"
    else:
        title = f"Where the random draw landed: {step['draw']:.3f} on the final cumulative distribution"
        fig.add_hline(y=step["draw"], line_dash="dash", line_color="#111827",
                      annotation_text=f"draw {step['draw']:.3f}", annotation_position="top right")
    fig.update_yaxes(range=[0, 1.02], title="cumulative probability", gridcolor="#eef2f7")
    fig.update_xaxes(tickangle=-35, tickfont={"size": 11})
    return _layout(fig, 320, title)


def timeline_figure(steps: list[Step], texts: dict[int, str], selected: int | None = None) -> go.Figure:
    """Chosen-token probability (raw and final) and raw entropy over the completion; x = step.

    Clicking a point selects that step: the UI reads the point's x (the step's position in the list).
    """
    x = list(range(len(steps)))
    words = [visible(s["shown"]) if "shown" in s else token_label(texts, s["token_id"]) for s in steps]
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    fig.add_trace(go.Scatter(x=x, y=[prob(s["raw_logprob"]) for s in steps], mode="lines+markers", name="raw p(chosen)",
                             line={"color": KEPT}, marker={"size": 7}, text=words, hovertemplate="%{x}: '%{text}' raw p = %{y:.3f}<extra></extra>"))
    fig.add_trace(go.Scatter(x=x, y=[prob(s["logprob"]) for s in steps], mode="lines+markers", name="final p(chosen)",
                             line={"color": CHOSEN, "dash": "dot"}, marker={"size": 6}, text=words,
                             hovertemplate="%{x}: '%{text}' final p = %{y:.3f}<extra></extra>"))
    fig.add_trace(go.Scatter(x=x, y=[s["stages"][0]["entropy"] for s in steps], mode="lines", name="raw entropy (nats)",
                             line={"color": "#94a3b8", "width": 1.5}, text=words,
                             hovertemplate="%{x}: '%{text}' entropy %{y:.2f} nats<extra></extra>"), secondary_y=True)
    if selected is not None and 0 <= selected < len(steps):
        fig.add_vline(x=selected, line_color="#111827", line_width=1.5, opacity=0.6)
    fig.update_yaxes(range=[0, 1.05], title="probability", secondary_y=False, gridcolor="#eef2f7")
    fig.update_yaxes(title="entropy (nats)", secondary_y=True, rangemode="tozero", showgrid=False)
    fig.update_xaxes(title="step (click a point to inspect it)")
    fig = _layout(fig, 280, "Timeline: how sure the model was of each chosen token")
    fig.update_layout(showlegend=True, legend={"orientation": "h", "y": 1.12, "x": 1, "xanchor": "right"}, hovermode="closest")
    return fig


def sweep_figure(points: list[dict[str, Any]], selected: int | None = None) -> go.Figure:
    """One small chart per sweep metric (playground/sweeps.py): against the knob's value, or a heatmap
    over two knobs' values. Clicking a point (or cell) shows its samples: the UI reads its customdata,
    the point's index."""
    from playground.sweeps import METRICS

    knobs = list(points[0]["settings"]) if points else ["value"]
    fig = make_subplots(rows=2, cols=3, subplot_titles=[title for title, _ in METRICS.values()],
                        horizontal_spacing=0.1, vertical_spacing=0.2)
    for k, (name, (title, _)) in enumerate(METRICS.items()):
        row, col = k // 3 + 1, k % 3 + 1
        if len(knobs) == 1:
            fig.add_trace(_sweep_line(knobs[0], points, name, title, selected), row=row, col=col)
        else:
            for trace in _sweep_heatmap(knobs, points, name, title, selected, k):
                fig.add_trace(trace, row=row, col=col)
    fig.update_xaxes(title=knobs[0], title_font={"size": 11}, gridcolor="#eef2f7")
    if len(knobs) == 1:
        fig.update_yaxes(gridcolor="#eef2f7", rangemode="tozero")
        about = knobs[0]
    else:
        fig.update_yaxes(title=knobs[1], title_font={"size": 11})
        about = f"{knobs[0]} × {knobs[1]}"
    samples = points[0]["samples"] if points else 0
    fig = _layout(fig, 520, f"Sweep of {about}: {samples} sample{'s' * (samples != 1)} per point (click a point for its texts)")
    fig.update_layout(hovermode="closest")
    return fig


def _sweep_line(knob: str, points: list[dict], name: str, title: str, selected: int | None) -> go.Scatter:
    colors = [CHOSEN if i == selected else KEPT for i in range(len(points))]
    return go.Scatter(x=[p["settings"][knob] for p in points], y=[p["metrics"][name] for p in points], mode="lines+markers",
                      name=title, customdata=list(range(len(points))), line={"color": "#94a3b8", "width": 1.5},
                      marker={"size": 10, "color": colors}, hovertemplate=f"{knob} %{{x}}: {title} %{{y:.3f}}<extra></extra>")


def _sweep_heatmap(knobs: list[str], points: list[dict], name: str, title: str, selected: int | None, k: int) -> list:
    xs = list(dict.fromkeys(p["settings"][knobs[0]] for p in points))
    ys = list(dict.fromkeys(p["settings"][knobs[1]] for p in points))
    z = [[None] * len(xs) for _ in ys]
    index = [[None] * len(xs) for _ in ys]
    for i, p in enumerate(points):
        r, c = ys.index(p["settings"][knobs[1]]), xs.index(p["settings"][knobs[0]])
        z[r][c], index[r][c] = p["metrics"][name], i
    # Categorical axes: every value gets a cell of the same size, however uneven the values.
    out = [go.Heatmap(x=[str(x) for x in xs], y=[str(y) for y in ys], z=z, customdata=index, colorscale="Blues",
                      showscale=False, name=title, texttemplate="%{z:.2f}", textfont={"size": 9},
                      hovertemplate=f"{knobs[0]} %{{x}}, {knobs[1]} %{{y}}: {title} %{{z:.3f}}<extra></extra>")]
    if selected is not None and 0 <= selected < len(points):
        p = points[selected]["settings"]
        out.append(go.Scatter(x=[str(p[knobs[0]])], y=[str(p[knobs[1]])], mode="markers", hoverinfo="skip",
                              marker={"symbol": "square-open", "size": 22, "color": CHOSEN, "line": {"width": 3}}))
    return out
