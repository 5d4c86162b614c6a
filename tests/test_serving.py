"""Many clients at once on one shared decode loop (the app's default server: bfloat16 on this CPU, where a
batch of another shape changes no token): the openai client, the UI beside the API, a soak with
disconnects, and the queue as the UI shows it."""

from __future__ import annotations

import random
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest

from tests.browser import GENERATION_TIMEOUT_MS, fill, open_page
from tests.serving import start_server

pytestmark = [pytest.mark.server, pytest.mark.model]

QUESTIONS = ["Name a fruit.", "Name a colour, then explain why you like it.", "What is the capital of France?",
             "Write a haiku about rain.", "Count to five.", "Say hello in French.", "Name a tool and what it does.",
             "Give me a word that rhymes with cat."]
NO_END = {"2": -100}  # the end token banned: a completion runs its full max_tokens


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.api, api_key="unused", max_retries=0, timeout=300)


def ask(client, k: int, stream: bool, n: int = 1, max_tokens: int = 6) -> dict:
    """Request k of a mixed set (its own question, seed and knobs); its content and logprobs per choice."""
    knobs = [dict(temperature=0.9), dict(temperature=0.0), dict(top_p=0.8), dict(extra_body={"top_k": 20, "min_p": 0.05}),
             dict(presence_penalty=0.5, frequency_penalty=0.5)][k % 5]
    extra = knobs.pop("extra_body", {})
    r = client.chat.completions.create(
        model="HuggingFaceTB/SmolLM2-135M-Instruct", messages=[{"role": "user", "content": QUESTIONS[k % len(QUESTIONS)]}],
        seed=1000 + k, n=n, max_tokens=max_tokens, logprobs=True, stream=stream, logit_bias=NO_END,
        extra_body=extra or None, **knobs)
    choices: dict[int, dict] = {}
    if not stream:
        for c in r.choices:
            choices[c.index] = {"content": c.message.content, "tokens": [t.token for t in c.logprobs.content],
                                "finish": c.finish_reason}
        return choices
    for chunk in r:
        for c in chunk.choices:
            got = choices.setdefault(c.index, {"content": "", "tokens": [], "finish": None})
            got["content"] += c.delta.content or ""
            got["tokens"] += [t.token for t in (c.logprobs.content if c.logprobs else [])]
            got["finish"] = c.finish_reason or got["finish"]
    return choices


def test_sixteen_concurrent_clients_streaming_and_not_get_exactly_their_answers_alone(client):
    plan = [(k, k % 2 == 0, 1 + k % 2) for k in range(16)]  # (request, streaming, n)
    alone = [ask(client, k, stream, n) for k, stream, n in plan]
    with ThreadPoolExecutor(16) as pool:
        together = list(pool.map(lambda p: ask(client, *p), plan))
    assert together == alone
    assert all(c["finish"] == "length" and len(c["tokens"]) == 6 for answer in together for c in answer.values())


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def soak_request(server, client, k: int, leave: bool) -> tuple[str, dict | None]:
    rng = random.Random(k)
    n, stream, max_tokens = rng.randint(1, 4), rng.random() < 0.5 or leave, rng.randint(2, 10)
    if leave:  # a client that goes away in the middle of its stream
        with httpx.Client(timeout=120) as http:
            body = {"messages": [{"role": "user", "content": QUESTIONS[k % len(QUESTIONS)]}], "n": n, "stream": True,
                    "max_tokens": 200, "logit_bias": NO_END, "seed": k}
            with http.stream("POST", server.api + "/chat/completions", json=body) as response:
                for i, _ in enumerate(response.iter_lines()):
                    if i >= n + 3:
                        break
        return "left", None
    return "answered", ask(client, k, stream, n, max_tokens) | {"expect": (n, max_tokens)}


def test_a_soak_of_200_mixed_requests_with_disconnects_answers_all_and_returns_its_memory(server, client):
    leaving = set(random.Random(0).sample(range(200), 20))
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda k: soak_request(server, client, k, False), range(1000, 1016)))  # warm-up
        time.sleep(1.0)
        warm = rss_mib(server.proc.pid)
        results = list(pool.map(lambda k: soak_request(server, client, k, k in leaving), range(200)))
    assert sum(1 for kind, _ in results if kind == "left") == 20
    for kind, answer in results:
        if kind == "answered":
            n, max_tokens = answer.pop("expect")
            assert sorted(answer) == list(range(n))
            assert all(c["finish"] == "length" and len(c["tokens"]) == max_tokens for c in answer.values())
    deadline = time.monotonic() + 30  # the 20 that left are dropped within a step; let the loop go idle
    while time.monotonic() < deadline and rss_mib(server.proc.pid) > warm * 1.10:
        time.sleep(0.5)
    after = rss_mib(server.proc.pid)
    assert after <= warm * 1.10, f"RSS grew from {warm:.0f} MiB after warm-up to {after:.0f} MiB"


def test_the_ui_and_the_api_share_the_model_at_the_same_time(server, client):
    with open_page(server.url) as page:
        fill(page, "message", "Name a fruit.")
        fill(page, "knob-max_tokens", "12")
        fill(page, "knob-seed", "5")
        with ThreadPoolExecutor(4) as pool:
            api = [pool.submit(ask, client, k, k % 2 == 0, 1, 24) for k in range(4)]
            page.click("#generate")
            page.wait_for_selector("#completions .comp-head:has-text('12 tokens')", timeout=GENERATION_TIMEOUT_MS)
            answers = [f.result(timeout=300) for f in api]
    assert all(len(a[0]["tokens"]) == 24 for a in answers)


def test_a_waiting_ui_run_shows_its_place_and_runs_once_there_is_room():
    with start_server("--max-batch-rows", "1") as server:
        with httpx.Client(timeout=120) as http:
            body = {"messages": [{"role": "user", "content": "Tell me a long story."}], "stream": True,
                    "max_tokens": 3000, "logit_bias": NO_END}
            with http.stream("POST", server.api + "/chat/completions", json=body) as holder:
                lines = holder.iter_lines()
                for line in lines:  # the one row is taken once the stream generates
                    if line.startswith("data: ") and '"content": ""' not in line:
                        break
                with open_page(server.url) as page:
                    fill(page, "message", "Name a fruit.")
                    fill(page, "knob-max_tokens", "5")
                    page.click("#generate")
                    page.wait_for_function(
                        "(() => { const t = document.querySelector('#completions').innerText;"
                        "  return t.includes('Waiting for room in the model') && t.includes('next in line'); })()",
                        timeout=GENERATION_TIMEOUT_MS)
                    holder.close()  # the API client leaves: its row is free
                    page.wait_for_selector("#completions .comp-head:has-text('5 tokens')", timeout=GENERATION_TIMEOUT_MS)
                    assert "Waiting" not in page.inner_text("#completions")
