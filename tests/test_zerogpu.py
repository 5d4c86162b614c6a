"""ZeroGPU mode, forced on the CPU: every model action is one GPU call whose request and yields pass
through pickle (playground/zerogpu.py `pickled`), on the real embedded model, without a browser."""

from __future__ import annotations

import collections
import os
import subprocess
import sys
import threading

import pytest
import torch
from fastapi.testclient import TestClient
from torch.profiler import ProfilerActivity, profile, record_function

import app as app_module
from engine.knobs import SamplingParams
from engine.scheduler import Limits
from playground import ui_events, ui_runs, zerogpu
from playground.models import ModelHost
from playground.ui_events import Stops
from tests.test_ui_events import last, settings

pytestmark = pytest.mark.model
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def host(lm):
    return ModelHost(lm, gpu=zerogpu.pickled)


@pytest.fixture(scope="module")
def runs(lm, host):
    return last(ui_events.generate(host, Stops(), settings(lm, repetition_penalty=1.2), "s"))["runs"]


def calls(host) -> int:
    return host.scheduler().calls


def alternative(run, position: int) -> int:
    step = run["completions"][0]["steps"][position]
    return next(t["id"] for t in step["top"] if t["id"] != step["token_id"])


def test_generate_is_one_gpu_call_and_records_the_run(lm, host):
    before = calls(host)
    run = last(ui_events.generate(host, Stops(), settings(lm, n=2), "s"))["runs"][0]
    assert calls(host) == before + 1
    assert [len(c["steps"]) for c in run["completions"]] == [6, 6]
    assert all(c["finish_reason"] == "length" and c["text"] for c in run["completions"])


def test_the_same_seed_gives_the_same_text_as_the_shared_loop(lm, host, closes_schedulers):
    ui = settings(lm, "Tell me about rivers.", n=2, max_tokens="16", temperature=1.1, seed="7")
    shared = last(ui_events.generate(ModelHost(lm), Stops(), ui, "s"))["runs"][0]
    mine = last(ui_events.generate(host, Stops(), ui, "s"))["runs"][0]
    assert [[s["token_id"] for s in c["steps"]] for c in mine["completions"]] == \
           [[s["token_id"] for s in c["steps"]] for c in shared["completions"]]
    assert [c["text"] for c in mine["completions"]] == [c["text"] for c in shared["completions"]]


def test_a_what_if_on_a_captured_step_costs_no_gpu_call(lm, host, runs):
    before = calls(host)
    out = last(ui_events.what_if(host, Stops(), settings(lm, repetition_penalty=1.2), runs, 0, "1", 4, True, "s"))
    assert "the run's own settings" in out["whatif_note"]
    hot = last(ui_events.what_if(host, Stops(), settings(lm, repetition_penalty=1.2, temperature=1.6), runs, 0, "1", 4, True, "s"))
    assert "temperature 1.6 flattened" in hot["whatif_sentences"]["value"]
    assert calls(host) == before


def test_a_what_if_on_a_step_without_a_snapshot_replays_it_in_one_gpu_call(lm, host):
    run = last(ui_events.generate(host, Stops(), settings(lm, n=2, seed="4"), "s"))["runs"]
    before = calls(host)
    # Completion 2's logits were not captured: one replay brings them, and its snapshots stay here.
    out = last(ui_events.what_if(host, Stops(), settings(lm), run, 0, "2", 3, True, "s"))
    assert "the run's own settings" in out["whatif_note"]
    assert calls(host) == before + 1
    last(ui_events.what_if(host, Stops(), settings(lm, temperature=1.5), run, 0, "2", 3, True, "s"))
    assert calls(host) == before + 1


def test_branch_continues_from_an_alternative_in_one_gpu_call(host, runs):
    before = calls(host)
    out = last(ui_events.branch(host, Stops(), runs, 0, "1", 2, alternative(runs[0], 2), "s"))
    branch = out["runs"][-1]
    assert calls(host) == before + 1
    assert branch["completions"][0]["steps"][2]["token_id"] == alternative(runs[0], 2)
    assert len(branch["completions"][0]["steps"]) > 3


def test_continue_here_keeps_the_earlier_tokens(lm, host, runs):
    out = last(ui_events.continue_here(host, Stops(), settings(lm, temperature=1.5), runs, 0, "1", 3, "s"))
    new = out["runs"][-1]
    assert [s["token_id"] for s in new["completions"][0]["steps"][:3]] == \
           [s["token_id"] for s in runs[0]["completions"][0]["steps"][:3]]


def test_compare_runs_both_sides_in_one_gpu_call(lm, host, runs):
    before = calls(host)
    out = last(ui_events.compare(host, Stops(), settings(lm), runs, '{"temperature": 0.3}', "s"))
    assert calls(host) == before + 1
    assert len(out["runs"]) == len(runs) + 2


def test_compare_gives_each_side_the_text_of_the_shared_loop(lm, host, closes_schedulers):
    ui = settings(lm, "Tell me about rivers.", max_tokens="16", temperature=1.1, seed="7")
    shared = last(ui_events.compare(ModelHost(lm), Stops(), ui, [], '{"temperature": 0.4}', "s"))["runs"]
    mine = last(ui_events.compare(host, Stops(), ui, [], '{"temperature": 0.4}', "s"))["runs"]
    assert [[s["token_id"] for s in r["completions"][0]["steps"]] for r in mine] == \
           [[s["token_id"] for s in r["completions"][0]["steps"]] for r in shared]
    assert [r["completions"][0]["text"] for r in mine] == [r["completions"][0]["text"] for r in shared]


def test_replay_runs_both_orders_in_one_gpu_call(host, runs):
    before = calls(host)
    out = last(ui_events.replay(host, Stops(), runs, 0, "1", 2, "llama.cpp", "s"))
    assert "With the same random number" in out["replay_note"]
    assert calls(host) == before + 1


def test_replay_redoes_the_step_under_each_order(host, runs):
    out = last(ui_events.replay(host, Stops(), runs, 0, "1", 2, "llama.cpp", "s"))
    assert "With the same random number" in out["replay_note"]


def test_a_sweep_makes_a_point_per_value_in_one_gpu_call(lm, host, runs, monkeypatch):
    # The sweep says when it has submitted every point: its call does not wait for a quiet spell (an hour here).
    monkeypatch.setattr(zerogpu, "GATHER_S", 3600.0)
    before = calls(host)
    done: list[dict] = []
    worker = threading.Thread(target=lambda: done.append(last(ui_events.sweep(
        host, Stops(), settings(lm), runs, "temperature", 0.0, 1.0, 3, 2, 4, "s"))), daemon=True)
    worker.start()
    worker.join(timeout=300)
    assert done, "the sweep's call waited for its caller to go quiet"
    out = done[0]
    points = out["sweep_state"]["points"]
    assert calls(host) == before + 1
    assert [p["settings"] for p in points] == [{"temperature": v} for v in (0.0, 0.5, 1.0)]
    assert len(set(points[0]["texts"])) == 1  # temperature 0 is greedy


def test_a_sweep_gives_each_point_the_texts_of_the_shared_loop(lm, host, closes_schedulers):
    ui = settings(lm, "Tell me about rivers.", seed="3")
    shared = last(ui_events.sweep(ModelHost(lm), Stops(), ui, [], "top_p", 0.5, 1.0, 3, 2, 12, "s"))
    mine = last(ui_events.sweep(host, Stops(), ui, [], "top_p", 0.5, 1.0, 3, 2, 12, "s"))
    assert [p["texts"] for p in mine["sweep_state"]["points"]] == [p["texts"] for p in shared["sweep_state"]["points"]]


def test_jobs_of_different_prompts_submitted_together_are_one_call_and_each_keeps_its_text(lm, host, closes_schedulers):
    def jobs():
        return [ui_runs.start(lm, [{"role": "user", "content": text}], SamplingParams.build(temperature=1.0, n=n, max_tokens=10, seed=5),
                              "T", {})[0] for text, n in (("Hi.", 2), ("Tell me a long story about the sea.", 1))]

    def texts(scheduler):
        gens = jobs()
        tickets = [scheduler.submit(g) for g in gens]  # both before either is read, as one action does
        for t in tickets:
            for _ in t:
                pass
        return [g.texts for g in gens]

    shared = texts(ModelHost(lm).scheduler())
    before = calls(host)
    assert texts(host.scheduler()) == shared
    assert calls(host) == before + 1


def test_a_call_decodes_more_rows_than_fit_at_once_in_turns(lm):
    """A sweep larger than the rows the server decodes at once is still one call: its jobs join as rows leave."""
    host = ModelHost(lm, limits=Limits(max_rows=2), gpu=zerogpu.pickled)
    out = last(ui_events.sweep(host, Stops(), settings(lm, seed="3"), [], "temperature", 0.5, 1.0, 3, 2, 3, "s"))
    assert calls(host) == 1
    assert all(len(p["texts"]) == 2 and all(p["texts"]) for p in out["sweep_state"]["points"])


def test_a_grammar_crosses_into_the_call_and_a_required_tool_call_comes_back(lm, host):
    add = {"type": "function", "function": {"name": "add", "parameters": {"type": "object", "properties": {
        "a": {"type": "integer"}, "b": {"type": "integer"}}, "required": ["a", "b"]}}}
    gen, run = ui_runs.start(lm, [{"role": "user", "content": "Add 2 and 3."}],
                             SamplingParams.build(temperature=0, max_tokens=40), "T", {"tools": [add], "tool_choice": "required"})
    run = last(ui_runs.advance(lm, ui_runs.submit(host.scheduler(), gen), run))
    message = run["completions"][0]["message"]
    assert run["stages"][1] == "constraint"
    assert message["finish_reason"] == "tool_calls" and message["tool_calls"][0]["function"]["name"] == "add"


def test_stop_ends_a_gpu_call_in_flight(lm, host):
    stops = Stops()
    events = ui_events.generate(host, stops, settings(lm, "Tell a long story.", max_tokens="400"), "s")
    next(events)
    stops.stop("s")
    run = last(events)["runs"][0]
    assert run["completions"][0]["finish_reason"] == "cancelled"
    assert len(run["completions"][0]["steps"]) < 400


def test_no_tensor_work_runs_outside_the_gpu_call(lm, runs):
    """Every op of generate and branch runs on a thread inside the decorated call; outside, only the
    tensors that came back (the what-if snapshots) are rebuilt from their pickled bytes."""

    def marked(task, duration):  # the call marks its thread, as the region where tensor work may run
        def body(*args, **kwargs):
            with record_function("zerogpu.call"):
                pass
            yield from task(*args, **kwargs)
        return zerogpu.pickled(body, duration)

    host = ModelHost(lm, gpu=marked)
    every_thread = torch._C._profiler._ExperimentalConfig(profile_all_threads=True)
    with profile(activities=[ProfilerActivity.CPU], experimental_config=every_thread) as prof:
        run = last(ui_events.generate(host, Stops(), settings(lm, max_tokens="5"), "s"))["runs"]
        last(ui_events.branch(host, Stops(), run, 0, "1", 2, alternative(run[0], 2), "s"))
    events = prof.events()
    inside = {e.thread for e in events if e.name == "zerogpu.call"}
    outside = collections.Counter(e.name for e in events if e.thread not in inside)
    assert len(inside) == 2 and host.scheduler().calls == 2
    assert set(outside) <= {"aten::empty", "aten::set_"}, outside  # unpickling a CPU tensor


def test_a_call_that_needs_the_weights_is_a_gpu_call_and_one_that_does_not_stays_here(lm, host):
    ids = [1, 9690, 198, 2683]
    with torch.inference_mode():
        expected = int(lm.model(torch.tensor([ids])).logits[0, -1].argmax())
    before = calls(host)
    # A logit lens's kind of work: a forward pass, in a GPU call (the lambda and its ids go by value).
    assert host.scheduler().call(lambda: int(lm.model(torch.tensor([ids])).logits[0, -1].argmax())) == expected
    assert calls(host) == before + 1
    # A what-if's kind of work: the tokenizer and CPU tensors only, here.
    assert host.scheduler().call(lambda: lm.token_text(ids[1])) == lm.token_text(ids[1])
    assert calls(host) == before + 1


def test_loading_a_model_is_off_and_says_why(host):
    assert host.load_off and "Loading a model is off on ZeroGPU" in ui_events.load_model(host, "some/model")["model_info"]
    assert host.names() == [host.default]


def test_the_api_answers_503_saying_why_unless_turned_on(host):
    off = TestClient(app_module.build_app(host, app_module.parse_args([])))
    r = off.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2})
    assert r.status_code == 503
    assert r.json()["error"]["code"] == "api_off" and "--zerogpu-api" in r.json()["error"]["message"]
    on = TestClient(app_module.build_app(host, app_module.parse_args(["--zerogpu-api"])))
    r = on.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2})
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 2


def test_a_cpu_space_runs_the_shared_loop():
    """A fresh process on a CPU Space: SPACE_ID set, no SPACES_ZERO_GPU (the spaces package reads it once)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPACES_")}
    code = "import app; print(app.gpu_calls(app.parse_args([])))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={**env, "SPACE_ID": "someone/playground"},
                         capture_output=True, text=True, check=True).stdout.strip()
    assert out == "None"


def test_zerogpu_is_chosen_when_the_spaces_package_reports_it_or_by_the_flag(monkeypatch):
    from spaces.config import Config

    assert app_module.gpu_calls(app_module.parse_args([])) is None  # here: no ZeroGPU, no flag
    assert app_module.gpu_calls(app_module.parse_args(["--zerogpu"])) is zerogpu.pickled
    monkeypatch.setattr(Config, "zero_gpu", True)
    assert app_module.gpu_calls(app_module.parse_args([])) is zerogpu.spaces_gpu
