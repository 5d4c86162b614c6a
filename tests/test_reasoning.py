"""reasoning_effort on a fake model with a tiny thinking template: budgets, forced closing, the split."""

import pytest
import torch

from engine.generator import Generation
from engine.knobs import ParamError, SamplingParams
from engine.reasoning import BUDGETS, Thinking, split
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
