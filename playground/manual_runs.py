"""Manual mode: the model computes the next step and stops; the learner picks its token, lets the sampler
draw, or rewinds. No Gradio here (playground/manual_events.py shows it), so it is tested with the real model.

    run = new_run(lm, messages, params, extras)              # a run of one completion, no steps yet
    wait = wait_at(lm, scheduler, run, session)              # the next step, computed, waiting in WAITS
    run = take(lm, scheduler, run, wait, token=None)         # the sampler's draw (token=None) or a pick
    run = rewind(lm, run, steps=3)
    run = take_over(lm, generated, completion=0, position=5)   # any run, continued by hand from step 5
    page = table(wait.vocabulary, vocabulary_texts(lm), search="sea", sort="final p")

A manual run is a run as playground/ui_runs.py keeps it, with one completion, plus "hand_picked": the
positions whose token the learner chose (saved with the run, playground/runfile.py). A hand-picked step
is recorded like any other (engine/manual.py) and marked "forced", as a branch's chosen token is.

A run that waits for the learner holds no row of the shared batch. Each step is a one-token job whose
prefix is the text so far, fed through the model one token per step as a run makes them (replay_prefix),
so its logits are the ones the same tokens give in any run: letting the sampler draw at every step
gives Generate's text for the same seed. Its snapshot (raw logits, a grammar's mask) goes into the shared
what-if cache, so what-if and rewinding need no model work for it. What a waiting run holds (the
snapshot, its vocabulary table: about 1 MB for SmolLM2) is let go after IDLE_S seconds without an action,
and computed again, with a note, when the learner comes back.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from engine.chat import ChatRequest, assistant_message
from engine.detok import IncrementalDecoder
from engine.knobs import ParamError, SamplingParams
from engine.manual import Made, Vocabulary, manual_step, memory_after
from engine.model import LoadedModel
from engine.scheduler import Scheduler
from engine.stages import ALL
from engine.whatif import Snapshot, snapshot_key
from playground import ui_runs

Run = dict[str, Any]
IDLE_S = 600.0  # a waiting step is let go after this long without an action
MOST_WAITING = 64  # sessions whose waiting step is kept at once; the least recently used goes first
PAGE = 200  # rows of the vocabulary table sent to the page at a time
SORTS = ("rank", "final p", "raw p", "id", "removed by")


class Refusal(Exception):
    """The grammar (tools, response_format) or the thinking budget forbids the token: the reason says which."""


def new_run(lm: LoadedModel, messages: list[dict], params: SamplingParams, extras: dict[str, Any] | None = None) -> Run:
    """An empty manual run of one completion (the settings' n is ignored). ParamError for bad settings,
    before any model work."""
    _, run = ui_runs.start(lm, messages, params.with_(n=1), "Manual", extras)
    run["hand_picked"] = []
    return run


def take_over(lm: LoadedModel, run: Run, completion: int, position: int) -> Run:
    """A manual run that continues completion `completion` of any run (generated, branched, loaded) by hand
    from step `position`: its earlier steps as they were, the same prompt, settings and random numbers."""
    if not run.get("prompt_ids"):
        raise ParamError("run", "this run holds no prompt (an API response without its request): it cannot be continued")
    src = run["completions"][completion]["steps"]
    if not 0 <= position <= len(src):
        raise ParamError("step", f"step must be in [0, {len(src)}], got {position}")
    picked = run.get("hand_picked", []) if completion == 0 else []
    out = {**run, "label": f"Manual from {run['label']}" if not run["label"].startswith("Manual") else run["label"],
           "params": {**run["params"], "n": 1}, "texts": dict(run["texts"]),
           "completions": [{"steps": [dict(s) for s in src[:position]], "text": "", "finish_reason": None, "message": None}],
           "hand_picked": [p for p in picked if p < position],
           # The same random numbers as the completion taken over (seed, completion index, position).
           "first_index": run.get("first_index", 0) + completion, "waiting": None}
    _finish(lm, out)
    return out


def tokens(run: Run) -> list[int]:
    return [s["token_id"] for s in run["completions"][0]["steps"]]


def room(lm: LoadedModel, run: Run) -> int:
    """How many steps the run may make: max_tokens, and what the context window leaves."""
    left = lm.context_length - len(run["prompt_ids"])
    wanted = run["params"].get("max_tokens")
    return left if wanted is None else min(wanted, left)


# --- the step a run waits at -------------------------------------------------------------------------


@dataclass
class Waiting:
    key: str  # which run and position it belongs to (see `_key`)
    position: int
    snapshot: Snapshot
    drawn: dict[str, Any]  # the step the sampler's draw makes, as UI state
    texts: dict[int, str]  # the texts of the tokens `drawn` mentions
    vocabulary: Vocabulary
    rule: dict[str, str] = field(default_factory=dict)  # what may forbid tokens: {"grammar": ..., "thinking": ...}
    used: float = 0.0

    @property
    def nbytes(self) -> int:
        v = self.vocabulary
        return self.snapshot.nbytes + sum(a.nbytes for a in (v.rank, v.raw_p, v.final_p, v.removed_by))


class Waits:
    """The step each browser session's manual run waits at, let go after `idle_s` without an action (and
    the least recently used beyond `most` sessions). `dropped` says once that a session's step was let go."""

    def __init__(self, idle_s: float = IDLE_S, most: int = MOST_WAITING, clock: Callable[[], float] = time.monotonic):
        self.idle_s, self.most, self.clock = idle_s, most, clock
        self._items: dict[str, Waiting] = {}
        self._dropped: dict[str, float] = {}  # session -> how long its step had waited when let go
        self._lock = threading.Lock()

    def get(self, session: str, key: str) -> Waiting | None:
        with self._lock:
            self._expire()
            wait = self._items.get(session)
            if wait is None or wait.key != key:
                return None
            wait.used = self.clock()
            return wait

    def put(self, session: str, wait: Waiting) -> None:
        with self._lock:
            self._expire()
            wait.used = self.clock()
            self._items.pop(session, None)
            self._items[session] = wait
            self._dropped.pop(session, None)
            while len(self._items) > self.most:
                oldest = min(self._items, key=lambda s: self._items[s].used)
                self._drop(oldest)

    def dropped(self, session: str) -> float | None:
        """Seconds the session's step had waited when it was let go (once), else None."""
        with self._lock:
            self._expire()
            return self._dropped.pop(session, None)

    def __len__(self) -> int:
        with self._lock:
            self._expire()
            return len(self._items)

    def _expire(self) -> None:
        now = self.clock()
        for session in [s for s, w in self._items.items() if now - w.used > self.idle_s]:
            self._drop(session)

    def _drop(self, session: str) -> None:
        wait = self._items.pop(session)
        self._dropped[session] = self.clock() - wait.used


WAITS = Waits()


def _key(run: Run) -> str:
    return snapshot_key(run["model"], run["prompt_ids"], tokens(run), {"seed": run["params"]["seed"], **run.get("extras", {})})


def _params(run: Run) -> SamplingParams:
    return SamplingParams.build(**{**run["params"], "n": 1})


def _memory(run: Run) -> dict[str, float]:
    steps = run["completions"][0]["steps"]
    return memory_after(steps[-1].get("notes") or {}, _params(run)) if steps else {}


def waiting(session: str, run: Run) -> Waiting | None:
    """The step `run` waits at, if it is still kept."""
    return WAITS.get(session, _key(run))


def wait_at(lm: LoadedModel, scheduler: Scheduler, run: Run, session: str | None = None,
            cancel: Callable[[], bool] | None = None) -> Waiting | None:
    """Compute the step after the run's last one and keep it in WAITS for `session`: its raw logits (from
    the what-if cache, else one one-token job in the shared batch), the sampler's draw and the whole
    vocabulary table. None when cancelled. The run must not have finished."""
    prefix = tokens(run)
    position = len(prefix)
    one = SamplingParams.build(**{**run["params"], "n": 1, "max_tokens": 1, "max_completion_tokens": None})
    chat = ChatRequest.build(lm, run["messages"], one, **run.get("extras", {}))
    chat.prompt_ids = list(run["prompt_ids"])
    key = snapshot_key(lm.name, run["prompt_ids"], prefix, run.get("extras"))
    snap = ui_runs.SNAPSHOTS.get(key)
    if snap is None:
        gen = chat.generation(cancel=cancel, prefix_ids=prefix, memory=_memory(run), replay_prefix=True, capture=True)
        for _ in ui_runs.submit(scheduler, gen, session):
            pass
        for p, s in gen.snapshots.items():
            ui_runs.SNAPSHOTS.put(snapshot_key(lm.name, run["prompt_ids"], prefix[:p], run.get("extras")), s)
        snap = gen.snapshots.get(position)
        if snap is None:
            return None
    made = _make(lm, scheduler, run, snap, None)
    texts: dict[int, str] = {}
    drawn = ui_runs.step_dict(lm, made.step, made.stages, texts)
    rule = {}
    if chat.grammar is not None:
        rule["grammar"] = f"{chat.grammar.param} ({chat.grammar.label})"
    if chat.thinking is not None:
        rule["thinking"] = "reasoning_effort"
    wait = Waiting(_key(run), position, snap, drawn, texts, made.vocabulary, rule)
    if session is not None:
        WAITS.put(session, wait)
    return wait


def _make(lm: LoadedModel, scheduler: Scheduler, run: Run, snap: Snapshot, token: int | None) -> Made:
    prefix = tokens(run)
    coords = (run["params"]["seed"], run.get("first_index", 0), len(prefix))
    constrained = "constraint" in run["stages"]
    params, memory = _params(run), _memory(run)
    return scheduler.call(lambda: manual_step(lm, snap, params, run["prompt_ids"], prefix, coords, memory, constrained, token))


def refusal(lm: LoadedModel, wait: Waiting, token: int) -> str | None:
    """Why the learner may not take `token` at this step, or None: only the grammar and the thinking
    budget's forced tags forbid; a token a truncation removed may be taken."""
    allowed = wait.snapshot.allowed
    if not 0 <= token < len(wait.vocabulary):
        return f"token id {token} is outside the vocabulary [0, {len(wait.vocabulary) - 1}]"
    if allowed is None or bool(allowed[token]):
        return None
    text = lm.token_text(token)
    if "thinking" in wait.rule and int(allowed.sum()) == 1:
        only = lm.token_text(int(allowed.nonzero()[0, 0]))
        return (f"{wait.rule['thinking']} forces the thinking section's tag here: only {only!r} may come next, "
                f"not {text!r}")
    return f"the grammar of {wait.rule.get('grammar', 'this request')} does not allow {text!r} here"


def take(lm: LoadedModel, scheduler: Scheduler, run: Run, wait: Waiting, token: int | None = None) -> Run:
    """The run with one more step: the sampler's draw (token None) or the learner's token, recorded like any
    step. Raises Refusal when the grammar or the thinking budget forbids the token."""
    out = {**run, "completions": [dict(run["completions"][0])], "texts": dict(run["texts"]),
           "hand_picked": list(run.get("hand_picked", []))}
    c = out["completions"][0]
    if c["finish_reason"] is not None:
        raise Refusal(f"the run has finished ({c['finish_reason']}): rewind to take another path")
    if token is None:
        step = dict(wait.drawn)
        out["texts"].update(wait.texts)
    else:
        why = refusal(lm, wait, token)
        if why is not None:
            raise Refusal(why)
        made = _make(lm, scheduler, run, wait.snapshot, token)
        step = {**ui_runs.step_dict(lm, made.step, made.stages, out["texts"]), "forced": True}
        out["hand_picked"].append(wait.position)
    c["steps"] = [*c["steps"], step]
    _finish(lm, out)
    return out


def rewind(lm: LoadedModel, run: Run, steps: int) -> Run:
    """The run without its last `steps` steps (1 to all of them)."""
    made = len(run["completions"][0]["steps"])
    if not 1 <= steps <= made:
        raise ParamError("rewind", f"rewind must be in [1, {made}] steps, got {steps}" if made else "there is no step to rewind")
    keep = made - steps
    out = {**run, "completions": [dict(run["completions"][0])],
           "hand_picked": [p for p in run.get("hand_picked", []) if p < keep]}
    out["completions"][0]["steps"] = run["completions"][0]["steps"][:keep]
    _finish(lm, out)
    return out


def _finish(lm: LoadedModel, run: Run) -> None:
    """The completion's text and finish reason after its last step, as the decode loop would say them: the
    end token or a stop sequence stops it, the room left ends it at its length."""
    c = run["completions"][0]
    steps = c["steps"]
    decoder = IncrementalDecoder(lm.tokenizer)
    text = "".join(decoder.push(s["token_id"]) for s in steps if s["token_id"] not in lm.eos_ids) + decoder.flush()
    reason = None
    hits = [i for stop in run["params"].get("stop") or () if (i := text.find(stop)) >= 0]
    if steps and steps[-1]["token_id"] in lm.eos_ids:
        reason = "stop"
    elif hits:
        text, reason = text[: min(hits)], "stop"
    elif len(steps) >= room(lm, run):
        reason = "length"
    # Only the last step carries a reason; a rewound run's new last step had none (copies: earlier runs share them).
    steps = [{**s, "finish_reason": None} if s.get("finish_reason") else s for s in steps]
    if steps and reason is not None:
        steps[-1] = {**steps[-1], "finish_reason": reason}
    c["steps"] = steps
    c.update(text=text, finish_reason=reason, message=None if reason is None else assistant_message(
        text, reason, run.get("functions", []), run.get("tool_choice", "none"), run.get("thinking", False)))


# --- the vocabulary table, searched, sorted and paged here ---------------------------------------------

_TEXTS: dict[str, tuple[list[str], list[str]]] = {}
_TEXTS_LOCK = threading.Lock()


def vocabulary_texts(lm: LoadedModel) -> list[str]:
    """Every token's text, by id (built once per model: about a second for 49,152 tokens)."""
    return _texts(lm)[0]


def _texts(lm: LoadedModel) -> tuple[list[str], list[str]]:
    with _TEXTS_LOCK:
        if lm.name not in _TEXTS:
            texts = [lm.token_text(i) for i in range(lm.vocab_size)]
            _TEXTS[lm.name] = (texts, [t.lower() for t in texts])
        return _TEXTS[lm.name]


@dataclass
class Table:
    rows: list[dict[str, Any]]  # {"rank", "id", "text", "raw_p", "final_p", "removed_by" (a stage label or "")}
    total: int  # rows that match the search (the whole vocabulary without one)
    page: int  # 1-based, clamped to [1, pages]
    pages: int


def table(v: Vocabulary, texts: list[str], search: str = "", sort: str = "rank", reverse: bool = False,
          page: int = 1, size: int = PAGE, lowered: list[str] | None = None) -> Table:
    """One page of the step's vocabulary: the tokens whose text contains `search` (any case; a number or
    "#number" also finds that id), sorted by `sort` (rank ascending, probabilities descending, id, or the
    stage that removed them in pipeline order, kept tokens first; ties by rank), `reverse`d on request."""
    if sort not in SORTS:
        raise ParamError("sort", f"sort must be one of {', '.join(SORTS)}, got {sort!r}")
    query = (search or "").strip()
    if query:
        lowered = lowered if lowered is not None else [t.lower() for t in texts]
        q = query.lower()
        ids = [i for i, t in enumerate(lowered) if q in t]
        number = query.removeprefix("#")
        if number.isdigit() and int(number) < len(v) and int(number) not in ids:
            ids.insert(0, int(number))
        ids = np.array(ids, dtype=np.int64)
    else:
        ids = np.arange(len(v))
    rank = v.rank[ids]
    keys = {"rank": (rank,), "raw p": (rank,), "id": (ids,), "final p": (rank, -v.final_p[ids]),
            "removed by": (rank, v.removed_by[ids])}[sort]  # -1 (kept) first, then in pipeline order
    order = ids[np.lexsort(keys)] if len(ids) else ids
    if reverse:
        order = order[::-1]
    pages = max(1, -(-len(order) // size))
    page = min(max(int(page or 1), 1), pages)
    rows = [{"rank": int(v.rank[i]), "id": int(i), "text": texts[i], "raw_p": float(v.raw_p[i]),
             "final_p": float(v.final_p[i]),
             "removed_by": "" if v.removed_by[i] < 0 else ALL[v.stages[v.removed_by[i]]].label}
            for i in order[(page - 1) * size : page * size].tolist()]
    return Table(rows, len(order), page, pages)


def page_of(lm: LoadedModel, wait: Waiting, search: str = "", sort: str = "rank", reverse: bool = False,
            page: int = 1) -> Table:
    texts, lowered = _texts(lm)
    return table(wait.vocabulary, texts, search, sort, reverse, page, lowered=lowered)
