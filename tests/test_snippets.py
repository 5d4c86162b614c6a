"""View code: the curl command and the openai snippet send exactly the current settings."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import types

import pytest

from engine.stages import PRESETS
from engine.knobs import SamplingParams
from playground import snippets

MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "It's a 'quoted' question?"}]
MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"


def body_for(**knobs):
    return snippets.request_body(SamplingParams.build(**knobs).to_dict(), MESSAGES, MODEL)


def curl_data(command: str) -> dict:
    args = shlex.split(command.replace("\\\n", " "))
    return json.loads(args[args.index("-d") + 1])


def test_only_knobs_that_differ_from_the_api_defaults_are_sent():
    body = body_for(temperature=0.7, top_k=40, max_tokens=32, seed=5, stop=["\n\n"])
    assert body == {"model": MODEL, "messages": MESSAGES, "temperature": 0.7, "top_k": 40, "max_tokens": 32,
                    "stop": ["\n\n"], "seed": 5}


def test_default_settings_send_only_model_and_messages():
    assert body_for() == {"model": MODEL, "messages": MESSAGES}


def test_logit_bias_and_sampler_order_go_in_api_shapes():
    order = list(PRESETS["llama.cpp"])
    body = body_for(logit_bias={7042: -100}, sampler_order=order)
    assert body["logit_bias"] == {"7042": -100.0} and body["sampler_order"] == order


def test_request_extras_are_added_and_unknown_ones_refused():
    body = snippets.request_body({}, MESSAGES, MODEL, {"reasoning_effort": "low", "tools": None})
    assert body == {"model": MODEL, "messages": MESSAGES, "reasoning_effort": "low"}
    with pytest.raises(ValueError, match="'color' is not a request field"):
        snippets.request_body({}, MESSAGES, MODEL, {"color": "red"})


def test_curl_posts_the_body_to_chat_completions_with_quotes_intact():
    body = body_for(temperature=0.7, min_p=0.1)
    command = snippets.curl(body, "http://127.0.0.1:7860/v1/")
    assert command.startswith("curl -sS http://127.0.0.1:7860/v1/chat/completions")
    assert "Authorization: Bearer $PLAYGROUND_API_KEY" in command
    assert curl_data(command) == body


def run_python_snippet(code: str) -> dict:
    """Execute the snippet against a stand-in openai module; return what it passed to create()."""
    seen = {}

    class Completions:
        def create(self, **kwargs):
            seen.update(kwargs)
            return types.SimpleNamespace(choices=[])

    class OpenAI:
        def __init__(self, base_url, api_key):
            seen["__base_url"], seen["__api_key"] = base_url, api_key
            self.chat = types.SimpleNamespace(completions=Completions())

    fake = types.ModuleType("openai")
    fake.OpenAI = OpenAI
    saved = sys.modules.get("openai")
    sys.modules["openai"] = fake
    try:
        exec(compile(code, "snippet", "exec"), {})
    finally:
        if saved is not None:
            sys.modules["openai"] = saved
    return seen


def test_python_snippet_sends_openai_knobs_as_arguments_and_the_rest_in_extra_body():
    body = body_for(temperature=0.7, top_p=0.9, top_k=40, min_p=0.1, repetition_penalty=1.2, seed=3)
    seen = run_python_snippet(snippets.python(body, "http://example.test/v1"))
    assert seen.pop("__base_url") == "http://example.test/v1"
    assert seen["extra_body"] == {"top_k": 40, "min_p": 0.1, "repetition_penalty": 1.2}
    sent = {k: v for k, v in seen.items() if k not in ("extra_body", "__api_key")} | seen["extra_body"]
    assert sent == body


@pytest.mark.server
def test_the_curl_command_runs_against_the_real_server(server):
    body = body_for(temperature=0.0, max_tokens=4, top_k=5)
    out = subprocess.run(["bash", "-c", snippets.curl(body, server.api)], capture_output=True, text=True, timeout=120,
                         env={"PATH": "/usr/bin:/bin", "PLAYGROUND_API_KEY": "unused"})
    reply = json.loads(out.stdout)
    assert reply["choices"][0]["message"]["content"]
    assert reply["usage"]["completion_tokens"] <= 4


@pytest.mark.server
def test_the_python_snippet_runs_against_the_real_server(server):
    body = body_for(temperature=0.0, max_tokens=4, min_p=0.2)
    out = subprocess.run([sys.executable, "-c", snippets.python(body, server.api)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("--- completion 0 (")
