"""A run as one JSON file: saved runs and API responses with trace load back, and every chart works
from the file alone."""

from __future__ import annotations

import json

import httpx
import pytest

from engine.knobs import SamplingParams
from engine.scheduler import Scheduler
from playground import figures, runfile, tokenview, ui_runs

MESSAGES = [{"role": "user", "content": "Name a bird."}]


@pytest.fixture(scope="module")
def run(lm):
    gen, run = ui_runs.start(lm, MESSAGES, SamplingParams.build(n=2, max_tokens=6, seed=4, top_k=30), "Generated")
    for run in ui_runs.advance(lm, gen, run, every_s=0.0):
        pass
    return run


def charts(run: dict) -> None:
    """Every picture the UI draws for a run and its steps, built from the run alone."""
    tokenview.completions_html(run["completions"])
    for c in run["completions"]:
        steps = c["steps"]
        tokenview.token_view_html(steps, run["texts"])
        figures.timeline_figure(steps, run["texts"])
        for s in steps:
            figures.inspector_figure(s, run["texts"], run["params"])
            figures.draw_figure(s, run["texts"])
            figures.stage_sentences(s, run["texts"], run["params"])


@pytest.mark.model
def test_a_saved_run_loads_back_equal(run):
    loaded, note = runfile.loads(runfile.dumps(run))
    assert loaded == {**run, "waiting": None}
    assert "Loaded the saved run 'Generated'" in note
    charts(loaded)


@pytest.mark.model
def test_the_file_holds_model_messages_every_knob_seed_and_trace(run):
    data = json.loads(runfile.dumps(run))
    assert data["format"] == "sampling-playground/run" and data["version"] == 1
    assert data["model"] == run["model"] and data["messages"] == MESSAGES
    assert data["params"]["seed"] == 4 and set(SamplingParams.build().to_dict()) <= set(data["params"])
    assert len(data["completions"][1]["steps"]) == len(run["completions"][1]["steps"])


@pytest.mark.server
@pytest.mark.model
def test_an_api_response_with_trace_loads_and_draws(server, lm):
    model = httpx.get(server.api + "/models", timeout=30).json()["data"][0]["id"]
    body = {"model": model, "messages": MESSAGES, "max_tokens": 5, "seed": 3, "n": 2, "temperature": 0.8,
            "trace": True}
    response = httpx.post(server.api + "/chat/completions", json=body, timeout=120)
    assert response.status_code == 200, response.text
    response = response.json()
    run, note = runfile.loads(json.dumps(response))
    assert "Loaded an API response" in note and "carries no request" in note
    assert [c["text"] for c in run["completions"]] == [c["message"]["content"] for c in response["choices"]]
    assert run["params"]["seed"] == 3 and run["stages"] == response["choices"][0]["trace"]["stages"]
    charts(run)
    # With the request beside it, the settings are the request's.
    with_request, _ = runfile.loads(json.dumps({"request": body, "response": response}))
    assert with_request["params"]["temperature"] == 0.8 and with_request["messages"] == MESSAGES
    # ... and its prompt is rebuilt as the API built it, so a what-if on its steps is exact.
    with_request = ui_runs.with_prompt(lm, with_request)
    scheduler = Scheduler(lm)
    try:
        recorded = with_request["completions"][1]["steps"][2]
        snap = ui_runs.snapshot(lm, scheduler, with_request, 1, 2)
        again = ui_runs.what_if(lm, scheduler, snap, with_request, 1, 2, SamplingParams.build(**with_request["params"]))["step"]
    finally:
        scheduler.close()
    assert again["token_id"] == recorded["token_id"] and again["draw"] == recorded["draw"]
    assert again["stages"][-1]["probs"] == pytest.approx(recorded["stages"][-1]["probs"], abs=1e-5)


@pytest.mark.parametrize("text, message", [
    ("not json", "not JSON"),
    ("[1, 2]", "expected a JSON object"),
    ('{"hello": 1}', "not a Sampling Playground run"),
    ('{"choices": [{"index": 0, "message": {"content": "hi"}}]}', "the response has no trace"),
    ('{"format": "sampling-playground/run", "version": 7}', "version 7 is not supported"),
    ('{"format": "sampling-playground/run", "version": 1, "label": "x"}', "the run file lacks model"),
])
def test_a_file_that_is_not_a_run_is_refused_with_a_plain_reason(text, message):
    with pytest.raises(ValueError, match=message):
        runfile.loads(text)


def test_a_run_file_with_an_invalid_knob_names_it():
    data = {"format": "sampling-playground/run", "version": 1, "label": "x", "model": "m", "messages": [],
            "prompt_ids": [], "params": {"temperature": 5}, "stages": ["raw"], "completions": [{"steps": []}], "texts": {}}
    with pytest.raises(ValueError, match=r"temperature is invalid: temperature must be in \[0, 2\]"):
        runfile.loads(json.dumps(data))
