"""The compact record of one sampling step, and how it is computed from the pipeline's outputs.

A step keeps, for each stage, the probabilities of a small candidate set only (the union of every
stage's top-k plus the chosen token), so memory grows with steps x stages x k, never with the
vocabulary. Arrays are numpy on the CPU: small, deep-copyable, JSON-able.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from engine.context import COMPACT, NEG_INF
from engine.stages import ALL


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
    notes: dict[str, float] = field(default_factory=dict)  # what stages report: mirostat's mu, a dynamic temperature
    # From a server that gave only its top K (engine/remote.py): the stages whose result at this step depends
    # on the unknown rest of the vocabulary, and whether the draw landed in that rest and was drawn again
    # within the known tokens. Always empty / False for a local model.
    approximate: tuple[str, ...] = ()
    rest_redrawn: bool = False

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
                    **({"exact": False} if name in self.approximate else {}),
                }
                for s, name in enumerate(stages)
            ],
            "draw": None if self.draw is None else round(self.draw, 6),
            "finish_reason": self.finish_reason,
            "notes": {k: round(v, 6) for k, v in self.notes.items()},
            **({"rest_redrawn": True} if self.rest_redrawn else {}),
        }


def _f(x: float) -> float | None:
    # JSON has no -inf: a token the sampler removed has probability 0 and no finite logprob.
    return None if not np.isfinite(x) else round(float(x), 6)


# Stages that may turn a finite logit into -inf. The others (bias, penalties) keep every token possible,
# so their survivor count is their input's and they remove no mass.
TRUNCATING = frozenset(name for name, stage in ALL.items() if stage.truncates)


class _Snap:
    """One stage's distribution, over the whole vocabulary or over a small support of token ids."""

    def __init__(self, x: torch.Tensor, support: torch.Tensor | None):
        self.x = x  # (B, V) logits, or (B, m) logits of `support` when compact
        self.support = support  # (B, m) token ids, or None
        # Log-probabilities are taken from logits shifted by the row's maximum: where logits saturate at
        # float32's limit, x - lse would lose the log of the number of tied tokens (MAX + log 3 rounds to
        # MAX), and lse - sum p x would be inf - inf.
        self.top_x = x.amax(dim=-1, keepdim=True)  # (B, 1)
        shifted = x - self.top_x
        self.lse = torch.logsumexp(shifted, dim=-1, keepdim=True)  # (B, 1), of the shifted logits
        self.p: torch.Tensor | None = torch.softmax(shifted, dim=-1)  # (B, V) or (B, m); 0 where removed
        # Entropy = -sum p log p; removed tokens (p = 0, log p = -inf) must add 0, not nan.
        self.entropy = torch.linalg.vecdot(self.p, (self.lse - shifted).clamp(max=1e30))  # (B,) nats
        self._lookup = None

    def _logp(self, x: torch.Tensor) -> torch.Tensor:
        return x - self.top_x - self.lse

    def logp_at(self, ids: torch.Tensor) -> torch.Tensor:
        """Log-probabilities (B, K) at token ids (B, K); -inf for ids outside a compact support."""
        if self.support is None:
            return self._logp(self.x.gather(1, ids))
        if self._lookup is None:
            self._lookup = self.support.sort(dim=-1)  # (B, m) ids ascending, and where each sits
        ordered, where = self._lookup
        # Binary search instead of comparing every id with every support entry: memory (B, K), not (B, K, m).
        at = torch.searchsorted(ordered, ids).clamp(max=ordered.shape[-1] - 1)
        found = ordered.gather(1, at) == ids
        vals = self._logp(self.x.gather(1, where.gather(1, at)))
        return vals.masked_fill(~found, float("-inf"))

    def top(self, k: int, fallback: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Ids (B, k) of the k most likely tokens, removed ones replaced by `fallback` (B, 1), and their
        logits (B, k), descending."""
        t = self.x.topk(min(k, self.x.shape[-1]), dim=-1)
        ids = t.indices if self.support is None else self.support.gather(1, t.indices)
        ids, values = torch.where(t.values > NEG_INF, ids, fallback), t.values
        short = k - ids.shape[-1]  # a compact support smaller than k: fill with removed entries
        if short > 0:
            ids = torch.cat([ids, fallback.expand(-1, short)], dim=1)
            values = F.pad(values, (0, short), value=float("-inf"))
        return ids, values


def record(
    stages: list[tuple[str, torch.Tensor]],
    tokens: torch.Tensor,
    landing: torch.Tensor,
    k: int | list[int],
) -> list[dict[str, Any]]:
    """Per row, the numeric fields of a Step (all but index/position/text/delta/finish_reason).

    stages: [(name, logits (B, V))] with stages[0] raw and stages[-1] final; tokens: (B,); landing: (B,)
    float64, NaN for a greedy row; k: how many top candidates per stage to keep, for all rows or per row.
    """
    B, V = stages[0][1].shape
    ks = [min(k, V)] * B if isinstance(k, int) else [min(x, V) for x in k]
    kmax = max(ks)
    chosen = tokens[:, None]  # (B, 1)
    # Stages that were off returned their input object: snapshot each distinct tensor once.
    snaps: list[_Snap] = []
    which: list[int] = []
    kept, removed = [], []  # per distinct snapshot, (B,) each
    names: list[str] = []  # the stage that made each distinct snapshot
    support = None
    for i, (name, t) in enumerate(stages):
        if i > 0 and t is stages[i - 1][1]:
            which.append(len(snaps) - 1)
            continue
        prev = snaps[-1] if snaps else None
        if name in TRUNCATING or prev is None:
            alive = (t if support is None else t.gather(1, support)) > NEG_INF
            n_alive = alive.sum(dim=-1)
            if support is None and int(n_alive.max()) <= COMPACT:
                support = t.topk(int(n_alive.max()), dim=-1).indices  # (B, m): the survivors
                alive = t.gather(1, support) > NEG_INF
            snap = _Snap(t if support is None else t.gather(1, support), support)
            if prev is None:
                lost = torch.zeros(B, device=t.device)
            elif prev.support is None and support is not None:
                # The previous mass that did not land on this stage's survivors was removed.
                lost = (1.0 - (prev.p.gather(1, support) * alive).sum(dim=-1)).clamp(min=0.0)
            else:
                lost = prev.p.masked_fill(alive, 0.0).sum(dim=-1)
        else:
            n_alive, lost = kept[-1], torch.zeros(B, device=t.device)
            snap = _Snap(t if support is None else t.gather(1, support), support)
        if prev is not None:
            prev.p = None  # only the next stage's removed mass needs it: keep one (B, V) at a time
        snaps.append(snap)
        names.append(name)
        kept.append(n_alive)
        removed.append(lost)
        which.append(len(snaps) - 1)

    # A positive temperature keeps the order of its input: its top-k is its predecessor's.
    tops = []
    for d, s in enumerate(snaps):
        same_order = d > 0 and names[d] == "temperature" and s.support is snaps[d - 1].support
        tops.append(tops[-1] if same_order else s.top(kmax, chosen))
    top_raw_ids, top_raw_x = tops[0]  # raw keeps every token, so these are the true top-k
    cands = torch.cat([ids for ids, _ in tops] + [chosen], dim=1)  # (B, D*kmax + 1)

    cand_lp = torch.stack([s.logp_at(cands) for s in snaps])  # (D, B, C)
    top_lp = [snaps[0].logp_at(top_raw_ids), snaps[-1].logp_at(top_raw_ids)]
    chosen_raw = cand_lp[0, :, -1]
    chosen_final = cand_lp[-1, :, -1]
    rank = _rank(stages[0][1], tokens, top_raw_ids, top_raw_x)

    # One move to the CPU for everything the rows need.
    cand_np = cands.cpu().numpy()
    cand_lp_np = cand_lp.cpu().numpy()
    ent = torch.stack([s.entropy for s in snaps], 1).cpu().numpy()  # (B, D)
    kep = torch.stack(kept, 1).cpu().numpy().astype(np.int32)
    rem = torch.stack(removed, 1).cpu().numpy()
    # A stage that was off removed nothing, even though it shares its predecessor's snapshot.
    changed = np.array([s > 0 and which[s] != which[s - 1] for s in range(len(stages))])
    scalars = torch.stack([chosen_raw, chosen_final, rank.float()], 1).cpu().tolist()
    top_ids = top_raw_ids.cpu().numpy().astype(np.int32)
    top_raw_v = top_lp[0].cpu().numpy().astype(np.float32)
    top_final_v = top_lp[-1].cpu().numpy().astype(np.float32)
    draws = landing.cpu().tolist()
    token_list = tokens.cpu().tolist()
    D = len(snaps)

    rows = []
    for b in range(B):
        kb = ks[b]
        # Row b keeps each stage's own top-kb (the first kb of its top-kmax) and the chosen token.
        cols = np.concatenate([np.arange(d * kmax, d * kmax + kb) for d in range(D)] + [np.array([D * kmax])])
        ids, first = np.unique(cand_np[b, cols], return_index=True)
        lp = cand_lp_np[:, b, cols[first]]  # (D, K)
        # Order candidates by final probability, then by raw logit, so charts read left to right.
        order = np.lexsort((-lp[0], -lp[-1]))
        ids, probs = ids[order], np.exp(lp[:, order])
        raw_lp, final_lp, rk = scalars[b]
        rows.append(
            {
                "token_id": token_list[b],
                "logprob": final_lp,
                "raw_logprob": raw_lp,
                "rank": int(rk),
                "top_ids": top_ids[b, :kb],
                "top_raw_logprobs": top_raw_v[b, :kb],
                "top_logprobs": top_final_v[b, :kb],
                "cand_ids": ids.astype(np.int32),
                "stage_probs": probs.astype(np.float32)[which],
                "stage_entropy": ent[b][which].astype(np.float32),
                "stage_kept": kep[b][which],
                "stage_removed": np.where(changed, rem[b][which], 0.0).astype(np.float32),
                "draw": None if draws[b] != draws[b] else draws[b],  # NaN: greedy, no draw
            }
        )
    return rows


def _rank(raw: torch.Tensor, tokens: torch.Tensor, top_ids: torch.Tensor, top_x: torch.Tensor) -> torch.Tensor:
    """(B,) 1-based place of each chosen token in the raw distribution: tokens more likely, plus equally
    likely tokens of lower id (the order argmax and top_k use)."""
    c = raw.gather(1, tokens[:, None])  # (B, 1)
    # Where the chosen logit is above the top-k's last value, every token that outranks it is in the
    # top-k (ties included): count there instead of over the vocabulary.
    inside = (c > top_x[:, -1:]).squeeze(1)
    before = (top_x > c) | ((top_x == c) & (top_ids < tokens[:, None]))
    rank = before.sum(dim=-1) + 1
    outside = (~inside).nonzero().squeeze(1)
    if outside.numel():
        x, cc, t = raw[outside], c[outside], tokens[outside, None]
        ids = torch.arange(raw.shape[-1], device=raw.device)
        rank[outside] = ((x > cc) | ((x == cc) & (ids < t))).sum(dim=-1) + 1
    return rank
