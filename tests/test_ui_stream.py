"""The UI's streaming path costs the same per token at step 500 as at step 50, and Gradio's queue carries
nothing per token: read from the queue's real event stream and the run's live stream, as a page reads
them (the app served in this process on a fake model that writes 512 words)."""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time

import httpx
import pytest
from gradio.utils import diff

from playground import tokenview, ui_runs, ui_stream
from playground.models import ModelHost
from tests.test_figures import TEXTS, recorded_step
from tests.ui_server import event_inputs, find_event, serve, stream_event, wordy_lm

pytestmark = pytest.mark.server

STEPS = 512


def reached(chunk: str) -> int | None:
    """How many tokens the token view shows after this chunk: the last data-step it carries, plus one."""
    steps = [int(s) for s in re.findall(r"data-step=\\?'(\d+)\\?'", chunk)]
    return max(steps) + 1 if steps else None


def live_url(message: dict) -> str | None:
    """The live stream a generate update connects its views to (tokenview's ["live", url, part] record)."""
    for value in (message.get("output") or {}).get("data") or []:
        if isinstance(value, str) and value.startswith(tokenview.MARK):
            for line in value.splitlines()[1:]:
                op, url, _ = json.loads(line)
                if op == "live":
                    return url
    return None


@pytest.fixture(scope="module")
def run():
    """A 512-token generate event as a page sees it: (the queue's messages as (bytes, message), the live
    stream's chunks as (bytes, text), whether the live stream had ended when the event completed)."""
    host = ModelHost(wordy_lm(before_step=lambda: time.sleep(0.01)))  # about 10 tokens an update
    chunks: list[tuple[int, str]] = []
    readers: list[threading.Thread] = []
    with serve(host) as url:
        def read(path: str) -> None:
            with httpx.stream("GET", f"{url}/{path}", timeout=120) as live:
                live.raise_for_status()
                for chunk in live.iter_text():
                    chunks.append((len(chunk.encode()), chunk))

        def listen(message: dict) -> None:
            if not readers and (path := live_url(message)):
                readers.append(threading.Thread(target=read, args=(path,), daemon=True))
                readers[0].start()

        config = httpx.get(url + "/config").json()
        fn = find_event(config, "generate")
        data = event_inputs(config, fn, message="Count.", **{"knob-max_tokens": str(STEPS), "knob-seed": "1"})
        messages = stream_event(url, fn, data, listen)
        assert readers, "no update named a live stream"
        readers[0].join(timeout=30)
        ended = not readers[0].is_alive()
    assert messages[-1][1]["msg"] == "process_completed" and messages[-1][1]["success"], messages[-1]
    return messages, chunks, ended


@pytest.fixture(scope="module")
def updates(run):
    """(bytes, tokens the chunk added, tokens shown after it) of each chunk of the live stream."""
    out, shown = [], 0
    for size, chunk in run[1]:
        now = reached(chunk)
        if now is not None and now > shown:
            out.append((size, now - shown, now))
            shown = now
    assert shown == STEPS
    return out


def bytes_per_token(updates, lo: int, hi: int) -> float:
    near = [(size, new) for size, new, now in updates if lo < now <= hi]
    assert len(near) >= 3, f"too few updates between steps {lo} and {hi}: {updates}"
    return sum(size for size, _ in near) / sum(new for _, new in near)


def test_an_update_near_step_500_costs_no_more_bytes_per_token_than_one_near_step_50(updates):
    early, late = bytes_per_token(updates, 30, 100), bytes_per_token(updates, 430, STEPS)
    assert late <= 1.25 * early, f"{early:.0f} bytes per new token near step 50, {late:.0f} near step 500"


def test_gradio_carries_a_run_in_a_fixed_number_of_updates_whatever_its_length(run):
    """Only the start (the views connect to the live stream) and the finished run go through the queue."""
    generating = [m for _, m in run[0] if m["msg"] == "process_generating"]
    assert len(generating) <= 3, [json.dumps(m)[:200] for m in generating]


def test_the_live_stream_ends_with_its_run(run):
    assert run[2], "the live stream was still open after the run had ended"


def test_an_unknown_live_stream_is_not_found():
    host = ModelHost(wordy_lm())
    with serve(host) as url:
        response = httpx.get(f"{url}/{ui_stream.PATH}/no-such-key", timeout=30)
    assert response.status_code == 404


def test_a_live_run_only_appends_to_what_gradio_sent_before():
    """Gradio's own diff of two consecutive values of the live views is one append of the new part."""
    live = tokenview.LiveRun(2)
    step = recorded_step()[0]
    comps = [{"steps": [], "text": "", "finish_reason": None} for _ in range(2)]
    before = live.update(comps, TEXTS)
    for k in range(300):
        for c in comps:
            c["steps"].append(step)
            c["text"] += step["shown"]
        after = live.update(comps, TEXTS)
        for old, new in zip(before, after):
            ops = diff(old, new)
            assert [op[0] for op in ops] == ["append"]
            assert len(ops[0][2]) < 1000  # what one token adds, whatever came before
        before = after


def sends_of(channel: ui_stream.Channel, live: tokenview.LiveRun, records: int, every_s: float) -> tuple[list[str], float]:
    """What `channel`'s stream sends while a run adds `records` token records, one every `every_s`, and
    how long that took (longer than records * every_s on a loaded machine)."""
    async def run() -> list[str]:
        async def write() -> None:
            for k in range(records):
                live.tokens.add("", f"<span>{k}</span>")
                await asyncio.sleep(every_s)
            channel.end()

        writer = asyncio.create_task(write())
        sent = [chunk async for chunk in channel.lines()]
        await writer
        return sent

    start = time.monotonic()
    sent = asyncio.run(run())
    return sent, time.monotonic() - start


def test_with_four_runs_streaming_a_stream_sends_its_share_of_the_updates_a_second():
    """Four runs at once: each stream gathers what its run wrote (here 40 records over about 0.8 s) and
    sends it in its share of the updates a second that all pages streaming at once get together; the
    last send still carries everything."""
    live = tokenview.LiveRun(1)
    channel = ui_stream.Channel(live, running=lambda: 4)
    sent, seconds = sends_of(channel, live, records=40, every_s=0.02)
    shown = "".join(sent)
    assert all(f"<span>{k}</span>" in shown for k in range(40))
    # a quarter of the shared updates a second, plus the first send and the one at the end
    assert len(sent) <= seconds * ui_runs.UPDATES_PER_S / 4 + 2, f"{len(sent)} sends in {seconds:.2f} s"


def test_a_run_alone_sends_what_is_new_as_it_comes():
    live = tokenview.LiveRun(1)
    channel = ui_stream.Channel(live, running=lambda: 1)
    sent, _ = sends_of(channel, live, records=10, every_s=0.12)
    assert len(sent) >= 8, f"{len(sent)} sends for 10 records 0.12 s apart, one run streaming"
