"""The current settings as ready-to-run code for the HTTP API: a curl command and an openai snippet.

Request fields are the knob names (engine/knobs.py). Only knobs that differ from the API's default are
sent, so a snippet reads as "what I changed". Knobs outside OpenAI's documented API go in the openai
client's `extra_body`, which the client merges into the JSON body.
"""

from __future__ import annotations

import json
import pprint
from typing import Any

from engine.knobs import KNOBS, REQUEST_KNOBS

KEY_ENV = "PLAYGROUND_API_KEY"


def _is_default(name: str, value: Any) -> bool:
    default = KNOBS[name].default
    if value in (None, [], {}, ()) and default in (None, [], {}, ()):
        return True
    if isinstance(value, (list, tuple)) and isinstance(default, (list, tuple)):
        return list(value) == list(default)
    return value == default


def request_body(params: dict[str, Any], messages: list[dict], model: str, extras: dict[str, Any] | None = None) -> dict[str, Any]:
    """The chat-completions JSON body: model, messages, every non-default knob, then request extras
    (tools, tool_choice, reasoning_effort). `params` is SamplingParams.to_dict()."""
    body: dict[str, Any] = {"model": model, "messages": messages}
    for name, value in params.items():
        if name in KNOBS and not _is_default(name, value):
            body[name] = list(value) if isinstance(value, tuple) else value
    for name, value in (extras or {}).items():
        if name not in REQUEST_KNOBS:
            raise ValueError(f"{name!r} is not a request field")
        if value not in (None, "", []):
            body[name] = value
    return body


def _shell_quote(text: str) -> str:
    # Inside single quotes nothing is special except the single quote itself: close, escape, reopen.
    return "'" + text.replace("'", "'\\''") + "'"


def curl(body: dict[str, Any], base_url: str) -> str:
    """A curl command posting `body` to {base_url}/chat/completions (base_url ends in /v1)."""
    data = json.dumps(body, indent=2, ensure_ascii=False)
    return (
        f"curl -sS {base_url.rstrip('/')}/chat/completions \\\n"
        f'  -H "Content-Type: application/json" \\\n'
        f'  -H "Authorization: Bearer ${KEY_ENV}" \\\n'
        f"  -d {_shell_quote(data)}"
    )


def _kwarg(name: str, value: Any) -> str:
    text = pprint.pformat(value, indent=1, width=96, sort_dicts=False)
    return f"    {name}=" + text.replace("\n", "\n" + " " * (len(name) + 5)) + ","


def python(body: dict[str, Any], base_url: str) -> str:
    """The same request with the official `openai` client; playground-only knobs go in extra_body."""
    lines = [
        "import os",
        "",
        "from openai import OpenAI",
        "",
        f"client = OpenAI(base_url={base_url.rstrip('/')!r}, api_key=os.environ.get({KEY_ENV!r}, 'none'))",
        "response = client.chat.completions.create(",
    ]
    extra = {}
    for name, value in body.items():
        knob = KNOBS.get(name)
        if knob is not None and not knob.openai:
            extra[name] = value
        else:
            lines.append(_kwarg(name, value))
    if extra:
        lines.append(_kwarg("extra_body", extra))
    lines += [
        ")",
        "for choice in response.choices:",
        "    print(f'--- completion {choice.index} ({choice.finish_reason})')",
        "    print(choice.message.content)",
    ]
    return "\n".join(lines) + "\n"
