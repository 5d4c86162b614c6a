"""The compact record of one sampling step, and how it is computed from the pipeline's outputs.

A step keeps, for each stage, the probabilities of a small candidate set only (the union of every
stage's top-k plus the chosen token), so memory grows with steps x stages x k, never with the
vocabulary. Arrays are numpy on the CPU: small, deep-copyable, JSON-able.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch


@dataclass
class Step:
    """One generated token of one completion, and how the sampler got there."""

    index: int  # which of the n completions
    position: int  # 0-based token position in the completion
    token_id: int
    text: str  # text this token completed once decoded ('' while a multi-byte character is unfinished)
    delta: str  # text released to a stream at this step (held back while it could begin a stop sequence)
    logprob: float  # of the chosen token under the final distribution, the one it was drawn from
    raw_logprob: float  # of the chosen token under the model's raw distribution
    rank: int  # 1 = the raw distribution's most likely token
    top_ids: np.ndarray  # (k,) int32, the raw distribution's top-k
    top_raw_logprobs: np.ndarray  # (k,) float32
    top_logprobs: np.ndarray  # (k,) float32, the same tokens under the final distribution
    cand_ids: np.ndarray  # (K,) int32, union of every stage's top-k and the chosen token
    stage_probs: np.ndarray  # (S, K) float32, cand_ids' probabilities after each stage (row 0 = raw)
    stage_entropy: np.ndarray  # (S,) float32, nats
    stage_kept: np.ndarray  # (S,) int32, tokens still possible after the stage
    stage_removed: np.ndarray  # (S,) float32, previous stage's mass this stage set to zero
    draw: float | None  # where the uniform landed on the final CDF sorted by probability; None if greedy
    finish_reason: str | None = None  # stop | length | cancelled, on a completion's last step

    def to_dict(self, stages: tuple[str, ...]) -> dict[str, Any]:
        return {
            "index": self.index,
            "position": self.position,
            "token_id": self.token_id,
            "text": self.text,
            "logprob": _f(self.logprob),
            "raw_logprob": _f(self.raw_logprob),
            "rank": self.rank,
            "top": [
                {"id": int(i), "raw_logprob": _f(r), "logprob": _f(f)}
                for i, r, f in zip(self.top_ids, self.top_raw_logprobs, self.top_logprobs)
            ],
            "candidates": [int(i) for i in self.cand_ids],
            "stages": [
                {
                    "name": name,
                    "probs": [round(float(p), 6) for p in self.stage_probs[s]],
                    "entropy": round(float(self.stage_entropy[s]), 6),
                    "kept": int(self.stage_kept[s]),
                    "removed_mass": round(float(self.stage_removed[s]), 6),
                }
                for s, name in enumerate(stages)
            ],
            "draw": None if self.draw is None else round(self.draw, 6),
            "finish_reason": self.finish_reason,
        }


def _f(x: float) -> float | None:
    # JSON has no -inf: a token the sampler removed has probability 0 and no finite logprob.
    return None if not np.isfinite(x) else round(float(x), 6)


def record(
    stages: list[tuple[str, torch.Tensor]],
    tokens: torch.Tensor,
    landing: torch.Tensor | None,
    k: int,
) -> list[dict[str, Any]]:
    """Per row, the numeric fields of a Step (all but index/position/text/delta/finish_reason).

    stages: [(name, logits (B, V))] with stages[0] raw and stages[-1] final; tokens: (B,).
    """
    # Stages that were off returned their input object: snapshot each distinct tensor once.
    distinct: list[torch.Tensor] = []
    which: list[int] = []
    for _, t in stages:
        if not distinct or t is not distinct[-1]:
            distinct.append(t)
        which.append(len(distinct) - 1)

    B, V = stages[0][1].shape
    k = min(k, V)
    logps = [torch.log_softmax(t, dim=-1) for t in distinct]  # each (B, V)
    entropies, kept, removed, tops = [], [], [], []
    prev_alive = None
    for t, lp in zip(distinct, logps):
        p = lp.exp()
        entropies.append(-torch.where(p > 0, p * lp, torch.zeros_like(p)).sum(dim=-1))
        alive = p > 0
        kept.append(alive.sum(dim=-1))
        if prev_alive is None:
            removed.append(torch.zeros(B))
        else:
            prev_p = prev_lp.exp()
            removed.append((prev_p * (prev_alive & ~alive)).sum(dim=-1))
        prev_alive, prev_lp = alive, lp
        top = t.topk(k, dim=-1)  # (B, k)
        # Tokens this stage removed are not its candidates: stand the chosen token in for them.
        tops.append(torch.where(torch.isfinite(top.values), top.indices, tokens[:, None]))

    raw_lp, final_lp = logps[0], logps[-1]
    top_raw = raw_lp.topk(k, dim=-1)  # (B, k)
    chosen = tokens[:, None]
    chosen_raw = raw_lp.gather(1, chosen).squeeze(1)
    rank = (raw_lp > chosen_raw[:, None]).sum(dim=-1) + 1

    cands = torch.cat(tops + [chosen], dim=1)  # (B, D*k + 1)
    ent = torch.stack(entropies, 1).cpu().numpy()[:, which]  # (B, S)
    kep = torch.stack(kept, 1).cpu().numpy().astype(np.int32)[:, which]
    rem_distinct = torch.stack(removed, 1).cpu().numpy()
    # A stage that was off removed nothing, even though it shares its predecessor's snapshot.
    rem = np.zeros((B, len(stages)), dtype=np.float32)
    for s in range(1, len(stages)):
        if which[s] != which[s - 1]:
            rem[:, s] = rem_distinct[:, which[s]]

    rows = []
    for b in range(B):
        ids = torch.unique(cands[b])
        # Order candidates by final probability, then by raw logit, so charts read left to right.
        ids = ids[torch.argsort(raw_lp[b, ids], descending=True, stable=True)]
        ids = ids[torch.argsort(final_lp[b, ids], descending=True, stable=True)]
        probs = torch.stack([lp[b, ids].exp() for lp in logps])  # (D, K)
        rows.append(
            {
                "token_id": int(tokens[b]),
                "logprob": float(final_lp[b, tokens[b]]),
                "raw_logprob": float(chosen_raw[b]),
                "rank": int(rank[b]),
                "top_ids": top_raw.indices[b].cpu().numpy().astype(np.int32),
                "top_raw_logprobs": top_raw.values[b].cpu().numpy().astype(np.float32),
                "top_logprobs": final_lp[b, top_raw.indices[b]].cpu().numpy().astype(np.float32),
                "cand_ids": ids.cpu().numpy().astype(np.int32),
                "stage_probs": probs.cpu().numpy().astype(np.float32)[which],
                "stage_entropy": ent[b].astype(np.float32),
                "stage_kept": kep[b],
                "stage_removed": rem[b],
                "draw": None if landing is None else float(landing[b]),
            }
        )
    return rows
