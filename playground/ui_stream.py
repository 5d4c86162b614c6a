"""A run in progress, to its page over a plain HTTP stream rather than Gradio's queue.

Why: Gradio handles every streamed update of an event the same way, whatever it carries. The server
post-processes and diffs each output; the page then, for every message, refreshes the loading status of
every component that has ever been an output on it (in Gradio 6's frontend each refresh takes a
structured-clone snapshot of that component's props: about 1,500 clones per update on this page, measured).
That cost grows with the page, not with what the update carries, and on a shared 2-core machine it was what
made four pages slower than four API clients. So a generate event sends its views through Gradio twice:
once at the start, where each view's value names this stream, and once at the end, the finished run. In
between, the page reads the run's tokenview.LiveRun records from `GET /ui/live/{key}`:

    ["completions", "<records>"]\n["tokens", "<records>"]\n ...

one JSON line per view that grew since the last poll, each carrying the new complete record lines of that
view's stream (tokenview.STREAM_JS applies them). The key is random and unguessable; a stream carries only
the run's own text, and ends when the run ends. Polling the run's strings keeps the decode thread free of
any per-page work: the run's handler thread only appends to two strings.

The pace follows the load: a stream sends what is new at most every ui_runs.update_interval(runs streaming
now), the share of updates a second that the run's handler also follows, never slower than its cap. Every
send costs its page a DOM update whatever it carries. Measured on a 2-core machine with the pages' browser
beside the server: four pages at 20 sends a second each took 1.5x the time of four /v1 clients, at 5 a
second 1.15x.
"""

from __future__ import annotations

import asyncio
import json
import math
import secrets
import threading
import time
from contextlib import contextmanager
from typing import AsyncIterator, Callable, Iterator

from fastapi import APIRouter, HTTPException
from fastapi.responses import StreamingResponse

from playground.tokenview import LiveRun, Stream
from playground.ui_runs import STREAMS, update_interval

PATH = "ui/live"  # relative: the page resolves it against its own address (a Space, a proxy's prefix)
POLL_S = 0.05  # how often a stream looks for what is new (and for its run's end)
KEEP_S = 60.0  # an ended run's stream stays readable this long, for a page that connects late
IDLE_S = 600.0  # a stream nobody ended (its handler died) is dropped after this long


class Channel:
    """The live views of one run: what the stream route reads, while the run's handler appends."""

    def __init__(self, live: LiveRun, running: Callable[[], int] = lambda: STREAMS.count):
        self.running = running  # how many runs stream to pages now (ui_runs counts them)
        self.key = secrets.token_urlsafe(16)
        self.parts: dict[str, Stream] = {"completions": live.completions, "tokens": live.tokens}
        self.started = time.monotonic()
        self.ended: float | None = None

    def page_values(self) -> dict[str, str]:
        """Each view's value for Gradio: its stream's first line, then one record that connects the view
        to this channel (STREAM_JS: ["live", url, part])."""
        return {part: s.value[: s.value.index("\n") + 1] + json.dumps(["live", f"{PATH}/{self.key}", part]) + "\n"
                for part, s in self.parts.items()}

    def end(self) -> None:
        self.ended = time.monotonic()

    def expired(self, now: float) -> bool:
        return (self.ended is not None and now - self.ended > KEEP_S) or now - self.started > IDLE_S

    async def lines(self) -> AsyncIterator[str]:
        """The stream's body: new complete records of each view, as they come, until the run has ended
        and everything it wrote is out."""
        sent = {part: s.value.index("\n") + 1 for part, s in self.parts.items()}
        last = -math.inf
        while True:
            ended = self.ended is not None  # read before the values: whatever the run wrote by then goes out
            if not ended and time.monotonic() - last < update_interval(self.running()):
                await asyncio.sleep(POLL_S)
                continue
            out = []
            for part, s in self.parts.items():
                value = s.value  # a str, rebound whole by the handler's thread: a consistent snapshot
                end = value.rfind("\n") + 1
                if end > sent[part]:
                    out.append(json.dumps([part, value[sent[part]:end]], ensure_ascii=False))
                    sent[part] = end
            if out:
                last = time.monotonic()
                yield "\n".join(out) + "\n"
            elif ended:
                return
            await asyncio.sleep(POLL_S)


class Channels:
    """The runs streaming now, by key."""

    def __init__(self):
        self._by_key: dict[str, Channel] = {}
        self._lock = threading.Lock()

    @contextmanager
    def open(self, live: LiveRun) -> Iterator[Channel]:
        """A channel for `live` while the run goes on; it ends (and its stream closes) when the block ends."""
        channel = Channel(live)
        now = time.monotonic()
        with self._lock:
            for key in [k for k, c in self._by_key.items() if c.expired(now)]:
                del self._by_key[key]
            self._by_key[channel.key] = channel
        try:
            yield channel
        finally:
            channel.end()

    def get(self, key: str) -> Channel | None:
        with self._lock:
            return self._by_key.get(key)

    def __len__(self) -> int:
        return len(self._by_key)


CHANNELS = Channels()


def router(channels: Channels = CHANNELS) -> APIRouter:
    """The route pages read their live runs from (declared before Gradio is mounted at /)."""
    r = APIRouter()

    @r.get(f"/{PATH}/{{key}}", include_in_schema=False)
    async def live(key: str) -> StreamingResponse:
        channel = channels.get(key)
        if channel is None:
            raise HTTPException(404, "no such live run (it ended a while ago, or never was)")
        return StreamingResponse(channel.lines(), media_type="text/plain; charset=utf-8",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    return r

