""""Connect a server" without a browser (playground/ui_remote.py, playground/models.py): the page lists a
server's models and connects one for its own browser session only, says clearly what went wrong, never
sends this server's own key to a visitor's address, keeps a bounded number of such models, and is off on a
public server unless the operator allows it."""

from __future__ import annotations

import functools
import types

import httpx
import pytest
from fastapi.testclient import TestClient

from playground import models, ui_remote
from playground.api import ApiSettings, create_api
from playground.models import ModelHost, ModelMissing
from playground.ui import _handler
from tests.fakes import FakeTokenizer, chatty, fake_lm
from tests.test_remote import PIECES, V, fake_server

URL = "http://gpu-box:8000"
NAME = "fake · remote · exact"


def host() -> ModelHost:
    h = ModelHost(fake_lm(chatty(V), PIECES))
    h.connect_off = None
    return h


def connect(h: ModelHost, session: str, **server) -> dict:
    return ui_remote.connect_server(h, URL, "", "fake", session, transport=fake_server(chatty(V), **server),
                                    tokenizer_object=FakeTokenizer(PIECES))


def test_listing_fills_the_dropdown_with_the_servers_models():
    out = ui_remote.list_models(host(), URL, "", transport=fake_server(chatty(V)))
    assert out["remote_models"]["choices"] == ["fake"]
    assert out["remote_models"]["value"] == "fake" and "1 model at" in out["remote_note"]


def test_a_connected_model_is_picked_and_listed_for_its_session_only():
    h = host()
    out = connect(h, "alice")
    assert out["model"]["value"] == NAME and NAME in out["model"]["choices"]
    assert "for this browser session only" in out["remote_note"] and "every stage is exact" in out["remote_note"]
    assert h.names("alice") == ["fake", NAME]
    assert h.names("bob") == ["fake"] and h.names() == ["fake"]
    assert h.get(NAME, "alice").name == NAME
    with pytest.raises(ModelMissing, match="another browser session"):
        h.get(NAME, "bob")
    with pytest.raises(ModelMissing):
        h.get(NAME)  # no session: the API's view


def test_the_key_is_sent_as_typed_and_the_key_box_is_emptied_after_connecting():
    h = host()
    out = ui_remote.connect_server(h, URL, "s3cret", "fake", "alice", transport=fake_server(chatty(V), key="s3cret"),
                                   tokenizer_object=FakeTokenizer(PIECES))
    assert out["model"]["value"] == NAME and out["remote_key"] == ""
    assert "s3cret" not in repr(out) and "s3cret" not in repr(h.get(NAME, "alice"))


def test_an_empty_key_never_sends_this_servers_own_key(monkeypatch):
    monkeypatch.setenv("PLAYGROUND_REMOTE_KEY", "operators-key")
    seen = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("authorization"))
        return httpx.Response(200, json={"data": [{"id": "fake"}]})

    ui_remote.list_models(host(), URL, "", transport=httpx.MockTransport(handle))
    out = ui_remote.connect_server(host(), URL, "", "fake", "alice", transport=httpx.MockTransport(handle),
                                   tokenizer_object=FakeTokenizer(PIECES))
    assert seen and all(h is None for h in seen), seen
    assert out["remote_note"].startswith("⚠️")  # that server has no /v1/completions: refused, not connected


def test_a_wrong_url_is_named_and_an_unreachable_one_is_said():
    assert "**URL**" in ui_remote.list_models(host(), "gpu-box:8000", "")["remote_note"]
    assert "**URL**" in ui_remote.connect_server(host(), "ftp://x", "", "fake", "alice")["remote_note"]
    out = ui_remote.list_models(host(), "http://127.0.0.1:9", "")
    assert "cannot reach the server at http://127.0.0.1:9" in out["remote_note"]


def test_a_refused_key_says_to_type_one_it_accepts():
    h = host()
    out = ui_remote.connect_server(h, URL, "wrong", "fake", "alice", transport=fake_server(chatty(V), key="right"),
                                   tokenizer_object=FakeTokenizer(PIECES))
    assert "refused the key (401): type a key it accepts" in out["remote_note"] and "model" not in out
    assert h.names("alice") == ["fake"]


def test_a_server_without_logprobs_or_token_prompts_is_refused_with_the_reason():
    assert "no logprobs" in connect(host(), "alice", logprobs=False)["remote_note"]

    def text_only(request: httpx.Request) -> httpx.Response:  # as a server whose prompt must be a string
        if request.url.path == "/v1/models":
            return httpx.Response(200, json={"data": [{"id": "fake"}]})
        return httpx.Response(400, json={"error": {"message": "prompt must be a string"}})

    out = ui_remote.connect_server(host(), URL, "", "fake", "alice", transport=httpx.MockTransport(text_only),
                                   tokenizer_object=FakeTokenizer(PIECES))
    assert "no logprobs for token-id prompts" in out["remote_note"] and "prompt must be a string" in out["remote_note"]


def test_a_timeout_is_a_clear_message():
    def slow(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out", request=request)

    out = ui_remote.list_models(host(), URL, "", transport=httpx.MockTransport(slow))
    assert f"did not answer within {ui_remote.TIMEOUT_S:g} s" in out["remote_note"]


def test_a_model_must_be_picked_before_connecting():
    assert "**model**" in ui_remote.connect_server(host(), URL, "", None, "alice")["remote_note"]


def test_past_the_bound_the_least_recently_used_session_model_is_let_go_with_a_note(monkeypatch):
    monkeypatch.setattr(models, "MAX_SESSION_MODELS", 2)
    h = host()
    connect(h, "alice")
    connect(h, "bob")
    h.get(NAME, "alice")  # alice used hers since: bob's is now the least recently used
    connect(h, "carol")
    assert h.names("alice") == ["fake", NAME] and h.names("carol") == ["fake", NAME]
    assert h.names("bob") == ["fake"]
    with pytest.raises(ModelMissing, match="was let go: this server keeps at most 2"):
        h.get(NAME, "bob")


def test_connecting_again_replaces_the_sessions_model_of_that_name():
    h = host()
    first = connect(h, "alice")
    connect(h, "alice")
    assert h.names("alice") == ["fake", NAME] and first["model"]["value"] == NAME


def test_connecting_is_off_where_the_host_says_so_and_no_request_is_made():
    h = host()
    h.connect_off = "off for a test"

    def never(request: httpx.Request) -> httpx.Response:
        raise AssertionError("no request may leave")

    assert "off for a test" in ui_remote.list_models(h, URL, "", transport=httpx.MockTransport(never))["remote_note"]
    out = ui_remote.connect_server(h, URL, "", "fake", "alice", transport=httpx.MockTransport(never))
    assert "off for a test" in out["remote_note"]


@pytest.mark.parametrize("where, args", [
    ("a Hugging Face Space", ("127.0.0.1", False, True, False)),
    ("--open-api", ("127.0.0.1", True, False, False)),
    ("--host 0.0.0.0", ("0.0.0.0", False, False, False)),
])
def test_on_a_public_server_connecting_is_off_and_says_why_and_how_to_turn_it_on(where, args):
    why = ui_remote.why_off(*args)
    assert where in why and "--allow-connect" in why


def test_on_loopback_or_when_the_operator_allows_it_connecting_is_on():
    assert ui_remote.why_off("127.0.0.1", False, False, False) is None
    assert ui_remote.why_off("0.0.0.0", True, True, True) is None


def test_the_api_never_lists_or_serves_a_sessions_model():
    h = host()
    connect(h, "alice")
    client = TestClient(create_api(h, ApiSettings()))
    assert [m["id"] for m in client.get("/v1/models").json()["data"]] == ["fake"]
    r = client.post("/v1/chat/completions", json={"model": NAME, "messages": [{"role": "user", "content": "a"}]})
    assert r.status_code == 404 and NAME not in str(r.json()["error"]["message"]).split("lists")[1]


def test_a_ui_event_sees_the_models_of_its_own_session():
    h = host()
    connect(h, "alice")

    def names():
        return {"seen": h.names()}

    def streamed():
        yield {"seen": h.names()}
        yield {"seen": h.names()}

    out = {"seen": object()}
    for session, expected in (("alice", ["fake", NAME]), ("bob", ["fake"])):
        request = types.SimpleNamespace(session_hash=session, headers={})
        assert _handler(names, [], out)(request) == {out["seen"]: expected}
        assert list(_handler(streamed, [], out)(request)) == [{out["seen"]: expected}] * 2


def test_the_model_list_after_an_event_keeps_the_sessions_connected_models():
    h = host()
    connect(h, "alice")
    request = types.SimpleNamespace(session_hash="alice", headers={})
    out = {"model": object()}
    handler = _handler(functools.partial(ui_remote.model_choices, host=h), [], out)
    assert handler(request)[out["model"]]["choices"] == ["fake", NAME]


def test_a_top_k_server_is_listed_as_such_and_the_note_says_stages_may_be_marked_approximate():
    out = connect(host(), "alice", cap=5, values="raw_logprobs")
    assert out["model"]["value"] == "fake · remote · top-5"
    assert "marked approximate in the step view" in out["remote_note"]


def test_the_note_says_whether_a_top_k_server_can_be_asked_for_the_tokens_a_grammar_needs():
    asked = connect(host(), "alice", cap=5, values="raw_logprobs", token_ids=True)
    assert "asked for by id" in asked["remote_note"]
    refused = connect(host(), "bob", cap=5, values="raw_logprobs")
    assert "grammars (tools, response_format) and thinking budgets are refused" in refused["remote_note"]
    exact = connect(host(), "carol")
    assert "by id" not in exact["remote_note"] and "refused" not in exact["remote_note"]
