"""Who may call the API, and the caps that answer 429: a server started with a key and tight caps."""

from __future__ import annotations

import json
import time

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
    """One request in flight at most, at most 4000 tokens per request, and a key."""
    with start_server("--api-key", KEY, "--max-in-flight", "1", "--max-batch-tokens", str(MAX_BATCH_TOKENS)) as s:
        yield s


def body(**knobs) -> dict:
    return {"messages": HELLO, "max_tokens": 1, **knobs}


def post(server, key: str | None = KEY, **knobs) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key is not None else {}
    return httpx.post(server.api + "/chat/completions", json=body(**knobs), headers=headers, timeout=60)


@pytest.fixture()
def long_stream(guarded):
    """A stream that would run for minutes (4000 tokens), opened and read up to its first token."""
    client = httpx.Client(timeout=60)
    request = client.build_request("POST", guarded.api + "/chat/completions", json=body(max_tokens=MAX_BATCH_TOKENS, stream=True),
                                   headers={"Authorization": f"Bearer {KEY}"})
    response = client.send(request, stream=True)
    assert response.status_code == 200
    lines = response.iter_lines()
    for line in lines:
        if line.startswith("data: ") and '"content": ""' not in line:  # past the role chunk: generating
            break
    yield response
    response.close()
    client.close()
    accepted_after_disconnect(guarded)  # leave the one slot free for the next test


def accepted_after_disconnect(server, within: float = 30.0) -> bool:
    """True once a request is accepted again; a generation left running would hold the one slot for
    minutes (this bounds a hang; it is not a speed assertion)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if post(server).status_code == 200:
            return True
        time.sleep(0.2)
    return False


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


def test_more_than_the_token_cap_is_429_naming_max_tokens(guarded):
    r = post(guarded, n=2, max_tokens=MAX_BATCH_TOKENS)
    assert r.status_code == 429 and r.json()["error"]["param"] == "max_tokens"
    assert str(MAX_BATCH_TOKENS) in r.json()["error"]["message"]


def test_more_requests_in_flight_than_the_cap_is_429_with_retry_after(guarded, long_stream):
    r = post(guarded)
    assert r.status_code == 429 and r.headers["Retry-After"] == "1"
    assert r.json()["error"]["code"] == "rate_limit_exceeded"


def test_a_client_that_disconnects_stops_its_generation(guarded, long_stream):
    long_stream.close()
    assert accepted_after_disconnect(guarded)


def test_a_client_that_disconnects_from_a_plain_call_stops_its_generation(guarded):
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(guarded.api + "/chat/completions", json=body(max_tokens=MAX_BATCH_TOKENS),
                   headers={"Authorization": f"Bearer {KEY}"}, timeout=3)
    assert accepted_after_disconnect(guarded)


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


def test_caps_must_be_positive_integers():
    import app

    assert app.parse_args(["--max-in-flight", "3"]).max_in_flight == 3
    for bad in (["--max-in-flight", "0"], ["--max-batch-tokens", "many"]):
        with pytest.raises(SystemExit):
            app.parse_args(bad)
