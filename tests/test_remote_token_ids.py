"""Tokens outside a server's top K that a step needs (a grammar's allowed set, a thinking budget's forced
close, a logit_bias), asked for by id with vLLM's `logprob_token_ids`: this playground's /v1/completions
answers it; a top-K remote asks for them, draws what local mode draws and marks nothing approximate where
they all came; past the cap its constraint is approximate and still never lets a forbidden token through;
a server without the field still refuses a grammar, saying why."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.knob import ParamError
from engine.generator import Generation
from engine.knobs import SamplingParams
from engine.reasoning import Thinking
from engine.scheduler import Scheduler
from engine.remote import approximate_stages, connect, dense_logits, extra_asks
from playground.api_completions import decode_base64_entry
from tests.fakes import FakeTokenizer, chatty, fake_lm, outcome
from tests.serving import start_server
from tests.test_api_completions import api, complete, events, local_logits, prompt, refused  # noqa: F401 (api, prompt: fixtures)
from tests.test_remote import NEG, PIECES, V, fake_server
from tests.test_remote_server import HELLO, run

# --- this playground's /v1/completions answers logprob_token_ids ----------------------------------------


ASKED = [5, 3, 5, 40000]  # a repeat is dropped; 40000 is far outside any top K


@pytest.mark.model
def test_logprob_token_ids_report_exactly_those_ids_and_the_chosen_token_as_json(api, lm, prompt):
    body = complete(api, prompt=prompt, max_tokens=1, seed=1, logprobs=20, logprob_token_ids=ASKED,
                    return_tokens_as_token_ids=True)
    lp = body["choices"][0]["logprobs"]
    (top,), (chosen,) = lp["top_logprobs"], lp["tokens"]
    asked = ["token_id:5", "token_id:3", "token_id:40000"]
    assert list(top) == asked + ([] if chosen in asked else [chosen])
    expected = torch.log_softmax(local_logits(lm, prompt), dim=-1)[[5, 3, 40000]]
    assert [top[name] for name in asked] == expected.tolist()


@pytest.mark.model
def test_logprob_token_ids_in_base64_send_those_ids_in_the_order_given(api, lm, prompt):
    body = complete(api, prompt=prompt, max_tokens=2, seed=1, logprobs=1, logprob_token_ids=ASKED,
                    logprobs_format="base64_float32")
    ids, values = decode_base64_entry(body["choices"][0]["logprobs"]["top_logprobs_base64"][0], lm.vocab_size)
    assert ids.tolist() == [5, 3, 40000]
    assert values.tolist() == torch.log_softmax(local_logits(lm, prompt), dim=-1)[[5, 3, 40000]].tolist()


@pytest.mark.model
def test_a_stream_reports_the_asked_ids_at_every_token(api, prompt):
    chunks = events(api, prompt=prompt, max_tokens=3, seed=2, logprobs=0, logprob_token_ids=[7, 9],
                    return_tokens_as_token_ids=True)
    tops = [c["choices"][0]["logprobs"]["top_logprobs"][0] for c in chunks]
    assert len(tops) == 3 and all(list(t)[:2] == ["token_id:7", "token_id:9"] and len(t) <= 3 for t in tops)


@pytest.mark.model
@pytest.mark.parametrize("body, said", [
    (dict(logprobs=5, logprob_token_ids=list(range(129))), "at most 128"),
    (dict(logprobs=5, logprob_token_ids=[1, 49152]), "outside the vocabulary [0, 49151]"),
    (dict(logprob_token_ids=[1, 2]), "needs logprobs"),
])
def test_bad_logprob_token_ids_are_a_400_naming_the_field(api, body, said):
    error = refused(api, prompt=[1, 2], **body)
    assert error["param"] == "logprob_token_ids" and said in error["message"]


@pytest.mark.model
def test_logprob_token_ids_are_not_capped_by_max_logprobs(api, prompt):
    body = complete(api, prompt=prompt, max_tokens=1, logprobs=20, logprob_token_ids=list(range(100, 228)),
                    return_tokens_as_token_ids=True)
    assert len(body["choices"][0]["logprobs"]["top_logprobs"][0]) >= 128


# --- hand-made: a fake server, a fake model, a hand-made grammar ------------------------------------------


class Only:
    """A hand-made grammar (the shape engine/constraints.py's Grammar and Matchers have, without llguidance,
    which needs a real tokenizer): every step allows the same tokens, and it never finishes."""

    label, param = "only", "response_format"

    def __init__(self, ids: list[int]):
        self.ids = ids

    def start(self, lm, n: int) -> "Only":
        self.mask = torch.zeros(lm.vocab_size, dtype=torch.bool)
        self.mask[self.ids] = True
        self.matchers = [None] * n
        return self

    def allowed(self, i: int) -> torch.Tensor:
        return self.mask.clone()

    def consume(self, i: int, token: int) -> None:
        assert self.mask[token], f"token {token} is forbidden"

    def finished(self, i: int) -> bool:
        return False


def low_tail(history: list[int]) -> torch.Tensor:
    """chatty's logits with tokens 7, 8 and 9 never among the top 5."""
    x = chatty(V)(history)
    x[7:10] = -9.0
    return x


def top5(asked: list | None = None, token_ids: bool = True):
    """A top-5 server of log-probabilities over low_tail; `asked` collects its requests once connected."""
    lm = connect("http://fake", "fake", tokenizer_object=FakeTokenizer(PIECES),
                 transport=fake_server(low_tail, cap=5, values="raw_logprobs", token_ids=token_ids, asked=asked))
    if asked is not None:
        asked.clear()  # the probes
    return lm


def test_connect_finds_whether_a_top_k_server_honours_logprob_token_ids():
    assert top5().token_ids and top5().mode == "top-5"
    assert not top5(token_ids=False).token_ids


def test_a_server_without_logprob_token_ids_refuses_a_grammar_saying_why_and_what_would_work():
    lm = top5(token_ids=False)
    with pytest.raises(ParamError) as e:
        run(lm, [1, 2], SamplingParams.build(seed=1, max_tokens=3), grammar=Only([3, 7]))
    assert e.value.param == "model"
    assert "cannot be asked for given token ids" in str(e.value)
    assert "logprob_token_ids" in str(e.value) and "--max-logprobs -1" in str(e.value)


@pytest.mark.parametrize("knobs", [dict(temperature=0), dict(temperature=1.0, seed=4), dict(temperature=1.3, seed=5, n=3)])
def test_a_grammar_through_a_top_k_server_that_is_asked_for_ids_draws_as_local_mode_and_exactly(knobs):
    asked = []
    params = SamplingParams.build(max_tokens=12, **knobs)
    grammar = [3, 4, 7, 8, 9]  # tokens 7-9 are never in the server's top 5
    there = run(top5(asked), [1, 2], params, grammar=Only(grammar))
    here = run(fake_lm(low_tail, PIECES), [1, 2], params, grammar=Only(grammar))
    assert outcome(there) == outcome(here)
    assert all(s.approximate == () and not s.rest_redrawn for c in there.completions for s in c)
    follow_ups = [b for b in asked if b.get("logprob_token_ids")]
    assert follow_ups and all(set(b["logprob_token_ids"]) <= set(grammar) for b in follow_ups)


def test_past_the_cap_the_constraint_is_approximate_and_no_forbidden_token_is_drawn():
    asked = []
    lm = top5(asked)
    lm.ids_per_ask, lm.extra_asks = 2, 1  # room for 2 ids a step; the grammar's unknown tokens are 3 or more
    gen = run(lm, [1, 2], SamplingParams.build(seed=6, max_tokens=30, temperature=1.5), grammar=Only([3, 4, 7, 8, 9]))
    steps = gen.completions[0]
    assert all(s.token_id in (3, 4, 7, 8, 9) for s in steps)
    assert all("constraint" in s.approximate for s in steps)
    assert not any(b.get("logprob_token_ids") for b in asked)


def test_a_thinking_budgets_forced_close_outside_the_top_k_is_asked_for_and_exact():
    # By hand: the embedded SmolLM2's chat template has no <think> section (engine/reasoning.supports_thinking).
    asked = []
    thinking = Thinking(2, (), (7, 9), True)  # inside from the start; after 2 tokens the close 7, 9 is forced
    params = SamplingParams.build(temperature=0, max_tokens=6)
    there = run(top5(asked), [1, 2], params, thinking=thinking)
    here = run(fake_lm(low_tail, PIECES), [1, 2], params, thinking=thinking)
    assert outcome(there) == outcome(here) and [s.token_id for s in there.completions[0]][2:4] == [7, 9]
    assert all(s.approximate == () for s in there.completions[0])
    assert [b["logprob_token_ids"] for b in asked if b.get("logprob_token_ids")][:2] == [[7], [9]]


def test_a_large_logit_bias_on_a_tail_token_draws_it_as_local_mode_and_exactly():
    params = SamplingParams.build(seed=2, max_tokens=4, logit_bias={8: 100})
    there = run(top5(), [1, 2], params)
    assert outcome(there) == outcome(run(fake_lm(low_tail, PIECES), [1, 2], params))
    assert [s.token_id for s in there.completions[0]] == [8] * 4 and all(s.approximate == () for s in there.completions[0])


class Breaks(Only):
    """Only, whose matcher raises from the fifth mask it is asked for on."""

    asked = 0

    def allowed(self, i: int) -> torch.Tensor:
        self.asked += 1
        if self.asked >= 5:
            raise RuntimeError("the matcher broke")
        return super().allowed(i)


def test_a_grammar_that_fails_while_its_wanted_ids_are_asked_ends_only_its_job(closes_schedulers):
    lm = top5()
    scheduler = Scheduler(lm)
    params = SamplingParams.build(seed=3, max_tokens=8)
    # Its fifth mask is asked for before a forward pass (the prefill's and each draw's asked once each), by
    # when the other job's row has joined the batch.
    broken = scheduler.submit(Generation(lm, [1, 2], params, grammar=Breaks([3, 4, 7, 8, 9])))
    fine = scheduler.submit(Generation(lm, [1, 3], params))
    with pytest.raises(RuntimeError, match="matcher broke"):
        for _ in broken:
            pass
    for _ in fine:
        pass
    assert outcome(fine.job) == outcome(run(top5(), [1, 3], params))


def test_follow_up_requests_carry_at_most_128_ids_each_and_only_the_rows_that_miss_them():
    missing = [np.arange(0, 200), None, np.arange(150, 300), np.arange(5000, 6000), np.array([7])]
    asks = extra_asks(missing)
    assert [(c[0], c[-1], rows) for c, rows in asks] == [(0, 127, [0, 4]), (128, 255, [0, 2]), (256, 299, [2])]
    # Row 3's 1000 ids would overflow the cap of 8 x 128 = 1024 with the others': it gets none of them.
    assert all(3 not in rows for _, rows in asks)


def test_the_rest_bucket_stays_below_the_least_top_k_value_not_an_asked_for_one():
    top = (np.array([4, 1, 7]), np.log(np.array([0.5, 0.3, 0.15], dtype=np.float32)))
    asked = (np.array([2]), np.log(np.array([1e-6], dtype=np.float32)))  # far below the true tail
    logits, known, top_k = dense_logits([top], 10, logprobs=True, k=3, extras=[asked])
    p = torch.softmax(logits[0].double(), 0)
    assert known[0].nonzero().squeeze(1).tolist() == [1, 2, 4, 7] and top_k[0].nonzero().squeeze(1).tolist() == [1, 4, 7]
    assert p[~known[0]].tolist() == pytest.approx([(0.05 - 1e-6) / 6] * 6, rel=1e-4)


def test_the_sampled_token_vllm_adds_beside_the_top_k_is_known_but_not_of_it():
    entries = [(np.array([4, 1, 9]), np.log(np.array([0.6, 0.3, 0.001], dtype=np.float32)))]  # 9: the sampled token
    logits, known, top_k = dense_logits(entries, 10, logprobs=True, k=2)
    assert known[0, 9] and not top_k[0, 9]
    assert torch.softmax(logits[0].double(), 0)[0] == pytest.approx(0.099 / 7, rel=1e-4)


def test_min_p_is_exact_only_when_the_least_top_k_token_goes_even_if_an_asked_for_token_went():
    # Tokens 0-2 the top 3, token 5 asked for by id (far below); 3 and 4 the unknown tail.
    known = torch.tensor([[True, True, True, False, False, True]])
    top = torch.tensor([[True, True, True, False, False, False]])
    raw = torch.tensor([[3.0, 2.0, 1.0, -1.0, -1.0, -10.0]])
    kept_least_top = torch.tensor([[3.0, 2.0, 1.0, NEG, NEG, NEG]])
    assert approximate_stages([("raw", raw), ("min_p", kept_least_top)], known, False, top)[0] == ("min_p",)
    cut_least_top = torch.tensor([[3.0, 2.0, NEG, NEG, NEG, NEG]])
    assert approximate_stages([("raw", raw), ("min_p", cut_least_top)], known, False, top)[0] == ()


# --- a second app process that sends its top 20 and answers logprob_token_ids ---------------------------

SCHEMA = {"type": "object", "properties": {"colour": {"enum": ["red", "green", "blue"]}, "sure": {"type": "boolean"}},
          "required": ["colour", "sure"], "additionalProperties": False}
TOOL = {"name": "paint", "parameters": {"type": "object", "properties": {"colour": {"enum": ["red", "teal"]}},
                                        "required": ["colour"]}}


@pytest.fixture(scope="module")
def top20(lm):
    """A playground that sends at most its top 20 log-probabilities, with as many threads as this process (the
    same logits bit for bit: the README's seed contract), connected as a remote."""
    with start_server("--max-logprobs", "20", "--threads", str(torch.get_num_threads())) as s:
        remote = connect(s.url, lm.name, tokenizer_object=lm.tokenizer)
        yield remote
        remote.server.close()


def grammars():
    from engine.tools import call_grammar, response_grammar

    return {"response_format": response_grammar({"type": "json_schema", "json_schema": {"name": "c", "schema": SCHEMA}}),
            "tools": call_grammar([TOOL], "required")}


@pytest.mark.server
@pytest.mark.model
@pytest.mark.parametrize("which", ["response_format", "tools"])
@pytest.mark.parametrize("knobs", [dict(temperature=0), dict(temperature=1.0, seed=3)])
def test_a_grammar_through_the_top_20_remote_gives_local_modes_tokens_and_exact_steps(lm, top20, which, knobs):
    assert top20.mode == "top-20" and top20.token_ids
    chat = lm.encode_chat([{"role": "user", "content": "What colour is the sea? Answer in JSON."}])
    params = SamplingParams.build(max_tokens=40, **knobs)
    here = run(lm, chat, params, grammar=grammars()[which])
    there = run(top20, chat, params, grammar=grammars()[which])
    assert outcome(there) == outcome(here) and there.finish_reasons == ["stop"]
    assert all(s.approximate == () and not s.rest_redrawn for s in there.completions[0])


@pytest.mark.server
@pytest.mark.model
def test_a_logit_bias_of_100_on_a_tail_token_through_the_top_20_remote_draws_it_as_local_mode(lm, top20):
    chat = lm.encode_chat(HELLO)
    tail = int(local_logits(lm, chat).argmin())
    params = SamplingParams.build(seed=1, max_tokens=3, logit_bias={tail: 100})
    here, there = run(lm, chat, params), run(top20, chat, params)
    assert outcome(there) == outcome(here) and [s.token_id for s in there.completions[0]] == [tail] * 3
    assert all(s.approximate == () for s in there.completions[0])
