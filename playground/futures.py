"""Many futures: N continuations of k tokens from one step of a run, drawn as a prefix tree.

From step p of a completion (or from its start), one Generation of n = N completions continues the same
prompt and earlier tokens under the run's own settings, in the model's shared batch. Its random numbers
are those of seed 0, completions 0 … N−1 (engine/rng.py: a pure function of seed, completion and
position), so future i is the same text every time, and the run itself is not one of them by chance.
The run's own continuation (its recorded steps p … p+k−1) is added as one more path, marked.

A path is a list of (token id, p, q): p the token's probability under the model (the raw distribution),
q under the final distribution it was drawn from. The tree merges equal prefixes: a node is one token
after one prefix, with how many paths pass through it. Plain values only (no tensors, no Gradio).
"""

from __future__ import annotations

import json
import math
import time
from typing import Any, Iterator

from engine.chat import ChatRequest
from engine.generator import Generation
from engine.knobs import ParamError, SamplingParams
from engine.model import LoadedModel
from engine.scheduler import END, Scheduler
from playground import ui_runs

MAX_TOKENS = 16  # k: tokens per future
SEED = 0  # future i draws the random numbers of (seed 0, completion i)
ROOT = "root"

Path = list[tuple[int, float, float]]  # (token id, p under the model, q under the final distribution)


def check(n: Any, k: Any, max_rows: int) -> tuple[int, int]:
    """(N, k) as integers, or ParamError naming the control and its range."""
    if not isinstance(n, (int, float)) or int(n) != n or not 1 <= n <= max_rows:
        raise ParamError("futures", f"futures must be an integer in [1, {max_rows}] (the rows the shared batch decodes at once), got {n!r}")
    if not isinstance(k, (int, float)) or int(k) != k or not 1 <= k <= MAX_TOKENS:
        raise ParamError("tokens per future", f"tokens per future must be an integer in [1, {MAX_TOKENS}], got {k!r}")
    return int(n), int(k)


def start(lm: LoadedModel, run: dict, completion: int, position: int, n: int, k: int, cancel=None) -> Generation:
    """The N futures of completion `completion` from step `position` (0: the start) as one Generation:
    the run's prompt, request extras and settings, its tokens before the step as a prefix, n = N,
    k new tokens each, seed 0. ParamError (from the engine) for what the model cannot take."""
    steps = run["completions"][completion]["steps"]
    if not 0 <= position <= len(steps):
        raise IndexError(f"step must be in [0, {len(steps)}], got {position}")
    prefix = [s["token_id"] for s in steps[:position]]
    params = SamplingParams.build(**{**run["params"], "n": n, "max_tokens": k, "max_completion_tokens": None,
                                     "seed": SEED, "logprobs": False, "top_logprobs": 0})
    chat = ChatRequest.build(lm, run["messages"], params, **run.get("extras", {}))
    chat.prompt_ids = list(run["prompt_ids"])
    memory = ui_runs._memory_at(steps[position]) if position < len(steps) else {}
    return chat.generation(cancel=cancel, prefix_ids=prefix, memory=memory)


def grow(scheduler: Scheduler, gen: Generation, session: str | None = None, every_s: float = 0.25) -> Iterator[int]:
    """Run the futures in the model's shared batch; yields the tokens made so far, at most every `every_s`
    seconds and once at the end. The steps land in gen.completions."""
    ticket = ui_runs.submit(scheduler, gen, session)
    made, last = 0, 0.0
    try:
        while (item := ticket.get(timeout=every_s)) is not END:
            if isinstance(item, BaseException):
                raise item
            made += len(item or [])
            if time.monotonic() - last >= every_s:
                last = time.monotonic()
                yield made
    finally:
        ticket.cancel()  # a caller that stops listening stops the futures
    yield made


def paths_of(gen: Generation) -> list[Path]:
    """Each future's tokens with their probabilities, from a finished Generation."""
    return [[(s.token_id, math.exp(s.raw_logprob), math.exp(s.logprob)) for s in steps] for steps in gen.completions]


def own_path(run: dict, completion: int, position: int, k: int) -> Path:
    """The run's own continuation from step `position`: its recorded steps, at most k."""
    steps = run["completions"][completion]["steps"][position:position + k]
    return [(s["token_id"], _exp(s["raw_logprob"]), _exp(s["logprob"])) for s in steps]


def _exp(logprob: float | None) -> float:
    return 0.0 if logprob is None else math.exp(logprob)


def tree(paths: list[Path], own: Path, texts: dict[int, str], root_label: str) -> dict[str, Any]:
    """The prefix tree of the futures and the run's own path: {"root", "nodes": [{"id", "parent", "token",
    "text", "depth", "count" (futures through it), "own" (the run's path passes it), "p", "q"}], "futures":
    [token ids per future], "own": [token ids], "texts"}. Nodes come in first-seen order, parents first."""
    nodes: dict[str, dict[str, Any]] = {}

    def walk(path: Path, is_own: bool) -> None:
        parent = ROOT
        for depth, (token, p, q) in enumerate(path, start=1):
            key = f"{parent}/{token}"
            node = nodes.get(key)
            if node is None:
                node = nodes[key] = {"id": key, "parent": parent, "token": token, "text": texts[token], "depth": depth,
                                     "count": 0, "own": False, "p": round(p, 6), "q": round(q, 6)}
            if is_own:
                node["own"] = True
            else:
                node["count"] += 1
            parent = key

    for path in paths:
        walk(path, False)
    walk(own, True)
    return {"root": root_label, "nodes": list(nodes.values()), "futures": [[t for t, _, _ in path] for path in paths],
            "own": [t for t, _, _ in own], "texts": {str(t): texts[t] for path in [*paths, own] for t, _, _ in path}}


def continuations(result: dict[str, Any], node: str) -> list[tuple[str, int, bool]]:
    """The texts of the paths through `node` (ROOT: all), each distinct text once: (text, how many futures,
    whether it is the run's own), the most common first."""
    texts = result["texts"]
    prefix = [] if node == ROOT else [int(t) for t in node.split("/")[1:]]

    def through(ids: list[int]) -> bool:
        return ids[:len(prefix)] == prefix

    counts: dict[tuple[int, ...], int] = {}
    for ids in result["futures"]:
        if through(ids):
            counts[tuple(ids)] = counts.get(tuple(ids), 0) + 1
    own = tuple(result["own"])
    if through(result["own"]):
        counts.setdefault(own, 0)
    rows = [("".join(texts[str(t)] for t in ids), c, ids == own) for ids, c in counts.items()]
    return sorted(rows, key=lambda r: (-r[1], not r[2]))


def summary(result: dict[str, Any]) -> str:
    """A sentence a student can read: how far the futures agree, and where the run's own text sits."""
    futures, own = result["futures"], result["own"]
    n = len(futures)
    if not n:
        return "No futures were drawn."
    distinct = len({tuple(f) for f in futures})
    first = {}
    for f in futures:
        if f:
            first[f[0]] = first.get(f[0], 0) + 1
    top, top_count = max(first.items(), key=lambda kv: kv[1]) if first else (None, 0)
    texts = result["texts"]
    said = [f"{n} futures gave {distinct} different text{'s' * (distinct != 1)}."]
    if top is not None:
        said.append(f"The most common next token, {texts[str(top)]!r}, began {top_count} of them.")
    if own:
        same_start = first.get(own[0], 0)
        whole = sum(1 for f in futures if f == own)
        said.append(f"The run's own text (★) began with {texts[str(own[0])]!r}, as {same_start} of {n} futures did; "
                    f"{whole} of {n} repeated it whole.")
    said.append("Where the tree splits early the model was unsure; a long single branch is a stretch it was sure of.")
    return " ".join(said)


def to_json(result: dict[str, Any]) -> str:
    return json.dumps(result, ensure_ascii=False, indent=1)
