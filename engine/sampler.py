"""The sampler: pure stages on float32 logits, run in one ordered, visible list, then one draw.

Default order (engine/knobs.py STAGE_ORDER), the one Hugging Face and vLLM use:
  0. constraint          only when a grammar or a thinking budget is active: forbid what it forbids;
                         always first, so no later truncation can leave nothing allowed
  1. logit_bias          add the user's per-token bias (OpenAI logit_bias)
  2. repetition_penalty  CTRL (Keskar et al. 2019) over prompt and output tokens
  3. presence_frequency  OpenAI's penalties over generated tokens
  4. temperature         divide the logits; 0 keeps only the argmax (greedy)
  5. top_k               keep the k highest logits
  6. top_p               keep the smallest head of the sorted distribution holding top_p of the mass
  7. min_p               keep tokens with p >= min_p * p_max (Nguyen et al. 2024)
  8. draw                inverse-CDF sample from softmax(final logits), or argmax when greedy

Edits to the logits come before temperature so that temperature shapes what the truncations then see;
llama.cpp puts temperature last instead, which is why the order is a parameter.

Every stage is `(logits (B, V) float32, ctx) -> logits (B, V)`. A stage never writes into its input (the
"before" picture must stay true) and returns its input object unchanged when its knob is off, which
lets the recorder skip identical snapshots. Removed tokens get -inf.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from engine.knobs import SamplingParams

NEG_INF = float("-inf")


@dataclass(frozen=True)
class SamplerContext:
    params: SamplingParams
    seen: torch.Tensor  # (B, V) bool: the token occurs in the prompt or the output so far
    counts: torch.Tensor  # (B, V) float32: how often each token was generated so far
    bias: torch.Tensor | None  # (V,) float32 dense logit_bias, None when empty
    allowed: torch.Tensor | None = None  # (B, V) bool from the grammar / forced tokens; None: no mask


def constraint(logits: torch.Tensor, ctx: SamplerContext) -> torch.Tensor:
    if ctx.allowed is None:
        return logits
    return logits.masked_fill(~ctx.allowed, NEG_INF)


def logit_bias(logits: torch.Tensor, ctx: SamplerContext) -> torch.Tensor:
    if ctx.bias is None:
        return logits
    return logits + ctx.bias


def repetition_penalty(logits: torch.Tensor, ctx: SamplerContext) -> torch.Tensor:
    # CTRL: a seen token's logit is divided by theta when positive and multiplied when negative,
    # so theta > 1 always makes it less likely.
    theta = ctx.params.repetition_penalty
    if theta == 1.0:
        return logits
    penalized = torch.where(logits > 0, logits / theta, logits * theta)
    return torch.where(ctx.seen, penalized, logits)


def presence_frequency(logits: torch.Tensor, ctx: SamplerContext) -> torch.Tensor:
    # OpenAI: mu[j] -= c[j] * alpha_frequency + float(c[j] > 0) * alpha_presence, c over generated tokens.
    p, f = ctx.params.presence_penalty, ctx.params.frequency_penalty
    if p == 0.0 and f == 0.0:
        return logits
    return logits - f * ctx.counts - p * (ctx.counts > 0).float()


def temperature(logits: torch.Tensor, ctx: SamplerContext) -> torch.Tensor:
    t = ctx.params.temperature
    if t == 1.0:
        return logits
    if t == 0.0:
        # Greedy by an explicit argmax, never a division by a tiny number.
        best = logits.argmax(dim=-1, keepdim=True)  # (B, 1)
        return torch.full_like(logits, NEG_INF).scatter(1, best, logits.gather(1, best))
    # Below ~1e-37 a float32 division overflows to inf and softmax turns to nan; by 1e-4 every logit gap
    # that matters (bias included, |gap| <= ~300) is already stretched past float32's softmax range,
    # so the floor changes no distribution.
    return logits / max(t, 1e-4)


def top_k(logits: torch.Tensor, ctx: SamplerContext) -> torch.Tensor:
    k = ctx.params.top_k
    if k == 0 or k >= logits.shape[-1]:
        return logits
    # Exactly k survive: ties with the k-th logit go to the lower token ids, the same rule argmax uses,
    # so top_k = 1 is greedy even where bf16 logits tie (Hugging Face keeps every tied token instead).
    kth = logits.topk(k, dim=-1).values[:, -1:]  # (B, 1)
    keep = logits >= kth
    if int(keep.sum(dim=-1).max()) > k:  # a tie at the k-th place: the lower ids win, as in argmax
        above = logits > kth
        tied = logits == kth
        room = k - above.sum(dim=-1, keepdim=True)
        keep = above | (tied & (tied.cumsum(dim=-1) <= room))
    return logits.masked_fill(~keep, NEG_INF)


def top_p(logits: torch.Tensor, ctx: SamplerContext) -> torch.Tensor:
    p = ctx.params.top_p
    if p >= 1.0:
        return logits
    probs = torch.softmax(logits, dim=-1)
    V = logits.shape[-1]
    alive = int(torch.isfinite(logits).sum(dim=-1).max())
    # After an earlier truncation only `alive` tokens can matter: a partial top-k is far cheaper than
    # sorting the whole vocabulary; the rest keep their -inf.
    if alive <= V // 8:
        sorted_probs, order = probs.topk(alive, dim=-1)
    else:
        sorted_probs, order = probs.sort(dim=-1, descending=True, stable=True)
    mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs
    # A token survives while the mass above it is still short of p: the top token always does.
    keep_sorted = mass_before < p
    keep_sorted[:, 0] = True  # even a top_p that underflows to 0 keeps the top token
    keep = torch.zeros_like(logits, dtype=torch.bool).scatter(1, order, keep_sorted)
    return logits.masked_fill(~keep, NEG_INF)


def min_p(logits: torch.Tensor, ctx: SamplerContext) -> torch.Tensor:
    m = ctx.params.min_p
    if m == 0.0:
        return logits
    probs = torch.softmax(logits, dim=-1)
    threshold = m * probs.max(dim=-1, keepdim=True).values
    return logits.masked_fill(probs < threshold, NEG_INF)


STAGES: dict[str, Callable[[torch.Tensor, SamplerContext], torch.Tensor]] = {
    "logit_bias": logit_bias,
    "repetition_penalty": repetition_penalty,
    "presence_frequency": presence_frequency,
    "temperature": temperature,
    "top_k": top_k,
    "top_p": top_p,
    "min_p": min_p,
}


def run_pipeline(
    logits: torch.Tensor, ctx: SamplerContext, constrained: bool = False
) -> list[tuple[str, torch.Tensor]]:
    """[("raw", logits), (stage, logits after it), ...] in ctx.params.sampler_order, after the
    constraint stage when `constrained` (the generation has a grammar or a thinking budget)."""
    out = [("raw", logits)]
    if constrained:
        out.append(("constraint", constraint(logits, ctx)))
    for name in ctx.params.sampler_order:
        out.append((name, STAGES[name](out[-1][1], ctx)))
    return out


def draw(final: torch.Tensor, u: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Sample one token per row from softmax(final) by inverse CDF; argmax when u is None (greedy).

    final: (B, V) float32; u: (B,) uniforms in [0, 1). Returns tokens (B,) and where each draw
    landed on the CDF of the final distribution sorted by probability (B,), for the UI's picture.
    """
    if u is None:
        return final.argmax(dim=-1), None
    probs = torch.softmax(final, dim=-1)  # (B, V)
    u = u.to(probs.device, probs.dtype)[:, None]  # (B, 1)
    V = probs.shape[-1]
    alive = int(torch.isfinite(final).sum(dim=-1).max())
    if alive <= V // 8:
        # Few survivors (a truncation ran): walk their CDF sorted by probability, so the uniform
        # itself is where the draw landed.
        sorted_p, ids = probs.topk(alive, dim=-1)  # (B, m), descending
        cdf = sorted_p.cumsum(dim=-1)
        target = u * cdf[:, -1:]
        at = torch.searchsorted(cdf, target, right=True)
        # Rounding can push the target past the last positive entry: stay on it.
        at = torch.minimum(at, (sorted_p > 0).sum(dim=-1, keepdim=True) - 1)
        return ids.gather(1, at).squeeze(1), u.squeeze(1).clamp(0.0, 1.0)
    # Most of the vocabulary survives: walk the CDF in vocabulary order, which needs no sort.
    cdf = probs.cumsum(dim=-1)  # (B, V)
    total = cdf[:, -1:]
    target = u * total  # (B, 1)
    tokens = torch.searchsorted(cdf, target, right=True).squeeze(1).clamp(max=V - 1)
    p_tok = probs.gather(1, tokens[:, None])  # (B, 1)
    if bool((p_tok == 0).any()):  # rounding pushed the target past the last positive entry
        last_positive = V - 1 - (probs > 0).flip(-1).int().argmax(dim=-1)
        tokens = torch.where(p_tok.squeeze(1) > 0, tokens, last_positive)
        p_tok = probs.gather(1, tokens[:, None])
    # The same draw seen on the probability-sorted CDF: the mass of all tokens ranked above the chosen
    # one, plus how far into the chosen token's own band the uniform fell.
    ids = torch.arange(V, device=probs.device)
    above = (probs > p_tok) | ((probs == p_tok) & (ids < tokens[:, None]))
    mass_above = (probs * above).sum(dim=-1)
    into_band = (target.squeeze(1) - (cdf.gather(1, tokens[:, None]).squeeze(1) - p_tok.squeeze(1))).clamp(min=0)
    into_band = torch.minimum(into_band, p_tok.squeeze(1))
    landing = ((mass_above + into_band) / total.squeeze(1)).clamp(0.0, 1.0)
    return tokens, landing
