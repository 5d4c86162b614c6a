"""The UI's streaming path costs the same per token at step 500 as at step 50, read from the queue's real
event stream (the app served in this process on a fake model that writes 512 words)."""

from __future__ import annotations

import re
import time

import httpx
import pytest
from gradio.utils import diff

from playground import tokenview
from playground.models import ModelHost
from tests.test_figures import TEXTS, recorded_step
from tests.ui_server import event_inputs, find_event, serve, stream_event, wordy_lm

pytestmark = pytest.mark.server

STEPS = 512


def reached(message: dict) -> int | None:
    """How many tokens the token view shows after this update: the last data-step it carries, plus one."""
    steps = [int(s) for s in re.findall(r"data-step=\\?'(\d+)\\?'", str(message))]
    return max(steps) + 1 if steps else None


@pytest.fixture(scope="module")
def updates():
    """(bytes, tokens the update added, tokens shown after it) of each streamed update of a 512-token run."""
    host = ModelHost(wordy_lm(before_step=lambda: time.sleep(0.01)))  # about 10 tokens an update
    with serve(host) as url:
        config = httpx.get(url + "/config").json()
        fn = find_event(config, "generate")
        data = event_inputs(config, fn, message="Count.", **{"knob-max_tokens": str(STEPS), "knob-seed": "1"})
        messages = stream_event(url, fn, data)
    assert messages[-1][1]["msg"] == "process_completed" and messages[-1][1]["success"], messages[-1]
    out, shown = [], 0
    for size, message in messages:
        if message["msg"] != "process_generating":
            continue
        now = reached(message)
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
