"""Runs as the UI keeps them: generations recorded into small, deep-copyable dicts (no tensors).

A run is {"label", "model", "messages", "prompt_ids", "params" (SamplingParams.to_dict() with the seed
actually used), "stages", "completions": [{"steps", "text", "finish_reason", "message"}], "texts" {id: token text},
"branch_of", "first_index" (the completion index of its first completion's random numbers: a branch
continues its original's), "waiting" (runs ahead of it in the model's queue, None once it runs), and the request
extras: "extras", "functions", "tool_choice", "thinking"}. Steps are `Step.to_dict(stages)` plus "shown" (display text). This module drives the
engine's Generation; it imports no Gradio, so it is tested with the real model directly.
"""

from __future__ import annotations

import contextlib
import math
import queue
import threading
import time
from typing import Any, Callable, Iterator

from engine.chat import ChatRequest, assistant_message
from engine.generator import Generation
from engine.knobs import SamplingParams
from engine.model import LoadedModel
from engine.scheduler import END, Refused, Scheduler, Ticket
from engine.trace import Step
from engine.whatif import Snapshot, Snapshots, resample, snapshot_key

# What-if snapshots (a step's raw logits), shared by every session: 256 MiB holds about 1,300 SmolLM2 steps.
SNAPSHOTS = Snapshots()

Run = dict[str, Any]


def start(
    lm: LoadedModel,
    messages: list[dict],
    params: SamplingParams,
    label: str,
    extras: dict[str, Any] | None = None,
    cancel: Callable[[], bool] | None = None,
    prompt_ids: list[int] | None = None,
    capture: bool = False,
) -> tuple[Generation, Run]:
    """A Generation for the conversation and its empty run. Raises ParamError before anything runs.

    extras: tools, tool_choice, response_format, reasoning_effort (engine.chat.ChatRequest renders the
    tools, picks the grammar and the thinking budget). prompt_ids: the already templated prompt
    (Compare reuses a run's exact prompt). capture: keep completion 1's raw logits at every step for the
    what-if (advance moves them into SNAPSHOTS), so no step of it needs a replay."""
    extras = dict(extras or {})
    chat = ChatRequest.build(lm, messages, params, **extras)
    if prompt_ids is not None:
        chat.prompt_ids = list(prompt_ids)
    gen = chat.generation(cancel=cancel, capture=capture)
    run = _new_run(lm, gen, label, messages, params)
    run.update(extras=extras, functions=chat.functions, tool_choice=chat.tool_choice, thinking=chat.thinking is not None)
    return gen, run


def _new_run(lm: LoadedModel, gen: Generation, label: str, messages: list[dict], params: SamplingParams) -> Run:
    texts = {int(k): lm.token_text(int(k)) for k, _ in params.logit_bias}
    run = blank_run(label, lm.name, messages, list(gen.prompt_ids), {**params.to_dict(), "seed": gen.seed}, list(gen.stages),
                    params.n)
    run["texts"] = texts
    return run


def blank_run(label: str, model: str, messages: list[dict], prompt_ids: list[int], params: dict[str, Any],
              stages: list[str], n: int) -> Run:
    """A run with n empty completions and no request extras (see the module docstring)."""
    return {
        "label": label,
        "model": model,
        "messages": messages,
        "prompt_ids": prompt_ids,
        "params": params,
        "stages": stages,
        "completions": [{"steps": [], "text": "", "finish_reason": None, "message": None} for _ in range(n)],
        "texts": {},
        "branch_of": None,
        "first_index": 0,
        "waiting": None,
        "extras": {},
        "functions": [],
        "tool_choice": "none",
        "thinking": False,
    }


def with_prompt(lm: LoadedModel, run: Run) -> Run:
    """A loaded run that has its messages but not their templated ids (an API response saved with its
    request) gets them from the model's chat template, as the API made them, so what-if, branch and
    replay work on it. Unchanged when it already has them, has no messages, or its model is another."""
    if run.get("prompt_ids") or not run.get("messages") or run.get("model") != lm.name:
        return run
    params = SamplingParams.build(**{**run["params"], "n": 1})
    return {**run, "prompt_ids": list(ChatRequest.build(lm, run["messages"], params, **run.get("extras", {})).prompt_ids)}


def step_dict(lm: LoadedModel, step: Step, stages: tuple[str, ...], texts: dict[int, str]) -> dict[str, Any]:
    """The step as UI state; records the text of every token it mentions into `texts`."""
    d = step.to_dict(stages)
    for i in [step.token_id, *d["candidates"], *(t["id"] for t in d["top"])]:
        if i not in texts:
            texts[i] = lm.token_text(i)
    d["shown"] = step.text or texts[step.token_id]
    return d


# --- how often a streaming page is updated ----------------------------------------------------------
#
# Every update costs the page a redraw whatever it brings (the live stream, playground/ui_stream.py, sends
# at this pace too); all pages' updates together compete with the decode loop they report on, on a machine
# their browsers may share. So the pages that stream at once share UPDATES_PER_S updates a second: one page
# alone gets one every 0.1 s, four one every 0.16 s. Never slower than MAX_INTERVAL_S: with a turn of the
# decode loop added (engine/scheduler.py keeps a turn's prompt work near 0.1 s), inside the 0.5 s in which
# a visitor must see the text move. Measured, float32, 8 pages: a 0.25 s cap left a median longest gap of
# 0.63 s, 0.2 s one of 0.45 s.
UPDATES_PER_S = 25.0
MIN_INTERVAL_S, MAX_INTERVAL_S = 0.1, 0.2


def update_interval(streams: int) -> float:
    """Seconds between two updates of one page while `streams` pages stream at once."""
    return min(MAX_INTERVAL_S, max(MIN_INTERVAL_S, streams / UPDATES_PER_S))


class Streams:
    """How many runs stream to a page right now (each advance() without a fixed every_s counts)."""

    def __init__(self):
        self._count = 0
        self._lock = threading.Lock()

    @property
    def count(self) -> int:
        return self._count

    @contextlib.contextmanager
    def open(self) -> Iterator[None]:
        with self._lock:
            self._count += 1
        try:
            yield
        finally:
            with self._lock:
                self._count -= 1


STREAMS = Streams()


def advance(lm: LoadedModel, source: Generation | Ticket, run: Run, every_s: float | None = None,
            prefix_text: str = "") -> Iterator[Run]:
    """Generate, recording each step into `run`; yields the run at most every `every_s` seconds
    (so the page stays smooth) and always once at the end, when finish reasons are final. every_s None:
    the run streams to a page, counted in STREAMS, at update_interval(how many stream at once).

    source: a Generation to run alone, or the Ticket of one submitted to the model's scheduler; while a
    ticket waits for room in the shared batch, run["waiting"] is how many runs are ahead of it."""
    if every_s is not None:
        yield from _advance(lm, source, run, lambda: every_s, prefix_text)
        return
    with STREAMS.open():
        yield from _advance(lm, source, run, lambda: update_interval(STREAMS.count), prefix_text)


def _advance(lm: LoadedModel, source: Generation | Ticket, run: Run, interval: Callable[[], float],
             prefix_text: str) -> Iterator[Run]:
    gen = source.job if isinstance(source, Ticket) else source
    stages = tuple(run["stages"])
    last, started = 0.0, False
    for steps in _batches(source, run, interval):
        for step in steps:
            run["completions"][step.index]["steps"].append(step_dict(lm, step, stages, run["texts"]))
        _sync(gen, run, prefix_text)
        _keep_snapshots(lm, gen, run)
        now = time.monotonic()
        # A run's first tokens go out at once: an update of its place in the queue a moment before must not
        # hold them back for a whole interval (that was up to a quarter of a second before the first token).
        first = bool(steps) and not started
        started = started or bool(steps)
        if first or now - last >= interval():
            last = now
            yield run
    run["waiting"] = None
    run.pop("reading", None)  # only while it streams
    _sync(gen, run, prefix_text)  # a cancel sets the finish reasons after the last step
    _keep_snapshots(lm, gen, run)
    yield run


def _keep_snapshots(lm: LoadedModel, gen: Generation, run: Run) -> None:
    """Move what a capturing generation kept into the shared cache, as its steps arrive (so a long run
    holds no more than the cache's bound)."""
    if not gen.capture:
        return
    tokens = _tokens(run, 0)
    for p in [p for p in list(gen.snapshots) if p <= len(tokens)]:
        SNAPSHOTS.put(snapshot_key(lm.name, run["prompt_ids"], tokens[:p], run.get("extras")), gen.snapshots.pop(p))


def client(session: str | None) -> str | None:
    """A browser session as the scheduler's fair shares know it."""
    return None if session is None else f"session:{session}"


def submit(scheduler: Scheduler, gen: Generation, session: str | None = None) -> Ticket:
    """Queue a run's generation in the model's shared batch, as its browser session's for the fair shares
    (engine Refused when the queue is full)."""
    return scheduler.submit(gen, client=client(session))


def _batches(source: Generation | Ticket, run: Run, interval: Callable[[], float]) -> Iterator[list[Step]]:
    if not isinstance(source, Ticket):
        yield from source
        return
    while True:
        item = source.get(timeout=max(interval(), 0.05))
        admitted = source.admitted.is_set()
        run["waiting"] = None if admitted else source.ahead
        run["reading"] = source.reading if admitted else None  # prompts that go in before its own
        if item is None:
            yield []  # nothing new: the caller still shows the run, and its place in the queue
            continue
        if item is END:
            return
        if isinstance(item, BaseException):
            raise item
        yield item


def _sync(gen: Generation, run: Run, prefix_text: str) -> None:
    for c, text, reason in zip(run["completions"], gen.texts, gen.finish_reasons):
        c["text"], c["finish_reason"] = prefix_text + text, reason
        # Once finished: the text as an assistant message (reasoning, content and tool calls apart).
        c["message"] = None if reason is None else assistant_message(
            c["text"], reason, run.get("functions", []), run.get("tool_choice", "none"), run.get("thinking", False))


def branch(
    lm: LoadedModel,
    run: Run,
    completion: int,
    position: int,
    alt_id: int,
    label: str,
    cancel: Callable[[], bool] | None = None,
) -> tuple[Generation | None, Run, str]:
    """Continue completion `completion` of `run` from step `position` with token `alt_id` instead.

    Returns (Generation or None when alt_id ends the text, the branch run already holding the earlier
    steps and the forced one, the text before the new tokens). Same settings and seed as the original;
    max_tokens counts the whole completion, so the branch is no longer than the original could be.
    """
    src = run["completions"][completion]["steps"]
    if not 0 <= position < len(src):
        raise IndexError(f"step must be in [0, {len(src) - 1}], got {position}")
    prefix = [s["token_id"] for s in src[:position]] + [alt_id]
    params = SamplingParams.build(**{**run["params"], "n": 1})
    if params.max_tokens is not None:
        params = params.with_(max_tokens=max(1, params.max_tokens - len(prefix)))
    texts = dict(run["texts"])
    texts.setdefault(alt_id, lm.token_text(alt_id))
    forced = _forced_step(src[position], alt_id, texts[alt_id])
    steps = [dict(s) for s in src[:position]] + [forced]
    prefix_text = lm.tokenizer.decode(prefix, skip_special_tokens=True)
    out: Run = {
        **run,
        "label": label,
        "params": params.to_dict(),
        "completions": [{"steps": steps, "text": prefix_text, "finish_reason": None, "message": None}],
        "texts": texts,
        "branch_of": {"label": run["label"], "completion": completion, "position": position},
        # The branch continues the original completion's random numbers (seed, index, position).
        "first_index": run.get("first_index", 0) + completion,
    }
    if alt_id in lm.eos_ids:
        forced["finish_reason"] = out["completions"][0]["finish_reason"] = "stop"
        return None, out, prefix_text
    # advance() appends the new steps after the copied ones; their positions already count the prefix.
    # The same request as the original (grammar, thinking budget), continued after the prefix.
    chat = ChatRequest.build(lm, run["messages"], params, **run.get("extras", {}))
    chat.prompt_ids = list(run["prompt_ids"])
    # The prefix goes in token by token, as the original made it: every logit of the branch is then the one
    # the same tokens give in any run, so its what-if is exact too.
    gen = chat.generation(cancel=cancel, prefix_ids=prefix, first_index=out["first_index"], memory=_memory_at(src[position]),
                          replay_prefix=True, capture=True)
    return gen, out, prefix_text


def _memory_at(step: dict[str, Any]) -> dict[str, float]:
    """What the stateful stages knew at this step (mirostat's mu), for a generation that starts there."""
    mu = (step.get("notes") or {}).get("mirostat_mu")
    return {} if mu is None else {"mirostat_mu": mu}


def replay(lm: LoadedModel, run: Run, completion: int, position: int, orders: list[tuple[str, ...]],
           cancel: Callable[[], bool] | None = None, capture: bool = False) -> list[Generation]:
    """One-token generations that redo step `position` of a completion under each sampler order: the same
    prompt and earlier tokens, the same knobs and the same random number (seed, completion, position);
    only the order differs. The earlier tokens go through the model one step at a time, as they did in the
    run, so the step's logits are the run's own, bit for bit."""
    src = run["completions"][completion]["steps"]
    if not 0 <= position < len(src):
        raise IndexError(f"step must be in [0, {len(src) - 1}], got {position}")
    prefix = [s["token_id"] for s in src[:position]]
    base = SamplingParams.build(**{**run["params"], "n": 1, "max_tokens": 1, "max_completion_tokens": None})
    gens = []
    for order in orders:
        chat = ChatRequest.build(lm, run["messages"], base.with_(sampler_order=tuple(order)), **run.get("extras", {}))
        chat.prompt_ids = list(run["prompt_ids"])
        gens.append(chat.generation(cancel=cancel, prefix_ids=prefix, first_index=run.get("first_index", 0) + completion,
                                    memory=_memory_at(src[position]), replay_prefix=True, capture=capture))
    return gens


def replayed_step(lm: LoadedModel, gen: Generation, texts: dict[int, str]) -> dict[str, Any]:
    """The one step a finished replay generation made, as UI state (with its token texts in `texts`)."""
    return step_dict(lm, gen.completions[0][0], gen.stages, texts)


def _forced_step(original: dict[str, Any], alt_id: int, text: str) -> dict[str, Any]:
    """The original step's record (same distribution) with the user's token as the chosen one."""
    step = dict(original)
    j = step["candidates"].index(alt_id) if alt_id in step["candidates"] else None
    raw = step["stages"][0]["probs"][j] if j is not None else 0.0
    final = step["stages"][-1]["probs"][j] if j is not None else 0.0
    rank = next((r for r, t in enumerate(step["top"], start=1) if t["id"] == alt_id), len(step["top"]) + 1)
    step.update(
        token_id=alt_id,
        text=text,
        shown=text,
        raw_logprob=math.log(raw) if raw > 0 else None,
        logprob=math.log(final) if final > 0 else None,
        rank=rank,
        draw=None,
        finish_reason=None,
        forced=True,
    )
    return step


# --- live what-if ----------------------------------------------------------------------------------


def _tokens(run: Run, completion: int) -> list[int]:
    return [s["token_id"] for s in run["completions"][completion]["steps"]]


def cached_snapshot(lm: LoadedModel, run: Run, completion: int, position: int) -> Snapshot | None:
    return SNAPSHOTS.get(snapshot_key(lm.name, run["prompt_ids"], _tokens(run, completion)[:position], run.get("extras")))


def snapshot(lm: LoadedModel, scheduler: Scheduler, run: Run, completion: int, position: int,
             cancel: Callable[[], bool] | None = None, session: str | None = None) -> Snapshot | None:
    """The step's exact raw logits (and grammar mask): from the cache, else by replaying the completion
    up to the step in the model's shared batch (one decode step per earlier token, as the run made
    them). Every step on the way is cached too. None when cancelled."""
    snap = cached_snapshot(lm, run, completion, position)
    if snap is not None:
        return snap
    gen = replay(lm, run, completion, position, [tuple(run["params"]["sampler_order"])], cancel=cancel, capture=True)[0]
    for _ in scheduler.submit(gen, client=client(session)):
        pass
    tokens = _tokens(run, completion)
    for p, s in gen.snapshots.items():
        SNAPSHOTS.put(snapshot_key(lm.name, run["prompt_ids"], tokens[:p], run.get("extras")), s)
    return gen.snapshots.get(position)


def what_if(lm: LoadedModel, scheduler: Scheduler, snap: Snapshot, run: Run, completion: int, position: int,
            params: SamplingParams) -> dict[str, Any]:
    """Step `position` of a completion sampled again from its snapshot under `params`, with the same
    random number: {"step" (a step dict, as recorded ones), "texts", "ledger" (each row with its "text"),
    "params" (plain, as a run's)}. The run's own settings give back the recorded step."""
    src = run["completions"][completion]["steps"]
    if not 0 <= position < len(src):
        raise IndexError(f"step must be in [0, {len(src) - 1}], got {position}")
    earlier = _tokens(run, completion)[:position]
    coords = (run["params"]["seed"], run.get("first_index", 0) + completion, position)
    constrained = "constraint" in run["stages"]
    out = scheduler.call(lambda: resample(lm, snap, params, run["prompt_ids"], earlier, coords, _memory_at(src[position]),
                                          constrained))
    texts = dict(run["texts"])
    step = step_dict(lm, out.step, out.stages, texts)
    ledger = [{**row, "text": texts.setdefault(row["id"], lm.token_text(row["id"]))} for row in out.ledger]
    return {"step": step, "texts": texts, "ledger": ledger, "params": {**params.to_dict(), "seed": run["params"]["seed"]}}


def continue_with(lm: LoadedModel, run: Run, completion: int, position: int, params: SamplingParams, label: str,
                  cancel: Callable[[], bool] | None = None) -> tuple[Generation, Run, str]:
    """Continue completion `completion` of `run` from step `position` under other settings: the earlier
    tokens stay, and step `position` is drawn anew, with the same random numbers (seed, completion,
    position) as the original, so it picks what the what-if showed. The earlier tokens are replayed one
    step at a time, so that step's logits are the recorded ones. Returns (Generation, the run holding
    the earlier steps, the text before the new tokens: advance's prefix_text)."""
    src = run["completions"][completion]["steps"]
    if not 0 <= position < len(src):
        raise IndexError(f"step must be in [0, {len(src) - 1}], got {position}")
    prefix = _tokens(run, completion)[:position]
    params = params.with_(n=1, seed=run["params"]["seed"])
    if params.max_tokens is not None and position:
        params = params.with_(max_tokens=max(1, params.max_tokens - position))
    prefix_text = lm.tokenizer.decode(prefix, skip_special_tokens=True)
    out: Run = {
        **run,
        "label": label,
        "params": params.to_dict(),
        "completions": [{"steps": [dict(s) for s in src[:position]], "text": prefix_text, "finish_reason": None, "message": None}],
        "texts": dict(run["texts"]),
        "branch_of": {"label": run["label"], "completion": completion, "position": position},
        "first_index": run.get("first_index", 0) + completion,
    }
    chat = ChatRequest.build(lm, run["messages"], params, **run.get("extras", {}))
    chat.prompt_ids = list(run["prompt_ids"])
    gen = chat.generation(cancel=cancel, prefix_ids=prefix, first_index=out["first_index"], memory=_memory_at(src[position]),
                          replay_prefix=True, capture=True)
    out["stages"] = list(gen.stages)
    return gen, out, prefix_text


# --- many runs at once (knob sweeps) -----------------------------------------------------------------


def run_many(lm: LoadedModel, scheduler: Scheduler, jobs: list[tuple[Generation, Run]], every_s: float = 0.25,
             session: str | None = None) -> Iterator[int]:
    """Submit every job to the model's shared batch at once and record their steps as they come. Yields
    how many tokens were made so far, at most every `every_s` seconds and once at the end. Raises
    Refused (nothing keeps running) when the queue cannot take them all."""
    items: queue.Queue = queue.Queue()
    tickets: list[Ticket] = []
    try:
        for i, (gen, _) in enumerate(jobs):
            tickets.append(scheduler.submit(gen, listener=lambda item, i=i: items.put((i, item)), client=client(session)))
        scheduler.submitted()
    except Refused:
        for t in tickets:
            t.cancel()
        raise
    running, made, last = len(jobs), 0, 0.0
    try:
        while running:
            try:
                i, item = items.get(timeout=every_s)
            except queue.Empty:
                yield made
                continue
            gen, run = jobs[i]
            if item is END:
                running -= 1
                _sync(gen, run, "")
                continue
            if isinstance(item, BaseException):
                raise item
            stages = tuple(run["stages"])
            for step in item:
                run["completions"][step.index]["steps"].append(step_dict(lm, step, stages, run["texts"]))
            made += len(item)
            if time.monotonic() - last >= every_s:
                last = time.monotonic()
                yield made
    finally:
        for t in tickets:  # a caller that stops listening (Stop, a closed page) stops the rest
            t.cancel()
    yield made
