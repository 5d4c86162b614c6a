"""The logit lens tab's handler: a module-level function of plain values returning {output name: value}.

The forward pass runs on the model's decode loop (`scheduler.call`), never on a Gradio thread
(engine/scheduler.py says why); what comes back is plain lists, drawn by playground/lens_figures.py.
"""

from __future__ import annotations

import time
from typing import Any

from engine.lens import LensUnsupported, logit_lens
from engine.model import LoadedModel
from engine.scheduler import Refused
from playground import lens_figures
from playground.models import ModelHost
from playground.ui_events import _selected

EXPLAIN = ("**These are hidden states, not the sampled logits.** Each row reads the residual stream after one layer "
           "through the model's own final norm and output head, as if the model stopped there (the logit lens). Only "
           "the last row is the distribution the sampler actually started from (before any sampler stage). Watch the "
           "chosen token climb: early layers often guess a related or merely frequent token, the later ones settle.")
EMPTY = {"lens_note": "", "lens_heatmap": None, "lens_rank": None}


def lens_table(lm: LoadedModel, input_ids: list[int], chosen: int | None) -> dict[str, Any]:
    """The lens over `input_ids` as plain lists (see playground/lens_figures.py). Tensor work: call it on
    the model's decode loop."""
    out = logit_lens(lm.model, input_ids, token=chosen)
    layers = ["embeddings"] + [f"layer {i}" for i in range(1, out.top_ids.shape[0])]
    top = [[[{"id": int(i), "p": round(float(p), 6)} for i, p in zip(ids, probs)] for ids, probs in zip(row_ids, row_probs)]
           for row_ids, row_probs in zip(out.top_ids.tolist(), out.top_probs.tolist())]
    positions = input_ids[-out.top_ids.shape[1]:]
    shown = {c["id"] for row in top for cell in row for c in cell} | set(positions) | ({chosen} if chosen is not None else set())
    return {
        "layers": layers,
        "positions": [lm.token_text(t) for t in positions],
        "top": top,
        "texts": {str(t): lm.token_text(t) for t in shown},
        "chosen": chosen,
        "rank": None if out.token_rank is None else out.token_rank.tolist(),
        "prob": None if out.token_prob is None else [round(p, 6) for p in out.token_prob.tolist()],
    }


def lens(host: ModelHost, runs: list[dict], view: Any, completion: Any, step: Any) -> dict[str, Any]:
    """The logit lens of the selected step: one forward pass over the prompt and the tokens before it."""
    try:
        run, c, pos = _selected(runs, view, completion, step)
    except ValueError as e:
        return {**EMPTY, "lens_note": str(e)}
    if not run.get("prompt_ids"):
        return {**EMPTY, "lens_note": "This run holds no prompt (an API response): the lens needs the prompt's tokens."}
    try:
        lm = host.get(run["model"])
    except KeyError:
        return {**EMPTY, "lens_note": f"The logit lens needs the model: {run['model']!r} is not loaded here (a loaded run "
                                      f"keeps only compact records, not hidden states)."}
    if getattr(lm, "model", None) is None:
        return {**EMPTY, "lens_note": f"The logit lens needs a local model's hidden states; {lm.name} is not local."}
    steps = run["completions"][c]["steps"]
    ids = list(run["prompt_ids"]) + [s["token_id"] for s in steps[:pos]]
    chosen = steps[pos]["token_id"]
    started = time.perf_counter()
    try:
        table = host.scheduler(lm.name).call(lambda: lens_table(lm, ids, chosen))
    except LensUnsupported as e:
        return {**EMPTY, "lens_note": f"No logit lens for this model: {e}."}
    except Refused as e:
        return {**EMPTY, "lens_note": e.message}
    seconds = time.perf_counter() - started
    rank = table["rank"]
    first = next((i for i, r in enumerate(rank) if r == 1), None)
    where = (f"it is the top token from {table['layers'][first]} on" if first is not None and all(r == 1 for r in rank[first:])
             else f"its rank goes {rank[0]} → {rank[len(rank) // 2]} → {rank[-1]} (embeddings → middle → last layer)")
    note = (f"**Step {pos}**, chosen token {lm.token_text(chosen)!r}: {where}. One forward pass over {len(ids)} tokens "
            f"in {seconds:.2f} s. {EXPLAIN}")
    return {"lens_note": note, "lens_heatmap": lens_figures.heatmap_figure(table), "lens_rank": lens_figures.rank_figure(table)}
