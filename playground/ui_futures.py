"""The many-futures tab's handlers: module-level functions of plain values returning {output name: value}.

Futures run in the model's shared batch (playground/futures.py); the tree is kept as plain values in the
page's state, so a click on a node (its id, sent by the page's script) reads its continuations without
the model.
"""

from __future__ import annotations

import tempfile
from html import escape
from pathlib import Path
from typing import Any, Iterator

from engine.knobs import ParamError
from engine.scheduler import Refused
from playground import futures, futures_figures, tokenview
from playground.models import ModelHost
from playground.ui_events import Stops, _selected

FROM = ("the selected step", "the start")
NEEDS_MODEL = "Many futures needs the model: a loaded run keeps only compact records."


def run_futures(host: ModelHost, stops: Stops, runs: list[dict], view: Any, completion: Any, step: Any, start_from: str,
                n: Any, k: Any, session: str) -> Iterator[dict[str, Any]]:
    """N futures of k tokens from the selected step (or the start) of the shown completion, under the
    run's own settings; a progress bar while they run, then the tree, a sentence, and its JSON."""
    try:
        run, c, pos = _selected(runs, view, completion, step)
        if start_from == FROM[1]:
            pos = 0
        if not run.get("prompt_ids"):
            raise ValueError("This run holds no prompt (an API response): its futures cannot be drawn.")
        lm = host.get(run["model"])
        n, k = futures.check(n, k, host.limits.max_rows)
    except ValueError as e:  # ParamError is one
        yield {"futures_status": f"<p class='note'>{escape(str(e))}</p>"}
        return
    except KeyError:
        yield {"futures_status": f"<p class='note'>{NEEDS_MODEL} {escape(run['model'])!s} is not loaded here.</p>"}
        return
    with stops.run(session) as flag:
        try:
            gen = futures.start(lm, run, c, pos, n, k, cancel=flag.is_set)
            total = n * gen.max_tokens
            for made in futures.grow(host.scheduler(lm.name), gen, session):
                yield {"futures_status": tokenview.progress_html(made, total, f"{made} of up to {total} tokens "
                                                                               f"({n} futures × {k})")}
        except (ParamError, IndexError) as e:
            yield {"futures_status": f"<p class='note'>{escape(str(e))}</p>"}
            return
        except Refused as e:
            yield {"futures_status": f"<p class='note'>{escape(e.message)}</p>"}
            return
    texts = dict(run["texts"])
    paths = futures.paths_of(gen)
    own = futures.own_path(run, c, pos, k)
    for path in [*paths, own]:
        for t, _, _ in path:
            if t not in texts:
                texts[t] = lm.token_text(t)
    root = f"step {pos}" if pos else "start"
    result = futures.tree(paths, own, texts, root)
    # What the JSON needs to be read (and redrawn) on its own.
    result.update(model=lm.name, run=run["label"], completion=c + 1, step=pos, tokens=k, seed=futures.SEED,
                  params={**run["params"], "n": n, "max_tokens": k, "seed": futures.SEED})
    stopped = any(r == "cancelled" for r in gen.finish_reasons)
    yield {
        "futures_status": tokenview.progress_html(1, 1, f"{'Stopped: ' if stopped else ''}{n} futures × {k} tokens from "
                                                        f"{root}, seed {futures.SEED} (future i = completion i)."),
        "futures_note": futures.summary(result),
        "futures_plot": futures_figures.tree_figure(result),
        "futures_state": result,
        "futures_texts": continuations_html(result, futures.ROOT),
        "futures_json": _write(f"futures-{root.replace(' ', '-')}.json", futures.to_json(result)),
    }


def pick_node(result: dict | None, node: str) -> dict[str, Any]:
    """A click on a tree node: the continuations through it."""
    if not result or not node:
        return {}
    known = {futures.ROOT, *(n["id"] for n in result["nodes"])}
    if node not in known:
        return {"futures_texts": f"<p class='note'>No node {escape(node)} in this tree.</p>"}
    return {"futures_texts": continuations_html(result, node)}


def continuations_html(result: dict, node: str) -> str:
    rows = futures.continuations(result, node)
    through = sum(c for _, c, _ in rows)
    distinct = sum(1 for _, c, _ in rows if c)
    items = "".join(f"<li><span class='comp-text'>{escape(text)}</span> "
                    + (f"<b>× {count}</b>{' ★ also the run' * own}" if count else "<b>★ the run's own text</b>")
                    + "</li>" for text, count, own in rows)
    where = "all paths" if node == futures.ROOT else f"the paths through {escape(_node_text(result, node))}"
    return (f"<p class='note'>{where}: {through} future{'s' * (through != 1)}, {distinct} distinct "
            f"text{'s' * (distinct != 1)}.</p><ol class='sweep-texts' id='futures-list'>{items}</ol>")


def _node_text(result: dict, node: str) -> str:
    return repr("".join(result["texts"][t] for t in node.split("/")[1:]))


def _write(name: str, text: str) -> str:
    path = Path(tempfile.mkdtemp(prefix="playground-")) / name
    path.write_text(text, encoding="utf-8")
    return str(path)
