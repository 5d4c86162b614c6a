"""The logit lens as figures: pure functions of the plain table playground/ui_lens.lens_table builds.

table: {"layers": [row names, "embeddings" first], "positions": [the input token at each column], "top":
[row][column] -> [{"id", "p"}, … 5], "texts": {id: text}, "chosen": the step's token id or None, "rank":
[its rank per row], "prob": [its probability per row]}.
"""

from __future__ import annotations

from typing import Any

import plotly.graph_objects as go

from engine.stages import visible
from playground.figures import CHOSEN


def _label(table: dict[str, Any], token: int) -> str:
    return visible(table["texts"][str(token)])


def heatmap_figure(table: dict[str, Any]) -> go.Figure:
    """Layers (bottom: the embeddings, top: the last layer) × the prefix's last positions; each cell the
    top token read through the final norm and head there, coloured by its probability; hover: the top 5."""
    top, layers = table["top"], table["layers"]
    z = [[cell[0]["p"] for cell in row] for row in top]
    text = [[_label(table, cell[0]["id"]) for cell in row] for row in top]
    hover = [["<br>".join(f"{_label(table, c['id'])}: {c['p']:.3f}" for c in cell) for cell in row] for row in top]
    columns = [f"{i}: {visible(t)}" for i, t in enumerate(table["positions"], start=-len(table["positions"]) + 1)]
    fig = go.Figure(go.Heatmap(
        z=z, x=columns, y=layers, text=text, texttemplate="%{text}", textfont={"size": 10}, customdata=hover,
        colorscale="Blues", zmin=0, zmax=1, colorbar={"title": {"text": "p of top token"}, "thickness": 12},
        hovertemplate="after %{x} at %{y}:<br>%{customdata}<extra></extra>", xgap=1, ygap=1,
    ))
    fig.update_layout(height=max(320, 22 * len(layers) + 120), margin={"l": 90, "r": 20, "t": 50, "b": 60},
                      title={"text": "Logit lens: each layer's hidden state read through the final norm and head "
                                     "(the token after each input token)", "x": 0.01, "font": {"size": 14}},
                      xaxis={"title": {"text": "input token (position from the end)"}, "type": "category"},
                      yaxis={"type": "category"})
    return fig


def rank_figure(table: dict[str, Any]) -> go.Figure:
    """The chosen token's rank at each layer (1 = that layer's top token), on a log axis, 1 on top."""
    chosen = table["chosen"]
    fig = go.Figure(go.Scatter(
        x=table["layers"], y=table["rank"], mode="lines+markers", line={"color": CHOSEN},
        customdata=table["prob"], hovertemplate="%{x}: rank %{y}, p %{customdata:.4f}<extra></extra>",
    ))
    fig.update_layout(height=300, margin={"l": 60, "r": 20, "t": 50, "b": 60}, plot_bgcolor="white",
                      title={"text": f"Rank of the chosen token {_label(table, chosen)!r} at each layer", "x": 0.01,
                             "font": {"size": 14}},
                      xaxis={"type": "category"},
                      yaxis={"type": "log", "autorange": "reversed", "title": {"text": "rank (1 = top)"},
                             "gridcolor": "#e5e7eb"})
    return fig
