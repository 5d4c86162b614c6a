"""Teaching draws: N tokens drawn from one step's exact final distribution, and how far their counts land
from it.

    raw, final = distributions(lm, snap, params, ...)    # (V,) float64 each, on the model's decode thread
    u = uniforms(seed, step, n)                          # (n,) float64: a pure function of (seed, step, i)
    counts = tally(final, u)                             # (V,) int64
    total_variation(counts, final), chi_square(counts, final)

These are not a completion's random numbers: engine/rng.py hashes each of those with BLAKE2b, about a
microsecond a call, so 100,000 would take 0.1 s on their own. The idea is the same, counter-based (Salmon
et al. 2011): draw i is SplitMix64's finaliser (Steele, Lea & Flood 2014; java.util.SplittableRandom) of
the key of (seed, step) plus i times the golden-ratio increment, over a uint64 numpy array, whose wrapping
arithmetic is defined. Draw i is the same for every N, so a larger N adds draws to the same sample: the
histogram a class watches converges instead of jumping.

Numpy, not torch, past `distributions`: no tensor code may run on a UI thread (engine/scheduler.py), and
the draws and their statistics are a sort, a search and a count, all single-threaded in numpy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from engine.whatif import Snapshot, pipeline

MAX_DRAWS = 100_000
MIN_EXPECTED = 5.0  # chi-square's usual rule (Cochran 1954): pool categories expected fewer times

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1, _M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)
_MASK = (1 << 64) - 1


def _mix(z: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser on uint64 (wrapping multiplication is what the definition asks)."""
    with np.errstate(over="ignore"):
        z = (z ^ (z >> np.uint64(30))) * _M1
        z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


def uniforms(seed: int, step: int, n: int) -> np.ndarray:
    """(n,) float64 uniforms in [0, 1) with 53 random bits; the i-th depends on (seed, step, i) alone."""
    key = _mix(_mix(np.array([seed & _MASK], dtype=np.uint64)) ^ np.uint64(step & _MASK))  # (1,)
    with np.errstate(over="ignore"):
        state = key + _GOLDEN * np.arange(1, n + 1, dtype=np.uint64)  # (n,)
    return (_mix(state) >> np.uint64(11)).astype(np.float64) * 2.0**-53


def tally(probs: np.ndarray, u: np.ndarray) -> np.ndarray:
    """(V,) int64 counts of the tokens that inverse-CDF sampling picks for each uniform of `u` (n,).

    probs: (V,) float64 weights (need not sum to 1). The CDF runs in the order the sampler's own draw
    uses (probability descending, ties to the lower id), so a uniform lands where engine/sampler.draw
    would put it; a uniform past every weight (rounding) takes the last token that has any."""
    order = np.argsort(-probs, kind="stable")  # (V,)
    cdf = np.cumsum(probs[order])
    at = np.searchsorted(cdf, u * cdf[-1], side="right")  # (n,) first place whose cumulative weight exceeds it
    at = np.minimum(at, int(np.count_nonzero(probs)) - 1)
    return np.bincount(order[at], minlength=len(probs))


def total_variation(counts: np.ndarray, probs: np.ndarray) -> float:
    """Half the L1 distance between the draws' shares and the probabilities: the share of the draws that
    would have to move to other tokens to match them exactly (0 = identical, 1 = disjoint)."""
    return 0.5 * float(np.abs(counts / counts.sum() - probs / probs.sum()).sum())


@dataclass(frozen=True)
class ChiSquare:
    statistic: float
    dof: int  # degrees of freedom: categories after pooling, minus one
    p_value: float  # the chance of a statistic at least this large if the draws follow the probabilities


def chi_square(counts: np.ndarray, probs: np.ndarray, min_expected: float = MIN_EXPECTED) -> ChiSquare | None:
    """Pearson's goodness of fit of the counts to the probabilities. Categories expected fewer than
    `min_expected` times are pooled into one, and a pool still that small joins the smallest category
    (the chi-square law holds only for large expected counts). None when fewer than two categories
    remain (too few draws to test)."""
    n = counts.sum()
    expected = n * probs / probs.sum()
    big = expected >= min_expected
    obs, exp = list(counts[big].astype(np.float64)), list(expected[big])
    rest_o, rest_e = float(counts[~big].sum()), float(expected[~big].sum())
    if rest_e >= min_expected:
        obs.append(rest_o)
        exp.append(rest_e)
    elif rest_e > 0 and exp:
        j = int(np.argmin(exp))
        obs[j] += rest_o
        exp[j] += rest_e
    if len(exp) < 2:
        return None
    o, e = np.array(obs), np.array(exp)
    stat = float(((o - e) ** 2 / e).sum())
    return ChiSquare(stat, len(e) - 1, chi2_sf(stat, len(e) - 1))


def chi2_sf(x: float, dof: int) -> float:
    """P(X >= x) for X chi-square with `dof` degrees of freedom, in closed form (Abramowitz & Stegun
    26.4.4 and 26.4.5): for even dof e^{-x/2} sum_{j<dof/2} (x/2)^j / j!; for odd dof erfc(sqrt(x/2))
    plus e^{-x/2} sum_{j<(dof-1)/2} (x/2)^{j+1/2} / Gamma(j+3/2). Terms in log space: x may be large."""
    if x <= 0:
        return 1.0
    h = x / 2.0
    if dof % 2 == 0:
        terms = [-h + j * math.log(h) - math.lgamma(j + 1) for j in range(dof // 2)]
        head = 0.0
    else:
        terms = [-h + (j + 0.5) * math.log(h) - math.lgamma(j + 1.5) for j in range((dof - 1) // 2)]
        head = math.erfc(math.sqrt(h))
    return min(1.0, head + sum(math.exp(t) for t in terms))


def distributions(lm, snap: Snapshot, params, prompt_ids: list[int], earlier: list[int], coords: tuple[int, int, int],
                  memory: dict[str, float] | None = None, constrained: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """The step's raw and final probabilities over the whole vocabulary, (V,) float64 each, under
    `params` (see engine/whatif.pipeline). Tensor work: call it on the model's decode thread."""
    stages, _ = pipeline(lm, snap, params, prompt_ids, earlier, coords, memory, constrained)
    raw, final = (torch.softmax(x[0].double(), dim=-1).cpu().numpy() for x in (stages[0][1], stages[-1][1]))
    return raw, final
