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

What a request gets therefore depends on what is kept, in the low bits: the same token prompt sent cold
is prefilled in one pass (measured here: bf16 logits up to 0.7 apart from step-wise decoding's, float32
4e-5). A stepping client gets local decoding's bits while its last sequence stays kept; past the byte
bound, the longest kept prefix is continued and the rest goes in one pass. Only /v1/completions uses the
store: the chat endpoint and the UI always prefill, so their seed contract is unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from engine.lru import ByteLRU


@dataclass(frozen=True)
class Entry:
    layers: tuple[tuple[torch.Tensor, torch.Tensor], ...]  # per layer (keys, values), each (1, H, T, D)
    logits: torch.Tensor  # (1, V) float32: the next-token logits after the sequence

    @property
    def nbytes(self) -> int:
        return sum(k.nbytes + v.nbytes for k, v in self.layers) + self.logits.nbytes


class KVStore(ByteLRU[tuple[int, ...], Entry]):
    def __init__(self, max_bytes: int = 256 * 2**20):
        super().__init__(max_bytes)

    def resume(self, ids: list[int]) -> tuple[int, object | None, torch.Tensor | None]:
        """(tokens already in the cache, the cache, the logits when the whole of `ids` is in) for the
        longest kept sequence that `ids` starts with; (0, None, None) when there is none."""
        from transformers.cache_utils import DynamicCache

        best = max((key for key in self.keys() if len(key) <= len(ids) and tuple(ids[: len(key)]) == key),
                   key=len, default=None)
        entry = None if best is None else self.get(best)
        if entry is None:  # none, or let go since the keys were read
            return 0, None, None
        # DynamicCache copies what it is given into tensors of its own (update concatenates).
        cache = DynamicCache(ddp_cache_data=list(entry.layers))
        return len(best), cache, entry.logits if len(best) == len(ids) else None

    def keep(self, ids: list[int], cache, logits: torch.Tensor) -> None:
        """Keep `ids`' cache (batch 1, as a Prefill leaves it) and its next-token logits (1, V)."""
        from transformers.cache_utils import DynamicLayer

        layers = getattr(cache, "layers", None)
        if not layers or any(type(layer) is not DynamicLayer for layer in layers):
            return
        self.put(tuple(ids), Entry(tuple((layer.keys, layer.values) for layer in layers), logits))


def step_together(lm, store: KVStore, prompts: list[list[int]]) -> int:
    """The prompts that are a kept sequence plus one token go through the model in one forward pass, as
    the rows of a decode step do (engine/batch.py: left-padded, per-row positions, ragged attention), and
    are kept: their jobs' prefills then find them whole. So a client that steps n rows in one request
    costs one forward pass of n rows a step, and gets the logits of local decoding's n-row batch, in
    float32 too (a row computed alone rounds differently from a row among others there; see
    engine/whatif.py). Returns how many rows went; fewer than two go their own way (a Prefill makes the
    same one-row pass). Tensor work: call it on the decode loop's thread."""
    from transformers.cache_utils import DynamicCache

    from engine import attention
    from engine.batch import cache_of, forward

    rows, seen = [], set()
    for ids in prompts:
        if tuple(ids) in seen:
            continue
        seen.add(tuple(ids))
        done, cache, logits = store.resume(ids)
        if cache is not None and logits is None and done == len(ids) - 1:
            rows.append((ids, cache))
    if len(rows) < 2:
        return 0
    lengths = [len(ids) - 1 for ids, _ in rows]  # tokens in each row's cache
    W = max(lengths)
    padded = [  # per layer: every row's keys and values, left-padded to W and stacked: (B, H, W, D)
        tuple(torch.cat([F.pad(getattr(c.layers[layer], part), (0, 0, W - n, 0)) for (_, c), n in zip(rows, lengths)])
              for part in ("keys", "values"))
        for layer in range(len(rows[0][1].layers))
    ]
    mask = torch.tensor([[k >= W - n for k in range(W + 1)] for n in lengths], device=lm.device)  # (B, W + 1)
    ragged = attention.groups([n + 1 for n in lengths])
    padding = {} if ragged is None else {"ragged_rows": ragged} if lm.ragged_attention else {"attention_mask": mask}
    tokens = torch.tensor([[ids[-1]] for ids, _ in rows], device=lm.device)  # (B, 1)
    positions = torch.tensor([[n] for n in lengths], device=lm.device)  # (B, 1)
    with torch.inference_mode():
        out = forward(lm.model, tokens, DynamicCache(ddp_cache_data=padded), position_ids=positions, **padding)
    cache, logits = cache_of(out), out.logits[:, -1, :].float()  # (B, V)
    for b, ((ids, _), n) in enumerate(zip(rows, lengths)):
        own = tuple((layer.keys[b : b + 1, :, W - n :].clone(), layer.values[b : b + 1, :, W - n :].clone())
                    for layer in cache.layers)  # its own columns, without the padding
        store.put(tuple(ids), Entry(own, logits[b : b + 1].clone()))
    return len(rows)
