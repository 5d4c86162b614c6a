"""The "Sample N times" view (playground/ui_manydraws.py): its handler on the real embedded model, and
its bars and sentences on hand-made numbers."""

from __future__ import annotations

import numpy as np
import pytest

from playground import ui_events, ui_manydraws
from playground.ui_events import Stops
from tests.test_ui_events import last, settings

STEP = 2


@pytest.fixture(scope="module")
def runs(lm, host):
    return last(ui_events.generate(host, Stops(), settings(lm), "s"))["runs"]


def sample(host, lm, runs, log10_n=3, seed=0, **knobs) -> dict:
    return last(ui_manydraws.sample_step(host, Stops(), settings(lm, **knobs), runs, 0, 1, STEP, log10_n, seed, "s"))


def series(fig, name: str) -> dict[str, float]:
    trace = next(t for t in fig.data if t.name.startswith(name))
    return dict(zip(trace.x, trace.y))


@pytest.mark.model
def test_the_draws_come_from_the_steps_exact_final_distribution(lm, host, runs):
    out = sample(host, lm, runs, log10_n=4)
    assert "**10,000 draws** from step 2" in out["draws_note"] and "the run's own settings" in out["draws_note"]
    assert "Total-variation distance" in out["draws_note"] and "χ² =" in out["draws_note"]
    recorded = runs[0]["completions"][0]["steps"][STEP]
    texts = runs[0]["texts"]
    final = series(out["draws_plot"], "final probability")
    for j, t in enumerate(recorded["candidates"][:5]):
        label = ui_manydraws._unique_labels([t], texts)[0]
        assert final[label] == pytest.approx(recorded["stages"][-1]["probs"][j], abs=1e-5)
    shares = series(out["draws_plot"], "share of the 10,000 draws")
    assert sum(shares.values()) == pytest.approx(1.0)


@pytest.mark.model
def test_the_same_seed_gives_the_same_histogram_and_another_seed_another(lm, host, runs):
    a, b, c = (series(sample(host, lm, runs, seed=s)["draws_plot"], "share") for s in (7, 7, 8))
    assert a == b and a != c


@pytest.mark.model
def test_under_what_if_settings_the_draws_follow_the_current_distribution(lm, host, runs):
    out = sample(host, lm, runs, top_k=1)
    assert "the current settings (top_k 0 → 1)" in out["draws_note"]
    shares = series(out["draws_plot"], "share")
    assert sorted(shares.values())[-1] == 1.0  # one token left: every draw lands on it


@pytest.mark.model
def test_without_the_model_the_draws_use_the_recorded_candidates_and_a_rest_band(lm, host, runs):
    elsewhere = [{**runs[0], "model": "another/model"}]
    out = sample(host, lm, elsewhere)
    recorded = runs[0]["completions"][0]["steps"][STEP]["stages"][-1]["probs"]
    band = 1.0 - sum(recorded)  # the mass of every token the record does not keep
    assert "Without the model" in out["draws_note"] and f"one band for every other token (final probability {band:.3f}" in out["draws_note"]
    final = series(out["draws_plot"], "final probability")
    shown = [p for label, p in final.items() if label != "rest"]
    assert final["rest"] >= band - 1e-6 and sum(final.values()) == pytest.approx(1.0, abs=1e-6)
    assert shown == sorted(recorded, reverse=True)[: len(shown)]


@pytest.mark.model
def test_a_bad_seed_is_named_with_its_range(lm, host, runs):
    out = sample(host, lm, runs, seed=-1)
    assert "**draws_seed**" in out["draws_note"] and "[0, 2^64)" in out["draws_note"]
    assert "draws_plot" not in out


def test_the_slider_moves_n_on_a_log_scale_from_10_to_100000():
    assert [ui_manydraws.draws_for(x) for x in (0, 1, 2.5, 5, 6)] == [10, 10, 316, 100_000, 100_000]


def test_bars_show_the_most_likely_tokens_and_pool_the_others():
    counts, final, raw = np.array([48, 31, 0, 21]), np.array([0.5, 0.3, 0.0, 0.2]), np.array([0.4, 0.3, 0.2, 0.1])
    got = ui_manydraws.bars(counts, final, raw, {0: "a", 1: "b", 2: "c", 3: "d"}, shown=3)
    # The removed token 'c' (final 0) still ranks after the survivors, by its raw probability.
    assert [b["label"] for b in got] == ["a", "b", "d", "rest"]
    assert got[-1] == {"label": "rest", "count": 0, "final": 0.0, "raw": pytest.approx(0.2)}


def test_the_sentence_says_how_close_the_draws_come():
    text = ui_manydraws.describe(100, 0, np.array([60, 40]), np.array([0.5, 0.5]))
    assert "Total-variation distance **0.100**" in text and "10.0% of the draws" in text
    assert "χ² = 4.0 on 1 degrees of freedom, p = 0.05" in text


def test_with_too_few_draws_the_sentence_says_there_is_no_chi_square():
    assert "Too few draws for a χ² test" in ui_manydraws.describe(10, 0, np.array([4, 3, 3]), np.array([0.4, 0.3, 0.3]))


def test_a_page_that_never_drew_the_histogram_does_not_draw_it_for_a_new_step():
    assert list(ui_manydraws.follow_step(None, None, None, [], 0, 1, 0, 3, 0, "s", note="")) == []


@pytest.mark.model
def test_once_drawn_the_histogram_follows_a_newly_selected_step(lm, host, runs):
    out = last(ui_manydraws.follow_step(host, Stops(), settings(lm), runs, 0, 1, 4, 3, 0, "s", note="drawn before"))
    assert "**1,000 draws** from step 4" in out["draws_note"]
