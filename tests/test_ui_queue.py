"""Gradio's queue follows the scheduler's limits: no page waits in Gradio for room the scheduler has."""

from __future__ import annotations

from engine.scheduler import Limits
from playground.models import ModelHost
from playground.ui import build_ui
from tests.ui_server import wordy_lm


def test_model_events_run_as_many_at_once_as_the_scheduler_decodes_and_queues():
    demo = build_ui(ModelHost(wordy_lm(), limits=Limits(max_rows=5, max_queue=7)))
    model = [fn for fn in demo.fns.values() if fn.concurrency_id == "model"]
    assert model and {fn.concurrency_limit for fn in model} == {5 + 7}
    # Gradio runs at most max_threads events of every kind at once: the model's and, beside them, one of
    # each other event per row.
    assert demo.max_threads == 5 + 7 + 5
    assert demo._queue.max_size == 7 and demo._queue.default_concurrency_limit == 5


def test_the_default_limits_let_every_row_of_the_batch_be_a_page():
    demo = build_ui(ModelHost(wordy_lm()))
    limits = Limits()
    assert {fn.concurrency_limit for fn in demo.fns.values() if fn.concurrency_id == "model"} == \
           {limits.max_rows + limits.max_queue}


def test_pages_keep_no_run_history_in_the_browser():
    """Gradio's run history rewrites every event's inputs and outputs into localStorage as a run streams;
    the playground keeps runs with Save and Load instead."""
    import httpx

    from tests.ui_server import serve

    with serve(ModelHost(wordy_lm())) as url:
        assert httpx.get(url + "/config").json()["run_history"] is False


def test_a_page_opened_without_a_link_runs_no_server_event_on_load_that_sets_the_knobs():
    """Every output of any event a page has run costs it work on each later update (Gradio 6 refreshes
    their loading status): the share-link event, whose outputs are all the knobs, runs only for a link."""
    demo = build_ui(ModelHost(wordy_lm()))
    knobs = {demo.blocks[i] for i in demo.blocks if getattr(demo.blocks[i], "elem_id", None) in
             {"knob-temperature", "knob-top_k", "knob-seed"}}
    on_load = [fn for fn in demo.fns.values() if any(t[1] == "load" for t in fn.targets) and fn.fn is not None]
    assert knobs and on_load
    assert not any(knobs & set(fn.outputs) for fn in on_load)


def test_generate_and_a_selected_step_each_start_as_few_server_events_as_they_need():
    """Generate starts one event (manual mode's included), and a selected step one for the teaching views
    that follow it, beside its picture and what-if: each event a page runs costs it and the server work."""
    demo = build_ui(ModelHost(wordy_lm()))
    ids = {getattr(b, "elem_id", None): i for i, b in demo.blocks.items()}
    on_click = [fn for fn in demo.fns.values() if (ids["generate"], "click") in fn.targets and fn.fn is not None]
    assert len(on_click) == 1
    on_step = [fn for fn in demo.fns.values() if (ids["step"], "change") in fn.targets and fn.fn is not None]
    after_step = [fn for fn in demo.fns.values() if fn.trigger_after in {f._id for f in on_step}]
    assert len(on_step) == 1 and len(after_step) == 2  # the what-if, and the teaching views together
