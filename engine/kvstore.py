"""KV reuse across requests: the caches of sequences just served, kept so a request that continues one
costs only its new tokens.

    store = KVStore(max_bytes=256 * 2**20)
    done, cache, logits = store.resume(ids)      # longest kept sequence that `ids` starts with
    store.keep(ids, cache, logits)               # after a prefill: ids' KV and next-token logits (1, V)

A client that steps a sequence itself (another playground driving this server as its remote) sends the
whole token prompt every step, one token longer each time. Without reuse every request re-prefills it;
with reuse it is one forward pass of one token on the kept cache: exactly the decode step that local
decoding runs, so the logits are the same bits (a one-pass prefill over those tokens would round
differently, see engine/whatif.py). A request whose prompt equals a kept sequence (n completions split
into n requests, a client retrying) costs no forward pass at all: the kept logits are its logits.

The store is an LRU bounded in bytes (the keys, values and logits held). Entries hold their own tensors:
a DynamicCache layer's update concatenates into a new tensor and never writes into the old one, and
`resume` hands out a fresh cache built from copies, so nothing the batch does can change what is kept.
Only caches of plain full-attention layers are kept (a sliding-window layer drops what it no longer needs).
Prefill calls it on the decode loop's thread; the lock is for readers elsewhere (sizes, tests).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Entry:
    layers: tuple[tuple[torch.Tensor, torch.Tensor], ...]  # per layer (keys, values), each (1, H, T, D)
    logits: torch.Tensor  # (1, V) float32: the next-token logits after the sequence

    @property
    def nbytes(self) -> int:
        return sum(k.nbytes + v.nbytes for k, v in self.layers) + self.logits.nbytes


class KVStore:
    def __init__(self, max_bytes: int = 256 * 2**20):
        self.max_bytes = max_bytes
        self._items: OrderedDict[tuple[int, ...], Entry] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0  # requests that started from a kept sequence (exact or a prefix)

    def resume(self, ids: list[int]) -> tuple[int, object | None, torch.Tensor | None]:
        """(tokens already in the cache, the cache, the logits when the whole of `ids` is in) for the
        longest kept sequence that `ids` starts with; (0, None, None) when there is none."""
        from transformers.cache_utils import DynamicCache

        with self._lock:
            best = max((key for key in self._items if len(key) <= len(ids) and tuple(ids[: len(key)]) == key),
                       key=len, default=None)
            if best is None:
                return 0, None, None
            self._items.move_to_end(best)
            entry = self._items[best]
            self.hits += 1
        # DynamicCache copies what it is given into tensors of its own (update concatenates).
        cache = DynamicCache(ddp_cache_data=list(entry.layers))
        return len(best), cache, entry.logits if len(best) == len(ids) else None

    def keep(self, ids: list[int], cache, logits: torch.Tensor) -> None:
        """Keep `ids`' cache (batch 1, as a Prefill leaves it) and its next-token logits (1, V)."""
        from transformers.cache_utils import DynamicLayer

        layers = getattr(cache, "layers", None)
        if not layers or any(type(layer) is not DynamicLayer for layer in layers):
            return
        entry = Entry(tuple((layer.keys, layer.values) for layer in layers), logits)
        if entry.nbytes > self.max_bytes:
            return
        key = tuple(ids)
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._bytes -= old.nbytes
            self._items[key] = entry
            self._bytes += entry.nbytes
            while self._bytes > self.max_bytes:
                _, dropped = self._items.popitem(last=False)
                self._bytes -= dropped.nbytes

    def __len__(self) -> int:
        return len(self._items)

    @property
    def nbytes(self) -> int:
        return self._bytes
