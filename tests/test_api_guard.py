"""Who may call the API, the queue, and the caps that answer 429: a server started with a key and tight caps."""

from __future__ import annotations

import contextlib
import json
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
from fastapi.testclient import TestClient
from starlette.datastructures import Headers

from playground.api import ApiSettings, create_api, is_loopback, refusal
from tests.serving import start_server

pytestmark = [pytest.mark.server, pytest.mark.model]

KEY = "sesame"
MAX_BATCH_TOKENS = 4000
HELLO = [{"role": "user", "content": "Tell me a long story about a lighthouse keeper."}]


@pytest.fixture(scope="module")
def guarded():
    """Two rows decoding at once, two requests waiting at most, 4000 cache tokens, and a key."""
    with start_server("--api-key", KEY, "--max-batch-rows", "2", "--max-queue", "2",
                      "--max-batch-tokens", str(MAX_BATCH_TOKENS)) as s:
        yield s


def body(**knobs) -> dict:
    return {"messages": HELLO, "max_tokens": 1, **knobs}


def post(server, key: str | None = KEY, timeout: float = 60, **knobs) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key is not None else {}
    return httpx.post(server.api + "/chat/completions", json=body(**knobs), headers=headers, timeout=timeout)


ENDLESS = {"max_tokens": 3000, "logit_bias": {"2": -100}}  # no end token: minutes of generation on this CPU


@contextlib.contextmanager
def long_streams(server, k: int):
    """k streams that would run for minutes, each read up to its first token (so each holds a row)."""
    client = httpx.Client(timeout=60)
    responses, kept = [], []
    try:
        for _ in range(k):
            request = client.build_request("POST", server.api + "/chat/completions", json=body(stream=True, **ENDLESS),
                                           headers={"Authorization": f"Bearer {KEY}"})
            response = client.send(request, stream=True)
            assert response.status_code == 200
            lines = response.iter_lines()  # kept alive: a collected line iterator closes the connection
            for line in lines:
                if line.startswith("data: ") and '"content": ""' not in line:  # past the role chunk: generating
                    break
            responses.append(response)
            kept.append(lines)
        yield responses
    finally:
        for response in responses:
            response.close()
        client.close()


def served_within(server, seconds: float) -> bool:
    """A short request is answered within `seconds` (a row left running would hold it for minutes; this
    bounds a hang, it is not a speed assertion)."""
    try:
        return post(server, timeout=seconds).status_code == 200
    except httpx.TimeoutException:
        return False


def in_background(pool, server, **knobs):
    future = pool.submit(post, server, **knobs)
    time.sleep(2.0)  # it reaches the queue well within this
    return future


def test_missing_key_is_401_in_the_openai_shape(guarded):
    r = post(guarded, key=None)
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"


def test_wrong_key_is_401(guarded):
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=guarded.api, api_key="wrong", max_retries=0).models.list()


def test_the_key_lets_the_openai_client_in(guarded):
    client = openai.OpenAI(base_url=guarded.api, api_key=KEY, max_retries=0)
    model = client.models.list().data[0].id
    assert client.chat.completions.create(model=model, messages=HELLO, max_tokens=1).choices[0].message.content is not None


def test_a_wrong_key_is_refused_before_the_body_is_read(guarded):
    r = httpx.post(guarded.api + "/chat/completions", content=b"{not json", headers={"Authorization": "Bearer nope"}, timeout=10)
    assert r.status_code == 401


def test_the_ui_needs_no_key(guarded):
    assert httpx.get(guarded.url + "/", timeout=30).status_code == 200


def test_more_than_the_cache_holds_is_429_naming_max_tokens(guarded):
    r = post(guarded, n=2, max_tokens=MAX_BATCH_TOKENS)
    assert r.status_code == 429 and r.json()["error"]["param"] == "max_tokens"
    assert str(MAX_BATCH_TOKENS) in r.json()["error"]["message"]


def test_more_completions_than_the_batch_rows_is_429_naming_n(guarded):
    r = post(guarded, n=3)
    assert r.status_code == 429 and r.json()["error"]["param"] == "n" and "Retry-After" not in r.headers


def test_past_the_batch_rows_requests_wait_and_past_the_queue_they_get_429_with_retry_after(guarded):
    with ThreadPoolExecutor(2) as pool:
        with long_streams(guarded, 2):
            third, fourth = in_background(pool, guarded, max_tokens=2), in_background(pool, guarded, max_tokens=2)
            fifth = post(guarded)
            assert fifth.status_code == 429 and fifth.headers["Retry-After"] == "1"
            assert fifth.json()["error"]["code"] == "rate_limit_exceeded"
            assert not third.done() and not fourth.done()  # waiting, not refused
        # The streams end: the waiting requests are admitted and answered in full.
        for waited in (third, fourth):
            r = waited.result(timeout=60)
            assert r.status_code == 200 and r.json()["choices"][0]["finish_reason"] == "length"


def test_a_waiting_client_that_disconnects_leaves_the_queue(guarded):
    with ThreadPoolExecutor(2) as pool:
        with long_streams(guarded, 2):
            with pytest.raises(httpx.ReadTimeout):
                post(guarded, timeout=2)  # waits in the queue, then leaves
            time.sleep(1.5)
            waiting = [in_background(pool, guarded), in_background(pool, guarded)]  # room for both again
            assert not any(w.done() for w in waiting)
            assert post(guarded).status_code == 429
        assert all(w.result(timeout=60).status_code == 200 for w in waiting)


def test_a_client_that_disconnects_frees_its_row(guarded):
    with long_streams(guarded, 2) as (first, _):
        first.close()
        assert served_within(guarded, 20)


def test_a_client_that_disconnects_from_a_plain_call_frees_its_row(guarded):
    with long_streams(guarded, 1):
        with pytest.raises(httpx.ReadTimeout):
            post(guarded, timeout=3, **ENDLESS)
        assert served_within(guarded, 20)


# --- without a key: loopback only, unless opened (checked in-process: tests cannot call from afar) -----

def test_without_a_key_only_loopback_clients_are_served():
    closed = ApiSettings()
    assert refusal(closed, Headers({}), "127.0.0.1") is None and refusal(closed, Headers({}), "::1") is None
    assert refusal(closed, Headers({}), "10.0.0.7").status == 403
    assert refusal(ApiSettings(open_to_remote=True), Headers({}), "10.0.0.7") is None


def test_loopback_covers_ipv4_mapped_addresses():
    assert is_loopback("::ffff:127.0.0.1") and not is_loopback("::ffff:10.0.0.7") and not is_loopback(None)


def test_a_remote_client_gets_403_in_the_openai_shape_and_the_key_still_applies_with_a_key():
    remote = TestClient(create_api(host=None, settings=ApiSettings()), client=("10.0.0.7", 5000))
    r = remote.get("/v1/models")
    assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
    keyed = TestClient(create_api(host=None, settings=ApiSettings(api_key=KEY)), client=("10.0.0.7", 5000))
    assert keyed.get("/v1/nowhere", headers={"Authorization": f"Bearer {KEY}"}).status_code == 404


def test_a_plain_request_to_a_long_context_model_is_served_under_the_default_caps():
    import torch

    from playground.models import ModelHost
    from tests.fakes import EOS, fake_lm

    def says_bc(history):  # after the assistant's turn (<p>, id 1): "b", "c", then the end
        said = len(history) - history.index(1) - 1
        out = torch.full((8,), -20.0)
        out[[3, 4][said] if said < 2 else EOS] = 0.0
        return out

    lm = fake_lm(says_bc, [b"<eos>", b"<p>", b"a", b"b", b"c", b"d", b"e", b"f"], context_length=131072)
    api = TestClient(create_api(ModelHost(lm), ApiSettings()))
    r = api.post("/v1/chat/completions", json={"model": "fake", "messages": [{"role": "user", "content": "abc"}]})
    assert r.status_code == 200, r.json()
    assert r.json()["choices"][0]["message"]["content"] == "bc"


def test_caps_must_be_positive_integers():
    import app

    assert app.parse_args(["--max-batch-rows", "3"]).max_batch_rows == 3
    for bad in (["--max-batch-rows", "0"], ["--max-queue", "-1"], ["--max-batch-tokens", "many"]):
        with pytest.raises(SystemExit):
            app.parse_args(bad)
