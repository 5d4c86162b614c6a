"""The models this server holds, shared by the UI and the HTTP API (loaded once, never per session)."""

from __future__ import annotations

import threading
from typing import Callable

from engine.model import LoadedModel, load_model


class ModelHost:
    def __init__(self, first: LoadedModel, device: str = "auto", dtype: str = "auto"):
        self._models: dict[str, LoadedModel] = {first.name: first}
        self.default = first.name
        self.device, self.dtype = device, dtype
        self._lock = threading.Lock()

    def names(self) -> list[str]:
        return list(self._models)

    def get(self, name: str | None = None) -> LoadedModel:
        """The named model (None: the default). Raises KeyError for a model that is not loaded."""
        return self._models[name or self.default]

    def load(self, name: str, progress: Callable[[str], None] | None = None) -> LoadedModel:
        """Load another model (Hub id or folder) next to the others, once; it becomes selectable."""
        with self._lock:
            if name not in self._models:
                self._models[name] = load_model(name, self.device, self.dtype, progress=progress)
            return self._models[name]
