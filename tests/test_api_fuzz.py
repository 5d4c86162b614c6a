"""A fuzz pass over the published OpenAPI schema (schemathesis): requests the schema allows and requests
it forbids alike must never get a 5xx. The server caps each request at 8 tokens so the pass stays quick."""

from __future__ import annotations

import json
import math

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode

from tests.extremes import LEGAL
from tests.serving import start_server

pytestmark = [pytest.mark.server, pytest.mark.model]


@pytest.fixture(scope="module")
def small_server():
    with start_server("--max-batch-tokens", "8") as s:
        yield s


def served(case):
    # A random model name is a 404 by design; drop it, and ask for 2 tokens, so that most requests the
    # schema allows reach the sampler instead of stopping at the model lookup or the token cap.
    if isinstance(case.body, dict) and case.path == "/v1/chat/completions":
        case.body.pop("model", None)
        case.body["max_tokens"] = 2
    return case


def test_no_request_the_schema_allows_or_forbids_gets_a_5xx(small_server):
    schema = schemathesis.openapi.from_url(small_server.url + "/openapi.json").include(path_regex="^/v1/")
    cases = st.one_of(schema.as_strategy(GenerationMode.POSITIVE).map(served), schema.as_strategy(GenerationMode.NEGATIVE))
    seen: dict[int, int] = {}

    # derandomize: the same examples every run, so CI never flakes on a new one (change max_examples to explore).
    @settings(max_examples=80, deadline=None, database=None, derandomize=True, suppress_health_check=list(HealthCheck))
    @given(case=cases)
    def check(case):
        response = case.call(base_url=small_server.url, timeout=60)
        seen[response.status_code] = seen.get(response.status_code, 0) + 1
        assert response.status_code < 500, f"{case.method} {case.path} {case.body!r} -> {response.status_code} {response.text[:500]}"

    check()
    # The pass reached generation and the refusals alike (a schema nothing can satisfy would not).
    assert seen.get(200, 0) >= 1 and any(400 <= code < 500 for code in seen), seen


def _finite(value) -> bool:
    return not isinstance(value, float) or math.isfinite(value)  # JSON cannot carry the others


EXTREME_KNOBS = st.lists(st.sampled_from([e for e in LEGAL if _finite(e.value)]), min_size=1, max_size=3)


def with_extremes(case, extremes):
    """A request the schema allows, with a plain conversation (so it reaches the sampler) and one to three
    knobs at the edges of their legal ranges, trace on."""
    if isinstance(case.body, dict):
        case.body = {k: v for k, v in case.body.items() if v is not None}
        case.body.update(messages=[{"role": "user", "content": "Count to three."}], trace=True)
        case.body.pop("tools", None)
        for e in extremes:
            case.body.update(e.knobs())
    return case


def bodies(response) -> list:
    """The JSON body, or every event of a stream, parsed strictly."""
    if response.text.startswith("data: "):  # a stream
        events = [line[6:] for line in response.text.splitlines() if line.startswith("data: ")]
        assert events and events[-1] == "[DONE]", response.text[-300:]
        return [json.loads(e, parse_constant=not_json) for e in events[:-1]]
    return [json.loads(response.text, parse_constant=not_json)]


def not_json(constant: str):
    # Python's json reads NaN and Infinity, which JSON does not have: a client in another language would fail.
    raise ValueError(f"{constant} in a response")


def test_no_request_with_knobs_at_their_extremes_gets_a_5xx_or_non_finite_json(server):
    schema = schemathesis.openapi.from_url(server.url + "/openapi.json").include(
        path_regex="^/v1/chat/completions$", method="POST")
    cases = st.builds(with_extremes, schema.as_strategy(GenerationMode.POSITIVE).map(served), EXTREME_KNOBS)
    seen: dict[int, int] = {}

    @settings(max_examples=60, deadline=None, database=None, derandomize=True, suppress_health_check=list(HealthCheck))
    @given(case=cases)
    def check(case):
        response = case.call(base_url=server.url, timeout=120)
        seen[response.status_code] = seen.get(response.status_code, 0) + 1
        assert response.status_code < 500, f"{case.body!r} -> {response.status_code} {response.text[:500]}"
        for body in bodies(response):
            assert "error" not in body or response.status_code != 200, body

    check()
    assert seen.get(200, 0) >= 30, seen  # most reached the sampler and came back
