"""One decode loop per model, shared by everyone: continuous batching with a bounded queue.

    scheduler = Scheduler(lm, Limits(max_rows=128, max_tokens=65536, max_queue=256))
    ticket = scheduler.submit(generation, client="key:...")  # may raise Refused (queue full, or too large)
    for steps in ticket: ...                       # the same Steps iterating the generation alone gives
    ticket.ahead                                   # jobs that will be admitted before it; 0 once it runs
    ticket.reading                                 # then prompts that go in before its own; None once in
    scheduler.call(fn)                             # fn() on the loop's thread, between two steps
    scheduler.stats["most_jobs_in_a_step"]         # the most distinct jobs one decode step has served

A background thread runs the loop. Each turn it admits waiting jobs while the batch has room (rows in
flight, token slots in the KV cache), prefills one chunk of the oldest joining job, and then runs one step
for every row in the batch: one forward pass, one sampler pipeline with per-row knobs, one recorder. Each
job gets its own Steps; finished and stopped rows leave at once.

Fair shares. A client is whoever the caller says (an API key, a browser session, an IP address); jobs
without one share the client None. The queue serves clients in turn (round-robin), each client's jobs in
the order it sent them. While other clients wait, a client's job larger than its share (max_rows / the
number of waiting clients) lets them go first; with nobody else waiting it runs as soon as it fits. The
job served next waits for room rather than letting later ones pass, so a large job is not starved by
small ones. `ticket.ahead` is exact for the queue as it stands: a client that arrives later may be
served before another client's second job.

Faults stay with their job. An error while sampling or recording one job's rows ends that job alone
(engine/batch.py finds it by sampling the group's jobs one at a time): it gets the exception, a ParamError
for a bad value, and the other rows keep the tokens they draw alone. An error in a job's own prefill or
join ends that job. Only a failure of the batch's forward pass, which every row shares, ends the jobs in
the batch; the loop itself survives any error and serves the next jobs.

All tensor work of a server happens on this thread, and the thread ends once idle. That is for
OpenMP's sake, measured on this 2-core CPU: every thread that runs a parallel op keeps a pool of OpenMP
threads for as long as it lives, and once the process holds more of them than there are cores, libgomp
stops spinning and every op pays for waking its threads: decoding fell from 23 to 14 tokens/s. So no
other long-lived thread may run tensor code (requests are validated without tensors; models load in a
thread of their own that ends), and an idle scheduler gives its pool back.
"""

from __future__ import annotations

import ctypes
import logging
import queue
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Callable, Hashable, Iterator, TypeVar

from engine.batch import PREFILL_CHUNK, Batch, Prefill
from engine.generator import Generation
from engine.knob import ParamError
from engine.model import LoadedModel
from engine.trace import Step

T = TypeVar("T")
END = object()  # delivered after a job's last steps
IDLE_EXIT_S = 2.0  # an idle loop's thread ends after this long (and with it its OpenMP threads)
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Limits:
    max_rows: int = 128  # rows decoding at once (a request of n completions takes n)
    max_tokens: int = 65536  # token slots the batch's KV cache may hold at admission, padding included
    max_queue: int = 256  # jobs waiting for room; past it, submit refuses
    prefill_chunk: int = PREFILL_CHUNK
    # Prompt work a turn does stops once it has taken this long (one chunk always goes in): every running
    # row waits for it. Eight short prompts arriving together took over a second in one turn on a 2-core
    # float32 CPU, so pages saw no text move for that long; this way the batch steps between them. Measured
    # with 8 pages: 0.1 s kept the float32 path's median longest gap at 0.45 s, 0.2 s let it grow to 0.57 s,
    # and bf16's time did not tell them apart (runs vary by a tenth).
    prefill_turn_s: float = 0.1


def _give_back_memory() -> None:
    """Return freed heap memory to the system. glibc keeps what a large batch freed (its mmap threshold
    grows with every large free), so a server's resident memory would otherwise ratchet up to its
    busiest moment and stay there."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to do
        pass


def _settle(future: Future, fn: Callable[[], Any]) -> None:
    try:
        future.set_result(fn())
    except BaseException as e:  # the caller gets it; the loop goes on
        future.set_exception(e)


class Refused(Exception):
    """The job cannot be queued: the queue is full (retry later), or it is larger than the limits."""

    def __init__(self, message: str, param: str | None = None, retry: bool = False):
        super().__init__(message)
        self.message, self.param, self.retry = message, param, retry


class Ticket:
    """A submitted job: its steps as they are made, its place in the queue, and how to stop it."""

    def __init__(self, job: Generation, listener: Callable[[Any], None] | None, client: Hashable = None):
        self.job, self.client = job, client
        self.ahead = 0  # jobs that will be admitted before it; 0 once admitted
        self.reading: int | None = None  # admitted, its prompt not in yet: prompts that go in before it
        self.admitted = threading.Event()
        self._items: queue.Queue = queue.Queue()
        self._listener = listener or self._items.put

    def deliver(self, item: Any) -> None:
        """A list of Steps, an exception, or END (after the last steps). A listener that raises (its
        client is gone, or a bug) stops its own job and nothing else."""
        try:
            self._listener(item)
        except Exception:
            log.exception("a job's listener failed; the job stops")
            self.job.stop()

    def get(self, timeout: float | None = None) -> Any:
        """The next item, or None when none came within `timeout` (only without a listener)."""
        try:
            return self._items.get(timeout=timeout)
        except queue.Empty:
            return None

    def __iter__(self) -> Iterator[list[Step]]:
        while (item := self._items.get()) is not END:
            if isinstance(item, BaseException):
                raise item
            yield item

    def cancel(self) -> None:
        self.job.stop()


class Scheduler:
    def __init__(self, lm: LoadedModel, limits: Limits = Limits(), clock: Callable[[], float] = time.monotonic):
        self.lm, self.limits, self._clock = lm, limits, clock
        self.batch = Batch(lm)
        # Waiting jobs per client, the clients in their turn: the next one served first.
        self._waiting: dict[Hashable, deque[Ticket]] = {}
        self._queued = 0  # waiting jobs, all clients together
        self._joining: deque[tuple[Ticket, Prefill]] = deque()
        self._running: dict[Generation, Ticket] = {}
        self._calls: deque[tuple[Callable[[], Any], Future]] = deque()
        self._mergeable: bool | None = None  # whether this model's cache lets jobs share a batch
        self._cv = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False
        self.stats = {"most_jobs_in_a_step": 0}  # plain numbers, read by anyone

    # --- what callers see ----------------------------------------------------------------------------

    def submit(self, job: Generation, listener: Callable[[Any], None] | None = None, client: Hashable = None) -> Ticket:
        """Queue a job for `client` (see Fair shares above). `listener`, when given, receives each item (a
        list of Steps, an exception, then END) on the loop's thread; without one, iterate the ticket."""
        n, prompt = job.params.n, len(job.prompt_ids) + len(job.prefix_ids)
        lim = self.limits
        if n > lim.max_rows:
            raise Refused(f"n = {n} completions is more than this server decodes at once ({lim.max_rows} rows); lower n.", "n")
        if n * prompt > lim.max_tokens:
            raise Refused(f"n x prompt = {n} x {prompt} = {n * prompt} tokens is more than this server's KV cache holds "
                          f"({lim.max_tokens}); shorten the prompt or lower n.", "messages")
        wanted = job.params.max_tokens
        if wanted is not None and n * (prompt + job.max_tokens) > lim.max_tokens:
            total = n * (prompt + job.max_tokens)
            raise Refused(f"n x (prompt + max_tokens) = {n} x ({prompt} + {job.max_tokens}) = {total} tokens is more than "
                          f"this server's KV cache holds ({lim.max_tokens}); lower n or max_tokens.", "max_tokens")
        ticket = Ticket(job, listener, client)
        with self._cv:
            if self._closed:
                raise Refused("the server is shutting down", retry=True)
            self._drop_left()
            if self._queued >= lim.max_queue:
                raise Refused(f"{self._queued} requests are already waiting for this model (the queue holds "
                              f"{lim.max_queue}); retry shortly.", retry=True)
            self._waiting.setdefault(client, deque()).append(ticket)
            self._queued += 1
            self._number()
            self._start()
            self._cv.notify()
        return ticket

    @property
    def waiting(self) -> int:
        """Jobs waiting for room, all clients together."""
        return self._queued

    def submitted(self) -> None:
        """The caller has submitted every job of one action (a sweep's points). Nothing to do here: each job
        joins the shared batch as it comes. A scheduler that runs an action's jobs together (ZeroGPU's,
        playground/zerogpu.py) starts them now."""

    def call(self, fn: Callable[[], T], timeout: float | None = None) -> T:
        """fn() run on the loop's thread between two steps; its result, or its exception raised here. For
        tensor work outside the batch (a what-if on a recorded step), which must not run on another
        long-lived thread (see the module docstring). A call waits at most one step."""
        future: Future = Future()
        with self._cv:
            if self._closed:
                raise Refused("the server is shutting down", retry=True)
            self._calls.append((fn, future))
            self._start()
            self._cv.notify()
        return future.result(timeout=timeout)

    def _start(self) -> None:
        """With the lock held: a loop thread, unless one is running."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name=f"decode:{self.lm.name}", daemon=True)
            self._thread.start()

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify()
        if self._thread is not None:
            self._thread.join(timeout=10)

    # --- the loop ------------------------------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            with self._cv:
                if not self._closed and not self._busy():
                    self._cv.wait(timeout=IDLE_EXIT_S)
                    if not self._closed and not self._busy():
                        self._thread = None  # the next submit starts a new one
                        _give_back_memory()
                        return
                if self._closed:
                    self._fail_all(RuntimeError("the server is shutting down"))
                    for _, future in self._calls:
                        future.set_exception(Refused("the server is shutting down", retry=True))
                    self._calls.clear()
                    return
                self._admit()
                calls = list(self._calls)
                self._calls.clear()
            for fn, future in calls:
                _settle(future, fn)
            if not (self._joining or self.batch.rows):
                continue
            try:
                self._turn()
            except Exception as e:  # not contained to one job (see _turn): the batch's jobs end, never the loop
                log.error("a decode step failed; the %d jobs in the batch end", len(self._running), exc_info=e)
                self._fail_all(e, waiting=False)

    def _busy(self) -> bool:
        return bool(self._waiting or self._joining or self.batch.rows or self._calls)

    def _drop_left(self) -> None:
        """Waiting jobs whose clients left (or that were cancelled) leave the queue. With the lock held."""
        left = [t for q in self._waiting.values() for t in q if t.job.stopping()]
        for ticket in left:
            queue_ = self._waiting[ticket.client]
            queue_.remove(ticket)
            if not queue_:
                del self._waiting[ticket.client]
            self._queued -= 1
            self._end(ticket, cancelled=True)
        if left:
            self._number()

    def _next(self, queues: list[deque[Ticket]]) -> int:
        """Which of the clients' queues (in their turn) is served next: the first whose oldest job is within
        its share of the rows, or the first of all when none is (or no other client waits)."""
        if len(queues) > 1:
            share = max(1, self.limits.max_rows // len(queues))
            for k, q in enumerate(queues):
                if q[0].job.params.n <= share:
                    return k
        return 0

    def _number(self) -> None:
        """Each waiting ticket's `ahead`: its place in the order _admit will take them. With the lock held."""
        queues = [deque(q) for q in self._waiting.values()]
        k = 0
        while queues:
            q = queues.pop(self._next(queues))
            q.popleft().ahead = k
            k += 1
            if q:
                queues.append(q)

    def _admit(self) -> None:
        """Move waiting jobs into the batch, client by client in turn, while the next one fits. Called with
        the lock held."""
        self._drop_left()
        admitted = False
        while self._waiting:
            clients = list(self._waiting)
            client = clients[self._next([self._waiting[c] for c in clients])]
            queue_ = self._waiting[client]
            if not self._fits(queue_[0].job):
                break  # it waits for room, and so does everyone behind it (no starving a large job)
            ticket = queue_.popleft()
            del self._waiting[client]
            if queue_:
                self._waiting[client] = queue_  # its turn is over: to the back
            self._queued -= 1
            admitted = True
            ticket.ahead, ticket.reading = 0, len(self._joining)
            ticket.admitted.set()
            self._joining.append((ticket, self.batch.prefill(ticket.job, self.limits.prefill_chunk)))
        if admitted:
            self._number()

    def _fits(self, job: Generation) -> bool:
        batch, lim = self.batch, self.limits
        joining = [p.job for _, p in self._joining]
        if not batch.rows and not joining:
            return True  # alone, it was checked against the limits when submitted
        if not self._mergeable:  # unknown until a first prompt is in, or this model's cache cannot mix jobs
            return False
        rows = len(batch.rows) + sum(j.params.n for j in joining) + job.params.n
        width = max([batch.width] + [len(j.prompt_ids) + len(j.prefix_ids) for j in [*joining, job]])
        return rows <= lim.max_rows and rows * width <= lim.max_tokens

    def _turn(self) -> None:
        for job in self.batch.drop_stopped():
            self._end(self._running.pop(job))
        try:
            self.batch.advance()
        except Exception as e:  # the forward pass every row shares: the batch's jobs end, joining ones go on
            log.error("the model's forward pass failed; the %d jobs in the batch end", len(self._running), exc_info=e)
            self._fail_running(e)
        # Prompts go in, oldest first, about one chunk of tokens and at most about prefill_turn_s a turn: many
        # short ones join together, a long one (or many on a slow machine) over several turns while the
        # batch keeps stepping.
        budget, started = self.limits.prefill_chunk, self._clock()
        while self._joining and budget > 0:
            ticket, prefill = self._joining[0]
            if ticket.job.stopping():
                self._joining.popleft()
                self._end(ticket, cancelled=True)
                continue
            before = prefill.done
            try:  # its own forward pass into its own cache, then its rows join: a failure is its alone
                finished = prefill.advance()
                budget -= prefill.done - before
                if finished:
                    self._joining.popleft()
                    ticket.reading = None
                    if self._mergeable is None:
                        self._mergeable = self.batch.mergeable(prefill.cache)
                    self.batch.join(ticket.job, prefill.cache, prefill.logits)
                    self._running[ticket.job] = ticket
            except Exception as e:
                if self._joining and self._joining[0][0] is ticket:
                    self._joining.popleft()
                self._fail(ticket, e)
                continue
            if (finished and not self._mergeable) or self._clock() - started >= self.limits.prefill_turn_s:
                break
        for k, (ticket, _) in enumerate(self._joining):
            ticket.reading = k
        if self.batch.rows:
            self.stats["most_jobs_in_a_step"] = max(self.stats["most_jobs_in_a_step"], len(self._running))
        steps, ended, failed = self.batch.sample()
        for job, made in steps.items():
            self._running[job].deliver(made)
        for job in ended:
            self._end(self._running.pop(job))
        for job, error in failed.items():
            self._fail(self._running.pop(job), error)
        with self._cv:
            self._admit()

    def _end(self, ticket: Ticket, cancelled: bool = False) -> None:
        if cancelled:
            ticket.job.finish_reasons = [r or "cancelled" for r in ticket.job.finish_reasons]
        ticket.deliver(END)

    def _fail(self, ticket: Ticket, error: Exception) -> None:
        """One job ends with its error: a bad value (ParamError) as it is; anything else is a bug, logged
        with its traceback."""
        if not isinstance(error, ParamError):
            log.error("a job failed; no other job was affected", exc_info=error)
        ticket.deliver(error)
        ticket.deliver(END)

    def _fail_running(self, error: Exception) -> None:
        """Every job in the batch ends with `error`; the batch starts empty."""
        tickets = list(self._running.values())
        self._running.clear()
        self.batch = Batch(self.lm)
        for ticket in tickets:
            ticket.deliver(error)
            ticket.deliver(END)

    def _fail_all(self, error: Exception, waiting: bool = True) -> None:
        tickets = [t for t, _ in self._joining] + (list(self._tickets_waiting()) if waiting else [])
        self._joining.clear()
        if waiting:
            self._waiting.clear()
            self._queued = 0
        self._fail_running(error)
        for ticket in tickets:
            ticket.deliver(error)
            ticket.deliver(END)

    def _tickets_waiting(self) -> Iterator[Ticket]:
        return (t for q in self._waiting.values() for t in q)
