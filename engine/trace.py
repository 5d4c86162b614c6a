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
    # All distinct stages at once: a handful of big ops instead of a handful per stage.
    x = torch.stack(distinct)  # (D, B, V)
    lp = torch.log_softmax(x, dim=-1)  # (D, B, V)
    p = lp.exp()
    alive = torch.isfinite(x)
    # -sum p ln p; clamping ln 0 = -inf to a finite number makes 0 ln 0 = 0 without a nan.
    entropy = -(p * lp.clamp(min=-1e30)).sum(dim=-1)  # (D, B)
    kept = alive.sum(dim=-1)  # (D, B)
    removed = torch.zeros_like(entropy)
    removed[1:] = p[:-1].masked_fill(alive[1:], 0.0).sum(dim=-1)  # previous stage's mass now gone
    top = x.topk(k, dim=-1)  # (D, B, k)
    # Tokens a stage removed are not its candidates: stand the chosen token in for them.
    tops = torch.where(torch.isfinite(top.values), top.indices, tokens[None, :, None])

    raw_lp, final_lp = lp[0], lp[-1]  # (B, V)
    top_raw = raw_lp.topk(k, dim=-1)  # (B, k)
    chosen = tokens[:, None]
    chosen_raw = raw_lp.gather(1, chosen).squeeze(1)
    chosen_final = final_lp.gather(1, chosen).squeeze(1)
    rank = (raw_lp > chosen_raw[:, None]).sum(dim=-1) + 1
    cands = torch.cat([tops.permute(1, 0, 2).reshape(B, -1), chosen], dim=1)  # (B, D*k + 1)
    top_final = final_lp.gather(1, top_raw.indices)

    # One move to the CPU for everything the rows need.
    ent, kep, rem = entropy.T.cpu().numpy(), kept.T.cpu().numpy().astype(np.int32), removed.T.cpu().numpy()
    # A stage that was off removed nothing, even though it shares its predecessor's snapshot.
    changed = np.array([s > 0 and which[s] != which[s - 1] for s in range(len(stages))])
    scalars = torch.stack([chosen_raw, chosen_final, rank.float()], 1).cpu().tolist()
    top_ids = top_raw.indices.cpu().numpy().astype(np.int32)
    top_raw_v = top_raw.values.cpu().numpy().astype(np.float32)
    top_final_v = top_final.cpu().numpy().astype(np.float32)
    draws = None if landing is None else landing.cpu().tolist()
    token_list = tokens.cpu().tolist()

    rows = []
    for b in range(B):
        ids = torch.unique(cands[b])
        # Order candidates by final probability, then by raw logit, so charts read left to right.
        ids = ids[torch.argsort(raw_lp[b, ids], descending=True, stable=True)]
        ids = ids[torch.argsort(final_lp[b, ids], descending=True, stable=True)]
        probs = p[:, b, ids].cpu().numpy().astype(np.float32)  # (D, K)
        raw, final, rk = scalars[b]
        rows.append(
            {
                "token_id": token_list[b],
                "logprob": final,
                "raw_logprob": raw,
                "rank": int(rk),
                "top_ids": top_ids[b],
                "top_raw_logprobs": top_raw_v[b],
                "top_logprobs": top_final_v[b],
                "cand_ids": ids.cpu().numpy().astype(np.int32),
                "stage_probs": probs[which],
                "stage_entropy": ent[b][which].astype(np.float32),
                "stage_kept": kep[b][which],
                "stage_removed": np.where(changed, rem[b][which], 0.0).astype(np.float32),
                "draw": None if draws is None else draws[b],
            }
        )
    return rows
