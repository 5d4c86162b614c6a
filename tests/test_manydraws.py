"""Teaching draws (engine/manydraws.py) on hand-made distributions: the counter-based uniforms, the
inverse-CDF tally, and the total-variation and chi-square numbers the view prints."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from scipy import stats

from engine.knobs import SamplingParams
from engine.manydraws import chi2_sf, chi_square, distributions, tally, total_variation, uniforms
from engine.sampler import draw
from engine.whatif import Snapshot

MASK = (1 << 64) - 1


def splitmix64(z: int) -> int:
    """SplitMix64's finaliser as java.util.SplittableRandom defines it, on Python integers."""
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
    return z ^ (z >> 31)


def test_uniforms_are_splitmix64_of_the_key_plus_the_draw_index():
    seed, step = 2**63 + 12345, 17
    key = splitmix64(splitmix64(seed) ^ step)
    expected = [(splitmix64((key + 0x9E3779B97F4A7C15 * (i + 1)) & MASK) >> 11) * 2.0**-53 for i in range(50)]
    assert uniforms(seed, step, 50).tolist() == expected


def test_draw_i_is_the_same_whatever_the_number_of_draws():
    many = uniforms(3, 5, 100_000)
    assert np.array_equal(uniforms(3, 5, 10), many[:10])
    assert np.array_equal(uniforms(3, 5, 1000), many[:1000])


def test_another_seed_or_step_gives_other_draws():
    u = uniforms(3, 5, 100)
    assert not np.array_equal(u, uniforms(4, 5, 100))
    assert not np.array_equal(u, uniforms(3, 6, 100))


def test_uniforms_lie_in_the_unit_interval_and_look_uniform():
    u = uniforms(0, 0, 100_000)
    assert u.min() >= 0.0 and u.max() < 1.0
    assert stats.kstest(u, "uniform").pvalue > 0.001


def test_tally_walks_the_cdf_in_probability_order():
    # Order: token 1 (0.5), token 2 (0.3), then the tie 0 and 3 (0.1 each) broken toward the lower id.
    probs = np.array([0.1, 0.5, 0.3, 0.1])
    picks = [int(np.argmax(tally(probs, np.array([u])))) for u in (0.0, 0.49, 0.5, 0.79, 0.8, 0.89, 0.9, 0.999)]
    assert picks == [1, 1, 2, 2, 0, 0, 3, 3]


def test_tally_counts_every_draw_and_never_a_token_without_probability():
    probs = np.array([0.0, 0.7, 0.0, 0.3, 0.0])
    counts = tally(probs, uniforms(1, 1, 5000))
    assert counts.sum() == 5000 and counts[[0, 2, 4]].sum() == 0


def test_a_uniform_lands_on_the_token_the_samplers_own_draw_picks():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(1, 500, generator=gen) * 3  # (1, V)
    logits[0, ::7] = float("-inf")
    u = uniforms(9, 2, 300)
    weights = torch.exp(logits[0].double() - logits.max()).numpy()
    for x in u:
        token, _ = draw(logits, torch.tensor([x], dtype=torch.float64), torch.tensor([False]))
        assert tally(weights, np.array([x]))[int(token)] == 1


def test_total_variation_is_half_the_l1_distance_of_shares_and_probabilities():
    # shares 0.5, 0.3, 0.2, 0 against 0.5, 0.25, 0.25, 0: half of 0 + 0.05 + 0.05
    assert total_variation(np.array([5, 3, 2, 0]), np.array([0.5, 0.25, 0.25, 0.0])) == pytest.approx(0.05)


def test_chi_square_of_60_against_40_on_a_fair_coin():
    result = chi_square(np.array([60, 40]), np.array([0.5, 0.5]))
    assert result.statistic == pytest.approx(4.0) and result.dof == 1
    assert result.p_value == pytest.approx(math.erfc(math.sqrt(2.0)))


def test_chi_square_pools_categories_expected_fewer_than_five_times():
    # Expected 50, 45, 3, 2: the last two pool into one category expected 5 times.
    result = chi_square(np.array([50, 45, 4, 1]), np.array([0.5, 0.45, 0.03, 0.02]))
    assert result.statistic == pytest.approx(0.0) and result.dof == 2


def test_a_pool_still_too_small_joins_the_smallest_category():
    # Expected 50, 46, 4: the pool (4) joins the 46, leaving two categories of 50.
    result = chi_square(np.array([40, 55, 5]), np.array([0.5, 0.46, 0.04]))
    assert result.dof == 1 and result.statistic == pytest.approx(2 * 10**2 / 50)


def test_chi_square_needs_two_categories_expected_five_times():
    assert chi_square(np.array([3, 1, 0]), np.array([0.4, 0.3, 0.3])) is None


@pytest.mark.parametrize("x, dof", [(0.5, 1), (3.2, 1), (5.0, 2), (12.3, 7), (2.0, 10), (50.0, 3), (1000.0, 900)])
def test_chi2_survival_matches_scipy(x, dof):
    assert chi2_sf(x, dof) == pytest.approx(stats.chi2.sf(x, dof), rel=1e-9)


def test_more_draws_come_closer_to_the_distribution():
    probs = np.random.default_rng(0).dirichlet(np.ones(200))
    gaps = [total_variation(tally(probs, uniforms(0, 0, n)), probs) for n in (100, 10_000, 100_000)]
    assert gaps[0] > gaps[1] > gaps[2]


def test_distributions_are_the_raw_and_final_softmax_of_the_steps_pipeline():
    logits = torch.tensor([2.0, 1.0, 0.0, -1.0])
    lm = SimpleNamespace(device=torch.device("cpu"), tokenizer=None)
    params = SamplingParams.build(temperature=0.5, top_k=3)
    raw, final = distributions(lm, Snapshot(logits, None), params, [], [], (0, 0, 0))
    assert raw == pytest.approx(torch.softmax(logits.double(), -1).numpy())
    kept = torch.softmax(logits[:3].double() / 0.5, -1).numpy()
    assert final == pytest.approx([*kept, 0.0])
