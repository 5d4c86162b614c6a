"""Manual sampling on hand-made distributions: the vocabulary table and the step made with a picked token."""

from __future__ import annotations

import math

import pytest
import torch

from engine.knobs import SamplingParams
from engine.manual import manual_step, memory_after, vocabulary
from engine.whatif import Snapshot, pipeline, resample
from tests.fakes import fake_lm, fixed

PROBS = [0.05, 0.5, 0.3, 0.15]  # token 0 is the fake model's end of sequence
PIECES = [b"<end>", b" sea", b" sky", b" salt"]


@pytest.fixture
def lm():
    return fake_lm(fixed(PROBS), PIECES)


def snap() -> Snapshot:
    return Snapshot(torch.tensor(PROBS).log(), None)


def stages_of(lm, **knobs):
    return pipeline(lm, snap(), SamplingParams.build(**knobs), [1], [], (0, 0, 0))[0]


def test_the_table_ranks_every_token_by_its_raw_probability(lm):
    v = vocabulary(stages_of(lm))
    assert v.rank.tolist() == [4, 1, 2, 3]
    assert v.raw_p.tolist() == pytest.approx(PROBS)


def test_equal_raw_probabilities_rank_the_lower_id_first(lm):
    raw = torch.tensor([[0.0, 1.0, 1.0, 0.5]])
    assert vocabulary([("raw", raw)]).rank.tolist() == [4, 1, 2, 3]


def test_the_table_names_the_stage_that_removed_each_token(lm):
    v = vocabulary(stages_of(lm, top_k=3, min_p=0.5))
    names = v.stages
    assert names[v.removed_by[0]] == "top_k"  # 0.05: the fourth most likely
    assert names[v.removed_by[3]] == "min_p"  # 0.15 < 0.5 x 0.5
    assert v.removed_by[1] == v.removed_by[2] == -1
    assert v.final_p.tolist() == pytest.approx([0.0, 0.5 / 0.8, 0.3 / 0.8, 0.0])


def test_a_stage_that_is_off_removes_nothing(lm):
    v = vocabulary(stages_of(lm))
    assert (v.removed_by == -1).all()
    assert v.final_p.tolist() == pytest.approx(PROBS)


def test_a_picked_token_that_top_k_removed_is_taken_and_has_no_final_probability(lm):
    made = manual_step(lm, snap(), SamplingParams.build(top_k=2, seed=3), [1], [], (3, 0, 0), token=3)
    step = made.step
    assert step.token_id == 3 and step.text == " salt"
    assert step.logprob == -math.inf  # the sampler could never have drawn it
    assert step.raw_logprob == pytest.approx(math.log(0.15))
    assert step.rank == 3
    assert step.draw is None  # nothing was drawn


def test_without_a_pick_the_step_is_the_samplers_draw_with_the_seed_contracts_number(lm):
    params = SamplingParams.build(temperature=1.3, top_p=0.9, seed=7)
    for position in range(6):
        coords = (7, 0, position)
        drawn = manual_step(lm, snap(), params, [1], [1] * position, coords).step
        expected = resample(lm, snap(), params, [1], [1] * position, coords).step
        assert drawn.token_id == expected.token_id and drawn.draw == expected.draw


def test_mirostat_moves_mu_by_the_surprise_of_the_token_taken(lm):
    params = SamplingParams.build(mirostat=2, mirostat_tau=2.0, mirostat_eta=0.5, seed=1)
    step = manual_step(lm, snap(), params, [1], [], (1, 0, 0), token=2).step
    # mu starts at 2 tau = 4 bits: it removes the end token (surprise 4.3 bits) and keeps the rest.
    surprise = -math.log2(0.3 / 0.95)
    assert step.notes["mirostat_surprise"] == pytest.approx(surprise)
    assert memory_after(step.notes, params)["mirostat_mu"] == pytest.approx(4.0 - 0.5 * (surprise - 2.0))
    assert memory_after(step.notes, SamplingParams.build()) == {}
