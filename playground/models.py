"""The models this server holds, shared by the UI and the HTTP API (loaded once, never per session), each
with the one scheduler that decodes for everyone."""

from __future__ import annotations

import threading
from typing import Callable

from engine.model import LoadedModel, load_model
from engine.scheduler import Limits, Scheduler


class ModelHost:
    def __init__(self, first: LoadedModel, device: str = "auto", dtype: str = "auto", limits: Limits = Limits()):
        self._models: dict[str, LoadedModel] = {first.name: first}
        self._schedulers: dict[str, Scheduler] = {}
        self.default = first.name
        self.device, self.dtype, self.limits = device, dtype, limits
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
                self._schedulers[lm.name] = Scheduler(lm, self.limits)
            return self._schedulers[lm.name]

    def load(self, name: str, progress: Callable[[str], None] | None = None) -> LoadedModel:
        """Load another model (Hub id or folder) next to the others, once; it becomes selectable."""
        with self._lock:
            if name not in self._models:
                self._models[name] = load_model(name, self.device, self.dtype, progress=progress)
            return self._models[name]
