"""ZeroGPU: every model action as one `@spaces.GPU` generator call, chosen once when the app starts.

On a ZeroGPU Space (hub-docs spaces-zerogpu.md; the `spaces` package 0.51.3) the process holds a GPU
only inside a call decorated with `@spaces.GPU`. Each call runs in a worker forked from the main process
(kept for later calls while idle), and its arguments, result and every value it yields are pickled. The
shared decode loop (engine/scheduler.py) does its tensor work on a thread of the main process, outside
any call, so there the ModelHost hands out a `GpuScheduler` instead. It answers the same small interface,
`submit(gen, listener, client) -> Ticket` and `call(fn)`, so every UI action (and any later one) that
gets its model work from `host.scheduler(...)` runs inside a GPU call without knowing it. One action is
one call: the jobs a handler submits (the same thread, for the same client) before it reads any of their
tickets (compare's two sides, a replay's two orders, a sweep's points) go into one call, which decodes
them together in one private Batch and routes each step to its own ticket. A sweep's jobs have
listeners and are never read as tickets: their call starts when the handler says it has submitted them
all (`submitted()`), or, for a caller that never says so (the API), once it has submitted nothing more
for GATHER_S.

    requests = [GpuRequest.of(gen) for gen in action]   # plain data: model name, prompt, params with the seed fixed...
    for updates in decode(requests, max_rows):          # in the GPU call: the Generations rebuilt, in one private Batch
        update.job, update.steps, update.texts, update.finish_reasons, update.snapshots   # numpy, str, CPU tensors

A row draws the same tokens whichever rows share its batch (engine/batch.py), so each job gets the text
it gets alone, and in the shared loop. A job stopped while the others go on (only a caller that cancels
one ticket of several) ends here at once; the call goes on for the others and closes when all have ended.

What lives where. Everything that outlives a call stays in the main process: the Generation the UI built
(its texts, finish reasons, completions and captured snapshots are filled from the updates), the what-if
snapshot cache and the runs. The worker keeps nothing: it sees the model only through MODELS, the models
registered at start-up (the only ones ZeroGPU packs for its workers). `call(fn)` rebuilds fn (by value,
cloudpickle) with each LoadedModel in it as a CPU view without weights and runs it here: a what-if on a
cached snapshot is CPU work and costs no GPU call. Only when fn touches the weights (a logit lens's
forward pass) does it go, by value with each model by name, to a GPU call.

Whose quota. ZeroGPU charges a call to the visitor whose Gradio request is in the caller's context
(`gradio.context.LocalContext.request`, a ContextVar). A ticket's call runs on a short thread started with
a copy of the submitting thread's context, so a UI handler's call is its visitor's; /v1 calls carry no
request and draw on the Space's own quota (playground/api.py turns /v1 off here by default).

Outside ZeroGPU the real decorator does nothing, so tests and benchmarks force the mode (`app.py
--zerogpu`) with `pickled`: it does to the data what ZeroGPU does (request, function and every yield go
through pickle) and runs the call on a thread of its own, as the worker does, one call at a time.
"""

from __future__ import annotations

import io
import logging
import pickle
import queue
import threading
import time
from collections import deque
from contextvars import copy_context
from dataclasses import dataclass, replace
from functools import wraps
from typing import Any, Callable, Hashable, Iterator, TypeVar

import torch

from engine.batch import Batch
from engine.constraints import Grammar
from engine.generator import Generation
from engine.knob import ParamError
from engine.knobs import SamplingParams
from engine.model import LoadedModel
from engine.reasoning import Thinking
from engine.scheduler import END, Limits, Refused, Ticket
from engine.trace import Step
from engine.whatif import Snapshot

T = TypeVar("T")
log = logging.getLogger(__name__)

# The models a GPU call can use, by name: registered in the main process before ZeroGPU's start-up packs
# their tensors and before any worker is forked (a worker sees the process as it was when forked).
MODELS: dict[str, LoadedModel] = {}

# A call's `duration` (seconds of GPU the visitor's quota is charged up front, and when ZeroGPU may cut
# it): rows x steps x a step's time, with a margin. STEP_S: measured on an H200 (bf16, every stage and the
# recorder on; /work/shared/TOOLCHAIN.md): 26.5 ms a step at n = 1, 28.9 at 8, 29.2 at 32, 37.2 at 128.
STEP_S, ROW_S = 0.026, 0.00009
MARGIN = 1.5
START_S = 5.0  # a first call moves the weights to the GPU; the prompt's prefill


def register(lm: LoadedModel) -> None:
    MODELS[lm.name] = lm


# --- what crosses the process boundary --------------------------------------------------------------


@dataclass(frozen=True)
class GpuRequest:
    """One Generation as plain data: what the worker needs to rebuild it (the model by name)."""

    model: str
    prompt_ids: list[int]
    params: SamplingParams  # with the seed the main process chose, so both sides draw the same numbers
    prefix_ids: list[int]
    grammar: Grammar | None
    thinking: Thinking | None
    first_index: int
    memory: dict
    replay_prefix: bool
    capture: bool
    max_tokens: int  # the fitted length, for the call's duration

    @classmethod
    def of(cls, gen: Generation) -> "GpuRequest":
        return cls(gen.lm.name, list(gen.prompt_ids), gen.params.with_(seed=gen.seed), list(gen.prefix_ids),
                   gen.grammar, gen.thinking, gen.first_index, dict(gen.memory), gen.replay_prefix, gen.capture,
                   gen.max_tokens)

    def generation(self) -> Generation:
        return Generation(MODELS[self.model], self.prompt_ids, self.params, prefix_ids=self.prefix_ids,
                          grammar=self.grammar, thinking=self.thinking, first_index=self.first_index,
                          memory=self.memory, replay_prefix=self.replay_prefix, capture=self.capture)

    @property
    def steps(self) -> int:
        """Decode steps the call may take: a replayed prefix goes in one token a step, then the new tokens."""
        return (len(self.prefix_ids) if self.replay_prefix else 0) + self.max_tokens


@dataclass
class Failure:
    """A job's error as plain data: a ParamError does not unpickle (its __init__ takes two arguments)."""

    param: str | None  # the knob, for a ParamError; None for anything else (a bug, logged in the call)
    message: str
    code: str = "invalid_value"

    @classmethod
    def of(cls, e: Exception) -> "Failure":
        if isinstance(e, ParamError):
            return cls(e.param, e.message, e.code)
        return cls(None, f"{type(e).__name__}: {e}")

    def error(self) -> Exception:
        return RuntimeError(self.message) if self.param is None else ParamError(self.param, self.message, self.code)


@dataclass
class Update:
    """What one decode step changed for one job of the call, as the main process's Generation must see it."""

    job: int  # which of the call's requests
    steps: list[Step]
    texts: list[str]
    finish_reasons: list[str | None]
    snapshots: dict[int, Snapshot]  # position -> CPU tensors, taken out of the worker's Generation
    failure: Failure | None = None  # the job ended with this error (its rows left; the others go on)

    def apply(self, gen: Generation) -> None:
        gen.texts[:] = self.texts
        gen.finish_reasons[:] = self.finish_reasons
        gen.snapshots.update(self.snapshots)
        for step in self.steps:
            gen.completions[step.index].append(step)


def decode(requests: list[GpuRequest], max_rows: int) -> Iterator[list[Update]]:
    """The body of a GPU call: the requests' Generations together in one private Batch, joined as the
    shared loop joins jobs admitted together (each prompt prefilled alone, then its rows join), so each
    row draws what it draws alone. One list of Updates per step (a job with steps or a failure that step),
    and one with every job at the end (a finish that came without a step is in it). Jobs join in order
    while their rows fit in `max_rows`, the rest as rows leave; a model whose cache cannot mix jobs
    decodes them one after another. Both as the shared loop does."""
    gens = [r.generation() for r in requests]
    batch = Batch(gens[0].lm)
    waiting = deque(range(len(gens)))
    mergeable: bool | None = None

    def update(k: int, steps: list[Step], failure: Failure | None = None) -> Update:
        gen = gens[k]
        snaps = dict(gen.snapshots)
        gen.snapshots.clear()  # what was sent lives in the main process now
        return Update(k, steps, list(gen.texts), list(gen.finish_reasons), snaps, failure)

    while waiting or batch.rows:
        batch.advance()  # a failure of the forward pass every row shares ends the call, and with it every job
        failed: dict[int, Exception] = {}
        while waiting and (not batch.rows or mergeable and len(batch.rows) + requests[waiting[0]].params.n <= max_rows):
            k = waiting.popleft()
            try:  # its own forward pass into its own cache, then its rows join: a failure is its alone
                prefill = batch.prefill(gens[k])
                while not prefill.advance():
                    pass
                if mergeable is None:
                    mergeable = batch.mergeable(prefill.cache)
                batch.join(gens[k], prefill.cache, prefill.logits)
            except Exception as e:
                failed[k] = e
        steps, _, errors = batch.sample()
        failed.update({k: errors[gen] for k, gen in enumerate(gens) if gen in errors})
        for e in failed.values():
            if not isinstance(e, ParamError):
                log.error("a job failed in a GPU call; no other job was affected", exc_info=e)
        made = [update(k, steps[gen]) for k, gen in enumerate(gens) if gen in steps]
        yield made + [update(k, [], Failure.of(e)) for k, e in failed.items()]
    yield [update(k, []) for k in range(len(gens))]


def decode_duration(requests: list[GpuRequest], max_rows: int) -> float:
    """Seconds to ask ZeroGPU for: the longest job's steps x the measured step time for the rows that
    decode together, times the waves the rows need when they are more than max_rows, with a margin."""
    rows = sum(r.params.n for r in requests)
    waves = -(-rows // max_rows)
    return START_S + MARGIN * waves * max(r.steps for r in requests) * (STEP_S + ROW_S * min(rows, max_rows))


class NeedsGpu(BaseException):
    """A call(fn) run in the main process touched the model's weights: it must run in a GPU call. A
    BaseException, so that an `except Exception` inside fn cannot take it for its own error."""


class _NoWeights:
    """The model as the main process may use it: any use of the weights raises NeedsGpu."""

    def __getattr__(self, name: str) -> Any:
        raise NeedsGpu(name)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise NeedsGpu("forward")


def _cpu_view(lm: LoadedModel) -> LoadedModel:
    """The model's tokenizer and facts, on the CPU, without its weights."""
    return replace(lm, model=_NoWeights(), device=torch.device("cpu"))


def dumps_call(fn: Callable[[], Any]) -> bytes:
    """fn by value (cloudpickle: a lambda and what it holds), every LoadedModel in it by name."""
    import cloudpickle

    class Pickler(cloudpickle.Pickler):
        def persistent_id(self, obj: Any) -> str | None:
            return obj.name if isinstance(obj, LoadedModel) else None

    buf = io.BytesIO()
    Pickler(buf, protocol=pickle.HIGHEST_PROTOCOL).dump(fn)
    return buf.getvalue()


def loads_call(fn_bytes: bytes, model: Callable[[str], LoadedModel]) -> Callable[[], Any]:
    class Unpickler(pickle.Unpickler):
        def persistent_load(self, name: str) -> LoadedModel:
            return model(name)

    return Unpickler(io.BytesIO(fn_bytes)).load()


def run_call(fn_bytes: bytes) -> Iterator[Any]:
    """The body of a GPU call for Scheduler.call: fn() where the models are. A generator (one yield),
    like decode, so that both calls go through the same decorator."""
    yield loads_call(fn_bytes, MODELS.__getitem__)()


CALL_S = 10.0  # a call(fn): one forward pass or one resample, and the weights' move on a first call


def call_duration(fn_bytes: bytes) -> float:
    return CALL_S


# --- the decorators ---------------------------------------------------------------------------------

Decorator = Callable[[Callable[..., Iterator[Any]], Callable[..., float]], Callable[..., Iterator[Any]]]


def spaces_gpu(task: Callable[..., Iterator[Any]], duration: Callable[..., float]) -> Callable[..., Iterator[Any]]:
    """The real one: `spaces.GPU` (on ZeroGPU a forked worker; elsewhere it returns the task itself)."""
    import spaces

    return spaces.GPU(task, duration=duration)


# A forced call runs where the shared loop would have: in this process, on its CPU threads. One at a
# time, as a worker holds its GPU: the model's forward pass is run by one thread at a time everywhere in
# this app (engine/lone_row.py's hooks rely on it), and two calls' OpenMP pools would fight for the cores.
_ONE_WORKER = threading.Lock()


def pickled(task: Callable[..., Iterator[Any]], duration: Callable[..., float]) -> Callable[..., Iterator[Any]]:
    """What ZeroGPU does to the data, without a GPU: the arguments and every yield pass through pickle,
    and the task runs on a thread of its own (a worker's), one call at a time. Closing the returned
    generator stops the task at its next yield, as ZeroGPU's stop event does. Used by --zerogpu outside
    a Space."""

    @wraps(task)
    def call(*args: Any, **kwargs: Any) -> Iterator[Any]:
        args, kwargs = pickle.loads(pickle.dumps((args, kwargs)))
        duration(*args, **kwargs)  # ZeroGPU computes it before the call: a bug in it shows here too
        items: queue.Queue = queue.Queue(maxsize=1)
        stop = threading.Event()

        def work() -> None:
            with _ONE_WORKER:
                made = task(*args, **kwargs)
                try:
                    for item in made:
                        items.put(("item", pickle.dumps(item)))
                        if stop.is_set():
                            return
                except BaseException as e:  # the caller gets it, as ZeroGPU hands back the worker's error
                    items.put(("error", e))
                finally:
                    made.close()
                    items.put(("end", None))

        worker = threading.Thread(target=work, name="zerogpu-call", daemon=True)
        worker.start()
        try:
            while True:
                kind, value = items.get()
                if kind == "end":
                    return
                if kind == "error":
                    raise value
                yield pickle.loads(value)
        finally:
            stop.set()
            while worker.is_alive():  # let it reach its next put and see the stop
                try:
                    items.get(timeout=0.05)
                except queue.Empty:
                    pass

    return call


# --- the scheduler ------------------------------------------------------------------------------------


class _Group:
    """The jobs one caller (a thread, for one client) submits before it reads any of their tickets: one
    UI action's jobs (compare's two sides, a replay's two orders, a sweep's points), decoded in one call."""

    def __init__(self) -> None:
        self.tickets: list[Ticket] = []
        self.read = threading.Event()  # a ticket was read: the action has submitted all it will
        self.last = time.monotonic()  # when a job last joined


class _GroupTicket(Ticket):
    """A ticket whose first read starts its group's call."""

    def __init__(self, job: Generation, listener: Callable[[Any], None] | None, client: Hashable, group: _Group):
        super().__init__(job, listener, client)
        self._group = group

    def get(self, timeout: float | None = None) -> Any:
        self._group.read.set()
        return super().get(timeout)

    def __iter__(self) -> Iterator[list[Step]]:
        self._group.read.set()
        return super().__iter__()


# Jobs with listeners are never read as tickets (a sweep's, the API's): their group's call starts once its
# caller has submitted nothing more for this long. A sweep submits its points in one loop, microseconds apart.
GATHER_S = 0.1  # against a handler thread descheduled mid-loop on a busy machine; small beside a call's start


class GpuScheduler:
    """The model's Scheduler on ZeroGPU: every UI action is one GPU call (ZeroGPU queues the calls and
    gives each its GPU). The jobs one thread submits for one client before it reads any of their tickets
    are that action's: they decode together in the call, each step routed to its own ticket. A call(fn)
    that needs the weights is one call too."""

    def __init__(self, lm: LoadedModel, limits: Limits = Limits(), gpu: Decorator = spaces_gpu):
        self.lm, self.limits = lm, limits
        register(lm)
        self._decode = gpu(decode, decode_duration)
        self._call = gpu(run_call, call_duration)
        self.stats = {"most_jobs_in_a_step": 1}  # the most jobs one call has decoded together
        self.calls = 0  # GPU calls made, for tests and the benchmark
        self._lock = threading.Lock()
        self._open: dict[tuple[int, Hashable], _Group] = {}  # (thread, client) -> the group still gathering

    @property
    def waiting(self) -> int:
        return 0  # ZeroGPU keeps its own queue, and says nothing of it

    def submit(self, job: Generation, listener: Callable[[Any], None] | None = None, client: Hashable = None) -> Ticket:
        """Add the job to its caller's group; the group's GPU call starts on a short thread that carries
        the caller's context (and with it the visitor's Gradio request) once a ticket of it is read, or
        its caller has gone quiet. Its steps reach each ticket as from the shared loop."""
        if job.params.n > self.limits.max_rows:
            raise Refused(f"n = {job.params.n} completions is more than this server decodes at once "
                          f"({self.limits.max_rows} rows); lower n.", "n")
        key = (threading.get_ident(), client)
        with self._lock:
            group = self._open.get(key)
            if group is None:
                group = self._open[key] = _Group()
                ctx = copy_context()
                threading.Thread(target=ctx.run, args=(self._drive, key, group), name=f"zerogpu:{self.lm.name}",
                                 daemon=True).start()
            ticket = _GroupTicket(job, listener, client, group)
            group.tickets.append(ticket)
            group.last = time.monotonic()
        return ticket

    def submitted(self) -> None:
        """The calling thread has submitted every job of its action: its groups' calls start now, not after
        GATHER_S (a sweep says so; its jobs report through listeners and are never read as tickets)."""
        with self._lock:
            for (thread, _), group in self._open.items():
                if thread == threading.get_ident():
                    group.read.set()

    def _gather(self, key: tuple[int, Hashable], group: _Group) -> list[Ticket]:
        """Wait for the group's caller to be done submitting; the group closes (a later submit opens another)."""
        while True:
            group.read.wait(GATHER_S)
            with self._lock:
                if group.read.is_set() or time.monotonic() - group.last >= GATHER_S:
                    del self._open[key]
                    return list(group.tickets)

    def _drive(self, key: tuple[int, Hashable], group: _Group) -> None:
        tickets = self._gather(key, group)
        for ticket in tickets:
            ticket.admitted.set()
        live = [t for t in tickets if not t.job.stopping()]
        ended: set[int] = set()

        def end(k: int, error: Exception | None = None) -> None:
            ticket = live[k]
            ended.add(k)
            if error is not None:
                ticket.deliver(error)
            if ticket.job.stopping():
                ticket.job.finish_reasons[:] = [r or "cancelled" for r in ticket.job.finish_reasons]
            ticket.deliver(END)

        try:
            if live:
                self._count()
                self.stats["most_jobs_in_a_step"] = max(self.stats["most_jobs_in_a_step"], len(live))
                updates = self._decode([GpuRequest.of(t.job) for t in live], self.limits.max_rows)
                try:
                    for made in updates:
                        for update in made:
                            if update.job in ended:
                                continue  # stopped here while the call went on for the others
                            gen = live[update.job].job
                            update.apply(gen)
                            if update.steps:
                                live[update.job].deliver(update.steps)
                            if update.failure is not None:
                                end(update.job, update.failure.error())
                        for k, ticket in enumerate(live):
                            if k not in ended and (ticket.job.done or ticket.job.stopping()):
                                end(k)
                        if len(ended) == len(live):
                            break  # closing the call stops it at its next yield
                finally:
                    updates.close()
        except Exception as e:  # the call's own failure (its shared forward pass): its jobs end, as in the shared loop
            if not isinstance(e, ParamError):
                log.error("a GPU call failed", exc_info=e)
            for k in range(len(live)):
                if k not in ended:
                    end(k, e)
        for k in range(len(live)):
            if k not in ended:
                end(k)
        for ticket in tickets:
            if ticket not in live:
                ticket.job.finish_reasons[:] = [r or "cancelled" for r in ticket.job.finish_reasons]
                ticket.deliver(END)

    def call(self, fn: Callable[[], T], timeout: float | None = None) -> T:
        """fn() in this process, on the CPU, when it needs no weights (a what-if resamples a cached
        snapshot's logits: no GPU call, no quota); else in a GPU call, where the models are."""
        sent = dumps_call(fn)
        try:
            return loads_call(sent, lambda name: _cpu_view(MODELS[name]))()
        except NeedsGpu:
            pass
        self._count()
        [result] = self._call(sent)
        return result

    def _count(self) -> None:
        with self._lock:  # calls start on many threads
            self.calls += 1

    def close(self) -> None:
        pass
