"""What a sampler stage sees: the rows' knobs as tensors, their history, and row-wise helpers.

Every helper here works row by row, so that no row's result depends on the rows beside it: sums that
must be exact use a sequential cumulative sum (torch.sum splits a lone row across threads, so its
rounding changes with the batch); softmax and cumsum are row-wise kernels.

Logits are float32 and either finite or -inf (removed). A stage whose exact result leaves float32's range
saturates at ±FLOAT32_MAX (`saturate`), so no knob value in its documented range can put NaN or +inf in
front of the draw, and a stage that removes nothing never turns a finite logit into -inf.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

NEG_INF = float("-inf")
FLOAT32_MAX = float(torch.finfo(torch.float32).max)
# Below this many survivors a stage or the draw works on the survivors only, never on the vocabulary.
COMPACT = 4096


class RowKnobs:
    """The knobs of B rows: a (B, 1) tensor per knob on demand, which rows are greedy, and which stages
    any row uses (host-side flags: a stage no row uses is skipped)."""

    def __init__(self, params: Sequence[Any], vocab_size: int, device: torch.device | str = "cpu"):
        # The registry says when a row uses a stage; imported here because the stages import this module.
        from engine.stages import STAGES

        self.params = list(params)
        self.vocab_size = vocab_size
        self.device = device
        self.greedy = torch.tensor([p.greedy for p in self.params], device=device)  # (B,)
        self.on = frozenset(name for name, stage in STAGES.items() if any(stage.on(p, vocab_size) for p in self.params))
        self._cols: dict[tuple[str, torch.dtype], torch.Tensor] = {}

    @classmethod
    def of(cls, params: Sequence[Any], vocab_size: int, device: torch.device | str = "cpu") -> "RowKnobs":
        return cls(params, vocab_size, device)

    def col(self, name: str, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """(B, 1): knob `name` of every row, saturated to the dtype's range: a knob may hold any Python
        number its range allows (top_k = 10**20, mirostat_tau = 1e308), and a row must read the same
        beside others as alone."""
        key = (name, dtype)
        if key not in self._cols:
            info = torch.finfo(dtype) if dtype.is_floating_point else torch.iinfo(dtype)
            values = [min(max(getattr(p, name), info.min), info.max) for p in self.params]
            self._cols[key] = torch.tensor(values, dtype=dtype, device=self.device)[:, None]
        return self._cols[key]

    def values(self, name: str) -> list[Any]:
        return [getattr(p, name) for p in self.params]


@dataclass
class SamplerContext:
    knobs: RowKnobs
    order: tuple[str, ...]  # the stage order these rows share
    seen: torch.Tensor  # (B, V) bool: the token occurs in the prompt or the output so far
    counts: torch.Tensor  # (B, V) float32: how often each token was generated so far
    bias: torch.Tensor | None  # (B, V) or (V,) float32 dense logit_bias, None when no row has one
    allowed: torch.Tensor | None = None  # (B, V) bool from the grammar / forced tokens; None: no mask
    history: list[list[int] | None] | None = None  # per row: prompt and output token ids so far (DRY)
    breakers: list[frozenset[int]] | None = None  # per row: DRY's sequence-breaker token ids
    memory: list[dict] | None = None  # per row: what stateful stages keep between steps (mirostat's mu)
    coords: list[tuple[int, int, int]] | None = None  # per row: (seed, completion index, position)
    notes: dict[str, torch.Tensor] = field(default_factory=dict)  # per-row (B,) values a stage reports

    @classmethod
    def of(cls, params: Any, seen: torch.Tensor, counts: torch.Tensor, bias: torch.Tensor | None = None,
           allowed: torch.Tensor | None = None, **rows: Any) -> "SamplerContext":
        """Rows with these params (one SamplingParams for every row, or one per row)."""
        B, V = seen.shape
        per_row = list(params) if isinstance(params, (list, tuple)) else [params] * B
        orders = {p.sampler_order for p in per_row}
        if len(orders) != 1:
            raise ValueError("the rows of one pipeline run share one sampler_order")
        # Without coordinates, row b is completion b at position 0 of seed 0; each row its own memory.
        rows.setdefault("coords", [(0, b, 0) for b in range(B)])
        rows.setdefault("memory", [{} for _ in range(B)])
        return cls(RowKnobs(per_row, V, seen.device), orders.pop(), seen, counts, bias, allowed, **rows)

    def note(self, name: str, values: torch.Tensor) -> None:
        """Report a per-row number (B,) for the step's record, e.g. the temperature a row actually used."""
        self.notes[name] = values.detach().reshape(-1).to(torch.float64).cpu()


def saturate(values: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """`values` (B, V), computed from `logits` (B, V) in any float dtype, as float32 logits: finite or
    overflowed results clamped to ±FLOAT32_MAX, tokens removed in `logits` (-inf) still removed."""
    return torch.where(logits > NEG_INF, values.clamp(-FLOAT32_MAX, FLOAT32_MAX), NEG_INF).float()


def survivors(logits: torch.Tensor) -> torch.Tensor:
    """(B,) how many tokens each row still allows. A logit is finite or -inf (removed), so one comparison
    does, and it is several times cheaper than isfinite."""
    return (logits > NEG_INF).sum(dim=-1)


def most_survivors(logits: torch.Tensor) -> int:
    return int(survivors(logits).max())


def survivor_ids(logits: torch.Tensor) -> torch.Tensor:
    """(B, m) token ids in ascending order that include every survivor of every row (and, in rows with
    fewer, some removed tokens): the survivors when few, else the whole vocabulary."""
    B, V = logits.shape
    m = most_survivors(logits)
    if m > V // 8:
        return torch.arange(V, device=logits.device).expand(B, V)
    return logits.topk(m, dim=-1).indices.sort(dim=-1).values


def row_sum(x: torch.Tensor) -> torch.Tensor:
    """(B,) exact row sums in float64, the same for a row alone or in any batch (a sequential cumulative
    sum; see the module docstring)."""
    return x.double().cumsum(dim=-1)[:, -1]


def canonical_head(values: torch.Tensor, logits: torch.Tensor, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The m most likely tokens of each row in the canonical order: `values` (probabilities, an increasing
    function of `logits`) descending, ties to the lower id. Returns (values (B, m), ids (B, m)).

    When m covers every finite logit of a row, the row's head is all of its survivors; otherwise ties at
    the m-th place may be cut arbitrarily, which callers account for."""
    V = values.shape[-1]
    if m > V // 8:
        sorted_values, ids = values.sort(dim=-1, descending=True, stable=True)
        return sorted_values[:, :m], ids[:, :m]
    ids = logits.topk(m, dim=-1).indices.sort(dim=-1).values  # by id, then stably by value
    sorted_values, j = values.gather(1, ids).sort(dim=-1, descending=True, stable=True)
    return sorted_values, ids.gather(1, j)
