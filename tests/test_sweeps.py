"""Knob sweeps: the values a sweep runs and the metrics it plots, on hand-made completions."""

from __future__ import annotations

import math

import plotly.graph_objects as go
import pytest

from engine.knobs import ParamError
from playground import figures, sweeps


def step(token: int, raw_logprob: float = -1.0, entropy: float = 0.5) -> dict:
    return {"token_id": token, "raw_logprob": raw_logprob, "stages": [{"entropy": 9.0}, {"entropy": entropy}]}


def completion(*tokens: int, **kw) -> dict:
    return {"steps": [step(t, **kw) for t in tokens]}


def test_values_are_evenly_spaced_from_start_to_stop():
    assert sweeps.sweep_values("temperature", 0, 2, 5) == [0.0, 0.5, 1.0, 1.5, 2.0]


def test_an_integer_knob_is_rounded_and_repeats_are_dropped():
    assert sweeps.sweep_values("top_k", 1, 3, 5) == [1, 2, 3]


def test_a_value_outside_the_knobs_range_is_refused_naming_the_knob_and_range():
    with pytest.raises(ParamError) as e:
        sweeps.sweep_values("temperature", 0, 3, 4)
    assert e.value.param == "temperature" and "[0, 2]" in e.value.message


def test_the_number_of_values_and_samples_are_bounded():
    with pytest.raises(ParamError, match=r"sweep values must be an integer in \[2, 16\]"):
        sweeps.sweep_values("temperature", 0, 1, 40)
    with pytest.raises(ParamError, match=r"samples per value must be an integer in \[1, 16\]"):
        sweeps.check_samples(0)
    with pytest.raises(ParamError, match="sweep knob must be one of"):
        sweeps.sweep_values("n", 1, 2, 2)


def test_distinct_n_counts_distinct_ngrams_over_all_samples():
    m = sweeps.metrics([completion(1, 2, 1, 2), completion(1, 2, 3, 4)])
    assert m["distinct_1"] == pytest.approx(4 / 8)  # {1, 2, 3, 4} of 8 tokens
    assert m["distinct_2"] == pytest.approx(4 / 6)  # (1,2) (2,1) (2,3) (3,4) of 6 pairs


def test_repetition_is_the_share_of_each_samples_repeated_3grams():
    looping = completion(5, 6, 7, 5, 6, 7, 5, 6)  # 6 trigrams, 3 distinct
    fresh = completion(1, 2, 3, 4, 5, 6, 7, 8)
    assert sweeps.metrics([looping])["repetition"] == pytest.approx(0.5)
    assert sweeps.metrics([looping, fresh])["repetition"] == pytest.approx(0.25)


def test_perplexity_entropy_and_length_average_over_every_token():
    m = sweeps.metrics([completion(1, 2, raw_logprob=-2.0, entropy=1.0), completion(3, 4, 5, 6, raw_logprob=-1.0, entropy=0.4)])
    assert m["perplexity"] == pytest.approx(math.exp((2 * 2 + 4 * 1) / 6))
    assert m["entropy"] == pytest.approx((2 * 1.0 + 4 * 0.4) / 6)  # of the final distribution, not the raw one
    assert m["length"] == 3


def test_end_of_text_tokens_are_not_words_of_the_text():
    m = sweeps.metrics([completion(1, 2, 0), completion(1, 2, 0)], eos_ids={0})
    assert m["distinct_1"] == pytest.approx(2 / 4) and m["length"] == 3


def point(**settings) -> dict:
    return {"settings": settings, "samples": 2, "metrics": sweeps.metrics([completion(1, 2, 3)])}


def test_the_csv_has_one_row_per_value_and_a_column_per_metric():
    points = [point(temperature=v) for v in (0.5, 1.0)]
    lines = sweeps.table(points).splitlines()
    assert lines[0] == "temperature,samples,entropy,perplexity,distinct_1,distinct_2,repetition,length"
    assert lines[1].startswith("0.5,2,0.5,2.71828,1,1,0,3")
    assert len(lines) == 3


def test_the_sweep_figure_has_a_chart_per_metric_with_a_point_per_value():
    points = [point(temperature=v) for v in (0.5, 1.0, 1.5)]
    fig = go.Figure(figures.sweep_figure(points, selected=1))
    assert len(fig.data) == len(sweeps.METRICS)
    assert all(list(t.x) == [0.5, 1.0, 1.5] for t in fig.data)
    assert fig.data[0].marker.color[1] == figures.CHOSEN


def test_two_knobs_make_a_grid_of_every_pair_and_a_heatmap_per_metric():
    cells = sweeps.grid("temperature", [0.5, 1.0], "top_p", [0.5, 0.9, 1.0], samples=2)
    assert cells[:2] == [{"temperature": 0.5, "top_p": 0.5}, {"temperature": 0.5, "top_p": 0.9}] and len(cells) == 6
    fig = go.Figure(figures.sweep_figure([point(**c) for c in cells], selected=4))
    heatmaps = [t for t in fig.data if t.type == "heatmap"]
    assert len(heatmaps) == len(sweeps.METRICS)
    assert [len(row) for row in heatmaps[0].z] == [2, 2, 2]  # rows: top_p values; columns: temperature values
    assert heatmaps[0].customdata[1][1] == 4  # the cell (temperature 1.0, top_p 0.9) is point 4
    assert sweeps.table([point(**c) for c in cells]).splitlines()[0].startswith("temperature,top_p,samples")


def test_a_grid_refuses_the_same_knob_twice_and_a_sweep_too_large():
    with pytest.raises(ParamError, match="must differ"):
        sweeps.grid("temperature", [0.5], "temperature", [1.0])
    with pytest.raises(ParamError, match=r"16 x 16 x 4 = 1024 completions; a sweep makes at most 512"):
        sweeps.grid("temperature", list(range(16)), "top_k", list(range(16)), samples=4)
