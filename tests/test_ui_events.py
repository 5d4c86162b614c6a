"""The UI's handlers as plain functions, on the real embedded model, without a browser."""

from __future__ import annotations

import csv
from pathlib import Path

import plotly.graph_objects as go
import pytest

from engine.knobs import KNOBS
from playground import ui_events
from playground.ui_events import Inputs, Stops
from playground.ui_settings import UI_KNOBS, control_spec

pytestmark = pytest.mark.model
ROOT = Path(__file__).resolve().parent.parent


def settings(lm, message="Name a river.", **knobs) -> Inputs:
    values = {name: control_spec(KNOBS[name]).value for name in UI_KNOBS}
    values.update({"max_tokens": "6", "seed": "3", **knobs})
    return Inputs(lm.name, "", message, [], values, tool_choice="auto")


def last(events) -> dict:
    out = {}
    for out in events:
        pass
    return out


@pytest.fixture(scope="module")
def runs(lm, host):
    return last(ui_events.generate(host, Stops(), settings(lm, repetition_penalty=1.2), "s"))["runs"]


def test_stop_ends_every_run_of_its_session_and_no_other():
    stops = Stops()
    with stops.run("a") as one, stops.run("a") as two, stops.run("b") as other:
        assert stops.stop("a") == 2
        assert one.is_set() and two.is_set() and not other.is_set()
    assert stops.running("a") == 0 and stops.running("b") == 0  # a run that ended takes its flag away


def test_a_new_run_does_not_take_over_an_earlier_runs_stop_flag():
    stops = Stops()
    with stops.run("a") as first:
        with stops.run("a"):
            pass  # a second run of the session starts and ends
        stops.stop("a")
        assert first.is_set()


def test_generate_keeps_the_run_and_selects_its_most_uncertain_step(lm, runs):
    run = runs[0]
    assert run["params"]["seed"] == 3 and len(run["completions"][0]["steps"]) == 6
    assert run["params"]["repetition_penalty"] == 1.2


def test_a_bad_setting_is_named_and_nothing_runs(lm, host):
    outs = list(ui_events.generate(host, Stops(), settings(lm, seed="abc"), "s"))
    assert len(outs) == 1 and "**seed**" in outs[0]["run_error"] and "runs" not in outs[0]


def test_stop_cancels_a_generation_in_flight(lm, host):
    stops = Stops()
    events = ui_events.generate(host, stops, settings(lm, "Tell a long story.", max_tokens="400"), "s")
    next(events)
    stops.stop("s")
    out = last(events)
    assert out["runs"][0]["completions"][0]["finish_reason"] == "cancelled"


def test_a_finished_runs_last_message_selects_it_empties_the_message_and_shows_its_prompt(lm, host):
    out = last(ui_events.generate(host, Stops(), settings(lm, repetition_penalty=1.2), "s"))
    run = out["runs"][0]
    assert out["message"] == "" and out["chat"] == out["history"] and out["chat"][-2]["content"] == "Name a river."
    assert out["step"]["value"] == ui_events.most_uncertain(run["completions"][0]["steps"])
    assert out["view"]["value"] == 0 and out["completion"]["value"] == "1"
    assert out["prompt"] == lm.tokenizer.decode(run["prompt_ids"])


def test_drawing_a_step_sends_its_view_what_if_and_teaching_views_in_one_message(lm, host, runs):
    from playground.ui import _draw_step

    ui = settings(lm, repetition_penalty=1.2)
    drawn = list(_draw_step(host, Stops(), ui, runs, 0, "1", 2, "raw probability", True, 100, 0, "", "", "s"))
    assert len(drawn) == 1
    assert drawn[0]["sentences"].startswith("**Step 2**") and "**Step 2**" in drawn[0]["whatif_note"]
    assert drawn[0]["inspector"] is not None


def test_drawing_a_step_whose_what_if_must_replay_shows_the_view_before_the_replay(lm, host, runs, monkeypatch):
    from engine.whatif import Snapshots
    from playground import ui_runs
    from playground.ui import _draw_step

    ui = settings(lm, repetition_penalty=1.2)
    monkeypatch.setattr(ui_runs, "SNAPSHOTS", Snapshots())  # the step's logits are gone: the what-if replays
    drawn = _draw_step(host, Stops(), ui, runs, 0, "1", 3, "raw probability", True, 100, 0, "", "", "s")
    first = next(drawn)
    assert first["sentences"].startswith("**Step 3**") and "replaying" in first["whatif_note"]
    assert "**Step 3**" in last(drawn)["whatif_note"]


def test_show_draws_the_selected_step_and_nothing_without_a_run(runs):
    out = ui_events.show(runs, 0, "1", 2, "raw probability")
    assert out["sentences"].startswith("**Step 2**") and out["inspector"] is not None
    assert ui_events.show([], None, "1", 0, "raw probability")["inspector"] is None


def test_what_if_with_the_runs_settings_then_another_temperature(lm, host, runs):
    first = last(ui_events.what_if(host, Stops(), settings(lm, repetition_penalty=1.2), runs, 0, "1", 4, True, "s"))
    assert "the run's own settings" in first["whatif_note"] and "repetition penalty" in first["ledger"]
    hot = last(ui_events.what_if(host, Stops(), settings(lm, repetition_penalty=1.2, temperature=1.6), runs, 0, "1", 4, True, "s"))
    assert "Changed: temperature 1.0 → 1.6" in hot["whatif_note"]
    assert all(hot[k]["visible"] is True for k in ui_events.WHATIF_CHARTS) and hot["whatif_plot"]["value"] is not None
    assert "temperature 1.6 flattened" in hot["whatif_sentences"]["value"]  # a sentence per stage, as for recorded steps
    assert "repetition penalty" in hot["ledger"]


def test_what_if_under_the_runs_own_settings_draws_no_second_copy_of_the_steps_charts(lm, host, runs):
    same = last(ui_events.what_if(host, Stops(), settings(lm, repetition_penalty=1.2), runs, 0, "1", 4, True, "s"))
    assert all(same[k] == {"__type__": "update", "visible": False} for k in ui_events.WHATIF_CHARTS)
    assert "Move a setting" in same["whatif_note"]


def test_what_if_is_quiet_when_off_and_names_a_bad_setting(lm, host, runs):
    assert list(ui_events.what_if(host, Stops(), settings(lm), runs, 0, "1", 1, False, "s")) == []
    out = last(ui_events.what_if(host, Stops(), settings(lm, top_p=0), runs, 0, "1", 1, True, "s"))
    assert "**top_p**" in out["whatif_note"]


def test_what_if_on_a_run_without_its_prompt_says_what_it_needs(lm, host, runs):
    bare = [{**runs[0], "prompt_ids": []}]
    out = last(ui_events.what_if(host, Stops(), settings(lm), bare, 0, "1", 1, True, "s"))
    assert "needs the prompt" in out["whatif_note"]


def test_continue_here_adds_a_run_that_shares_the_earlier_tokens(lm, host, runs):
    out = last(ui_events.continue_here(host, Stops(), settings(lm, temperature=1.5), runs, 0, "1", 3, "s"))
    new = out["runs"][-1]
    assert new["label"].startswith("What-if 1: step 3")
    assert [s["token_id"] for s in new["completions"][0]["steps"][:3]] == \
           [s["token_id"] for s in runs[0]["completions"][0]["steps"][:3]]


def test_a_sweep_makes_a_point_per_value_a_plot_and_a_csv(lm, host, runs):
    out = last(ui_events.sweep(host, Stops(), settings(lm), runs, "temperature", 0.0, 1.0, 3, 2, 4, "s"))
    result = out["sweep_state"]
    assert [p["settings"] for p in result["points"]] == [{"temperature": v} for v in (0.0, 0.5, 1.0)]
    assert all(len(p["texts"]) == 2 for p in result["points"])
    assert len(go.Figure(out["sweep_plot"]).data) == 6
    rows = list(csv.reader(Path(out["sweep_csv"]).read_text().splitlines()))
    assert rows[0][0] == "temperature" and len(rows) == 4
    # temperature 0 is greedy: both of its samples are the same text
    assert len(set(result["points"][0]["texts"])) == 1
    picked = ui_events.pick_sweep_point(result, 2)
    assert "temperature = 1.0" in picked["sweep_texts"]


def test_a_two_knob_sweep_fills_a_heatmap(lm, host, runs):
    out = last(ui_events.sweep(host, Stops(), settings(lm), runs, "temperature", 0.5, 1.0, 2, 1, 3, "s",
                               knob2="top_k", start2=1, end2=5, count2=2))
    assert [p["settings"] for p in out["sweep_state"]["points"]] == [
        {"temperature": 0.5, "top_k": 1}, {"temperature": 0.5, "top_k": 5}, {"temperature": 1.0, "top_k": 1},
        {"temperature": 1.0, "top_k": 5}]
    assert {t.type for t in go.Figure(out["sweep_plot"]).data} == {"heatmap"}
    # top_k 1 is greedy whatever the temperature
    texts = {tuple(p["texts"]) for p in out["sweep_state"]["points"] if p["settings"]["top_k"] == 1}
    assert len(texts) == 1


def test_a_sweep_outside_the_knobs_range_says_so(lm, host, runs):
    out = last(ui_events.sweep(host, Stops(), settings(lm), runs, "top_p", 0.0, 1.0, 3, 2, 4, "s"))
    assert "top_p must be in (0, 1]" in out["sweep_status"]


def test_a_saved_run_loads_back_with_its_settings(host, runs):
    saved = ui_events.save_run(runs, 0)
    loaded = ui_events.load_run(host, saved["run_file"])
    assert loaded["runs"][0]["completions"] == runs[0]["completions"]
    assert loaded["repetition_penalty"] == 1.2 and loaded["seed"] == "3" and loaded["message"] == "Name a river."
    assert "Could not load" in ui_events.load_run(host, __file__)["file_note"]


def test_a_link_restores_settings_and_names_what_it_could_not(lm, host):
    out = ui_events.apply_link(host, "?temperature=0.4&message=Hello&model=nope%2Fmodel&top_k=-3")
    assert out["temperature"] == 0.4 and out["message"] == "Hello" and "model" not in out
    assert "nope/model" in out["link_note"] and "top_k" in out["link_note"]
    assert ui_events.apply_link(host, "") == {}


def test_a_share_link_carries_the_prompt_and_changed_knobs(lm):
    out = ui_events.share_link(settings(lm, temperature=0.5), "http://host:7860")
    assert out["share_url"].startswith("http://host:7860/?") and "temperature=0.5" in out["share_url"]


def test_the_ui_uses_no_private_gradio_attributes():
    for path in (ROOT / "playground").glob("*.py"):
        assert "._data" not in path.read_text(), path.name


def test_loading_a_model_without_a_name_says_what_to_type(host):
    assert "Type a Hugging Face model id" in ui_events.load_model(host, "  ")["model_info"]


def test_an_order_preset_fills_the_sampler_order():
    assert ui_events.pick_order("llama.cpp")["sampler_order"].startswith("logit_bias, ")


def test_every_model_action_joins_the_queue_as_its_browser_sessions_client(lm, host, runs, monkeypatch):
    scheduler = host.scheduler(lm.name)
    clients = []
    submit = scheduler.submit

    def spy(job, listener=None, client=None):
        clients.append(client)
        return submit(job, listener=listener, client=client)

    monkeypatch.setattr(scheduler, "submit", spy)
    last(ui_events.generate(host, Stops(), settings(lm), "page-1"))
    last(ui_events.sweep(host, Stops(), settings(lm), runs, "temperature", 0.5, 1.0, 2, 1, 2, "page-2"))
    assert clients and set(clients) == {"session:page-1", "session:page-2"}
