"""An output an event leaves as it is (gr.skip()) costs nothing: a fix for Gradio 6.31.0 (pinned).

Why: every handler here returns {output: value} for the outputs it changes, and Gradio sends gr.skip() for
the rest. Gradio 6.31 handles a skip as an update of no properties: it builds a new component of that
output's class, puts it in the session's config and serialises its config again. Measured on the
playground's page: a selected step's event (48 inputs, 18 outputs, ten of them skipped) cost the server
8.7 ms of CPU, 4.9 ms without that; and some of those components are never freed (the teaching views'
notes, which are inputs of the same event: one each per event), so every click grew the server's heap for
as long as the session lived, and with it the time Python's full collections hold every thread.

The fix: before Gradio post-processes an event's values, each skip becomes Gradio's own "nothing more from a
finished generator" marker, which it passes over without touching the component or the session; the skip
itself is put back in its place in what goes to the page. The page gets exactly what it got before.
"""

from __future__ import annotations

import functools

from gradio import blocks, components
from gradio.helpers import skip

_SKIP = skip()
_PASSED_OVER = components._Keywords.FINISHED_ITERATING


def install() -> None:
    """Patch Blocks.postprocess_data once (idempotent)."""
    original = blocks.Blocks.postprocess_data
    if getattr(original, "skips_cost_nothing", False):
        return

    @functools.wraps(original)
    async def postprocess_data(self, block_fn, predictions, state):
        if len(block_fn.outputs) < 2:
            return await original(self, block_fn, predictions, state)
        if isinstance(predictions, dict) and predictions and all(isinstance(k, blocks.Block) for k in predictions):
            predictions = blocks.convert_component_dict_to_list(list(block_fn.outputs), predictions)
        if not isinstance(predictions, (list, tuple)):
            return await original(self, block_fn, predictions, state)
        skipped = [i for i, value in enumerate(predictions) if isinstance(value, dict) and value == _SKIP]
        if not skipped:
            return await original(self, block_fn, predictions, state)
        marked = list(predictions)
        for i in skipped:
            marked[i] = _PASSED_OVER
        out = await original(self, block_fn, marked, state)
        for i in skipped:
            out[i] = dict(_SKIP)
        return out

    postprocess_data.skips_cost_nothing = True
    blocks.Blocks.postprocess_data = postprocess_data
