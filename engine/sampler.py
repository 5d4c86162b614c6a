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

Every stage is `(logits (B, V) float32, ctx) -> logits (B, V)`, and every knob is per row (vLLM's
pattern): a row whose knob is off holds its neutral value, which leaves that row's logits bit for bit as
they were. A stage no row uses returns its input object itself, which lets the recorder skip identical
snapshots. A stage never writes into its input (the "before" picture must stay true). Removed tokens get
-inf.

No row's result may depend on the rows beside it: every computation here is row-wise, and where a fast
path exists (few survivors) it yields exactly what the slow path would, tie-breaks included. Ties in
probability are always broken toward the lower token id, the rule argmax uses.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from engine.knobs import SamplingParams

NEG_INF = float("-inf")
# Temperatures from here up divide float32 logits without overflow (|logit| stays far below 1e8).
TINY_TEMPERATURE = 1e-30
# Below this many survivors a stage or the draw works on the survivors only, never on the vocabulary.
COMPACT = 4096
# With more survivors the draw first walks the HEAD most likely tokens and sorts the whole row only when
# the uniform falls past them.
HEAD = 256


@dataclass(frozen=True)
class RowKnobs:
    """The knobs of B rows as (B, 1) tensors, and which stages any row uses (host-side flags)."""

    temperature: torch.Tensor  # float64; 0 = greedy, 1 = off
    greedy: torch.Tensor  # (B,) bool
    top_k: torch.Tensor  # int64; 0 = off
    top_p: torch.Tensor  # float64; 1 = off
    min_p: torch.Tensor  # float32; 0 = off
    presence: torch.Tensor  # float32; 0 = off
    frequency: torch.Tensor  # float32; 0 = off
    repetition: torch.Tensor  # float32; 1 = off
    on: frozenset[str]

    @classmethod
    def of(cls, params: Sequence[SamplingParams], vocab_size: int, device: torch.device | str = "cpu") -> "RowKnobs":
        def col(values, dtype):
            return torch.tensor(values, dtype=dtype, device=device)[:, None]

        on = {name for name, used in STAGE_ON.items() for p in params if used(p, vocab_size)}
        return cls(
            temperature=col([p.temperature for p in params], torch.float64),
            greedy=torch.tensor([p.greedy for p in params], device=device),
            top_k=col([p.top_k if 0 < p.top_k < vocab_size else 0 for p in params], torch.int64),
            top_p=col([p.top_p for p in params], torch.float64),
            min_p=col([p.min_p for p in params], torch.float32),
            presence=col([p.presence_penalty for p in params], torch.float32),
            frequency=col([p.frequency_penalty for p in params], torch.float32),
            repetition=col([p.repetition_penalty for p in params], torch.float32),
            on=frozenset(on),
        )


@dataclass(frozen=True)
class SamplerContext:
    knobs: RowKnobs
    order: tuple[str, ...]  # the stage order these rows share
    seen: torch.Tensor  # (B, V) bool: the token occurs in the prompt or the output so far
    counts: torch.Tensor  # (B, V) float32: how often each token was generated so far
    bias: torch.Tensor | None  # (B, V) or (V,) float32 dense logit_bias, None when no row has one
    allowed: torch.Tensor | None = None  # (B, V) bool from the grammar / forced tokens; None: no mask

    @classmethod
    def of(cls, params: SamplingParams | Sequence[SamplingParams], seen: torch.Tensor, counts: torch.Tensor,
           bias: torch.Tensor | None = None, allowed: torch.Tensor | None = None) -> "SamplerContext":
        """Rows with these params (one SamplingParams for every row, or one per row)."""
        B, V = seen.shape
        rows = [params] * B if isinstance(params, SamplingParams) else list(params)
        orders = {p.sampler_order for p in rows}
        if len(orders) != 1:
            raise ValueError("the rows of one pipeline run share one sampler_order")
        return cls(RowKnobs.of(rows, V, seen.device), orders.pop(), seen, counts, bias, allowed)


def constraint(logits: torch.Tensor, ctx: SamplerContext) -> torch.Tensor:
    if ctx.allowed is None:
        return logits
    return logits.masked_fill(~ctx.allowed, NEG_INF)


def logit_bias(logits: torch.Tensor, ctx: SamplerContext) -> torch.Tensor:
    if ctx.bias is None:  # no row has a bias; rows without one add zeros
        return logits
    return logits + ctx.bias


def repetition_penalty(logits: torch.Tensor, ctx: SamplerContext) -> torch.Tensor:
    # CTRL: a seen token's logit is divided by theta when positive and multiplied when negative,
    # so theta > 1 always makes it less likely.
    if "repetition_penalty" not in ctx.knobs.on:
        return logits
    theta = ctx.knobs.repetition
    penalized = torch.where(logits > 0, logits / theta, logits * theta)
    return torch.where(ctx.seen, penalized, logits)


def presence_frequency(logits: torch.Tensor, ctx: SamplerContext) -> torch.Tensor:
    # OpenAI: mu[j] -= c[j] * alpha_frequency + float(c[j] > 0) * alpha_presence, c over generated tokens.
    k = ctx.knobs
    if "presence_frequency" not in k.on:
        return logits
    return logits - k.frequency * ctx.counts - k.presence * (ctx.counts > 0).float()


def temperature(logits: torch.Tensor, ctx: SamplerContext) -> torch.Tensor:
    k = ctx.knobs
    if "temperature" not in k.on:
        return logits
    t = k.temperature  # (B, 1) float64
    out = logits / t.clamp(min=TINY_TEMPERATURE).float()  # exact: no floor on t; greedy rows are replaced below
    tiny = ((t < TINY_TEMPERATURE) & ~k.greedy[:, None]).squeeze(1)
    if bool(tiny.any()):
        # Below float32's normal range a division can overflow: such a row is shifted by its maximum first,
        # which softmax cannot see, and divided in float64; (x - max) / t only ever overflows toward -inf.
        x = logits[tiny].double()
        top = x.masked_fill(~torch.isfinite(x), NEG_INF).amax(dim=-1, keepdim=True)
        out[tiny] = ((x - top) / t[tiny]).float()
    if bool(k.greedy.any()):
        # Greedy by an explicit argmax (ties to the lower id), never a division by a tiny number.
        best = logits.argmax(dim=-1, keepdim=True)  # (B, 1)
        only_best = torch.full_like(logits, NEG_INF).scatter(1, best, logits.gather(1, best))
        out = torch.where(k.greedy[:, None], only_best, out)
    return out


def top_k(logits: torch.Tensor, ctx: SamplerContext) -> torch.Tensor:
    k = ctx.knobs.top_k
    if "top_k" not in ctx.knobs.on:
        return logits
    off = k == 0  # (B, 1)
    k = torch.where(off, 1, k)
    # Exactly k survive: ties with the k-th logit go to the lower token ids, the same rule argmax uses,
    # so top_k = 1 is greedy even where bf16 logits tie (Hugging Face keeps every tied token instead).
    kth = logits.topk(int(k.max()), dim=-1).values.gather(1, k - 1)  # (B, 1)
    keep = logits >= kth
    if bool((keep.sum(dim=-1, keepdim=True) > k).any()):  # a tie at the k-th place somewhere
        above = logits > kth
        tied = logits == kth
        room = k - above.sum(dim=-1, keepdim=True)
        keep = above | (tied & (tied.cumsum(dim=-1) <= room))
    return logits.masked_fill(~(keep | off), NEG_INF)


def top_p(logits: torch.Tensor, ctx: SamplerContext) -> torch.Tensor:
    p = ctx.knobs.top_p
    if "top_p" not in ctx.knobs.on:
        return logits
    probs = torch.softmax(logits, dim=-1)
    sorted_probs, order = canonical_head(probs, logits, _alive(logits))
    # The mass above each token, summed in float64 in the canonical order: the same prefix whatever the
    # width of the head, so a row's cut never depends on its neighbours.
    above = sorted_probs.double().cumsum(dim=-1) - sorted_probs.double()
    # A token survives while the mass above it is still short of p; the top token always does, and a
    # token of probability 0 never adds anything, so it never does.
    keep_sorted = (above < p) & (sorted_probs > 0)
    keep_sorted[:, 0] = True
    keep = torch.zeros_like(logits, dtype=torch.bool).scatter(1, order, keep_sorted)
    return logits.masked_fill(~(keep | (p >= 1.0)), NEG_INF)


def min_p(logits: torch.Tensor, ctx: SamplerContext) -> torch.Tensor:
    m = ctx.knobs.min_p
    if "min_p" not in ctx.knobs.on:
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

# Whether a row with these params uses the stage (V: the vocabulary size). A stage no row uses is skipped.
STAGE_ON: dict[str, Callable[[SamplingParams, int], bool]] = {
    "logit_bias": lambda p, V: bool(p.logit_bias),
    "repetition_penalty": lambda p, V: p.repetition_penalty != 1.0,
    "presence_frequency": lambda p, V: p.presence_penalty != 0.0 or p.frequency_penalty != 0.0,
    "temperature": lambda p, V: p.temperature != 1.0,
    "top_k": lambda p, V: 0 < p.top_k < V,
    "top_p": lambda p, V: p.top_p < 1.0,
    "min_p": lambda p, V: p.min_p > 0.0,
}


def run_pipeline(
    logits: torch.Tensor, ctx: SamplerContext, constrained: bool = False
) -> list[tuple[str, torch.Tensor]]:
    """[("raw", logits), (stage, logits after it), ...] in ctx.order, after the constraint stage when
    `constrained` (the rows have a grammar or a thinking budget)."""
    out = [("raw", logits)]
    if constrained:
        out.append(("constraint", constraint(logits, ctx)))
    for name in ctx.order:
        out.append((name, STAGES[name](out[-1][1], ctx)))
    return out


def survivors(logits: torch.Tensor) -> torch.Tensor:
    """(B,) how many tokens each row still allows. A logit is finite or -inf (removed), so one comparison
    does, and it is several times cheaper than isfinite."""
    return (logits > NEG_INF).sum(dim=-1)


def _alive(logits: torch.Tensor) -> int:
    """The most survivors (finite logits) in any row."""
    return int(survivors(logits).max())


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


def draw(final: torch.Tensor, u: torch.Tensor, greedy: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One token per row: argmax where `greedy`, else inverse-CDF sampling from softmax(final).

    final: (B, V) float32; u: (B,) float64 uniforms in [0, 1); greedy: (B,) bool. The CDF of every row is
    walked in one order, whatever its neighbours: by probability descending, ties to the lower id, in
    float64. That is the CDF the UI draws, so the uniform itself is where the draw landed on it.
    Returns tokens (B,) and the landing points (B,) float64, NaN for greedy rows.
    """
    B, V = final.shape
    tokens = final.argmax(dim=-1)
    landing = torch.full((B,), float("nan"), dtype=torch.float64)
    sampled = (~greedy).nonzero().squeeze(1).tolist()
    if not sampled:
        return tokens, landing
    x = final if len(sampled) == B else final[sampled]
    uu = u.to(torch.float64).cpu()[sampled].to(x.device)[:, None]  # (b, 1)
    alive = survivors(x)  # (b,)
    # Each row takes the path its own survivor count picks, never its neighbours'.
    few = (alive <= COMPACT).tolist()
    chosen = torch.empty(len(sampled), dtype=torch.long, device=x.device)
    for rows, walk in ((_rows(few, True), _walk_survivors), (_rows(few, False), _walk_vocabulary)):
        if rows:
            idx = torch.tensor(rows, device=x.device)
            chosen[idx] = walk(x[idx], uu[idx], int(alive[idx].max()))
    tokens = tokens.clone()
    tokens[sampled] = chosen.to(tokens.device)
    landing[sampled] = uu.squeeze(1).cpu().clamp(0.0, 1.0)
    return tokens, landing


def _rows(flags: list[bool], value: bool) -> list[int]:
    return [i for i, f in enumerate(flags) if f == value]


def _walk_survivors(x: torch.Tensor, u: torch.Tensor, m: int) -> torch.Tensor:
    """Rows with at most COMPACT survivors: their survivors in the canonical order, masses exp(x - max) in
    float64 summed one after another, so the walk over a row's own survivors is the same whatever m."""
    head, ids = canonical_head(x, x, m)  # (b, m) logits descending, ties to the lower id; -inf after
    mass = torch.exp(head.double() - head[:, :1].double())
    cdf = mass.cumsum(dim=-1)
    at = torch.searchsorted(cdf, u * cdf[:, -1:], right=True)
    # Rounding can leave the target past the last positive band: stay on that band.
    at = torch.minimum(at, (mass > 0).sum(dim=-1, keepdim=True) - 1)
    return ids.gather(1, at).squeeze(1)


def _walk_vocabulary(x: torch.Tensor, u: torch.Tensor, m: int) -> torch.Tensor:
    """Rows with many survivors: softmax in float64 (row by row), then the HEAD most likely tokens first;
    only a uniform that falls past them sorts the whole row."""
    probs = torch.softmax(x.double(), dim=-1)
    head, ids = canonical_head(probs, x, min(HEAD, x.shape[-1]))
    at = torch.searchsorted(head.cumsum(dim=-1), u, right=True)
    # The head's tokens above its smallest probability are exactly the first tokens of the row's whole
    # canonical order (ties at the cut may have been split arbitrarily), so a landing among them is final.
    exact = at < (head > head[:, -1:]).sum(dim=-1, keepdim=True)
    chosen = ids.gather(1, at.clamp(max=head.shape[-1] - 1)).squeeze(1)
    for r in (~exact.squeeze(1)).nonzero().squeeze(1).tolist():
        row, order = probs[r].sort(descending=True, stable=True)
        full = torch.searchsorted(row.cumsum(0), u[r], right=True)
        full = torch.minimum(full, (row > 0).sum(dim=0, keepdim=True) - 1)
        chosen[r] = order[full[0]]
    return chosen
