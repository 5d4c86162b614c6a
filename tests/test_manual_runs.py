"""Manual mode: the vocabulary table searched, sorted and paged; pick, draw and rewind on the real model; the
grammar's refusals; idle steps let go; hand-picked marks saved and loaded."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.knobs import ParamError, SamplingParams
from engine.manual import Vocabulary
from engine.rng import uniform
from engine.scheduler import Scheduler
from engine.whatif import Snapshot
from playground import manual_runs, runfile, ui_runs
from playground.manual_runs import Refusal, Waits

MESSAGES = [{"role": "user", "content": "Name a colour."}]

# --- the table, on a hand-made vocabulary of six tokens -----------------------------------------------

TEXTS = [" Sea", " sky", " seal", "blue", " salt", "x"]
STAGES = ("raw", "temperature", "top_k", "top_p")
VOCAB = Vocabulary(
    rank=np.array([2, 1, 4, 3, 5, 6], dtype=np.int32),
    raw_p=np.array([0.3, 0.4, 0.1, 0.12, 0.05, 0.03], dtype=np.float32),
    final_p=np.array([0.35, 0.65, 0.0, 0.0, 0.0, 0.0], dtype=np.float32),
    removed_by=np.array([-1, -1, 3, 3, 2, 2], dtype=np.int16),
    stages=STAGES,
)


def ids(t) -> list[int]:
    return [r["id"] for r in t.rows]


def test_the_table_lists_every_token_by_rank_with_its_probabilities_and_who_removed_it():
    t = manual_runs.table(VOCAB, TEXTS)
    assert ids(t) == [1, 0, 3, 2, 4, 5] and t.total == 6 and t.pages == 1
    assert t.rows[0] == {"rank": 1, "id": 1, "text": " sky", "raw_p": pytest.approx(0.4), "final_p": pytest.approx(0.65),
                         "removed_by": ""}
    assert [r["removed_by"] for r in t.rows[2:]] == ["top-p", "top-p", "top-k", "top-k"]


def test_a_search_finds_tokens_whose_text_holds_it_in_any_case():
    assert ids(manual_runs.table(VOCAB, TEXTS, search="se")) == [0, 2]
    assert ids(manual_runs.table(VOCAB, TEXTS, search="SEA")) == [0, 2]
    assert manual_runs.table(VOCAB, TEXTS, search="zzz").total == 0


def test_a_number_finds_that_token_id_first():
    assert ids(manual_runs.table(VOCAB, TEXTS, search="#5")) == [5]
    assert ids(manual_runs.table(VOCAB, TEXTS, search="4"))[0] == 4


def test_the_table_sorts_by_final_probability_id_or_removing_stage_and_reverses():
    assert ids(manual_runs.table(VOCAB, TEXTS, sort="final p")) == [1, 0, 3, 2, 4, 5]  # ties by rank
    assert ids(manual_runs.table(VOCAB, TEXTS, sort="id")) == [0, 1, 2, 3, 4, 5]
    assert ids(manual_runs.table(VOCAB, TEXTS, sort="removed by")) == [1, 0, 4, 5, 3, 2]  # kept, top-k, top-p
    assert ids(manual_runs.table(VOCAB, TEXTS, sort="id", reverse=True)) == [5, 4, 3, 2, 1, 0]
    with pytest.raises(ParamError, match="sort must be one of"):
        manual_runs.table(VOCAB, TEXTS, sort="text")


def test_the_table_is_paged_and_a_page_past_the_end_shows_the_last():
    t = manual_runs.table(VOCAB, TEXTS, page=2, size=4)
    assert ids(t) == [4, 5] and (t.page, t.pages, t.total) == (2, 2, 6)
    assert manual_runs.table(VOCAB, TEXTS, page=9, size=4).page == 2
    assert manual_runs.table(VOCAB, TEXTS, page=0, size=4).page == 1


# --- idle steps are let go -----------------------------------------------------------------------------


def test_a_waiting_step_is_let_go_after_the_idle_timeout_and_said_once():
    now = [0.0]
    waits = Waits(idle_s=60, clock=lambda: now[0])
    wait = manual_runs.Waiting("k", 0, None, {}, {}, VOCAB)
    waits.put("s", wait)
    now[0] = 59
    assert waits.get("s", "k") is wait  # an action keeps it
    now[0] = 59 + 61
    assert waits.get("s", "k") is None and len(waits) == 0
    assert waits.dropped("s") == pytest.approx(61)
    assert waits.dropped("s") is None


def test_a_step_of_another_run_or_position_is_not_handed_out():
    waits = Waits()
    waits.put("s", manual_runs.Waiting("k", 0, None, {}, {}, VOCAB))
    assert waits.get("s", "other") is None and waits.get("t", "k") is None


def test_past_the_most_sessions_the_least_recently_used_step_goes():
    now = [0.0]
    waits = Waits(most=2, clock=lambda: now[0])
    for i, s in enumerate("abc"):
        now[0] = i
        waits.put(s, manual_runs.Waiting(s, 0, None, {}, {}, VOCAB))
    assert waits.get("a", "a") is None and waits.get("c", "c") is not None and waits.dropped("a") is not None


# --- on the real model --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def scheduler(lm):
    s = Scheduler(lm)
    yield s
    s.close()


def draw_all(lm, scheduler, run, session=None):
    while run["completions"][0]["finish_reason"] is None:
        run = manual_runs.take(lm, scheduler, run, manual_runs.wait_at(lm, scheduler, run, session))
    return run


@pytest.mark.model
def test_letting_the_sampler_draw_every_step_gives_generates_text_for_the_same_seed(lm, scheduler):
    params = SamplingParams.build(max_tokens=6, seed=3, temperature=0.9, top_p=0.9, repetition_penalty=1.2)
    gen, generated = ui_runs.start(lm, MESSAGES, params, "Generated")
    for generated in ui_runs.advance(lm, ui_runs.submit(scheduler, gen), generated, every_s=0.0):
        pass
    manual = draw_all(lm, scheduler, manual_runs.new_run(lm, MESSAGES, params))
    assert manual_runs.tokens(manual) == [s["token_id"] for s in generated["completions"][0]["steps"]]
    assert manual["completions"][0]["text"] == generated["completions"][0]["text"]
    assert manual["completions"][0]["finish_reason"] == generated["completions"][0]["finish_reason"]
    assert manual["hand_picked"] == []


@pytest.mark.model
def test_a_token_top_k_removed_can_be_picked_and_is_marked_and_continued_from(lm, scheduler):
    run = manual_runs.new_run(lm, MESSAGES, SamplingParams.build(max_tokens=4, seed=1, top_k=5))
    wait = manual_runs.wait_at(lm, scheduler, run, "s")
    removed = int(np.flatnonzero(wait.vocabulary.rank == 20)[0])
    assert wait.vocabulary.stages[wait.vocabulary.removed_by[removed]] == "top_k"
    run = manual_runs.take(lm, scheduler, run, wait, removed)
    step = run["completions"][0]["steps"][0]
    assert step["token_id"] == removed and step["forced"] and run["hand_picked"] == [0]
    assert step["logprob"] is None and step["rank"] == 20  # the sampler could never have drawn it
    nxt = manual_runs.wait_at(lm, scheduler, run, "s")
    assert nxt.position == 1 and manual_runs.waiting("s", run) is nxt
    run = manual_runs.take(lm, scheduler, run, nxt)
    assert manual_runs.tokens(run)[0] == removed and run["hand_picked"] == [0]


@pytest.mark.model
def test_rewinding_drops_the_last_steps_and_their_marks_and_the_step_waits_again(lm, scheduler):
    run = manual_runs.new_run(lm, MESSAGES, SamplingParams.build(max_tokens=5, seed=2))
    wait = manual_runs.wait_at(lm, scheduler, run)
    run = manual_runs.take(lm, scheduler, run, wait, int(np.flatnonzero(wait.vocabulary.rank == 2)[0]))
    first = manual_runs.take(lm, scheduler, run, manual_runs.wait_at(lm, scheduler, run))
    back = manual_runs.rewind(lm, first, 2)
    assert back["completions"][0]["steps"] == [] and back["hand_picked"] == [] and back["completions"][0]["text"] == ""
    assert len(first["completions"][0]["steps"]) == 2  # the run rewound from is unchanged
    again = manual_runs.wait_at(lm, scheduler, back)
    assert again.position == 0 and again.drawn["token_id"] == wait.drawn["token_id"]
    with pytest.raises(ParamError, match=r"rewind must be in \[1, 2\]"):
        manual_runs.rewind(lm, first, 3)


@pytest.mark.model
def test_picking_the_end_token_finishes_the_run_and_a_finished_run_takes_no_more(lm, scheduler):
    run = manual_runs.new_run(lm, MESSAGES, SamplingParams.build(max_tokens=5, seed=2))
    wait = manual_runs.wait_at(lm, scheduler, run)
    run = manual_runs.take(lm, scheduler, run, wait, min(lm.eos_ids))
    assert run["completions"][0]["finish_reason"] == "stop" and run["completions"][0]["text"] == ""
    with pytest.raises(Refusal, match="finished"):
        manual_runs.take(lm, scheduler, run, wait)


@pytest.mark.model
def test_only_what_the_grammar_forbids_is_refused_with_the_reason(lm, scheduler):
    extras = {"response_format": {"type": "json_object"}}
    run = manual_runs.new_run(lm, MESSAGES, SamplingParams.build(max_tokens=4, seed=2, top_k=1), extras)
    wait = manual_runs.wait_at(lm, scheduler, run)
    word = lm.tokenizer.encode("Hello", add_special_tokens=False)[0]
    with pytest.raises(Refusal, match=r"response_format \(json_object\) does not allow 'Hello'"):
        manual_runs.take(lm, scheduler, run, wait, word)
    brace = lm.tokenizer.encode("{", add_special_tokens=False)[0]
    assert wait.snapshot.allowed[brace]
    run = manual_runs.take(lm, scheduler, run, wait, brace)
    assert run["completions"][0]["text"] == "{" and run["hand_picked"] == [0]


@pytest.mark.model
def test_a_manual_run_saves_and_loads_with_its_hand_picked_steps(lm, scheduler):
    run = manual_runs.new_run(lm, MESSAGES, SamplingParams.build(max_tokens=3, seed=4))
    wait = manual_runs.wait_at(lm, scheduler, run)
    run = manual_runs.take(lm, scheduler, run, wait, int(np.flatnonzero(wait.vocabulary.rank == 3)[0]))
    run = draw_all(lm, scheduler, run)
    loaded, _ = runfile.loads(runfile.dumps(run))
    assert loaded["hand_picked"] == [0] and loaded["completions"][0]["steps"][0]["forced"]
    assert not loaded["completions"][0]["steps"][1].get("forced")


def test_a_run_file_without_hand_picked_steps_still_loads_and_a_bad_mark_is_refused():
    run = ui_runs.blank_run("Old", "m", [], [1], SamplingParams.build().to_dict(), ["raw"], 1)
    run["completions"][0]["steps"] = [{"token_id": 5, "stages": [{}], "candidates": [], "top": []}]
    loaded, _ = runfile.loads(runfile.dumps(run))
    assert "hand_picked" not in loaded
    with pytest.raises(ValueError, match=r"hand_picked must be a list of step positions in \[0, 0\]"):
        runfile.loads(runfile.dumps({**run, "hand_picked": [1]}))


def test_a_forced_thinking_tag_refuses_every_other_token_with_the_reason():
    from tests.fakes import fake_lm, fixed

    lm = fake_lm(fixed([0.25] * 4), [b"<end>", b"</think>", b" sea", b" sky"])
    allowed = torch.tensor([False, True, False, False])
    wait = manual_runs.Waiting("k", 7, Snapshot(torch.zeros(4), allowed), {}, {}, VOCAB, {"thinking": "reasoning_effort"})
    assert manual_runs.refusal(lm, wait, 2) == ("reasoning_effort forces the thinking section's tag here: only '</think>' "
                                                "may come next, not ' sea'")
    assert manual_runs.refusal(lm, wait, 1) is None
    assert "outside the vocabulary [0, 5]" in manual_runs.refusal(lm, wait, 99)


@pytest.mark.model
def test_any_run_can_be_taken_over_by_hand_from_a_step_with_its_own_random_numbers(lm, scheduler):
    params = SamplingParams.build(n=2, max_tokens=5, seed=8, temperature=1.2)
    gen, generated = ui_runs.start(lm, MESSAGES, params, "Generated")
    for generated in ui_runs.advance(lm, ui_runs.submit(scheduler, gen), generated, every_s=0.0):
        pass
    loaded, _ = runfile.loads(runfile.dumps(generated))
    run = manual_runs.take_over(lm, loaded, 1, 2)
    assert run["label"] == "Manual from Generated" and run["hand_picked"] == [] and len(run["completions"]) == 1
    assert manual_runs.tokens(run) == [s["token_id"] for s in generated["completions"][1]["steps"][:2]]
    # The sampler's draw there uses completion 2's random number for step 2: (seed, 1, 2).
    assert manual_runs.wait_at(lm, scheduler, run).drawn["draw"] == round(uniform(8, 1, 2), 6)
    with pytest.raises(ParamError, match="no prompt"):
        manual_runs.take_over(lm, {**loaded, "prompt_ids": []}, 0, 0)
