"""The models this server holds, shared by the UI and the HTTP API (loaded once, never per session), each
with the one scheduler that decodes for everyone.

The kind of scheduler is chosen here, once: the shared decode loop (engine/scheduler.py), or on ZeroGPU
(`gpu`, a decorator from playground/zerogpu.py) one GPU call per action. Callers never ask which.

A model connected from the page ("Connect a server", playground/ui_remote.py) is owned by that browser
session: it carries the visitor's key, so no other session, and not /v1, may list or use it. `names` and
`get` take the session; left out, they read SESSION, which the UI's handler wrapper sets for the event it
runs (playground/ui.py `_handler`), so the many `host.get(run["model"])` of the UI stay as they are and the
API (which never sets it) sees the public models only. At most MAX_SESSION_MODELS such models are kept,
the least recently used let go, with a note its session reads when it next asks for the model."""

from __future__ import annotations

import contextlib
import contextvars
import threading
from collections import OrderedDict
from typing import Callable, Iterator

from engine.model import LoadedModel, load_model
from engine.scheduler import Limits, Scheduler
from playground import zerogpu


# ZeroGPU packs the tensors that exist when the app starts, for the workers it forks; a model loaded later
# would not be in them.
LOAD_OFF = ("Loading a model is off on ZeroGPU: a GPU call sees only the models packed when the Space started. "
            "Name the model at start instead (--model, or the PLAYGROUND_MODEL variable).")


MAX_SESSION_MODELS = 16  # models connected from pages, all sessions together; each holds a connection
SESSION: contextvars.ContextVar[str | None] = contextvars.ContextVar("playground_session", default=None)
CONNECT_OFF = "Connecting a server from the page is off here."  # app.py says where it is on (playground/ui_remote.py)


@contextlib.contextmanager
def as_session(session: str | None) -> Iterator[None]:
    """Within this block, `names()` and `get()` without a session answer for this browser session."""
    token = SESSION.set(session)
    try:
        yield
    finally:
        SESSION.reset(token)


class ModelMissing(KeyError):
    """A model this caller may not use: not loaded, another session's, or let go. str() is the message."""

    def __str__(self) -> str:
        return str(self.args[0])


class ModelHost:
    def __init__(self, first: LoadedModel, device: str = "auto", dtype: str = "auto", limits: Limits = Limits(),
                 gpu: zerogpu.Decorator | None = None):
        self._models: dict[str, LoadedModel] = {first.name: first}  # public: every session and /v1
        self._owned: OrderedDict[tuple[str, str], LoadedModel] = OrderedDict()  # (session, name), least recent first
        self._let_go: OrderedDict[tuple[str, str], str] = OrderedDict()  # (session, name) -> why it went
        self._schedulers: dict[int, Scheduler] = {}  # by id() of a model held here (names repeat across sessions)
        self.default = first.name
        self.device, self.dtype, self.limits = device, dtype, limits
        self.gpu = gpu  # ZeroGPU: each model action is a call through this decorator; None: the shared loop
        self.load_off = None if gpu is None else LOAD_OFF  # why "Load model" is off, None where it works
        self.connect_off: str | None = CONNECT_OFF  # why "Connect a server" is off, None where it works (app.py)
        if gpu is not None:
            zerogpu.register(first)  # before ZeroGPU's start-up packs the tensors and forks a worker
        self._lock = threading.Lock()  # held through a whole load
        self._own_lock = threading.Lock()  # the sessions' models: never held for long

    def names(self, session: str | None = None) -> list[str]:
        """The models this session may pick: the public ones, then its own connected ones."""
        session = session if session is not None else SESSION.get()
        with self._own_lock:
            return list(self._models) + [n for (s, n) in self._owned if session is not None and s == session]

    def get(self, name: str | None = None, session: str | None = None) -> LoadedModel:
        """The named model (None: the default). Raises ModelMissing (a KeyError) with the reason for a model
        that is not loaded, belongs to another session, or was let go."""
        name = name or self.default
        session = session if session is not None else SESSION.get()
        if name in self._models:
            return self._models[name]
        with self._own_lock:
            if (session, name) in self._owned:
                self._owned.move_to_end((session, name))
                return self._owned[(session, name)]
            if (session, name) in self._let_go:
                raise ModelMissing(self._let_go[(session, name)])
            if any(n == name for (_, n) in self._owned):
                raise ModelMissing(f"model {name!r} was connected in another browser session, and a connected "
                                   "model is its own session's only: connect the server here")
        raise ModelMissing(f"model {name!r} is not loaded")

    def scheduler(self, name: str | None = None) -> Scheduler:
        """The one decode loop of the named model, shared by the UI and the API. KeyError if not loaded."""
        lm = self.get(name)
        with self._lock:
            if id(lm) not in self._schedulers:
                # A model computed elsewhere (a remote server's) needs no GPU call: the shared loop serves it.
                self._schedulers[id(lm)] = (Scheduler(lm, self.limits) if self.gpu is None or not lm.computes_here
                                            else zerogpu.GpuScheduler(lm, self.limits, self.gpu))
            return self._schedulers[id(lm)]

    def add(self, lm: LoadedModel, owner: str | None = None) -> LoadedModel:
        """A model made elsewhere joins the others (a remote server's, engine/remote.py); it becomes selectable:
        for everyone (owner None: the command line's), or for the browser session `owner` only. A session's
        model of a name it already has replaces the old one; past MAX_SESSION_MODELS the least recently used
        of all sessions' models is let go. ValueError for a session's model named as a public one."""
        if owner is None:
            with self._lock:
                return self._models.setdefault(lm.name, lm)
        gone = []
        with self._own_lock:
            if lm.name in self._models:
                raise ValueError(f"{lm.name!r} is served here already: pick it in the model list")
            if (old := self._owned.pop((owner, lm.name), None)) is not None:
                gone.append(old)
            self._owned[(owner, lm.name)] = lm
            self._let_go.pop((owner, lm.name), None)
            while len(self._owned) > MAX_SESSION_MODELS:
                key, old = self._owned.popitem(last=False)
                self._let_go[key] = (f"model {key[1]!r} was let go: this server keeps at most {MAX_SESSION_MODELS} "
                                     "models connected from pages, the least recently used going first; connect it again")
                while len(self._let_go) > 16 * MAX_SESSION_MODELS:  # notes are small, but not kept forever
                    self._let_go.popitem(last=False)
                gone.append(old)
        with self._lock:
            schedulers = [self._schedulers.pop(id(old), None) for old in gone]
        for old, scheduler in zip(gone, schedulers):  # outside the lock: a closing loop may wait for its step
            if scheduler is not None:
                scheduler.close()
            if (server := getattr(old, "server", None)) is not None:
                server.close()
        return lm

    def load(self, name: str, progress: Callable[[str], None] | None = None) -> LoadedModel:
        """Load another model (Hub id or folder) next to the others, once; it becomes selectable.
        RuntimeError where loading is off (load_off says why)."""
        if self.load_off and name not in self._models:
            raise RuntimeError(self.load_off)
        with self._lock:
            if name not in self._models:
                self._models[name] = load_model(name, self.device, self.dtype, progress=progress)
            return self._models[name]
