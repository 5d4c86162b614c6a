"""Many futures: the prefix tree on hand-made paths, and N futures drawn by the real embedded model."""

from __future__ import annotations

import json
import math

import pytest

from engine.knobs import ParamError
from playground import futures, futures_figures, ui_futures
from playground.ui_events import Stops
from tests.test_ui_events import last, settings

TEXTS = {1: "The", 2: " sea", 3: " sky", 4: " is", 5: " was", 9: "A"}
# Four futures and the run's own path (token, p under the model, q after the sampler).
PATHS = [
    [(1, 0.6, 0.7), (2, 0.5, 0.55), (4, 0.9, 0.95)],
    [(1, 0.6, 0.7), (2, 0.5, 0.55), (5, 0.1, 0.05)],
    [(1, 0.6, 0.7), (3, 0.3, 0.3), (4, 0.8, 0.9)],
    [(9, 0.2, 0.1), (2, 0.4, 0.4), (4, 0.7, 0.8)],
]
OWN = [(1, 0.6, 0.7), (3, 0.3, 0.3), (5, 0.2, 0.1)]


def node(result, *tokens):
    return next(n for n in result["nodes"] if n["id"] == "/".join([futures.ROOT, *map(str, tokens)]))


def test_equal_prefixes_merge_into_one_node_that_counts_the_futures_through_it():
    result = futures.tree(PATHS, OWN, TEXTS, "step 3")
    assert node(result, 1)["count"] == 3 and node(result, 9)["count"] == 1
    assert node(result, 1, 2)["count"] == 2 and node(result, 1, 3)["count"] == 1
    assert node(result, 9, 2)["parent"] == "root/9" and node(result, 9, 2)["depth"] == 2
    # The same token after another prefix is another node.
    assert node(result, 1, 2)["id"] != node(result, 9, 2)["id"]


def test_a_node_keeps_its_tokens_probability_under_the_model_and_after_the_sampler():
    result = futures.tree(PATHS, OWN, TEXTS, "step 3")
    assert (node(result, 1, 2, 5)["p"], node(result, 1, 2, 5)["q"]) == (0.1, 0.05)
    assert node(result, 1, 2, 5)["text"] == " was"


def test_the_runs_own_path_is_marked_and_not_counted_as_a_future():
    result = futures.tree(PATHS, OWN, TEXTS, "step 3")
    assert [n["id"] for n in result["nodes"] if n["own"]] == ["root/1", "root/1/3", "root/1/3/5"]
    assert node(result, 1, 3, 5)["count"] == 0  # only the run went there
    assert node(result, 1, 3)["count"] == 1


def test_a_nodes_continuations_are_the_distinct_texts_through_it_most_common_first():
    paths = PATHS + [PATHS[0]]
    result = futures.tree(paths, OWN, TEXTS, "start")
    assert futures.continuations(result, "root/1/2") == [("The sea is", 2, False), ("The sea was", 1, False)]
    assert futures.continuations(result, "root/1/3") == [("The sky is", 1, False), ("The sky was", 0, True)]
    assert sum(c for _, c, _ in futures.continuations(result, futures.ROOT)) == 5


def test_the_summary_says_how_many_texts_differ_and_where_the_runs_own_sits():
    said = futures.summary(futures.tree(PATHS, OWN, TEXTS, "start"))
    assert "4 futures gave 4 different texts" in said
    assert "'The', began 3 of them" in said
    assert "as 3 of 4 futures did; 0 of 4 repeated it whole" in said


def test_the_icicle_has_a_box_per_node_sized_by_the_paths_through_it():
    result = futures.tree(PATHS, OWN, TEXTS, "step 3")
    icicle = futures_figures.tree_figure(result).data[0]
    assert list(icicle.ids) == ["root"] + [n["id"] for n in result["nodes"]]
    values = dict(zip(icicle.ids, icicle.values))
    assert values["root"] == 5 and values["root/1"] == 4 and values["root/1/3/5"] == 1
    # Sizes add up: a parent holds its children (branchvalues "total").
    for n in result["nodes"]:
        children = [values[m["id"]] for m in result["nodes"] if m["parent"] == n["id"]]
        assert not children or sum(children) == values[n["id"]]
    assert "★" in dict(zip(icicle.ids, icicle.labels))["root/1/3"]


def test_the_tree_exports_as_json_that_reads_back():
    result = futures.tree(PATHS, OWN, TEXTS, "start")
    assert json.loads(futures.to_json(result)) == json.loads(json.dumps(result))


@pytest.mark.parametrize("n, k, param", [(0, 4, "futures"), (129, 4, "futures"), (2.5, 4, "futures"),
                                         (4, 0, "tokens per future"), (4, 17, "tokens per future")])
def test_futures_and_tokens_out_of_range_are_refused_naming_the_control(n, k, param):
    with pytest.raises(ParamError) as e:
        futures.check(n, k, max_rows=128)
    assert e.value.param == param and "[1, " in str(e.value)


# --- on the real model ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def runs(lm, host):
    from playground import ui_events

    return last(ui_events.generate(host, Stops(), settings(lm, max_tokens="8", temperature=1.2), "s"))["runs"]


@pytest.mark.model
def test_futures_from_a_step_continue_the_runs_tokens_before_it(lm, host, runs):
    outs = list(ui_futures.run_futures(host, Stops(), runs, 0, 1, 3, "the selected step", 6, 4, "s"))
    assert "<progress" in outs[0]["futures_status"]
    result = outs[-1]["futures_state"]
    assert len(result["futures"]) == 6 and all(1 <= len(f) <= 4 for f in result["futures"])
    steps = runs[0]["completions"][0]["steps"]
    assert result["own"] == [s["token_id"] for s in steps[3:7]]
    assert result["root"] == "step 3"
    # Each first-level node's p is that token's probability under the model at step 3.
    raw = {t["id"]: math.exp(t["raw_logprob"]) for t in steps[3]["top"]}
    for n in result["nodes"]:
        if n["depth"] == 1 and n["token"] in raw:
            assert n["p"] == pytest.approx(raw[n["token"]], rel=0.05, abs=1e-3)
    saved = json.loads(open(outs[-1]["futures_json"]).read())
    assert saved["futures"] == result["futures"]
    assert (saved["step"], saved["tokens"], saved["seed"], saved["params"]["n"]) == (3, 4, 0, 6)


@pytest.mark.model
def test_the_same_futures_come_back_each_time(host, runs):
    def draw():
        return last(ui_futures.run_futures(host, Stops(), runs, 0, 1, 2, "the start", 4, 3, "s"))["futures_state"]["futures"]

    assert draw() == draw()


@pytest.mark.model
def test_a_run_of_a_model_that_is_not_loaded_says_the_futures_need_it(host, runs):
    other = [{**runs[0], "model": "someone/else"}]
    out = last(ui_futures.run_futures(host, Stops(), other, 0, 1, 0, "the start", 4, 3, "s"))
    assert "needs the model" in out["futures_status"]


def test_clicking_a_node_lists_its_continuations():
    result = futures.tree(PATHS, OWN, TEXTS, "start")
    html = ui_futures.pick_node(result, "root/1/2")["futures_texts"]
    assert "The sea is" in html and "The sky" not in html and "2 futures" in html


def test_the_runs_own_text_is_listed_beside_the_futures_but_not_counted_among_them():
    result = futures.tree(PATHS, OWN, TEXTS, "start")
    html = ui_futures.continuations_html(result, "root/1")
    assert "3 futures, 3 distinct texts" in html
    assert "The sky was</span> <b>★ the run's own text</b>" in html
