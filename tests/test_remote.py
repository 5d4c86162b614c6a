"""The remote backend (engine/remote.py) without a network: the rest bucket, the exact/approximate flags on
hand-made stages, the redraw within the known tokens, the errors, and a fake vLLM-speaking server (an
httpx.MockTransport) in front of the fake model, which must draw what the same model draws locally."""

from __future__ import annotations

import json

import httpx
import numpy as np
import pytest
import torch

from engine.generator import Generation
from engine.knob import ParamError
from engine.knobs import SamplingParams
from engine.remote import RemoteError, RemoteModel, approximate_stages, connect, dense_logits, redraw_known
from engine.scheduler import Scheduler
from tests.fakes import FakeTokenizer, chatty, fake_lm, outcome

NEG = float("-inf")
PIECES = [b"<eos>", b"<p>"] + [bytes([c]) for c in b"abcdefghij"]  # V = 12
V = len(PIECES)


def fake_server(next_logits, cap: int = -1, values: str = "raw_logits", key: str | None = None,
                logprobs: bool = True, token_prompts: bool = True, down: list | None = None,
                token_ids: bool = False, asked: list | None = None) -> httpx.MockTransport:
    """A vLLM-speaking server over `next_logits(history) -> (V,) logits`. cap: its --max-logprobs; values: its
    --logprobs-mode (raw_logits or raw_logprobs); down: while it holds True, every request fails to connect;
    token_ids: it honours logprob_token_ids (those ids instead of the top K, and the sampled token, here the
    argmax); asked: each /v1/completions body is appended to it."""

    def handle(request: httpx.Request) -> httpx.Response:
        if down and down[0]:
            raise httpx.ConnectError("connection refused", request=request)
        if key is not None and request.headers.get("authorization") != f"Bearer {key}":
            return httpx.Response(401, json={"error": {"message": "invalid key"}})
        if request.url.path == "/v1/models":
            return httpx.Response(200, json={"data": [{"id": "fake", "max_model_len": 64}]})
        if request.url.path != "/v1/completions":
            return httpx.Response(404, json={"error": {"message": "not found"}})
        body = json.loads(request.content)
        if asked is not None:
            asked.append(body)
        k = body["logprobs"]
        if cap >= 0 and not 0 <= k <= cap:
            return httpx.Response(400, json={"error": {"message": f"logprobs must be in [0, {cap}]"}})
        prompts = body["prompt"]
        if not token_prompts:
            prompts = [prompts]  # as a server that reads the whole list as one prompt
        choices = []
        for i, prompt in enumerate(prompts):
            x = next_logits(prompt).float()
            lp = x - torch.logsumexp(x, 0) if values == "raw_logprobs" else x
            ids = range(V) if k < 0 else lp.topk(min(k, lp.numel())).indices.tolist()
            if token_ids and body.get("logprob_token_ids"):
                ids = list(dict.fromkeys(body["logprob_token_ids"] + [int(lp.argmax())]))
            top = {f"token_id:{j}": float(lp[j]) for j in ids}
            choices.append({"index": i, "text": "", "logprobs": {"tokens": ["token_id:1"], "token_logprobs": [0.0],
                                                                 "top_logprobs": [top] if logprobs else None}})
        return httpx.Response(200, json={"choices": choices})

    return httpx.MockTransport(handle)


def remote(next_logits, **server) -> RemoteModel:
    return connect("http://fake", "fake", tokenizer_object=FakeTokenizer(PIECES), transport=fake_server(next_logits, **server))


def run(lm, params: SamplingParams, prompt=(1, 2, 3)) -> Generation:
    gen = Generation(lm, list(prompt), params)
    for _ in gen:
        pass
    return gen


# --- the rest bucket ---------------------------------------------------------------------------------


def test_the_rest_of_the_mass_is_spread_evenly_over_the_tokens_the_server_did_not_send():
    ids, values = np.array([4, 1, 7]), np.log(np.array([0.5, 0.2, 0.1], dtype=np.float32))
    logits, known, _ = dense_logits([(ids, values)], 6 + 4, logprobs=True)
    p = torch.softmax(logits[0].double(), 0)
    assert known[0].nonzero().squeeze(1).tolist() == [1, 4, 7]
    assert p[[4, 1, 7]].tolist() == pytest.approx([0.5, 0.2, 0.1], abs=1e-6)
    assert p[~known[0]].tolist() == pytest.approx([0.2 / 7] * 7, abs=1e-6)


def test_the_whole_vocabulary_is_known_and_taken_as_sent():
    values = np.array([1.5, -2.0, 0.25], dtype=np.float32)
    logits, known, _ = dense_logits([(np.arange(3), values)], 3, logprobs=False)
    assert known is None and logits[0].tolist() == [1.5, -2.0, 0.25]


# --- exact or approximate, on hand-made stages (V = 6; the server sent the log-probabilities of tokens 0, 1, 2) ---

KNOWN = torch.tensor([[True, True, True, False, False, False]])
RAW = torch.tensor([[3.0, 2.0, 1.0, -1.0, -1.0, -1.0]])


def flags(*stages: tuple[str, list[float]], known=KNOWN, signed=False) -> tuple[str, ...]:
    return approximate_stages([("raw", RAW)] + [(n, torch.tensor([x])) for n, x in stages], known, signed)[0]


def test_a_top_k_within_the_known_tokens_is_exact_and_so_is_temperature_after_it():
    assert flags(("top_k", [3, 2, NEG, NEG, NEG, NEG]), ("temperature", [6, 4, NEG, NEG, NEG, NEG])) == ()


def test_temperature_on_a_living_tail_is_approximate_and_so_is_every_stage_after_it():
    assert flags(("temperature", [6, 4, 2, -2, -2, -2]), ("top_k", [6, 4, NEG, NEG, NEG, NEG])) == ("temperature", "top_k")


def test_greedy_temperature_keeps_only_a_known_token_and_is_exact():
    assert flags(("temperature", [3, NEG, NEG, NEG, NEG, NEG])) == ()


def test_a_top_p_cut_inside_the_known_tokens_is_exact_and_one_that_keeps_tail_tokens_is_not():
    assert flags(("top_p", [3, 2, NEG, NEG, NEG, NEG])) == ()
    assert flags(("top_p", [3, 2, 1, -1, -1, NEG])) == ("top_p",)


def test_typical_p_and_top_n_sigma_measure_the_whole_distribution_while_the_tail_lives():
    assert flags(("typical_p", [3, 2, NEG, NEG, NEG, NEG])) == ("typical_p",)
    assert flags(("top_n_sigma", [3, 2, NEG, NEG, NEG, NEG])) == ("top_n_sigma",)
    assert flags(("top_k", [3, 2, NEG, NEG, NEG, NEG]), ("typical_p", [3, NEG, NEG, NEG, NEG, NEG])) == ()


def test_min_p_is_exact_only_when_the_least_known_token_goes_too():
    # A true tail token may weigh as much as the least known one: keeping token 2 may have kept some of them.
    assert flags(("min_p", [3, 2, 1, NEG, NEG, NEG])) == ("min_p",)
    assert flags(("min_p", [3, 2, NEG, NEG, NEG, NEG])) == ()


def test_additive_edits_are_exact_on_known_tokens_and_approximate_on_tail_tokens():
    assert flags(("logit_bias", [3, 7, 1, -1, -1, -1])) == ()
    assert flags(("logit_bias", [3, 2, 1, 4, -1, -1])) == ("logit_bias",)
    assert flags(("presence_frequency", [3, 1.5, 1, -1, -1.5, -1])) == ("presence_frequency",)


def test_the_repetition_penalty_on_log_probabilities_is_approximate_even_over_the_whole_vocabulary():
    # Log-probabilities are all negative: the sign that decides divide-or-multiply is lost.
    assert flags(("repetition_penalty", [3, 1.6, 1, -1, -1, -1]), known=None, signed=False) == ("repetition_penalty",)
    assert flags(("repetition_penalty", [3, 1.6, 1, -1, -1, -1]), known=None, signed=True) == ()


def test_raw_logits_of_a_top_k_carry_no_total_so_every_stage_that_ran_is_approximate():
    assert flags(("top_k", [3, 2, NEG, NEG, NEG, NEG]), ("temperature", [6, 4, NEG, NEG, NEG, NEG]),
                 known=KNOWN, signed=True) == ("top_k", "temperature")


def test_a_stage_that_was_off_is_not_marked():
    same = RAW.clone()
    stages = [("raw", RAW), ("temperature", same), ("top_k", same)]
    stages[2] = ("top_k", stages[1][1])  # off: returned its input
    assert approximate_stages(stages, KNOWN, False)[0] == ("temperature",)


# --- the draw in the rest bucket ------------------------------------------------------------------------


def test_a_draw_that_lands_in_the_rest_is_drawn_again_within_the_known_tokens():
    # Known 0.5, 0.2, 0.1; the rest 0.2 over three tokens. u = 0.9 passes the known 0.8: it lands in the rest.
    final = torch.tensor([[0.5, 0.2, 0.1, 0.2 / 3, 0.2 / 3, 0.2 / 3]]).log()
    chosen = torch.tensor([4])
    again = redraw_known(final, chosen, torch.tensor([0.9], dtype=torch.float64), torch.tensor([False]), KNOWN)
    # Within the known: 0.9 x 0.8 = 0.72 falls past 0.5 + 0.2 = 0.7, on the third known token.
    assert again == [True] and chosen.tolist() == [2]


def test_a_draw_that_lands_on_a_known_token_stays():
    final = torch.tensor([[0.5, 0.2, 0.1, 0.2 / 3, 0.2 / 3, 0.2 / 3]]).log()
    chosen = torch.tensor([1])
    again = redraw_known(final, chosen, torch.tensor([0.6], dtype=torch.float64), torch.tensor([False]), KNOWN)
    assert again == [False] and chosen.tolist() == [1]


# --- a whole run against a fake server --------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 3])
def test_the_whole_vocabulary_as_raw_logits_draws_what_the_local_model_draws(n):
    params = SamplingParams.build(seed=11, n=n, max_tokens=10, temperature=0.8, presence_penalty=0.7,
                                  repetition_penalty=1.3, top_k=8)
    here, there = run(fake_lm(chatty(V), PIECES), params), run(remote(chatty(V)), params)
    assert outcome(there) == outcome(here)
    for a, b in zip(here.completions, there.completions):
        for s, t in zip(a, b):
            assert np.array_equal(s.stage_probs, t.stage_probs) and np.array_equal(s.cand_ids, t.cand_ids)
            assert t.approximate == () and not t.rest_redrawn


def test_a_remote_model_is_named_by_its_mode():
    assert remote(chatty(V)).name == "fake · remote · exact"
    assert remote(chatty(V), cap=5, values="raw_logprobs").name == "fake · remote · top-5"


def test_log_probability_values_are_recognised_and_mark_the_repetition_penalty():
    lm = remote(chatty(V), values="raw_logprobs")
    assert not lm.signed
    gen = run(lm, SamplingParams.build(seed=3, max_tokens=4, repetition_penalty=1.3))
    assert all(s.approximate == ("repetition_penalty",) for s in gen.completions[0])
    stages = {s["name"]: s for s in gen.completions[0][0].to_dict(gen.stages)["stages"]}
    assert stages["repetition_penalty"]["exact"] is False and "exact" not in stages["raw"]


def test_top_k_values_mark_temperature_and_a_rest_draw_says_so():
    lm = remote(chatty(V), cap=5, values="raw_logprobs")
    gen = run(lm, SamplingParams.build(seed=5, max_tokens=30, temperature=1.5))
    steps = gen.completions[0]
    assert all(s.approximate == ("temperature",) for s in steps)
    assert all(s.token_id in s.top_ids[:5].tolist() for s in steps)  # only tokens the server sent are drawn
    redrawn = [s for s in steps if s.rest_redrawn]
    assert redrawn, "a hot temperature over 7 unknown tokens lands in the rest within 30 steps"
    assert redrawn[0].to_dict(gen.stages)["rest_redrawn"] is True


def test_a_top_k_server_refuses_a_grammar_by_naming_the_model():
    from engine.reasoning import Thinking

    lm = remote(chatty(V), cap=5, values="raw_logprobs")
    gen = Generation(lm, [1, 2], SamplingParams.build(seed=1, max_tokens=3), thinking=Thinking(2, (5,), (6,), False))
    with pytest.raises(ParamError, match="top 5 tokens") as e:
        list(gen)
    assert e.value.param == "model"


# --- errors -------------------------------------------------------------------------------------------


def test_a_wrong_url_is_a_clear_error():
    with pytest.raises(RemoteError, match="cannot reach the server at http://127.0.0.1:9"):
        connect("http://127.0.0.1:9", "fake", tokenizer_object=FakeTokenizer(PIECES), timeout=5)


def test_a_refused_key_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("PLAYGROUND_REMOTE_KEY", "wrong")
    with pytest.raises(RemoteError, match=r"refused the key \(401\): set PLAYGROUND_REMOTE_KEY"):
        remote(chatty(V), key="right")
    monkeypatch.setenv("PLAYGROUND_REMOTE_KEY", "right")
    assert remote(chatty(V), key="right").name == "fake · remote · exact"


def test_a_server_without_logprobs_or_token_prompts_is_refused_when_connecting():
    with pytest.raises(RemoteError, match="no logprobs"):
        remote(chatty(V), logprobs=False)
    with pytest.raises(RemoteError, match="model 'other'"):
        connect("http://fake", "other", tokenizer_object=FakeTokenizer(PIECES), transport=fake_server(chatty(V)))


def test_a_server_that_dies_mid_run_ends_the_run_with_its_error_and_the_loop_serves_the_next(closes_schedulers):
    def endless(history):  # never ends on its own
        x = chatty(V)(history)
        x[0] = -30.0
        return x

    down = [False]
    lm = connect("http://fake", "fake", tokenizer_object=FakeTokenizer(PIECES), transport=fake_server(endless, down=down))
    sched = Scheduler(lm)
    params = SamplingParams.build(seed=2, max_tokens=40)
    ticket = sched.submit(Generation(lm, [1, 2], params))
    got = []
    with pytest.raises(RemoteError, match="cannot reach"):
        for steps in ticket:
            got += steps
            if len(got) == 3:
                down[0] = True
    down[0] = False
    again = Generation(lm, [1, 2], params.with_(max_tokens=4))
    for _ in sched.submit(again):
        pass
    assert outcome(again) == outcome(run(fake_lm(endless, PIECES), params.with_(max_tokens=4), prompt=[1, 2]))


def test_the_step_view_says_which_stages_were_approximate_and_that_a_draw_was_drawn_again():
    from playground import figures

    knobs = dict(seed=5, max_tokens=30, temperature=1.5)
    gen = run(remote(chatty(V), cap=5, values="raw_logprobs"), SamplingParams.build(**knobs))
    step = next(s for s in gen.completions[0] if s.rest_redrawn).to_dict(gen.stages)
    sentences = figures.stage_sentences(step, {i: p.decode() for i, p in enumerate(PIECES)}, knobs)
    assert [s for s in sentences if "Approximate" in s] == [s for s in sentences if s.startswith("temperature 1.5")]
    assert sentences[-1].startswith("The draw first landed in that rest")
    titles = [figures._row_title(st, knobs, False) for st in step["stages"]]
    assert [t.endswith("approximate (the server sent only its top tokens)") for t in titles] == \
        [st["name"] == "temperature" for st in step["stages"]]


def test_on_zerogpu_a_remote_model_is_served_by_the_shared_loop_not_a_gpu_call(closes_schedulers):
    from playground import zerogpu
    from playground.models import ModelHost

    host = ModelHost(fake_lm(chatty(V), PIECES), gpu=zerogpu.pickled)
    far = host.add(remote(chatty(V)))
    assert isinstance(host.scheduler(far.name), Scheduler)
    assert isinstance(host.scheduler(), zerogpu.GpuScheduler)


def llama_server(next_logits) -> httpx.MockTransport:
    """llama.cpp's server: no /v1/completions logprobs on token prompts, but /completion with n_probs (the raw
    softmax's top N with ids) and /apply-template."""

    def handle(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content) if request.content else {}
        if request.url.path == "/v1/models":
            return httpx.Response(200, json={"object": "list", "data": [{"id": "fake"}]})
        if request.url.path == "/apply-template":
            return httpx.Response(200, json={"prompt": "j" + "".join(m["content"] for m in body["messages"]) + "<p>"})
        if request.url.path != "/completion":
            return httpx.Response(404, json={"error": {"code": 404, "message": "File Not Found"}})
        x = next_logits(body["prompt"]).float()
        lp = x - torch.logsumexp(x, 0)
        order = lp.argsort(descending=True)[: body["n_probs"]].tolist()
        top = [{"id": j, "token": PIECES[j].decode(), "logprob": float(lp[j])} for j in order]
        return httpx.Response(200, json={"content": "", "completion_probabilities": [{**top[0], "top_logprobs": top}]})

    return httpx.MockTransport(handle)


def test_a_llama_cpp_server_is_driven_through_its_own_completion_endpoint():
    lm = connect("http://fake", "fake", tokenizer_object=FakeTokenizer(PIECES), transport=llama_server(chatty(V)))
    assert lm.server.dialect == "llama.cpp" and lm.name == "fake · remote · exact" and not lm.signed
    # Its template (which opens with "j", the local one does not), then this vocabulary.
    assert lm.encode_chat([{"role": "user", "content": "abc"}]) == [11, 2, 3, 4, 1]
    greedy = SamplingParams.build(temperature=0, max_tokens=8)
    assert outcome(run(lm, greedy)) == outcome(run(fake_lm(chatty(V), PIECES), greedy))
    penalised = run(lm, SamplingParams.build(seed=4, max_tokens=3, repetition_penalty=1.2))
    assert all(s.approximate == ("repetition_penalty",) for s in penalised.completions[0])


def llama_server_openai(next_logits):
    """llama.cpp's llama-server as it answers /v1/completions (checked against a real build): a token
    prompt, no logprobs for `logprobs: -1`, and for `logprobs: K` the chat form with token ids."""

    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/models":
            return httpx.Response(200, json={"data": [{"id": "model.gguf"}]})
        if request.url.path == "/apply-template":
            return httpx.Response(200, json={"prompt": "".join(m["content"] for m in json.loads(request.content)["messages"])})
        if request.url.path != "/v1/completions":
            return httpx.Response(404, json={"error": {"message": "not found"}})
        body = json.loads(request.content)
        prompts = body["prompt"] if isinstance(body["prompt"][0], list) else [body["prompt"]]
        choices = []
        for i, prompt in enumerate(prompts):
            lp = torch.log_softmax(next_logits(prompt).float(), 0)
            k = body["logprobs"]
            top = None if k < 0 else [{"id": j, "token": "?", "bytes": [], "logprob": float(lp[j])}
                                      for j in lp.topk(min(k, lp.numel())).indices.tolist()]
            choices.append({"index": i, "text": "", "logprobs": None if top is None else
                            {"content": [{"id": 0, "token": "?", "logprob": 0.0, "top_logprobs": top}]}})
        return httpx.Response(200, json={"choices": choices})

    return httpx.MockTransport(handle)


def test_llama_servers_openai_endpoint_gives_the_whole_vocabulary_asked_by_its_size_and_draws_as_local_mode():
    lm = connect("http://llama", "model.gguf", tokenizer_object=FakeTokenizer(PIECES), transport=llama_server_openai(chatty(V)))
    assert lm.mode == "exact" and lm.server.vocab_ask and lm.template_from_server == "apply-template"
    params = SamplingParams.build(seed=4, max_tokens=6, temperature=0.9, top_k=5)
    assert run(lm, params).texts == run(fake_lm(chatty(V), PIECES), params).texts
