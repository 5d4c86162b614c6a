"""Outputs an event leaves as they are cost nothing and keep nothing (playground/gradio_skip.py)."""

from __future__ import annotations

import asyncio

import gradio as gr
from gradio.state_holder import SessionState

from playground import gradio_skip


def _event(fn):
    """A page with three outputs and one event: (demo, the event, its outputs)."""
    with gr.Blocks() as demo:
        box = gr.Textbox("hi")
        note, html, text = gr.Markdown(), gr.HTML(), gr.Textbox()
        box.change(fn, box, [note, html, text])
    event = next(iter(demo.fns.values()))
    return demo, event, (note, html, text)


def _run(demo, event, state, times: int = 1) -> list:
    async def go():
        out = None
        for _ in range(times):
            out = await demo.process_api(block_fn=event, inputs=["hello"], state=state, request=None)
        return out["data"]
    return asyncio.run(go())


def test_an_event_that_sets_one_output_of_three_sends_the_page_its_value_and_two_skips():
    gradio_skip.install()
    holder = {}
    demo, event, (note, html, text) = _event(lambda value: {holder["note"]: f"**{value}**"})
    holder["note"] = note
    data = _run(demo, event, SessionState(demo))
    assert data[0] == "**hello**"
    assert data[1] == {"__type__": "update"} and data[2] == {"__type__": "update"}


def test_a_sessions_config_does_not_grow_with_the_outputs_its_events_skip():
    """On the playground's own page: a selected step's event skips the teaching views' notes (nothing is
    selected here, so it draws the empty view). Gradio 6.31 alone adds one component per skipped note per
    event to the session, never freed."""
    from playground.models import ModelHost
    from playground.ui import build_ui
    from tests.ui_server import wordy_lm

    demo = build_ui(ModelHost(wordy_lm()))
    ids = {getattr(b, "elem_id", None): i for i, b in demo.blocks.items()}
    event = next(fn for fn in demo.fns.values() if (ids["step"], "input") in fn.targets)
    inputs = [None if isinstance(b, gr.State) else b.value for b in event.inputs]
    state = SessionState(demo)

    async def go(times: int) -> None:
        for _ in range(times):
            await demo.process_api(block_fn=event, inputs=inputs, state=state, request=None)

    asyncio.run(go(1))
    size = len(state.blocks_config.blocks)
    asyncio.run(go(20))
    assert len(state.blocks_config.blocks) == size


def test_a_property_update_still_reaches_the_page_and_the_session():
    gradio_skip.install()
    holder = {}
    demo, event, (note, html, text) = _event(lambda value: {holder["text"]: gr.update(value=value, label="said")})
    holder["text"] = text
    state = SessionState(demo)
    data = _run(demo, event, state)
    assert data[2]["value"] == "hello" and data[2]["label"] == "said"
    assert state.blocks_config.blocks[text._id].label == "said"
