"""Manual mode's handlers as plain functions, on the real embedded model, without a browser."""

from __future__ import annotations

import pytest

from engine.knobs import KNOBS
from playground import manual_events, manual_runs
from playground.manual_runs import Waits
from playground.ui_events import Inputs, Stops
from playground.ui_settings import UI_KNOBS, control_spec

pytestmark = pytest.mark.model


def settings(lm, message="Name a colour.", response_format="text", **knobs) -> Inputs:
    values = {name: control_spec(KNOBS[name]).value for name in UI_KNOBS}
    values.update({"max_tokens": "4", "seed": "3", "top_k": 5, **knobs})
    return Inputs(lm.name, "", message, [], values, tool_choice="auto", response_format=response_format)


def outputs(events) -> dict:
    """Every output the handler set, the last value of each."""
    out = {}
    for o in events:
        out.update(o)
    return out


def test_with_manual_mode_off_generate_runs_and_manual_start_does_nothing(lm, host):
    assert outputs(manual_events.start(host, Stops(), settings(lm), "s", manual=False)) == {}
    assert "runs" in outputs(manual_events.generate(host, Stops(), settings(lm), "s", manual=False))


def test_with_manual_mode_on_generate_waits_at_step_0_and_generates_nothing(lm, host):
    out = outputs(manual_events.generate(host, Stops(), settings(lm), "s", manual=True))
    assert "**Step 0** is waiting for you" in out["manual_note"] and "share link carries only" in out["manual_note"]
    assert out["manual_table"].count("<tr data-token") == manual_runs.PAGE
    assert out["manual_run"]["completions"][0]["steps"] == [] and "runs" not in out


def test_a_pick_a_draw_and_a_rewind_each_show_the_run_and_the_next_step(lm, host):
    run = outputs(manual_events.start(host, Stops(), settings(lm), "s", manual=True))["manual_run"]
    wait = manual_runs.waiting("s", run)
    removed = int(wait.vocabulary.rank.argmax())  # the least likely token: top-k removed it
    out = outputs(manual_events.pick(host, Stops(), run, removed, "s"))
    assert "top-k had removed it" in out["manual_note"] and "**Step 1** is waiting" in out["manual_note"]
    assert out["runs"][0] is out["manual_run"] and out["manual_run"]["hand_picked"] == [0]
    out = outputs(manual_events.draw(host, Stops(), out["manual_run"], "s"))
    assert "The sampler drew" in out["manual_note"] and len(out["runs"][0]["completions"][0]["steps"]) == 2
    out = outputs(manual_events.rewind(host, Stops(), out["manual_run"], 2, "s"))
    assert "Rewound 2 steps." in out["manual_note"] and out["manual_run"]["completions"][0]["steps"] == []


def test_a_search_pages_the_table_on_the_server(lm, host):
    run = outputs(manual_events.start(host, Stops(), settings(lm), "s", manual=True))["manual_run"]
    out = outputs(manual_events.browse(host, Stops(), run, "s", search="blue"))
    assert "tokens match 'blue'" in out["manual_table"] and out["manual_page"] == 1
    out = outputs(manual_events.browse(host, Stops(), run, "s", page=3))
    assert "Rows 401–600 of all 49,152 tokens (page 3 of 246)" in out["manual_table"]


def test_a_step_let_go_while_idle_is_computed_again_with_a_note(lm, host, monkeypatch):
    now = [0.0]
    monkeypatch.setattr(manual_runs, "WAITS", Waits(idle_s=600, clock=lambda: now[0]))
    run = outputs(manual_events.start(host, Stops(), settings(lm), "s", manual=True))["manual_run"]
    now[0] = 1800
    notes = [o["manual_note"] for o in manual_events.browse(host, Stops(), run, "s") if "manual_note" in o]
    assert "waited 30 minutes without an action, so the step it waited at was let go" in notes[0]
    assert "**Step 0** is waiting for you" in notes[-1]


def test_a_refused_token_changes_nothing_and_says_why(lm, host):
    ui = settings(lm, response_format="json_object")
    run = outputs(manual_events.start(host, Stops(), ui, "s", manual=True))["manual_run"]
    word = lm.tokenizer.encode("Hello", add_special_tokens=False)[0]
    out = outputs(manual_events.pick(host, Stops(), run, word, "s"))
    assert out == {"manual_note": "⚠️ Refused: the grammar of response_format (json_object) does not allow 'Hello' here. "
                                  "Only what the grammar or the thinking budget forbids is refused."}


def test_a_token_box_that_is_empty_or_not_a_number_is_named(lm, host):
    run = outputs(manual_events.start(host, Stops(), settings(lm), "s", manual=True))["manual_run"]
    assert outputs(manual_events.pick(host, Stops(), run, "", "s")) == {
        "manual_note": "Click a row of the table (or type a token id) first, then press Pick."}
    note = outputs(manual_events.pick(host, Stops(), run, "sea", "s"))["manual_note"]
    assert note == "⚠️ **token**: a token id is a whole number in [0, 49151] (click a row to fill it in), got 'sea'"
    assert "**Step 1** is waiting" in outputs(manual_events.pick(host, Stops(), run, "#42", "s"))["manual_note"]
