"""The Gradio UI."""

from __future__ import annotations

import gradio as gr

from playground.models import ModelHost


def build_ui(host: ModelHost) -> gr.Blocks:
    with gr.Blocks(title="Sampling Playground") as demo:
        gr.Markdown(f"# Sampling Playground\nModel: `{host.default}`")
    return demo


def launch_kwargs() -> dict:
    return {}
