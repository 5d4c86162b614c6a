"""The app (UI + API) served in this process on a fake model, so a test can read the model's scheduler and
pace the model, and read the UI's queue as a browser does (/gradio_api/queue/join and queue/data)."""

from __future__ import annotations

import contextlib
import json
import threading
import time
import uuid
from typing import Callable, Iterator

import httpx
import torch
import uvicorn

from engine.model import LoadedModel
from tests.fakes import fake_lm
from tests.serving import free_port

PIECES = [b"<end>", b"<turn>", *(f" w{i}".encode() for i in range(30))]


def wordy_lm(before_step: Callable[[], None] = lambda: None, context_length: int = 2048) -> LoadedModel:
    """A fake model that never ends its text: its words " w0" ... " w29" are about equally likely (the end
    token never). `before_step` runs at each forward (a test paces or holds the model with it)."""
    logits = torch.linspace(0.0, 1.0, len(PIECES))  # (V,)
    logits[0] = -float("inf")

    def next_logits(history: list[int]) -> torch.Tensor:
        return logits

    lm = fake_lm(next_logits, PIECES, context_length=context_length)
    forward = lm.model.forward

    def paced(*args, **kwargs):
        before_step()
        return forward(*args, **kwargs)

    lm.model.forward = paced
    return lm


@contextlib.contextmanager
def serve(host) -> Iterator[str]:
    """The app of playground/app.py for this ModelHost on a free loopback port; yields its URL."""
    from app import build_app, parse_args

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(build_app(host, parse_args([])), host="127.0.0.1", port=port,
                                           log_level="warning", timeout_graceful_shutdown=3))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the in-process app did not start"
        time.sleep(0.1)
    try:
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        for name in host.names():
            host.scheduler(name).close()


def event_inputs(config: dict, fn_index: int, **values) -> list:
    """The inputs of a UI event as a fresh page sends them: each input component's initial value, with
    `values` (by elem_id) in place of some."""
    components = {c["id"]: c for c in config["components"]}
    data = []
    for i in config["dependencies"][fn_index]["inputs"]:
        props = components[i].get("props", {})
        data.append(values.get(props.get("elem_id"), props.get("value")))
    return data


def find_event(config: dict, elem_id: str, event: str = "click") -> int:
    """The index of the event listener that `event` on the component with this elem_id triggers."""
    ids = {c["id"] for c in config["components"] if c.get("props", {}).get("elem_id") == elem_id}
    for k, dep in enumerate(config["dependencies"]):
        if any(t[0] in ids and t[1] == event for t in dep["targets"]):
            return k
    raise LookupError(f"no {event} listener on #{elem_id}")


def stream_event(url: str, fn_index: int, data: list, listener: Callable[[dict], None] = lambda message: None
                 ) -> list[tuple[int, dict]]:
    """Run one UI event through Gradio's queue as the page does; every message of its event stream as
    (bytes on the wire, the decoded message), until the event completes. `listener` sees each message as
    it arrives."""
    session = uuid.uuid4().hex
    with httpx.Client(base_url=url, timeout=120) as http:
        joined = http.post("/gradio_api/queue/join",
                           json={"data": data, "fn_index": fn_index, "session_hash": session, "event_data": None,
                                 "trigger_id": None})
        joined.raise_for_status()
        messages = []
        with http.stream("GET", "/gradio_api/queue/data", params={"session_hash": session}) as stream:
            for line in stream.iter_lines():
                if not line.startswith("data:"):
                    continue
                message = json.loads(line[5:])
                messages.append((len(line.encode()), message))
                listener(message)
                if message.get("msg") == "process_completed":
                    break
    return messages
