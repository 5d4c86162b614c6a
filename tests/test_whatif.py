"""Live what-if on the real embedded model: a recorded step sampled again from its exact raw logits."""

from __future__ import annotations

import threading

import pytest
import torch

from engine.knobs import SamplingParams
from engine.scheduler import Scheduler
from engine.whatif import Snapshot, Snapshots, ledger
from playground import ui_records, ui_runs

pytestmark = pytest.mark.model
MESSAGES = [{"role": "user", "content": "Write a line about the sea, the sea, the sea."}]
# Every penalty and several truncations on, so the what-if must rebuild every stage's inputs.
KNOBS = dict(n=2, max_tokens=10, seed=11, temperature=0.9, top_k=60, top_p=0.95, repetition_penalty=1.3,
             presence_penalty=0.6, frequency_penalty=0.4, dry_multiplier=0.8, dry_allowed_length=1)
# How far a row's logits may move between a one-row and a two-row forward pass, per dtype: float32's
# matrix products round by the row count (at most 5e-5 measured on this CPU; README, "The seed contract");
# bf16 not at all, since a lone row computes as a row among others (engine/lone_row.py).
BATCH_EFFECT = {torch.float32: 1e-3, torch.bfloat16: 0.0}


@pytest.fixture(scope="module")
def scheduler(lm):
    s = Scheduler(lm)
    yield s
    s.close()


@pytest.fixture(scope="module")
def run(lm, scheduler):
    # Completion 0's raw logits are kept as drawn; completion 1's steps need a replay.
    gen, run = ui_runs.start(lm, MESSAGES, SamplingParams.build(**KNOBS), "test", capture=True)
    for run in ui_runs.advance(lm, ui_runs.submit(scheduler, gen), run, every_s=0.0):
        pass
    return run


def snapshot(lm, scheduler, run, c, pos):
    snap = ui_runs.snapshot(lm, scheduler, run, c, pos)
    assert snap is not None
    return snap


def test_with_the_runs_own_settings_the_what_if_is_the_recorded_step(lm, scheduler, run):
    params = SamplingParams.build(**run["params"])
    for c, pos in [(0, 0), (0, 4), (0, len(run["completions"][0]["steps"]) - 1)]:
        recorded = run["completions"][c]["steps"][pos]
        got = ui_runs.what_if(lm, scheduler, snapshot(lm, scheduler, run, c, pos), run, c, pos, params)["step"]
        assert got["token_id"] == recorded["token_id"] and got["draw"] == recorded["draw"]
        assert got["candidates"] == recorded["candidates"]
        for mine, theirs in zip(got["stages"], recorded["stages"]):
            assert mine["name"] == theirs["name"] and mine["kept"] == theirs["kept"]
            assert mine["probs"] == pytest.approx(theirs["probs"], abs=1e-5)


def test_another_temperature_reshapes_the_step_with_the_same_random_number(lm, scheduler, run):
    pos = 3
    recorded = run["completions"][0]["steps"][pos]
    snap = snapshot(lm, scheduler, run, 0, pos)
    hot = ui_runs.what_if(lm, scheduler, snap, run, 0, pos, SamplingParams.build(**{**run["params"], "temperature": 1.8}))
    step = hot["step"]
    assert step["draw"] == recorded["draw"]  # the random number is the run's, whatever the settings
    names = [s["name"] for s in step["stages"]]
    t = names.index("temperature")
    assert step["stages"][t]["entropy"] > recorded["stages"][t]["entropy"]
    assert step["stages"][0]["probs"][:3] == pytest.approx(
        [ui_records.candidate_probs(recorded, i)[0] for i in step["candidates"][:3]], abs=1e-5)


def test_greedy_what_if_picks_the_raw_top_token(lm, scheduler, run):
    snap = snapshot(lm, scheduler, run, 0, 2)
    step = ui_runs.what_if(lm, scheduler, snap, run, 0, 2, SamplingParams.build(temperature=0))["step"]
    assert step["token_id"] == int(snap.logits.argmax()) and step["draw"] is None


def test_one_replay_caches_every_step_before_the_one_selected(lm, scheduler, run):
    last = len(run["completions"][1]["steps"]) - 1
    snapshot(lm, scheduler, run, 1, last)
    assert all(ui_runs.cached_snapshot(lm, run, 1, p) is not None for p in range(last + 1))


def test_the_ledger_itemises_each_penalty_on_each_token(lm, scheduler, run):
    pos = 6
    snap = snapshot(lm, scheduler, run, 0, pos)
    out = ui_runs.what_if(lm, scheduler, snap, run, 0, pos, SamplingParams.build(**run["params"]))
    rows = {r["id"]: r for r in out["ledger"]}
    earlier = [s["token_id"] for s in run["completions"][0]["steps"][:pos]]
    # presence/frequency: exactly presence + frequency x count for every token generated so far
    for t in set(earlier):
        assert rows[t]["in_output"] == earlier.count(t)
        assert rows[t]["loss"]["presence_frequency"] == pytest.approx(0.6 + 0.4 * earlier.count(t), abs=1e-5)
    # repetition penalty on a prompt-only token: its logit l became l / 1.3 (l > 0) or l * 1.3
    prompt_only = [r for r in out["ledger"] if r["in_prompt"] and not r["in_output"]]
    assert prompt_only
    r = prompt_only[0]
    l = float(snap.logits[r["id"]])
    assert r["loss"]["repetition_penalty"] == pytest.approx(l - (l / 1.3 if l > 0 else l * 1.3), abs=1e-4)
    assert r["text"] == lm.token_text(r["id"])


def test_continuing_with_the_runs_own_settings_gives_the_rest_of_the_run_again(lm, scheduler, run):
    original = run["completions"][1]
    gen, branch, before = ui_runs.continue_with(lm, run, 1, 4, SamplingParams.build(**run["params"]), "again")
    for branch in ui_runs.advance(lm, ui_runs.submit(scheduler, gen), branch, every_s=0.0, prefix_text=before):
        pass
    assert [s["token_id"] for s in branch["completions"][0]["steps"]] == [s["token_id"] for s in original["steps"]]
    assert branch["completions"][0]["text"] == original["text"]


def test_continuing_with_other_settings_draws_what_the_what_if_showed(lm, scheduler, run, monkeypatch):
    pos = 2
    # The continuation feeds the earlier tokens in one row, as a replay does: the same logits in any dtype.
    monkeypatch.setattr(ui_runs, "SNAPSHOTS", Snapshots())
    hot = SamplingParams.build(**{**run["params"], "temperature": 2.0, "top_k": 0, "top_p": 1.0})
    shown = ui_runs.what_if(lm, scheduler, snapshot(lm, scheduler, run, 0, pos), run, 0, pos, hot)["step"]
    gen, branch, before = ui_runs.continue_with(lm, run, 0, pos, hot, "hot")
    for branch in ui_runs.advance(lm, ui_runs.submit(scheduler, gen), branch, every_s=0.0, prefix_text=before):
        pass
    assert branch["completions"][0]["steps"][pos]["token_id"] == shown["token_id"]
    assert branch["params"]["temperature"] == 2.0


def test_a_call_runs_on_the_decode_thread_and_brings_back_its_result_or_error(lm, scheduler):
    assert scheduler.call(lambda: threading.current_thread().name) == f"decode:{lm.name}"
    with pytest.raises(ZeroDivisionError):
        scheduler.call(lambda: 1 / 0)
    assert scheduler.call(lambda: 42) == 42  # the loop goes on


def test_the_snapshot_cache_drops_the_least_recently_used_past_its_bytes():
    one = Snapshot(torch.zeros(100), None)  # 400 bytes
    cache = Snapshots(max_bytes=1000)
    for key in "abc":
        cache.put(key, one)
        cache.get("a")
    assert cache.get("b") is None and cache.get("a") is not None and cache.get("c") is not None
    assert cache.nbytes == 800


def test_the_ledger_reports_only_logits_a_penalty_moved():
    raw = torch.tensor([[2.0, 1.0, -1.0, 0.5]])
    rep = torch.tensor([[1.0, 1.0, -2.0, 0.5]])  # tokens 0 and 2 penalised
    pf = rep - torch.tensor([[0.0, 0.0, 0.5, 0.0]])
    rows = ledger([("raw", raw), ("repetition_penalty", rep), ("presence_frequency", pf), ("temperature", pf * 2)],
                  prompt_ids=[0, 2], earlier=[2])
    assert [(r["id"], r["in_prompt"], r["in_output"]) for r in rows] == [(2, 1, 1), (0, 1, 0)]
    assert rows[0]["loss"] == {"repetition_penalty": 1.0, "presence_frequency": 0.5} and rows[1]["total"] == 1.0


def captured_run(lm, scheduler, n):
    """A UI run that keeps completion 0's raw logits as it draws them: (run, the snapshot of every step)."""
    gen, run = ui_runs.start(lm, MESSAGES, SamplingParams.build(**{**KNOBS, "n": n, "seed": 12}), "captured", capture=True)
    for run in ui_runs.advance(lm, ui_runs.submit(scheduler, gen), run, every_s=0.0):
        pass
    steps = run["completions"][0]["steps"]
    captured = [ui_runs.cached_snapshot(lm, run, 0, p) for p in range(len(steps))]
    assert all(s is not None for s in captured) and not gen.snapshots  # all moved into the shared cache
    return run, captured


def replayed_logits(lm, scheduler, run, position, monkeypatch):
    monkeypatch.setattr(ui_runs, "SNAPSHOTS", Snapshots())  # forget the captured ones: this one is replayed
    return ui_runs.snapshot(lm, scheduler, run, 0, position).logits


def test_a_replay_of_a_run_decoded_in_one_row_gives_its_captured_logits_bit_for_bit(lm, scheduler, monkeypatch):
    # The replay makes the very forward passes the run made (the prompt, then one row a step): exact in any dtype.
    run, captured = captured_run(lm, scheduler, n=1)
    last = len(captured) - 1
    assert torch.equal(replayed_logits(lm, scheduler, run, last, monkeypatch), captured[last].logits)


def test_a_replay_of_a_step_drawn_beside_other_rows_differs_by_the_batch_effect_at_most(lm, scheduler, monkeypatch):
    # The run drew completion 0 in a two-row forward pass, the replay in a one-row pass: the CPU's matrix
    # product (and float32 attention) rounds a row alone differently from a row among several.
    run, captured = captured_run(lm, scheduler, n=2)
    last = len(captured) - 1
    moved = (replayed_logits(lm, scheduler, run, last, monkeypatch) - captured[last].logits).abs().max().item()
    assert moved <= BATCH_EFFECT[lm.dtype]


def test_a_branch_is_fed_token_by_token_so_its_steps_what_if_exactly(lm, scheduler, run):
    src = run["completions"][0]["steps"]
    alt = next(t["id"] for t in src[3]["top"] if t["id"] != src[3]["token_id"])
    gen, branch, before = ui_runs.branch(lm, run, 0, 3, alt, "b")
    for branch in ui_runs.advance(lm, ui_runs.submit(scheduler, gen), branch, every_s=0.0, prefix_text=before):
        pass
    pos = 5  # a step the branch drew after the forced token
    recorded = branch["completions"][0]["steps"][pos]
    snap = ui_runs.cached_snapshot(lm, branch, 0, pos)
    assert snap is not None
    got = ui_runs.what_if(lm, scheduler, snap, branch, 0, pos, SamplingParams.build(**branch["params"]))["step"]
    assert got["token_id"] == recorded["token_id"] and got["draw"] == recorded["draw"]
    assert got["stages"][-1]["probs"] == pytest.approx(recorded["stages"][-1]["probs"], abs=1e-5)
