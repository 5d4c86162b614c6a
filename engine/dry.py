"""DRY, "Don't Repeat Yourself" (p-e-w), in linear time per step.

The definition (text-generation-webui's DRYLogitsProcessor, modules/sampler_hijack.py; llama.cpp's
llama_sampler_dry_apply, src/llama-sampling.cpp): look at the last `dry_penalty_last_n` tokens (-1: all
of them, 0: DRY is off). For every earlier place i, the repeat that ends there is the longest common
suffix of the text up to i and the whole text, stopping at a sequence breaker (newline, colon, quote,
asterisk by default). The token that followed place i would continue that repeat; if the repeat is at
least `dry_allowed_length` tokens long, that token's logit loses dry_multiplier * dry_base ** (length -
dry_allowed_length), the largest such penalty per token, clamped as llama.cpp clamps it (a logit already
near float32's lower limit saturates there instead of reaching -inf). A breaker is never pushed down
itself. Reference cases: llama.cpp tests/test-sampling.cpp test_dry.

How. llama.cpp runs the Z-algorithm over the reversed last N tokens at every step: linear, but in Python
that is a few thousand interpreted steps per row per step. Here each row keeps the repeat lengths
themselves (`DryHistory.match`, one per earlier place) and updates them when a token t is appended, in a
handful of numpy operations over the row:

    match'[i] = match[i - 1] + 1  where ids[i] == t (match[-1] = 0), else 0;  all 0 when t is a breaker

(a repeat that ends at i after t is t itself after the repeat that ended at i - 1). A window only cuts the
repeats at its start: min(match[i], i - start + 1). The Z-algorithm is run once, when a row starts from a
history without its lengths (a branch, a replay, a what-if). The stage then takes every row's candidates
(next token, repeat length) and reduces them together: one sort for the longest repeat per (row, token),
and the penalty once per distinct (row, length), in Python floats exactly as the definition computes it
(numpy's vectorised pow may differ from the C library's in the last bit).

Cost per step and row: O(L) numpy work and O(1) Python calls; 6,000 tokens of "ha" take well under a
millisecond (bench/bench_dry.py).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import torch

from engine.context import FLOAT32_MAX, SamplerContext, saturate

FLOAT32_MAX_LOG = 88.7228391  # llama.cpp's FLOAT_MAX_LOG: log(FLT_MAX), for the exponent's clamp


def uses_dry(p: Any) -> bool:
    """Whether a row with these params uses DRY (llama.cpp: a multiplier of 0 or a window of 0 is off)."""
    return p.dry_multiplier > 0 and p.dry_penalty_last_n != 0


class DryHistory:
    """A row's token ids (prompt and output so far) with the length of the repeat that ends at each earlier
    place, kept current as tokens are appended. The arrays are never written in place, so a copy can share
    them (the n rows of one job start from one history)."""

    def __init__(self, ids: Sequence[int], breakers: frozenset[int]):
        self.breakers = frozenset(breakers)
        ids = [int(t) for t in ids]
        self.ids = np.array(ids, dtype=np.int64)  # (L,)
        self.free = np.array([t not in self.breakers for t in ids], dtype=bool)  # (L,): not a breaker
        self.match = _match_lengths(ids, self.free)  # (L - 1,): the repeat ending at place i < L - 1

    def __len__(self) -> int:
        return len(self.ids)

    def copy(self) -> "DryHistory":
        other = object.__new__(DryHistory)
        other.__dict__.update(self.__dict__)
        return other

    def append(self, token: int) -> None:
        t = int(token)
        free = t not in self.breakers
        if free and len(self.ids):
            match = np.concatenate(([1], self.match + 1))  # (L,): places 0..L-1 are all earlier now
            match[self.ids != t] = 0
        else:
            match = np.zeros(len(self.ids), dtype=np.int64)
        self.ids = np.append(self.ids, t)
        self.free = np.append(self.free, free)
        self.match = match

    def candidates(self, last_n: int, allowed: int) -> tuple[np.ndarray, np.ndarray]:
        """(next tokens (K,), repeat lengths (K,)) of the repeats at least `allowed` long within the last
        `last_n` tokens (-1: all) whose next token is not a breaker; a token may appear several times."""
        L = len(self.ids)
        start = 0 if last_n < 0 else max(0, L - last_n)
        if L - start - 1 < allowed:  # no repeat in the window can be that long (also: a huge allowed)
            return self.ids[:0], self.match[:0]
        lengths = self.match[start:]  # (L - 1 - start,) places start..L-2
        if start:
            lengths = np.minimum(lengths, np.arange(1, L - start))
        ok = (lengths >= allowed) & self.free[start + 1:]
        return self.ids[start + 1:][ok], lengths[ok]


def _match_lengths(ids: list[int], free: np.ndarray) -> np.ndarray:
    """(L - 1,): for each place i < L - 1, the longest common suffix of ids[:i + 1] and ids that holds no
    breaker. The Z-algorithm over the reversed ids (Gusfield; as llama.cpp's step 2), capped at the run of
    non-breakers at the end (llama.cpp's rep_limit): equal tokens are both breakers or neither."""
    L = len(ids)
    out = np.zeros(max(L - 1, 0), dtype=np.int64)
    limit = L - int(np.flatnonzero(~free)[-1]) - 1 if not free.all() else L
    if limit == 0:
        return out
    r = ids[::-1]
    z = [0] * L  # z[k]: the longest common prefix of r[k:] and r
    lt = rt = 0  # the rightmost match found so far is r[lt:rt] == r[:rt - lt]
    for k in range(1, L):
        n = min(rt - k, z[k - lt]) if k < rt else 0
        while k + n < L and r[n] == r[k + n]:
            n += 1
        z[k] = n
        if k + n > rt:
            lt, rt = k, k + n
    out[:] = np.minimum(np.array(z[:0:-1], dtype=np.int64), limit)  # place i = L - 1 - k
    return out


def dry(logits: torch.Tensor, ctx: SamplerContext) -> torch.Tensor:
    """The DRY stage (see the module docstring). A row's ctx.history is a DryHistory (the decode loop's
    rows keep one) or plain token ids (built here, in linear time); ctx.breakers go with plain ids."""
    if "dry" not in ctx.knobs.on:
        return logits
    B, V = logits.shape
    params = ctx.knobs.params
    rows, tokens, lengths = [], [], []
    for b, p in enumerate(params):
        history = ctx.history[b] if ctx.history else None
        if not uses_dry(p) or history is None or len(history) == 0:
            continue
        if not isinstance(history, DryHistory):
            history = DryHistory(history, ctx.breakers[b] if ctx.breakers else frozenset())
        t, n = history.candidates(p.dry_penalty_last_n, p.dry_allowed_length)
        rows.append(np.full(len(t), b, dtype=np.int64))
        tokens.append(t)
        lengths.append(n)
    out = logits.clone()  # (B, V)
    if rows:
        row, token, length = (np.concatenate(x) for x in (rows, tokens, lengths))  # (K,) each
        inside = token < V  # a prompt may hold ids the model's logits do not cover
        row, token, length = row[inside], token[inside], length[inside]
        # The longest repeat per (row, token): sort by (row, token), then length; keep each group's last.
        order = np.lexsort((length, token, row))
        row, token, length = row[order], token[order], length[order]
        last = np.ones(len(row), dtype=bool)
        last[:-1] = (row[1:] != row[:-1]) | (token[1:] != token[:-1])
        row, token, length = row[last], token[last], length[last]
        # One penalty per distinct (row, length), in Python floats as the definition computes it.
        span = int(length.max(initial=0)) + 1
        pairs, which = np.unique(row * span + length, return_inverse=True)
        values = [_dry_penalty(params[r].dry_multiplier, params[r].dry_base, n - params[r].dry_allowed_length)
                  for r, n in (divmod(k, span) for k in pairs.tolist())]
        per_token = torch.tensor(values, dtype=torch.float64)[torch.from_numpy(which.reshape(-1))]  # (K',)
        dev = logits.device
        row, token = torch.from_numpy(row).to(dev), torch.from_numpy(token).to(dev)
        before = logits[row, token]  # (K',)
        # The float32 subtraction; a logit already near -FLOAT32_MAX saturates there rather than reach -inf.
        out[row, token] = saturate(before - per_token.to(dev, torch.float32), before)
    return out


def dry_breakers(tokenizer, breakers: tuple[str, ...]) -> frozenset[int]:
    """DRY's sequence breakers as token ids: the last token of "a" + breaker, i.e. the breaker as it
    follows a word (text-generation-webui's rule); a breaker the tokenizer drops is skipped."""
    word = tokenizer.encode("a", add_special_tokens=False)
    ids = [tokenizer.encode("a" + b, add_special_tokens=False) for b in breakers]
    return frozenset(t[-1] for t in ids if t and t != word)


def _dry_penalty(multiplier: float, base: float, excess: int) -> float:
    """multiplier * base ** excess, with llama.cpp's clamp: the exponent stops where base ** excess reaches
    float32's range, and so does the penalty, so a token is as good as banned but never removed."""
    if base > 1.000001:
        excess = min(excess, int(FLOAT32_MAX_LOG / math.log(base)))
    return min(multiplier * base**excess, FLOAT32_MAX)
