"""The sampler: the stages of engine/stages.py run in one ordered, visible list, then one draw.

    stages = run_pipeline(logits, ctx, constrained)   # [("raw", logits), (stage, logits after it), ...]
    tokens, landing = draw(stages[-1][1], u, greedy)
    learn(stages, ctx, tokens)                         # stateful stages (mirostat) learn from the draw

The order is `ctx.order` (the sampler_order knob; the default and the engines' presets are in
engine/stages.py), after the constraint stage when a grammar or a thinking budget is active: always
first, so no later truncation can leave nothing allowed.

No row's result may depend on the rows beside it: every computation is row-wise, and where a fast path
exists (few survivors) it yields exactly what the slow path would, tie-breaks included. Ties in
probability are always broken toward the lower token id, the rule argmax uses.
"""

from __future__ import annotations

import torch

from engine.context import COMPACT, NEG_INF, RowKnobs, SamplerContext, canonical_head, row_sum, survivor_ids, survivors
from engine.stages import CONSTRAINT, STAGES, TINY_TEMPERATURE

__all__ = ["COMPACT", "HEAD", "NEG_INF", "TINY_TEMPERATURE", "RowKnobs", "SamplerContext", "STAGES", "run_pipeline",
           "draw", "learn", "canonical_head", "survivors"]

# With more survivors than COMPACT the draw first walks the HEAD most likely tokens and sorts the whole row
# only when the uniform falls past them.
HEAD = 256


def run_pipeline(
    logits: torch.Tensor, ctx: SamplerContext, constrained: bool = False
) -> list[tuple[str, torch.Tensor]]:
    """[("raw", logits), (stage, logits after it), ...] in ctx.order, after the constraint stage when
    `constrained` (the rows have a grammar or a thinking budget)."""
    out = [("raw", logits)]
    if constrained:
        out.append(("constraint", CONSTRAINT.apply(logits, ctx)))
    for name in ctx.order:
        out.append((name, STAGES[name].apply(out[-1][1], ctx)))
    return out


def learn(stages: list[tuple[str, torch.Tensor]], ctx: SamplerContext, tokens: torch.Tensor) -> None:
    """Stateful stages learn from the tokens drawn (mirostat moves its mu), each from its own output."""
    for name, out in stages:
        stage = STAGES.get(name)
        if stage is not None and stage.after_draw is not None and name in ctx.knobs.on:
            stage.after_draw(ctx, out, tokens)


def draw(final: torch.Tensor, u: torch.Tensor, greedy: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One token per row: argmax where `greedy`, else inverse-CDF sampling from softmax(final).

    final: (B, V) float32; u: (B,) float64 uniforms in [0, 1); greedy: (B,) bool. The definition, the
    same for every row whatever its neighbours: weights w = exp(logit - max) in float64; the token drawn
    is the first, in the order probability descending with ties to the lower id, whose cumulative weight
    exceeds u times the total weight (summed in token-id order), or the last token with any weight when
    rounding leaves u past them all. That order is the CDF the UI draws, so the uniform itself is where
    the draw landed on it. Returns tokens (B,) and the landing points (B,) float64, NaN for greedy rows.
    """
    B, V = final.shape
    tokens = final.argmax(dim=-1)
    landing = torch.full((B,), float("nan"), dtype=torch.float64)
    sampled = (~greedy).nonzero().squeeze(1).tolist()
    if not sampled:
        return tokens, landing
    x = final if len(sampled) == B else final[sampled]
    uu = u.to(torch.float64).cpu()[sampled].to(x.device)[:, None]  # (b, 1)
    # Each row takes the path its own survivor count picks, never its neighbours'.
    few = (survivors(x) <= COMPACT).tolist()
    chosen = torch.empty(len(sampled), dtype=torch.long, device=x.device)
    for rows, walk in ((_rows(few, True), _walk_survivors), (_rows(few, False), _walk_vocabulary)):
        if rows:
            idx = torch.tensor(rows, device=x.device)
            chosen[idx] = walk(x[idx], uu[idx])
    tokens = tokens.clone()
    tokens[sampled] = chosen.to(tokens.device)
    landing[sampled] = uu.squeeze(1).cpu().clamp(0.0, 1.0)
    return tokens, landing


def _rows(flags: list[bool], value: bool) -> list[int]:
    return [i for i, f in enumerate(flags) if f == value]


def _weights(x: torch.Tensor) -> torch.Tensor:
    """exp(logit - max) in float64: 0 for removed tokens."""
    return torch.exp(x.double() - x.amax(dim=-1, keepdim=True).double())


def _first_past(cdf: torch.Tensor, weights: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(b, 1) the first place whose cumulative weight exceeds target, or the last place with weight."""
    at = torch.searchsorted(cdf, target, right=True)
    return torch.minimum(at, (weights > 0).sum(dim=-1, keepdim=True) - 1)


def _walk_survivors(x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Rows with at most COMPACT survivors: only their survivors are weighed and sorted."""
    ids = survivor_ids(x)  # (b, m) ascending: every survivor, and zeros (removed tokens) after a short row's
    w = _weights(x).gather(1, ids)
    total = w.cumsum(dim=-1)[:, -1:]  # in token-id order, one after another: the same for any m
    w_sorted, j = w.sort(dim=-1, descending=True, stable=True)  # ties keep the id order
    at = _first_past(w_sorted.cumsum(dim=-1), w_sorted, u * total)
    return ids.gather(1, j.gather(1, at)).squeeze(1)


def _walk_vocabulary(x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Rows with many survivors: their HEAD heaviest tokens first; only a uniform that falls past them
    sorts the whole row."""
    w = _weights(x)  # (b, V)
    target = u * row_sum(w)[:, None]
    head, ids = canonical_head(w, x, min(HEAD, x.shape[-1]))
    at = torch.searchsorted(head.cumsum(dim=-1), target, right=True)
    # The head's tokens above its smallest weight are exactly the first tokens of the row's whole
    # canonical order (ties at the cut may have been split arbitrarily), so a landing among them is final.
    exact = at < (head > head[:, -1:]).sum(dim=-1, keepdim=True)
    chosen = ids.gather(1, at.clamp(max=head.shape[-1] - 1)).squeeze(1)
    for r in (~exact.squeeze(1)).nonzero().squeeze(1).tolist():
        row, order = w[r].sort(descending=True, stable=True)
        chosen[r] = order[_first_past(row.cumsum(0)[None], row[None], target[r : r + 1])[0, 0]]
    return chosen
