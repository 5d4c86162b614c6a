"""Where two runs diverge and why, and the alternatives at a step, on recorded 4-token steps."""

from __future__ import annotations

from playground import ui_records
from tests.test_figures import TEXTS, recorded_step


def test_removed_by_names_the_first_stage_that_zeroed_a_token():
    step, _ = recorded_step(top_k=3, top_p=0.6)
    assert ui_records.removed_by(step, 3) == "top_k"
    assert ui_records.removed_by(step, 2) == "top_p"
    assert ui_records.removed_by(step, 0) is None


def test_alternatives_come_most_likely_first_with_their_fate():
    step, _ = recorded_step(top_p=0.8, u=0.9)
    alts = ui_records.alternatives(step, TEXTS)
    assert [a["id"] for a in alts] == [0, 1, 2, 3]
    assert [a["chosen"] for a in alts] == [False, True, False, False]
    assert [a["removed_by"] for a in alts] == [None, None, "top_p", "top_p"]


def test_identical_runs_do_not_diverge():
    a = [recorded_step(u=0.1, position=i)[0] for i in range(3)]
    assert ui_records.first_divergence(a, a) is None
    assert ui_records.explain_divergence(a, a, TEXTS) == "A and B produced exactly the same 3 tokens."


def test_divergence_blames_the_stage_that_removed_the_other_token():
    a = [recorded_step(u=0.1)[0], recorded_step(u=0.1, top_p=0.4, position=1)[0]]  # Paris, Paris
    b = [recorded_step(u=0.1)[0], recorded_step(u=0.7, position=1)[0]]  # Paris, London
    assert ui_records.first_divergence(a, b) == 1
    text = ui_records.explain_divergence(a, b, TEXTS)
    assert text.startswith("The texts agree for 1 token and part at token 1: A chose '␣Paris', B chose '␣London'.")
    assert "In A, top-p removed '␣London' (it had p = 0.300 just before)." in text
    assert "In B, '␣Paris' was still possible (p = 0.500); the random draw landed at 0.700" in text


def test_divergence_with_both_tokens_possible_and_the_same_uniform_names_the_stage():
    a = [recorded_step(u=0.6, temperature=0.5)[0]]  # Paris (0.685 of the mass)
    b = [recorded_step(u=0.6, temperature=1.5)[0]]  # London (CDF 0.42 -> 0.72)
    text = ui_records.explain_divergence(a, b, TEXTS)
    assert text.startswith("The texts part at the first token")
    assert text.endswith("Both runs drew the same random number (0.600); temperature reshaped the distribution "
                         "differently, so it fell on different tokens.")


def test_divergence_with_different_uniforms_says_so_and_blames_no_stage():
    a = [recorded_step(u=0.1)[0]]  # Paris
    b = [recorded_step(u=0.7)[0]]  # London, same settings
    text = ui_records.explain_divergence(a, b, TEXTS)
    assert text.endswith("The runs drew different random numbers (0.100 and 0.700): a different seed, "
                         "or a different completion of the same seed.")
    assert "reshaped" not in text


def test_divergence_with_the_same_uniform_and_the_same_settings_blames_the_raw_probabilities():
    a = [recorded_step(u=0.47)[0]]  # Paris: its band is [0, 0.5)
    b = [recorded_step(u=0.47, probs=[0.45, 0.25, 0.2, 0.1])[0]]  # the model itself moved a little: London
    text = ui_records.explain_divergence(a, b, TEXTS)
    assert "the model's own probabilities already differed" in text


def test_a_run_that_ends_earlier_diverges_where_it_ended():
    a = [recorded_step(u=0.1, position=i)[0] for i in range(2)]
    assert ui_records.first_divergence(a, a[:1]) == 1
    assert "B ended while the other went on" in ui_records.explain_divergence(a, a[:1], TEXTS)


def test_replay_note_names_what_each_order_picks_with_the_same_random_number():
    mine = recorded_step(u=0.6, temperature=0.5)[0]  # Paris
    other = recorded_step(u=0.6, temperature=1.5)[0]  # London
    text = ui_records.explain_replay(mine, mine, other, TEXTS, "llama.cpp")
    assert text.startswith("With the same random number 0.600, this run's order picks '␣Paris'")
    assert "llama.cpp's order would pick '␣London'" in text


def test_replay_note_says_when_both_orders_agree():
    mine = recorded_step(u=0.1, top_p=0.6)[0]
    assert "both orders pick '␣Paris'" in ui_records.explain_replay(mine, mine, mine, TEXTS, "vLLM")
