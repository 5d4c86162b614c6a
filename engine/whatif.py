"""Live what-if: a recorded step sampled again under other settings, from its exact raw logits.

    gen = Generation(..., prefix_ids=earlier, replay_prefix=True, capture=True)   # fills gen.snapshots
    result = resample(lm, gen.snapshots[position], params, prompt_ids, earlier, coords)
    result.step, result.ledger

A Snapshot is what a step's sampler saw that no record keeps: the model's raw logits over the whole
vocabulary (and a grammar's mask). Everything else a stage reads (which tokens the prompt and output
hold, how often, the history DRY scans, mirostat's mu) follows from the run's own tokens, so the same
snapshot answers any settings: the pipeline and the draw run exactly as in the decode loop, with the
same random number (seed, completion, position). With the run's own settings the result is the
recorded step. Replays feed the earlier tokens one step at a time, as the run did, because a single
forward pass over them gives other bf16 logits (see engine/generator.py, replay_prefix).

A replay runs its one row, where the run may have drawn the step among other rows (its n, other
requests). In bf16 that changes nothing: a lone row computes its linear layers as a row among others
(engine/lone_row.py), and attention is per row. In float32, MKL's matrix products and PyTorch's attention
round a row by the batch's row count: measured at n = 2 on this CPU, a replayed step's logits move by up
to 5e-5. So in float32 a replay is bit for bit the run's only where the forward passes had the same rows
(a run decoded alone in one row), and a UI run keeps completion 1's logits as it draws them (capture).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

import torch

from engine.context import SamplerContext
from engine.dry import dry_breakers, uses_dry
from engine.lru import ByteLRU
from engine.rng import uniform
from engine.sampler import draw, learn, run_pipeline
from engine.trace import Step, record

# The stages that push down tokens for having occurred: what the penalty ledger itemises.
PENALTIES = ("repetition_penalty", "presence_frequency", "dry")


@dataclass(frozen=True)
class Snapshot:
    logits: torch.Tensor  # (V,) float32 on the CPU: the step's raw logits
    allowed: torch.Tensor | None  # (V,) bool: the grammar's or thinking budget's mask; None without one

    @property
    def nbytes(self) -> int:
        mask = 0 if self.allowed is None else self.allowed.numel()
        return self.logits.numel() * self.logits.element_size() + mask


@dataclass
class Resampled:
    step: Step  # the step as the decode loop would have recorded it under these settings
    stages: tuple[str, ...]  # the stage list of step.to_dict
    ledger: list[dict[str, Any]]  # what each penalty took from each token (see `ledger`)


def snapshot_key(model: str, prompt_ids: list[int], earlier: list[int], extras: dict[str, Any] | None) -> str:
    """The snapshot's identity: what determines the logits and the mask at a step (the model, the prompt,
    the completion's tokens before the step, and the request extras that pick a grammar)."""
    text = json.dumps([model, list(prompt_ids), list(earlier), extras or {}], sort_keys=True, default=str)
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


class Snapshots(ByteLRU[str, Snapshot]):
    """The snapshot cache (one is 4 bytes per vocabulary entry: 196 KB for SmolLM2), shared by every
    session: a step's logits are the same whoever selects it."""

    def __init__(self, max_bytes: int = 256 * 2**20):
        super().__init__(max_bytes)


def resample(
    lm,
    snap: Snapshot,
    params,
    prompt_ids: list[int],
    earlier: list[int],
    coords: tuple[int, int, int],
    memory: dict[str, float] | None = None,
    constrained: bool = False,
) -> Resampled:
    """Sample the step again: `params` (SamplingParams), the completion's `earlier` tokens, its random
    number's `coords` (seed, completion index, position) and the stateful stages' `memory` at the step.
    `constrained`: the run had a grammar or a thinking budget (its mask is in the snapshot). Tensor work:
    call it on the model's decode thread (Scheduler.call)."""
    stages, ctx = pipeline(lm, snap, params, prompt_ids, earlier, coords, memory, constrained)
    u = torch.tensor([uniform(*coords)], dtype=torch.float64)
    chosen, landing = draw(stages[-1][1], u, ctx.knobs.greedy)
    learn(stages, ctx, chosen)
    rec = record(stages, chosen, landing, [params.record_k])[0]
    notes = {name: v for name, values in ctx.notes.items() if (v := float(values[0])) == v}
    token = int(chosen[0])
    step = Step(index=coords[1], position=coords[2], text=lm.token_text(token), delta="", notes=notes, **rec)
    return Resampled(step, tuple(name for name, _ in stages), ledger(stages, prompt_ids, earlier))


def pipeline(
    lm,
    snap: Snapshot,
    params,
    prompt_ids: list[int],
    earlier: list[int],
    coords: tuple[int, int, int],
    memory: dict[str, float] | None = None,
    constrained: bool = False,
) -> tuple[list[tuple[str, torch.Tensor]], SamplerContext]:
    """The step's sampler pipeline under `params`, as `resample` runs it, without the draw: [("raw",
    logits (1, V)), (stage, logits after it), ...] and its context. Tensor work (Scheduler.call)."""
    V, dev = snap.logits.shape[-1], lm.device
    history = list(prompt_ids) + list(earlier)
    seen = torch.zeros(1, V, dtype=torch.bool, device=dev)
    seen[0, [t for t in history if t < V]] = True
    counts = torch.zeros(1, V, dtype=torch.float32, device=dev)
    for t in earlier:
        counts[0, t] += 1
    bias = None
    if params.logit_bias:
        bias = torch.zeros(V, dtype=torch.float32, device=dev)
        ids, values = zip(*params.logit_bias)
        bias[list(ids)] = torch.tensor(values, dtype=torch.float32, device=dev)
    allowed = snap.allowed[None].to(dev) if constrained and snap.allowed is not None else None
    ctx = SamplerContext.of(
        params, seen, counts, bias, allowed,
        history=[history if uses_dry(params) else None],
        breakers=[dry_breakers(lm.tokenizer, params.dry_sequence_breakers) if uses_dry(params) else frozenset()],
        memory=[dict(memory or {})], coords=[tuple(coords)],
    )
    return run_pipeline(snap.logits.to(dev)[None], ctx, constrained), ctx


def ledger(stages: list[tuple[str, torch.Tensor]], prompt_ids: list[int], earlier: list[int],
           limit: int = 40) -> list[dict[str, Any]]:
    """The tokens the penalty stages touched at a step (one row of `stages`' logits), most penalised
    first: {"id", "in_prompt", "in_output" (occurrences before the step), "loss": {stage: logit lost}
    (negative: the stage raised it), "total"}. A penalty that moved no logit adds nothing."""
    losses: dict[int, dict[str, float]] = {}
    for (_, before), (name, after) in zip(stages, stages[1:]):
        if name not in PENALTIES or after is before:
            continue
        b, a = before[0].double(), after[0].double()
        moved = (b != a) & torch.isfinite(b)
        ids = moved.nonzero().squeeze(1).tolist()
        for t, lost in zip(ids, (b - a)[moved].tolist()):
            losses.setdefault(t, {})[name] = lost
    prompt_counts = _counts(prompt_ids)
    output_counts = _counts(earlier)
    rows = [{"id": t, "in_prompt": prompt_counts.get(t, 0), "in_output": output_counts.get(t, 0), "loss": by_stage,
             "total": sum(by_stage.values())} for t, by_stage in losses.items()]
    rows.sort(key=lambda r: (-abs(r["total"]), r["id"]))
    return rows[:limit]


def _counts(ids: list[int]) -> dict[int, int]:
    out: dict[int, int] = {}
    for t in ids:
        out[t] = out.get(t, 0) + 1
    return out
