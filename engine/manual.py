"""Manual sampling: one step's whole vocabulary as a table, and the step made with a token the learner picked.

    made = manual_step(lm, snap, params, prompt_ids, earlier, coords, memory, constrained)            # the draw
    made = manual_step(lm, snap, params, prompt_ids, earlier, coords, memory, constrained, token=42)  # a pick
    made.step, made.stages, made.vocabulary

The step comes from its Snapshot (engine/whatif.py: the raw logits and a grammar's mask), through the same
pipeline and record as the decode loop, so a hand-picked step is a Step like any other: its logprob is the
picked token's under the final distribution (-inf where a stage removed it), its rank the raw one. Without
a token, the draw uses the seed contract's random number for `coords` and gives the step the decode loop
would have made (engine/rng.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from engine.context import NEG_INF
from engine.rng import uniform
from engine.sampler import draw, learn
from engine.stages import FLOAT64_MAX
from engine.trace import Step, record
from engine.whatif import Snapshot, pipeline


@dataclass(frozen=True)
class Vocabulary:
    """Every token of one step, indexed by token id: plain numpy arrays (V,), so a table can be searched,
    sorted and paged without tensor work."""

    rank: np.ndarray  # int32, 1 = the raw distribution's most likely token (ties: the lower id first)
    raw_p: np.ndarray  # float32, the model's probability
    final_p: np.ndarray  # float32, the probability the draw uses (0 where a stage removed the token)
    removed_by: np.ndarray  # int16, index into `stages` of the stage that removed the token; -1: none did
    stages: tuple[str, ...]  # ("raw", ..., the last stage)

    def __len__(self) -> int:
        return len(self.rank)


@dataclass
class Made:
    step: Step
    stages: tuple[str, ...]  # the stage list of step.to_dict
    vocabulary: Vocabulary


def vocabulary(stages: list[tuple[str, torch.Tensor]]) -> Vocabulary:
    """The table of one row: stages is [("raw", logits (1, V)), (stage, logits after it), ...]. A stage
    removed a token when its input kept it (finite) and its output does not (-inf)."""
    raw = stages[0][1][0].float()  # (V,)
    V = raw.shape[-1]
    order = raw.sort(descending=True, stable=True).indices  # stable: equal logits keep the lower id first
    rank = torch.empty(V, dtype=torch.int32)
    rank[order.cpu()] = torch.arange(1, V + 1, dtype=torch.int32)
    removed_by = torch.full((V,), -1, dtype=torch.int16)
    for s in range(1, len(stages)):
        before, after = stages[s - 1][1][0], stages[s][1][0]
        if after is before:  # an off stage returns its input
            continue
        removed_by[((before > NEG_INF) & (after == NEG_INF)).cpu()] = s
    raw_p = torch.softmax(raw, dim=-1)
    final_p = torch.softmax(stages[-1][1][0].float(), dim=-1)
    return Vocabulary(rank.numpy(), raw_p.cpu().numpy(), final_p.cpu().numpy(), removed_by.numpy(),
                      tuple(name for name, _ in stages))


def manual_step(lm, snap: Snapshot, params, prompt_ids: list[int], earlier: list[int], coords: tuple[int, int, int],
                memory: dict[str, float] | None = None, constrained: bool = False, token: int | None = None) -> Made:
    """The step at `coords` (seed, completion index, position) made from its snapshot under `params`: drawn
    with the seed contract's random number, or with `token` when the learner picked one (no draw: the step's
    `draw` is None). Does not check the grammar: the caller refuses what the mask forbids. Tensor work:
    call it on the model's decode thread (Scheduler.call)."""
    stages, ctx = pipeline(lm, snap, params, prompt_ids, earlier, coords, memory, constrained)
    final = stages[-1][1]  # (1, V)
    if token is None:
        u = torch.tensor([uniform(*coords)], dtype=torch.float64)
        chosen, landing = draw(final, u, ctx.knobs.greedy)
    else:
        chosen = torch.tensor([token], device=final.device)
        landing = torch.tensor([math.nan], dtype=torch.float64)
    learn(stages, ctx, chosen)
    rec = record(stages, chosen, landing, [params.record_k])[0]
    notes = {name: v for name, values in ctx.notes.items() if (v := float(values[0])) == v}
    picked = int(chosen[0])
    step = Step(index=coords[1], position=coords[2], text=lm.token_text(picked), delta="", notes=notes, **rec)
    return Made(step, tuple(name for name, _ in stages), vocabulary(stages))


def memory_after(notes: dict[str, float], params) -> dict[str, float]:
    """What the stateful stages know at the next step, from a step's notes: mirostat's mu moves by
    -eta * (surprise of the token taken - tau), as engine/stages.py's _mirostat_learn does."""
    mu, surprise = notes.get("mirostat_mu"), notes.get("mirostat_surprise")
    if mu is None or surprise is None or params.mirostat != 2:
        return {}
    moved = mu - params.mirostat_eta * (surprise - params.mirostat_tau)
    return {"mirostat_mu": min(max(moved, -FLOAT64_MAX), FLOAT64_MAX)}
