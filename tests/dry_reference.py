"""The slow reference for DRY: the quadratic definition the engine used before engine/dry.py, kept as the
spec that the linear-time stage must equal (tests/test_dry.py) and as the "old" side of bench/bench_dry.py.
With dry_penalty_last_n it looks at the last N tokens only (llama.cpp's window; -1 all, 0 off)."""

from __future__ import annotations

import torch

from engine.context import SamplerContext
from engine.dry import _dry_penalty


def reference_dry(logits: torch.Tensor, ctx: SamplerContext) -> torch.Tensor:
    if "dry" not in ctx.knobs.on:
        return logits
    penalties = torch.zeros_like(logits)
    for b, p in enumerate(ctx.knobs.params):
        history = ctx.history[b] if ctx.history else None
        if p.dry_multiplier <= 0 or p.dry_penalty_last_n == 0 or not history:
            continue
        history = [int(t) for t in getattr(history, "ids", history)]  # a DryHistory's ids, or plain ids
        window = history[-p.dry_penalty_last_n:] if p.dry_penalty_last_n > 0 else history
        for token, length in repeats(window, ctx.breakers[b] if ctx.breakers else frozenset()).items():
            if length >= p.dry_allowed_length and token < logits.shape[-1]:
                penalties[b, token] = _dry_penalty(p.dry_multiplier, p.dry_base, length - p.dry_allowed_length)
    return logits - penalties


def repeats(history: list[int], breakers: frozenset[int]) -> dict[int, int]:
    """{next token: the longest repeat it would continue}: for each earlier occurrence of the last token,
    how many tokens before it match the tokens before the end, stopping at a sequence breaker."""
    last = history[-1]
    if last in breakers:
        return {}
    found: dict[int, int] = {}
    end = len(history) - 1
    for i in range(end - 1, -1, -1):
        if history[i] != last:
            continue
        following = history[i + 1]
        if following in breakers:
            continue
        length = 1
        while i - length >= 0 and history[i - length] == history[end - length] and history[i - length] not in breakers:
            length += 1
        found[following] = max(found.get(following, 0), length)
    return found
