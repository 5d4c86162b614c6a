"""reasoning_effort on a fake model with a tiny thinking template: budgets, forced closing, the split."""

import dataclasses

import pytest
import torch

from engine import reasoning
from engine.generator import Generation
from engine.knobs import ParamError, SamplingParams
from engine.reasoning import BUDGETS, Thinking, split
from playground import ui_runs
from tests.fakes import EOS, fake_lm

PIECES = [b"<eos>", b"<p>", b"<think>", b"\n", b"</think>", b"\n\n", b"a", b"ok"]
THINK, NL, CLOSE, NLNL, A, OK = 2, 3, 4, 5, 6, 7
TEMPLATE = "{% for m in messages %}{{ m.content }}{% endfor %}<think>...</think>"


def thinker(closes_after: int | None):
    """Thinks 'a' after 'a'; closes by itself after `closes_after` of them (None: never); answers 'ok'."""

    def next_logits(history):
        out = torch.full((len(PIECES),), -20.0)
        if CLOSE in history:
            out[OK if history[-1] != OK else EOS] = 0.0
        elif closes_after is not None and history.count(A) >= closes_after:
            out[CLOSE] = 0.0
        else:
            out[A] = 0.0
        return out

    return next_logits


def think(lm, effort="low", budget=None, **knobs):
    thinking = Thinking.for_request(lm, effort, [1])
    if budget is not None:
        thinking = Thinking(budget, thinking.open_ids, thinking.close_ids, thinking.starts_inside)
    gen = Generation(lm, [1], SamplingParams.build(temperature=0, **knobs), thinking=thinking)
    for _ in gen:
        pass
    return gen


def test_each_effort_level_has_a_growing_budget():
    assert BUDGETS["low"] < BUDGETS["medium"] < BUDGETS["high"]


def test_thinking_past_the_budget_is_closed_by_the_generator():
    lm = fake_lm(thinker(None), PIECES, context_length=400, chat_template=TEMPLATE)
    gen = think(lm, budget=5)
    reasoning, content = split(gen.texts[0])
    assert reasoning == "aaaa"  # the opening "<think>\n" line counts too: 5 tokens inside
    assert content == "ok"
    assert gen.finish_reasons == ["stop"]


def test_the_low_budget_allows_exactly_its_tokens():
    lm = fake_lm(thinker(None), PIECES, context_length=400, chat_template=TEMPLATE)
    gen = think(lm, "low")
    reasoning, _ = split(gen.texts[0])
    assert len(reasoning) == BUDGETS["low"] - 1


def test_forced_tokens_show_as_the_constraint_stage():
    lm = fake_lm(thinker(None), PIECES, context_length=400, chat_template=TEMPLATE)
    gen = think(lm, budget=3)
    c = gen.stages.index("constraint")
    forced = [s for s in gen.completions[0] if s.stage_kept[c] == 1]
    assert [s.token_id for s in forced] == [THINK, NL, NL, CLOSE, NLNL]  # "<think>\n", then "\n</think>\n\n"
    assert all(s.stage_removed[c] > 0.99 for s in forced[2:])  # the model wanted "a"


def test_a_model_that_closes_within_budget_is_not_forced():
    lm = fake_lm(thinker(3), PIECES, context_length=400, chat_template=TEMPLATE)
    gen = think(lm, budget=50)
    c = gen.stages.index("constraint")
    assert split(gen.texts[0]) == ("aaa", "ok")
    assert sum(1 for s in gen.completions[0] if s.stage_kept[c] == 1) == 2  # only the opening "<think>\n"


# A budget of 3 forces "\n</think>\n\n" at positions 4, 5, 6 (after "<think>", "\n", "a", "a"); a replay,
# branch or continue from any step up to and past the close must follow the run's own tokens.
FORCED_RUN = [THINK, NL, A, A, NL, CLOSE, NLNL, OK, EOS]
AROUND_THE_CLOSE = range(3, 9)


def test_a_prefix_ending_anywhere_in_the_forced_close_continues_that_close():
    lm = fake_lm(thinker(None), PIECES, context_length=400, chat_template=TEMPLATE)
    assert [s.token_id for s in think(lm, budget=3).completions[0]] == FORCED_RUN
    thinking = dataclasses.replace(Thinking.for_request(lm, "low", [1]), budget=3)
    for cut in AROUND_THE_CLOSE:
        for replay in (False, True):
            gen = Generation(lm, [1], SamplingParams.build(temperature=0), thinking=thinking,
                             prefix_ids=FORCED_RUN[:cut], replay_prefix=replay)
            for _ in gen:
                pass
            assert [s.token_id for s in gen.completions[0]] == FORCED_RUN[cut:], (cut, replay)


@pytest.fixture
def forced_run(monkeypatch):
    """A UI run whose thinking the generator closed after a budget of 3 (the run FORCED_RUN)."""
    monkeypatch.setitem(reasoning.BUDGETS, "low", 3)
    lm = fake_lm(thinker(None), PIECES, context_length=400, chat_template=TEMPLATE)
    gen, run = ui_runs.start(lm, [{"role": "user", "content": ""}], SamplingParams.build(temperature=0), "t",
                             {"reasoning_effort": "low"})
    for run in ui_runs.advance(lm, gen, run, every_s=0.0):
        pass
    assert [s["token_id"] for s in run["completions"][0]["steps"]] == FORCED_RUN
    return lm, run


def drawn(gen):
    for _ in gen:
        pass
    return [s.token_id for s in gen.completions[0]]


def test_a_replay_inside_the_forced_close_redoes_the_runs_step(forced_run):
    lm, run = forced_run
    for pos in AROUND_THE_CLOSE:
        gen = ui_runs.replay(lm, run, 0, pos, [tuple(run["params"]["sampler_order"])])[0]
        assert drawn(gen) == [FORCED_RUN[pos]], pos


def test_a_branch_inside_the_forced_close_continues_the_close(forced_run):
    lm, run = forced_run
    for pos in AROUND_THE_CLOSE[:-1]:  # a branch to the end token draws nothing more
        gen, _, _ = ui_runs.branch(lm, run, 0, pos, FORCED_RUN[pos], "b")
        assert drawn(gen) == FORCED_RUN[pos + 1 :], pos


def test_continuing_inside_the_forced_close_draws_the_rest_of_the_run(forced_run):
    lm, run = forced_run
    for pos in AROUND_THE_CLOSE:
        gen, _, _ = ui_runs.continue_with(lm, run, 0, pos, SamplingParams.build(**run["params"]), "c")
        assert drawn(gen) == FORCED_RUN[pos:], pos


def test_a_model_without_a_thinking_template_refuses_reasoning_effort():
    lm = fake_lm(thinker(None), PIECES, chat_template="{{ messages }}")
    with pytest.raises(ParamError) as e:
        Thinking.for_request(lm, "medium", [1])
    assert e.value.param == "reasoning_effort" and "thinking" in e.value.message


def test_split_separates_reasoning_from_the_answer():
    assert split("<think>\nhmm\n</think>\n\nYes.") == ("hmm", "Yes.")
    assert split("No thinking here.") == (None, "No thinking here.")
    assert split("<think>\nstill going") == ("still going", "")
    assert split("opened by the prompt</think>\n\nDone") == ("opened by the prompt", "Done")
