"""Runs as the UI keeps them, driven through the real embedded model."""

from __future__ import annotations

import copy
import json

import pytest

from engine.knobs import ParamError, SamplingParams
from playground import figures, tokenview, ui_runs

pytestmark = pytest.mark.model
MESSAGES = [{"role": "user", "content": "Name three colours."}]


def finished(lm, params, cancel=None):
    gen, run = ui_runs.start(lm, MESSAGES, params, "test", cancel=cancel)
    for run in ui_runs.advance(lm, gen, run, every_s=0.0):
        pass
    return gen, run


def test_a_run_records_every_step_of_every_completion_as_plain_data(lm):
    gen, run = finished(lm, SamplingParams.build(n=2, max_tokens=5, seed=3, temperature=0.8))
    assert [len(c["steps"]) for c in run["completions"]] == [len(c) for c in gen.completions]
    assert [c["text"] for c in run["completions"]] == gen.texts
    assert [c["finish_reason"] for c in run["completions"]] == gen.finish_reasons
    assert run["params"]["seed"] == 3 and run["stages"] == list(gen.stages)
    # Small and copyable: JSON round-trips it (no tensors, no numpy), deepcopy works as gr.State needs.
    assert json.loads(json.dumps(run))["completions"][0]["steps"][0]["token_id"] == run["completions"][0]["steps"][0]["token_id"]
    copy.deepcopy(run)


def test_every_token_a_step_mentions_has_its_text(lm):
    _, run = finished(lm, SamplingParams.build(max_tokens=3, seed=1))
    for step in run["completions"][0]["steps"]:
        for i in [step["token_id"], *step["candidates"], *(t["id"] for t in step["top"])]:
            assert run["texts"][i] == lm.token_text(i)
        assert step["shown"]


def test_a_random_seed_is_recorded_so_the_run_can_be_repeated(lm):
    _, first = finished(lm, SamplingParams.build(max_tokens=4))
    _, again = finished(lm, SamplingParams.build(max_tokens=4, seed=first["params"]["seed"]))
    assert again["completions"][0]["text"] == first["completions"][0]["text"]


def test_stop_ends_the_run_within_one_step(lm):
    steps = []
    gen, run = ui_runs.start(lm, MESSAGES, SamplingParams.build(max_tokens=50, seed=1), "test", cancel=lambda: len(steps) > 0)
    for run in ui_runs.advance(lm, gen, run, every_s=0.0):
        steps = run["completions"][0]["steps"]
    assert len(run["completions"][0]["steps"]) == 1
    assert run["completions"][0]["finish_reason"] == "cancelled"


def test_a_stop_before_the_first_token_generates_nothing(lm):
    _, run = finished(lm, SamplingParams.build(max_tokens=50, seed=1), cancel=lambda: True)
    assert run["completions"][0]["steps"] == []
    assert run["completions"][0]["finish_reason"] == "cancelled"


def test_bad_settings_for_this_model_are_refused_before_generating(lm):
    with pytest.raises(ParamError, match="outside the vocabulary"):
        ui_runs.start(lm, MESSAGES, SamplingParams.build(logit_bias={10**7: 1}), "test")


def test_a_branch_keeps_the_earlier_tokens_takes_the_alternative_and_continues(lm):
    _, run = finished(lm, SamplingParams.build(max_tokens=8, seed=2, temperature=0.0))
    original = copy.deepcopy(run)
    src = run["completions"][0]["steps"]
    alt = next(t["id"] for t in src[2]["top"] if t["id"] != src[2]["token_id"] and t["id"] not in lm.eos_ids)
    gen, branch, prefix_text = ui_runs.branch(lm, run, 0, 2, alt, "branch")
    for branch in ui_runs.advance(lm, gen, branch, every_s=0.0, prefix_text=prefix_text):
        pass
    steps = branch["completions"][0]["steps"]
    assert [s["token_id"] for s in steps[:2]] == [s["token_id"] for s in src[:2]]
    assert steps[2]["token_id"] == alt and steps[2]["forced"]
    assert len(steps) > 3 and [s["position"] for s in steps] == list(range(len(steps)))
    assert len(steps) <= 8  # max_tokens counts the whole completion
    # The text is the original's first tokens, the alternative, then what the model continued with.
    expected = lm.tokenizer.decode([s["token_id"] for s in steps], skip_special_tokens=True)
    assert branch["completions"][0]["text"] == expected
    assert branch["branch_of"] == {"label": "test", "completion": 0, "position": 2}
    assert run == original  # the original stays as it was, to compare


def test_branching_to_the_end_token_ends_the_completion_there(lm):
    _, run = finished(lm, SamplingParams.build(max_tokens=4, seed=2))
    eos = next(iter(lm.eos_ids))
    gen, branch, _ = ui_runs.branch(lm, run, 0, 1, eos, "branch")
    assert gen is None
    assert branch["completions"][0]["finish_reason"] == "stop" and len(branch["completions"][0]["steps"]) == 2


def test_branching_past_the_end_is_refused(lm):
    _, run = finished(lm, SamplingParams.build(max_tokens=2, seed=2))
    with pytest.raises(IndexError, match=r"step must be in \[0, 1\], got 5"):
        ui_runs.branch(lm, run, 0, 5, 42, "branch")


def test_compare_style_runs_reuse_the_exact_prompt(lm):
    gen_a, a = ui_runs.start(lm, MESSAGES, SamplingParams.build(max_tokens=2), "A")
    gen_b, b = ui_runs.start(lm, MESSAGES, SamplingParams.build(max_tokens=2), "B", prompt_ids=a["prompt_ids"])
    assert b["prompt_ids"] == a["prompt_ids"] == lm.encode_chat(MESSAGES)


def test_a_required_tool_choice_run_ends_in_a_tool_call_with_the_constraint_stage(lm):
    add = {"type": "function", "function": {"name": "add", "parameters": {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}, "required": ["a", "b"]}}}
    extras = {"tools": [add], "tool_choice": "required"}
    gen, run = ui_runs.start(lm, [{"role": "user", "content": "Add 2 and 3."}], SamplingParams.build(temperature=0, max_tokens=40), "T", extras)
    run = list(ui_runs.advance(lm, gen, run))[-1]
    assert run["stages"][1] == "constraint"
    message = run["completions"][0]["message"]
    assert message["finish_reason"] == "tool_calls" and message["tool_calls"][0]["function"]["name"] == "add"
    assert "tool call: <code>add(" in tokenview.completions_html(run["completions"])
    first = run["completions"][0]["steps"][0]
    assert "the constraint (grammar or forced tokens) allowed 1 token" in " ".join(figures.stage_sentences(first, run["texts"], run["params"]))
    assert "after the constraint (grammar or forced tokens)" in figures.inspector_figure(first, run["texts"], run["params"]).to_json()
    # A branch keeps the grammar: it still ends in a call.
    _, branched, _ = ui_runs.branch(lm, run, 0, 3, run["completions"][0]["steps"][3]["token_id"], "B")
    assert branched["extras"] == extras


def test_replay_redoes_a_step_with_the_same_random_number_under_each_order(lm):
    from engine.stages import PRESETS

    gen, run = finished(lm, SamplingParams.build(max_tokens=4, seed=5, temperature=2.0, min_p=0.3))
    gens = ui_runs.replay(lm, run, 0, 0, [PRESETS["Hugging Face"], PRESETS["llama.cpp"]])
    for g in gens:
        for _ in g:
            pass
    texts = dict(run["texts"])
    hf, llama = (ui_runs.replayed_step(lm, g, texts) for g in gens)
    assert hf["position"] == llama["position"] == 0 and hf["draw"] == llama["draw"] == run["completions"][0]["steps"][0]["draw"]
    # Temperature 2 before min-p (Hugging Face) flattens what min-p sees: it keeps more than llama.cpp's order.
    assert hf["stages"][-1]["kept"] > llama["stages"][-1]["kept"]
    assert [s["name"] for s in llama["stages"]] == ["raw", *PRESETS["llama.cpp"]]


def test_a_branch_and_a_replay_continue_mirostats_mu(lm):
    gen, run = finished(lm, SamplingParams.build(max_tokens=5, seed=2, mirostat=2, mirostat_tau=3.0))
    step = run["completions"][0]["steps"][3]
    replayed = ui_runs.replay(lm, run, 0, 3, [tuple(run["params"]["sampler_order"])])[0]
    for _ in replayed:
        pass
    assert replayed.completions[0][0].notes["mirostat_mu"] == pytest.approx(step["notes"]["mirostat_mu"])


def test_a_replay_under_the_runs_own_order_reproduces_the_recorded_step_exactly(lm):
    gen, run = finished(lm, SamplingParams.build(max_tokens=6, seed=5, temperature=2.0, min_p=0.1))
    for position in (2, 5):
        again = ui_runs.replay(lm, run, 0, position, [tuple(run["params"]["sampler_order"])])[0]
        for _ in again:
            pass
        step = ui_runs.replayed_step(lm, again, dict(run["texts"]))
        recorded = run["completions"][0]["steps"][position]
        assert step["token_id"] == recorded["token_id"] and step["candidates"] == recorded["candidates"]
        for mine, theirs in zip(step["stages"], recorded["stages"]):
            assert mine["kept"] == theirs["kept"] and mine["probs"] == pytest.approx(theirs["probs"], abs=1e-5)


def test_a_run_streaming_to_a_page_counts_in_the_update_pace_while_it_runs(lm):
    gen, run = ui_runs.start(lm, MESSAGES, SamplingParams.build(max_tokens=3, seed=1), "test")
    before = ui_runs.STREAMS.count
    seen = [ui_runs.STREAMS.count for _ in ui_runs.advance(lm, gen, run)]
    assert seen and set(seen) == {before + 1}
    assert ui_runs.STREAMS.count == before


def test_a_run_with_a_fixed_interval_is_not_a_page_stream(lm):
    gen, run = ui_runs.start(lm, MESSAGES, SamplingParams.build(max_tokens=3, seed=1), "test")
    before = ui_runs.STREAMS.count
    assert {ui_runs.STREAMS.count for _ in ui_runs.advance(lm, gen, run, every_s=0.0)} == {before}


def test_a_runs_first_tokens_reach_its_page_at_once_even_just_after_a_queue_update(lm):
    """While a run waits for room its page gets its place in the queue every interval; the first steps that
    then come go out at once, not with the next interval's update (up to a quarter of a second later)."""
    from engine.scheduler import END, Ticket

    params = SamplingParams.build(max_tokens=2, seed=1)
    made, _ = ui_runs.start(lm, MESSAGES, params, "test")
    batches = list(made)  # the two steps, one list each, as the decode loop delivers them
    gen, run = ui_runs.start(lm, MESSAGES, params, "test")
    ticket = Ticket(gen, None)
    updates = ui_runs.advance(lm, ticket, run, every_s=0.05)
    waiting = next(updates)  # nothing came within the interval: the place in the queue
    assert waiting["completions"][0]["steps"] == []
    for item in (*batches, END):
        ticket.deliver(item)
    assert len(next(updates)["completions"][0]["steps"]) == 1  # the first step alone, at once


def test_a_run_in_the_batch_before_its_prompt_is_in_says_how_many_prompts_go_in_first(lm):
    """Prompts that arrive together go in a few a turn; meanwhile the run's page shows its place among
    them, and a finished run keeps nothing of it."""
    from engine.scheduler import END, Ticket

    params = SamplingParams.build(max_tokens=1, seed=1)
    made, _ = ui_runs.start(lm, MESSAGES, params, "test")
    steps = list(made)
    gen, run = ui_runs.start(lm, MESSAGES, params, "test")
    ticket = Ticket(gen, None)
    ticket.admitted.set()
    ticket.reading = 2
    updates = ui_runs.advance(lm, ticket, run, every_s=0.05)
    assert next(updates)["reading"] == 2
    for item in (*steps, END):
        ticket.deliver(item)
    assert "reading" not in list(updates)[-1]


def test_the_live_views_say_how_many_prompts_go_in_before_the_runs_own():
    live = tokenview.LiveRun(1)
    comps = [{"steps": [], "text": "", "finish_reason": None}]
    assert "2 before yours" in live.update(comps, {}, reading=2)[0]
    assert "yours goes in next" in live.update(comps, {}, reading=0)[0]
    last = live.update(comps, {}, reading=None)[0].rstrip("\n").rsplit("\n", 1)[-1]
    assert json.loads(last) == ["set", "note", ""]  # its prompt is in: the note goes
