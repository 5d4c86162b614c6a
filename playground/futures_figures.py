"""The many-futures prefix tree as a plotly icicle: a pure function of playground/futures.tree's result."""

from __future__ import annotations

from typing import Any

import plotly.graph_objects as go

from engine.stages import visible
from playground.figures import CHOSEN
from playground.futures import ROOT

OWN_MARK = "★"


def tree_figure(result: dict[str, Any]) -> go.Figure:
    """Left to right as text reads: each box one token after the tokens to its left, its height the paths
    through it (the futures and the run's own). Colour: the token's probability under the model. The run's
    own path is marked ★ with an orange border."""
    nodes = result["nodes"]
    total = len(result["futures"]) + (1 if result["own"] else 0)
    ids = [ROOT] + [n["id"] for n in nodes]
    labels = [result["root"]] + [(OWN_MARK + " " if n["own"] else "") + visible(n["text"]) for n in nodes]
    parents = [""] + [n["parent"] for n in nodes]
    values = [total] + [n["count"] + n["own"] for n in nodes]
    colors = [1.0] + [n["p"] for n in nodes]
    custom = [[len(result["futures"]), "", "", ""]] + [
        [n["count"], f"{n['p']:.3f}", f"{n['q']:.3f}", "<br>the run's own text passes here ★" if n["own"] else ""]
        for n in nodes]
    fig = go.Figure(go.Icicle(
        ids=ids, labels=labels, parents=parents, values=values, branchvalues="total", customdata=custom,
        marker={"colors": colors, "colorscale": "Blues", "cmin": 0, "cmax": 1, "showscale": True,
                "colorbar": {"title": {"text": "p (model)"}, "thickness": 12},
                "line": {"color": ["white"] + [CHOSEN if n["own"] else "white" for n in nodes],
                         "width": [1] + [3 if n["own"] else 1 for n in nodes]}},
        tiling={"orientation": "h"}, sort=False, maxdepth=-1,
        hovertemplate="<b>%{label}</b><br>futures through it: %{customdata[0]}<br>p under the model: %{customdata[1]}"
                      "<br>p after the sampler: %{customdata[2]}%{customdata[3]}<extra></extra>",
    ))
    fig.update_layout(height=460, margin={"l": 10, "r": 10, "t": 40, "b": 10},
                      title={"text": f"{len(result['futures'])} futures and the run's own text ({OWN_MARK})", "x": 0.01,
                             "font": {"size": 14}})
    return fig
