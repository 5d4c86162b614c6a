"""Figures of a step drawn many ways: N teaching draws against the exact probabilities, and each engine
order's final distribution with the token the run's random number picks. Pure functions -> plotly Figure,
no Gradio (STYLE.md 9)."""

from __future__ import annotations

from typing import Any

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from playground import figures
from playground.figures import CHOSEN, KEPT, REMOVED, _unique_labels

DRAWN = CHOSEN  # orange: what the draws did
RAW = "#94a3b8"  # grey: the model's own distribution, before any stage


def many_draws_figure(bars: list[dict[str, Any]], n: int, title: str) -> go.Figure:
    """Grouped bars per token (and a last "rest" band): the share of the n draws it got, its final
    probability, and its raw probability. bars: [{"label", "count", "final", "raw"}]."""
    labels = [b["label"] for b in bars]
    fig = go.Figure([
        go.Bar(x=labels, y=[b["count"] / n for b in bars], name=f"share of the {n:,} draws", marker_color=DRAWN,
               customdata=[b["count"] for b in bars], hovertemplate="'%{x}': %{customdata:,} draws (%{y:.4f})<extra></extra>"),
        go.Bar(x=labels, y=[b["final"] for b in bars], name="final probability", marker_color=KEPT,
               hovertemplate="'%{x}': final p = %{y:.4f}<extra></extra>"),
        go.Bar(x=labels, y=[b["raw"] for b in bars], name="raw probability", marker_color=RAW,
               hovertemplate="'%{x}': raw p = %{y:.4f}<extra></extra>"),
    ])
    fig.update_yaxes(title="probability / share of draws", rangemode="tozero", gridcolor="#eef2f7")
    fig.update_xaxes(tickangle=-35, tickfont={"size": 11})
    fig = _styled(fig, 360, title)
    fig.update_layout(barmode="group", showlegend=True, legend={"orientation": "h", "y": 1.1, "x": 1, "xanchor": "right"})
    return fig


def orders_figure(results: list[tuple[str, dict]], texts: dict[int, str], top: int = 8) -> go.Figure:
    """One panel per engine order: its final distribution's top tokens at the step, and the token its
    random number picks in orange (last, when it is not among them). Each panel has its own scale: a
    flat distribution's bars would vanish beside a sharp one's. results: [(engine name, step dict)]."""
    fig = make_subplots(rows=1, cols=len(results), horizontal_spacing=0.05,
                        subplot_titles=[f"{name}: {step['stages'][-1]['kept']:,} left" for name, step in results])
    for col, (_, step) in enumerate(results, start=1):
        final = step["stages"][-1]["probs"]
        order = sorted(range(len(final)), key=lambda j: -final[j])[:top]
        pick = step["candidates"].index(step["token_id"])
        if pick not in order:
            order[-1] = pick
        ids = [step["candidates"][j] for j in order]
        fig.add_trace(go.Bar(
            x=_unique_labels(ids, texts), y=[final[j] for j in order],
            marker_color=[CHOSEN if t == step["token_id"] else KEPT if final[j] > 0 else REMOVED for t, j in zip(ids, order)],
            hovertemplate="'%{x}': final p = %{y:.4f}<extra></extra>"), row=1, col=col)
    fig.update_annotations(font_size=12)  # the panel titles
    fig.update_yaxes(rangemode="tozero", gridcolor="#eef2f7")
    fig.update_yaxes(title="final probability", row=1, col=1)
    fig.update_xaxes(tickangle=-40, tickfont={"size": 10})
    return _styled(fig, 320, "The same step under each engine's order (orange: what the run's random number picks)")


def _styled(fig: go.Figure, height: int, title: str) -> go.Figure:
    """The step figures' look (playground/figures.py builds theirs as plain JSON; these are drawn on a click)."""
    return fig.update_layout(**figures._layout(height, title))
