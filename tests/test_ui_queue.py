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


def _events(demo):
    ids = {getattr(b, "elem_id", None): i for i, b in demo.blocks.items()}
    fns = [fn for fn in demo.fns.values() if fn.fn is not None]
    on = lambda elem, event: [fn for fn in fns if (ids[elem], event) in fn.targets]  # noqa: E731
    after = lambda first: [fn for fn in fns if fn.trigger_after in {f._id for f in first}]  # noqa: E731
    return on, after


def test_generate_starts_one_event_and_the_finished_run_is_drawn_by_one_more():
    """Every event a page runs costs it a refresh of every used component's loading status, and the server
    an event's work: a run is its own event and one that draws it (its step, what-if and teaching views)."""
    on, after = _events(build_ui(ModelHost(wordy_lm())))
    generate = on("generate", "click")
    drawn = after(generate)
    assert len(generate) == 1 and len(drawn) == 1 and after(drawn) == []


def test_a_step_set_by_an_event_draws_nothing_by_itself_and_a_users_move_draws_once():
    """The finished run sets the step slider, and so do the token view, the run and completion pickers and
    manual mode: each draws after it, so the slider's own event is the user's move only."""
    demo = build_ui(ModelHost(wordy_lm()))
    on, after = _events(demo)
    assert on("step", "change") == []
    moved = on("step", "input")
    assert len(moved) == 1 and after(moved) == []
    drawing = [b._id for b in moved[0].outputs]  # the view, what-if and teaching outputs
    for elem, event in (("tokenview", "click"), ("generate", "click"), ("manual-pick", "click")):
        assert [[b._id for b in fn.outputs] for fn in after(on(elem, event))] == [drawing], elem


def test_no_server_event_updates_a_layout_block():
    """A tab row, column or row among a server event's outputs costs the page, at each later status update
    of any event, a walk of everything that block holds (Gradio 6's frontend). Manual mode opens its tab in
    the page; the what-if hides its charts one by one."""
    import gradio as gr

    demo = build_ui(ModelHost(wordy_lm()))
    layout = (gr.Tabs, gr.Tab, gr.Column, gr.Row, gr.Group, gr.Accordion)
    served = [fn for fn in demo.fns.values() if fn.fn is not None]
    assert served
    assert not [(fn.name, type(b).__name__) for fn in served for b in fn.outputs if isinstance(b, layout)]


def test_manual_mode_opens_its_tab_without_the_server():
    demo = build_ui(ModelHost(wordy_lm()))
    ids = {getattr(b, "elem_id", None): i for i, b in demo.blocks.items()}
    opens = [fn for fn in demo.fns.values() if fn.fn is None and (ids["generate"], "click") in fn.targets]
    assert len(opens) == 1 and "selected: 'manual'" in opens[0].js
    assert [getattr(b, "elem_id", None) for b in opens[0].outputs] == ["teaching"]


def test_pages_waiting_together_get_no_place_in_the_queue_each_time_one_of_them_starts():
    """Gradio's "auto" status rate sends every waiting event its place whenever one starts: eight pages that
    clicked at once got up to five such messages each, and each costs a page a status refresh. The place is
    sent on a timer instead (a run's place in the model's queue is the run's own text)."""
    import threading
    from collections import Counter

    import httpx

    from tests.ui_server import event_inputs, find_event, serve, stream_event

    with serve(ModelHost(wordy_lm())) as url:
        config = httpx.get(url + "/config").json()
        fn = find_event(config, "generate")
        data = event_inputs(config, fn, message="Count.", **{"knob-max_tokens": "8", "knob-seed": "1"})
        got = [Counter() for _ in range(8)]

        def page(k: int) -> None:
            got[k].update(m["msg"] for _, m in stream_event(url, fn, data))

        pages = [threading.Thread(target=page, args=(k,)) for k in range(8)]
        [p.start() for p in pages]
        [p.join() for p in pages]
    assert all(c["process_completed"] == 1 for c in got)
    places = [c["estimation"] for c in got]
    # the one a joining event gets, and on a slow machine perhaps one from the timer
    assert all(1 <= p <= 2 for p in places) and sum(places) <= 8 + 2, places
