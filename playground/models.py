"""The models this server holds, shared by the UI and the HTTP API (loaded once, never per session), each
with the one scheduler that decodes for everyone.

The kind of scheduler is chosen here, once: the shared decode loop (engine/scheduler.py), or on ZeroGPU
(`gpu`, a decorator from playground/zerogpu.py) one GPU call per action. Callers never ask which."""

from __future__ import annotations

import threading
from typing import Callable

from engine.model import LoadedModel, load_model
from engine.scheduler import Limits, Scheduler
from playground import zerogpu


# ZeroGPU packs the tensors that exist when the app starts, for the workers it forks; a model loaded later
# would not be in them.
LOAD_OFF = ("Loading a model is off on ZeroGPU: a GPU call sees only the models packed when the Space started. "
            "Name the model at start instead (--model, or the PLAYGROUND_MODEL variable).")


class ModelHost:
    def __init__(self, first: LoadedModel, device: str = "auto", dtype: str = "auto", limits: Limits = Limits(),
                 gpu: zerogpu.Decorator | None = None):
        self._models: dict[str, LoadedModel] = {first.name: first}
        self._schedulers: dict[str, Scheduler] = {}
        self.default = first.name
        self.device, self.dtype, self.limits = device, dtype, limits
        self.gpu = gpu  # ZeroGPU: each model action is a call through this decorator; None: the shared loop
        self.load_off = None if gpu is None else LOAD_OFF  # why "Load model" is off, None where it works
        if gpu is not None:
            zerogpu.register(first)  # before ZeroGPU's start-up packs the tensors and forks a worker
        self._lock = threading.Lock()

    def names(self) -> list[str]:
        return list(self._models)

    def get(self, name: str | None = None) -> LoadedModel:
        """The named model (None: the default). Raises KeyError for a model that is not loaded."""
        return self._models[name or self.default]

    def scheduler(self, name: str | None = None) -> Scheduler:
        """The one decode loop of the named model, shared by the UI and the API. KeyError if not loaded."""
        lm = self.get(name)
        with self._lock:
            if lm.name not in self._schedulers:
                # A model computed elsewhere (a remote server's) needs no GPU call: the shared loop serves it.
                self._schedulers[lm.name] = (Scheduler(lm, self.limits) if self.gpu is None or not lm.computes_here
                                             else zerogpu.GpuScheduler(lm, self.limits, self.gpu))
            return self._schedulers[lm.name]

    def add(self, lm: LoadedModel) -> LoadedModel:
        """A model made elsewhere joins the others (a remote server's, engine/remote.py); it becomes selectable."""
        with self._lock:
            return self._models.setdefault(lm.name, lm)

    def load(self, name: str, progress: Callable[[str], None] | None = None) -> LoadedModel:
        """Load another model (Hub id or folder) next to the others, once; it becomes selectable.
        RuntimeError where loading is off (load_off says why)."""
        if self.load_off and name not in self._models:
            raise RuntimeError(self.load_off)
        with self._lock:
            if name not in self._models:
                self._models[name] = load_model(name, self.device, self.dtype, progress=progress)
            return self._models[name]
