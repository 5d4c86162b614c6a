"""The Gradio UI: a slider for every knob, and pictures of what each sampler stage did.

Layout and wiring only. Controls come from engine.knobs.KNOBS (ui_settings); what each event does is a
module-level function of plain values in playground/ui_events.py, which returns {output name: value};
`_on` binds those names to this page's components. Per-session state is a list of runs (plain dicts),
the chat history and the last sweep; the model lives in the ModelHost, never in gr.State.
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass
from typing import Any, Callable

import gradio as gr

from engine.knobs import KNOBS, REQUEST_KNOBS, STAGE_ORDER
from engine.stages import PRESETS, STAGES
from playground import tokenview, ui_events, ui_manydraws, ui_orders
from playground import futures, ui_futures, ui_lens
from playground import gradio_skip, manual_events, manual_runs, ui_remote
from engine.scheduler import Limits
from playground.models import ModelHost, as_session
from playground.sweeps import MAX_SAMPLES, MAX_VALUES, METRICS, SWEEPABLE
from playground.ui_events import SETTINGS, Inputs, Stops, effort_state, model_info
from playground.ui_settings import GROUP_TITLES, GROUPS, ORDER_PRESETS, TOOL_CHOICES, UI_KNOBS, control_spec

DEFAULT_MESSAGE = "Write a short poem about the sea."
DEFAULT_SETTINGS_B = '{"temperature": 1.5, "top_p": 1.0, "min_p": 0.0}'

INTRO = f"""# Sampling Playground
Every knob of an OpenAI-style chat-completions API, and what each sampler stage did to the distribution a
token was drawn from. Pipeline (default order): **raw → {' → '.join(STAGES[n].label for n in STAGE_ORDER)} → draw**.
Generate, then click any token."""

# A page opened with a query string (a share link) applies it; any other page runs no event for it.
LINK_JS = "() => { if (location.search.length > 1) document.getElementById('apply-link')?.click(); }"

# Generate in manual mode opens its tab, in the page (an update of the teaching tabs); none when it is off.
# Taking a run over needs none: its button is on that tab.
OPEN_MANUAL_JS = "(manual) => manual ? {__type__: 'update', selected: 'manual'} : undefined"

# Clicking a token selects its step: the token view turns the click into a Gradio event.
TOKENVIEW_JS = """
element.addEventListener('click', (e) => {
  const t = e.target.closest('[data-step]');
  if (t) trigger('click', {step: Number(t.dataset.step)});
});
"""

# gr.Plot has no click event: hook plotly's own plotly_click on the timeline and forward it as a click
# on the token with that step, which the token view already handles.
HEAD = """
<script>
(() => {
  const hook = () => {
    // gr.Plot has no click event: a click on the timeline clicks the token of that step (which the token
    // view turns into a selection); a click on a sweep point picks its value in the "Samples at" radio.
    document.querySelectorAll('#timeline .js-plotly-plot').forEach((plot) => {
      if (plot.dataset.stepHook || typeof plot.on !== 'function') return;
      plot.dataset.stepHook = '1';
      plot.on('plotly_click', (ev) => {
        const step = ev.points && ev.points.length ? ev.points[0].x : null;
        const tok = document.querySelector(`#tokenview [data-step="${step}"]`);
        if (tok) tok.click();
      });
    });
    // A click on a box of the futures tree puts its node id in the "Node" box, which lists its continuations.
    document.querySelectorAll('#futures-plot .js-plotly-plot').forEach((plot) => {
      if (plot.dataset.nodeHook || typeof plot.on !== 'function') return;
      plot.dataset.nodeHook = '1';
      plot.on('plotly_click', (ev) => {
        const id = ev.points && ev.points.length ? ev.points[0].id : null;
        const box = document.querySelector('#futures-node textarea, #futures-node input');
        if (!id || !box) return;
        box.value = id;
        box.dispatchEvent(new Event('input', {bubbles: true}));
      });
    });
    document.querySelectorAll('#sweep-plot .js-plotly-plot').forEach((plot) => {
      if (plot.dataset.pointHook || typeof plot.on !== 'function') return;
      plot.dataset.pointHook = '1';
      plot.on('plotly_click', (ev) => {
        const i = ev.points && ev.points.length ? ev.points[0].customdata : null;
        const radios = document.querySelectorAll('#sweep-pick input[type=radio]');
        if (i !== null && radios[i]) radios[i].click();
      });
    });
  };
  new MutationObserver(hook).observe(document.documentElement, {childList: true, subtree: true});
})();
</script>
"""

CSS = tokenview.CSS + manual_events.CSS + """
.knob-error p { color: #b91c1c; font-weight: 600; margin: 2px 0; }
#run-error p { color: #b91c1c; font-weight: 600; }
#sentences li { margin: 2px 0; }
.sweep-progress { display: flex; gap: 8px; align-items: center; }
.sweep-progress progress { width: 240px; }
.sweep-texts li { margin: 4px 0; }
"""

Component = gr.components.Component


STATUS_EVERY_S = 1.0  # how often Gradio tells events waiting in its own queue their place


@dataclass(frozen=True)
class QueueLimits:
    """Gradio's queue sized from the scheduler's limits, so that Gradio never holds a page back that the
    scheduler would take. A model event (generate, what-if, sweep, ...) holds its Gradio slot for its
    whole run, also while its job waits in the scheduler's queue (where the page shows its place): so as
    many run at once as the scheduler decodes and queues. Other events (drawing, validation) are short;
    they get one slot per row, so no page waits for another's. Gradio runs at most `max_threads` events
    of all kinds at once, so it is the sum of both."""

    model: int  # concurrency of the shared "model" events: rows decoding + jobs waiting
    other: int  # each other event's concurrency
    max_threads: int
    max_size: int  # events waiting in Gradio's own queue, past the running ones

    @classmethod
    def of(cls, limits: Limits) -> "QueueLimits":
        model = limits.max_rows + limits.max_queue
        return cls(model=model, other=limits.max_rows, max_threads=model + limits.max_rows, max_size=limits.max_queue)


def _handler(fn: Callable, names: list[str], outputs: dict[str, Component]) -> Callable:
    """A Gradio function for `fn`: it gets the named input values as keyword arguments (the settings ones
    gathered into `ui`, plus `session` and `origin` when it asks for them) and returns or yields {output
    name: value}. Keyword arguments already bound with functools.partial (host, stops) pass through."""
    wants = inspect.signature(fn).parameters

    def values(request: gr.Request, args) -> dict[str, Any]:
        got = dict(zip(names, args))
        if "ui" in wants:
            got["ui"] = Inputs.of({k: got.pop(k) for k in SETTINGS if k in got})
        if "session" in wants:
            got["session"] = request.session_hash if request is not None else "local"
        if "origin" in wants and request is not None:
            got["origin"] = ui_events.origin_of(request.headers)
        return got

    def named(out: dict[str, Any]) -> dict[Component, Any] | None:
        if not outputs:
            return None  # an event with no outputs (Stop) returns nothing
        # Gradio reads an empty dict as one value, not "no updates": skip every output instead.
        return {outputs[k]: v for k, v in out.items() if k in outputs} or {c: gr.skip() for c in outputs.values()}

    # Each call runs as its browser session: the models it may see (playground/models.py). A context variable
    # does not follow a generator from one step to the next, so each of its steps sets it again.
    def session(request: gr.Request):
        return as_session(request.session_hash if request is not None else None)

    base = fn.func if isinstance(fn, functools.partial) else fn
    if inspect.isgeneratorfunction(base):
        def handler(request: gr.Request, *args):
            outs = fn(**values(request, args))
            while True:
                with session(request):
                    out = next(outs, None)
                if out is None:
                    return
                yield named(out)
    else:
        def handler(request: gr.Request, *args):
            with session(request):
                return named(fn(**values(request, args)))
    return handler


def _on(triggers, fn: Callable, inputs: dict[str, Component], outputs: dict[str, Component], **kw):
    """Wire an event (one trigger or several) to `fn` by names: see `_handler`."""
    triggers = triggers if isinstance(triggers, list) else [triggers]
    return gr.on(triggers, _handler(fn, list(inputs), outputs), list(inputs.values()), list(outputs.values()), **kw)


def _then(event, fn: Callable, inputs: dict[str, Component], outputs: dict[str, Component], **kw):
    """Wire `fn` to run after `event` (a previous _on or _then) succeeds."""
    return event.then(_handler(fn, list(inputs), outputs), list(inputs.values()), list(outputs.values()), **kw)


def _load_model(name: str, progress=gr.Progress(), *, host: ModelHost, outputs: list[Component]):
    """Load Model, with Gradio's progress bar (which needs the Progress default in the signature it calls)."""
    said = []

    def say(message: str) -> None:
        said.append(message)
        progress((len(said), None), desc=message)

    out = ui_events.load_model(host, name, say)
    model, info = outputs
    return {model: out["model"], info: out["model_info"]} if "model" in out else {info: out["model_info"]}


# Parts of `_draw_step` that say they are working (a what-if replaying its step, a teaching view sampling):
# a message with only these goes to the page at once, everything else with the event's last message.
PROGRESS = frozenset({"whatif_note", "draws_note", "orders_note"})


def _draw_step(host: ModelHost, stops: Stops, ui, runs, view, completion, step, mode, live, draws, draws_seed,
               draws_note: str, orders_note: str, session: str):
    """Everything that follows the selected step, in one event with one message when nothing is slow: its
    view (`show`), its what-if, and the teaching views that follow it. Each event, and each of its messages,
    costs the page a refresh of the loading status of every component any event has used (Gradio 6,
    playground/ui_stream.py), and the server an event's work."""
    out = ui_events.show(runs, view, completion, step, mode)
    parts = (ui_events.what_if(host, stops, ui, runs, view, completion, step, live, session),
             ui_manydraws.follow_step(host, stops, ui, runs, view, completion, step, draws, draws_seed, session, draws_note),
             ui_orders.follow_step(host, stops, ui, runs, view, completion, step, session, orders_note))
    for part in parts:
        for item in part:
            out.update(item)
            if set(item) <= PROGRESS:
                yield out
                out = {}
    if out:
        yield out


def _pick_token(evt: gr.EventData):
    """A click on a token in the token view (TOKENVIEW_JS sends its step)."""
    return int(evt.step)


def _pick_row(evt: gr.EventData):
    """A click on a row of manual mode's vocabulary table (manual_events.ROW_JS sends its token id)."""
    return int(evt.token)



def launch_kwargs() -> dict:
    """css/head/theme for gr.mount_gradio_app (Gradio 6 takes them at launch, not in Blocks)."""
    # System fonts: the default theme fetches Google fonts, which an offline machine cannot reach.
    theme = gr.themes.Default(
        primary_hue="orange",
        font=["ui-sans-serif", "system-ui", "sans-serif"],
        font_mono=["ui-monospace", "SFMono-Regular", "monospace"],
    )
    # Gradio's run history copies every event's inputs and outputs (charts included) into the browser's
    # localStorage, rewriting its list of the last 100 at each event and every 0.5 s of a stream: measured
    # here, that kept 8 idle pages' browser busy at about 1.8 cores for over a minute after one run each.
    # Runs are kept and shared with Save and Load instead.
    return {"css": CSS, "head": HEAD, "theme": theme, "run_history": False}


def _control(name: str):
    spec = control_spec(KNOBS[name])
    common = {"label": spec.label, "info": spec.info, "elem_id": f"knob-{name}"}
    if spec.kind == "slider":
        return gr.Slider(spec.minimum, spec.maximum, value=spec.value, step=spec.step, **common)
    if spec.kind == "number":
        return gr.Textbox(value=spec.value, placeholder="empty", **common)
    if spec.kind == "checkbox":
        return gr.Checkbox(value=spec.value, **common)
    if spec.kind == "radio":
        return gr.Radio(list(spec.choices), value=spec.value, **common)
    lines = 2 if name in ("stop", "logit_bias") else 1
    return gr.Textbox(value=spec.value, lines=lines, **common)


def build_ui(host: ModelHost) -> gr.Blocks:
    gradio_skip.install()  # every handler leaves outputs as they are: that must cost nothing
    stops = Stops()
    c: dict[str, Component] = {}  # every component an event reads or writes, by name
    with gr.Blocks(title="Sampling Playground", analytics_enabled=False) as demo:
        c["runs"], c["history"], c["sweep_state"] = gr.State([]), gr.State([]), gr.State(None)
        gr.Markdown(INTRO)
        c["link_note"] = gr.Markdown(elem_id="link-note")
        # A shared link is applied by a server event only on a page opened with one (LINK_JS clicks this):
        # every output of any event the page has run costs it work on each later update (playground/ui_stream.py).
        c["link_query"] = gr.Textbox(visible="hidden", elem_id="link-query")
        link_btn = gr.Button(visible="hidden", elem_id="apply-link")
        with gr.Row(equal_height=True):
            c["model"] = gr.Dropdown(host.names(), value=host.default, label="Model", scale=3)
            # Off on ZeroGPU, with the reason in the box (playground/models.py).
            load_box = gr.Textbox(label="Load another model", placeholder=host.load_off or "Hugging Face id or local folder",
                                  interactive=host.load_off is None, scale=3)
            load_btn = gr.Button("Load model", scale=1, interactive=host.load_off is None)
        c["model_info"] = gr.Markdown(model_info(host.get()), elem_id="model-info")
        c.update(ui_remote.panel(host))  # "Connect a server", beside Load model

        with gr.Row():
            # ---- settings: one control per knob, grouped as in engine/knobs.py ----
            with gr.Column(scale=2, min_width=330):
                gr.Markdown("### Sampling settings")
                for group in GROUPS:
                    with gr.Accordion(GROUP_TITLES[group], open=group != "advanced"):
                        c[f"error_{group}"] = gr.Markdown(elem_classes=["knob-error"], elem_id=f"error-{group}")
                        for name in UI_KNOBS:
                            if KNOBS[name].group != group:
                                continue
                            if name == "sampler_order":
                                c["order_preset"] = gr.Dropdown(list(ORDER_PRESETS), value=list(ORDER_PRESETS)[0],
                                                                label="sampler order preset")
                            c[name] = _control(name)
                            if name == "logit_bias":
                                c["bias_preview"] = gr.Markdown(elem_id="bias-preview")
                        if group == "advanced":
                            c["tools"] = gr.Code(language="json", label="tools (JSON list of functions)", value="", lines=3,
                                                 elem_id="tools")
                            c["tool_choice"] = gr.Radio(list(TOOL_CHOICES), value="auto", label="tool_choice", elem_id="tool-choice",
                                                        info=REQUEST_KNOBS["tool_choice"].help)
                            c["reasoning_effort"] = gr.Radio(["none", *REQUEST_KNOBS["reasoning_effort"].choices], value="none",
                                                             label="reasoning_effort", elem_id="effort",
                                                             **effort_state(host.get(host.default)))
                            c["response_format"] = gr.Radio(["text", "json_object"], value="text", label="response_format",
                                                            info=REQUEST_KNOBS["response_format"].help, elem_id="response-format")
                reset_btn = gr.Button("Reset to defaults", elem_id="reset")
                with gr.Accordion("Share, save, load", open=True):
                    share_btn = gr.Button("Share link to these settings", elem_id="share")
                    c["share_url"] = gr.Textbox(label="Link (settings and prompt)", elem_id="share-url", buttons=["copy"],
                                                interactive=False)
                    save_btn = gr.Button("Save the shown run (JSON)", elem_id="save")
                    c["run_file"] = gr.File(label="Run file", elem_id="run-file", interactive=False)
                    load_btn_file = gr.UploadButton("Load a run (saved JSON, or an API response with trace)",
                                                    file_types=[".json"], elem_id="load-run")
                    c["file_note"] = gr.Markdown(elem_id="file-note")

            # ---- conversation, output and the pictures ----
            with gr.Column(scale=5):
                c["chat"] = gr.Chatbot(label="Conversation", height=240, elem_id="chat")
                c["system"] = gr.Textbox(label="System prompt", placeholder="empty: the chat template's default", lines=1,
                                         elem_id="system")
                c["message"] = gr.Textbox(label="Your message", value=DEFAULT_MESSAGE, lines=2, elem_id="message")
                with gr.Row():
                    gen_btn = gr.Button("Generate", variant="primary", elem_id="generate")
                    c["manual"] = gr.Checkbox(False, label="Manual mode", elem_id="manual",
                                              info="Generate makes one step and waits: you pick each token (Manual tab).")
                    stop_btn = gr.Button("Stop", variant="stop", elem_id="stop")
                    clear_btn = gr.Button("Clear conversation", elem_id="clear")
                c["run_error"] = gr.Markdown(elem_id="run-error")
                # Both stream a run (tokenview.LiveRun) and show plain HTML otherwise; their script draws either.
                c["completions"] = gr.HTML(elem_id="completions", html_template="", js_on_load=tokenview.STREAM_JS)
                with gr.Row():
                    c["view"] = gr.Dropdown([], label="Showing", elem_id="view", scale=2)
                    c["completion"] = gr.Radio(["1"], value="1", label="Completion", scale=2)
                    c["mode"] = gr.Radio(list(tokenview.MODES), value=tokenview.MODES[0], label="Colour tokens by", scale=3)
                c["tokens"] = gr.HTML(tokenview.EMPTY_TOKENS, elem_id="tokenview", html_template="",
                                      js_on_load=tokenview.STREAM_JS + TOKENVIEW_JS)
                c["timeline"] = gr.Plot(elem_id="timeline", show_label=False)
                c["step"] = gr.Slider(0, 1, value=0, step=1, label="Step", elem_id="step",
                                      info="Or click a token above, or a point on the timeline.")
                with gr.Row():
                    with gr.Column(scale=3):
                        c["inspector"] = gr.Plot(elem_id="inspector", show_label=False)
                    with gr.Column(scale=2):
                        c["sentences"] = gr.Markdown(elem_id="sentences")
                        c["alternatives"] = gr.HTML(elem_id="alternatives")
                c["draw"] = gr.Plot(elem_id="draw", show_label=False)
                with gr.Tabs():
                    with gr.Tab("What if", elem_id="tab-whatif"):
                        with gr.Row():
                            c["live"] = gr.Checkbox(True, label="Live what-if", scale=1, elem_id="live",
                                                    info="Move any sampler control: the selected step is sampled again "
                                                         "from its exact logits, with the same random number. No generation.")
                            continue_btn = gr.Button("Continue from here with these settings", scale=1, elem_id="continue")
                        c["whatif_note"] = gr.Markdown(elem_id="whatif-note")
                        with gr.Column(elem_id="whatif-charts"):  # ui_events.WHATIF_CHARTS: hidden one by one
                            with gr.Row():
                                with gr.Column(scale=3):
                                    c["whatif_plot"] = gr.Plot(elem_id="whatif-plot", show_label=False, visible=False)
                                with gr.Column(scale=2):
                                    c["whatif_sentences"] = gr.Markdown(elem_id="whatif-sentences", visible=False)
                            c["whatif_draw"] = gr.Plot(elem_id="whatif-draw", show_label=False, visible=False)
                        c["whatif_branch"] = gr.HTML(elem_id="whatif-branch")
                    with gr.Tab("Penalty ledger", elem_id="tab-ledger"):
                        gr.Markdown("For the selected step under the current settings: every token the repetition "
                                    "penalty, presence/frequency penalties and DRY touched, how often it occurred "
                                    "before the step, and how much logit each penalty took from it.")
                        c["ledger"] = gr.HTML(elem_id="ledger")
                    with gr.Tab("Sweep", elem_id="tab-sweep"):
                        gr.Markdown("Generate k samples for each value of one knob (the other settings as they are, "
                                    "one seed for all) and see what the knob does to the texts. "
                                    + " · ".join(f"**{title}**: {what}" for title, what in METRICS.values()))
                        with gr.Row():
                            c["sweep_knob"] = gr.Dropdown(SWEEPABLE, value="temperature", label="Knob", elem_id="sweep-knob", scale=2)
                            c["sweep_from"] = gr.Number(0.0, label="from", elem_id="sweep-from", scale=1)
                            c["sweep_to"] = gr.Number(2.0, label="to", elem_id="sweep-to", scale=1)
                            c["sweep_count"] = gr.Number(5, label=f"values [2, {MAX_VALUES}]", precision=0, elem_id="sweep-count", scale=1)
                            c["sweep_samples"] = gr.Number(4, label=f"samples per value [1, {MAX_SAMPLES}]", precision=0,
                                                           elem_id="sweep-samples", scale=1)
                            c["sweep_tokens"] = gr.Number(32, label="tokens per sample", precision=0, elem_id="sweep-tokens", scale=1)
                            sweep_btn = gr.Button("Run sweep", scale=1, elem_id="sweep")
                        with gr.Row():
                            c["sweep_knob2"] = gr.Dropdown(["none", *SWEEPABLE], value="none", elem_id="sweep-knob2", scale=2,
                                                           label="Second knob, for a heatmap (optional)")
                            c["sweep_from2"] = gr.Number(0.0, label="from", elem_id="sweep-from2", scale=1)
                            c["sweep_to2"] = gr.Number(1.0, label="to", elem_id="sweep-to2", scale=1)
                            c["sweep_count2"] = gr.Number(3, label=f"values [2, {MAX_VALUES}]", precision=0, elem_id="sweep-count2",
                                                          scale=1)
                        c["sweep_status"] = gr.HTML(elem_id="sweep-status")
                        c["sweep_plot"] = gr.Plot(elem_id="sweep-plot", show_label=False)
                        c["sweep_pick"] = gr.Radio([], label="Samples at (or click a point or cell)", elem_id="sweep-pick")
                        c["sweep_texts"] = gr.HTML(elem_id="sweep-texts")
                        c["sweep_csv"] = gr.File(label="Sweep as CSV", elem_id="sweep-csv", interactive=False)
                    with gr.Tab("Branch"):
                        gr.Markdown("Pick another token at the selected step and continue from there; the earlier "
                                    "tokens stay, the original stays to compare.")
                        with gr.Row():
                            c["alt"] = gr.Dropdown([], label="Alternative at the selected step", scale=3, elem_id="alt")
                            branch_btn = gr.Button("Continue from here", scale=1, elem_id="branch")
                        c["branch_view"] = gr.HTML(elem_id="branch-view")
                    with gr.Tab("Compare"):
                        gr.Markdown("Run the last prompt with the same seed under the current settings (A) and "
                                    "with these overrides (B), and see where and why the texts part.")
                        with gr.Row():
                            c["settings_b"] = gr.Textbox(DEFAULT_SETTINGS_B, label="Settings B: knob overrides (JSON)", scale=3,
                                                         elem_id="settings-b")
                            compare_btn = gr.Button("Compare", scale=1, elem_id="compare")
                        c["compare_view"] = gr.HTML(elem_id="compare-view")
                    with gr.Tab("Replay"):
                        gr.Markdown("Redo the selected step with the same random number under another engine's "
                                    "sampler order, and see whether it would have picked another token.")
                        with gr.Row():
                            c["replay_order"] = gr.Dropdown(list(PRESETS), value="llama.cpp", label="Engine order", scale=3,
                                                            elem_id="replay-order")
                            replay_btn = gr.Button("Replay this step", scale=1, elem_id="replay")
                        c["replay_note"] = gr.Markdown(elem_id="replay-note")
                        c["replay_plot"] = gr.Plot(elem_id="replay-plot", show_label=False)
                    with gr.Tab("View code"):
                        gr.Markdown("The current settings as a request to this server's OpenAI-compatible API "
                                    "(only knobs that differ from the API defaults are sent).")
                        c["curl"] = gr.Code(language="shell", label="curl", elem_id="curl")
                        c["python"] = gr.Code(language="python", label="openai Python client", elem_id="python")
                    with gr.Tab("Prompt"):
                        gr.Markdown("The last prompt as the model saw it, after its chat template.")
                        c["prompt"] = gr.Code(language=None, label="templated prompt", elem_id="prompt")
                # Teaching views, apart: one row of tabs holds them all without an overflow menu.
                gr.Markdown("### Teaching", elem_id="teaching-title")
                with gr.Tabs(elem_id="teaching") as c["tabs"]:  # manual mode opens its tab
                    with gr.Tab("Sample N times", elem_id="tab-draws"):
                        gr.Markdown("Draw the selected step N times from its exact final distribution (under the current "
                                    "settings), with seeded random numbers, and watch the counts approach the probabilities.")
                        with gr.Row():
                            c["draws_n"] = gr.Slider(1, 5, value=3, step=0.1, label="log₁₀ N: 1 is 10 draws, 5 is 100,000",
                                                     elem_id="draws-n", scale=3)
                            c["draws_seed"] = gr.Number(0, precision=0, label="seed of these draws", elem_id="draws-seed",
                                                        scale=1)
                            draws_btn = gr.Button("Sample this step N times", scale=1, elem_id="draws")
                        c["draws_note"] = gr.Markdown(elem_id="draws-note")
                        c["draws_plot"] = gr.Plot(elem_id="draws-plot", show_label=False)
                    with gr.Tab("All engine orders", elem_id="tab-orders"):
                        gr.Markdown("The selected step under each engine's sampler order (Hugging Face, vLLM, llama.cpp, "
                                    "text-generation-webui), with the current settings and the run's own random number. "
                                    "Needs the model (the step's exact logits).")
                        orders_btn = gr.Button("Compare the four engine orders", elem_id="orders")
                        c["orders_note"] = gr.Markdown(elem_id="orders-note")
                        c["orders_table"] = gr.HTML(elem_id="orders-table")
                        c["orders_plot"] = gr.Plot(elem_id="orders-plot", show_label=False)
                    with gr.Tab("Many futures", elem_id="tab-futures"):
                        gr.Markdown("Draw N continuations of k tokens from the selected step (or the start) under the "
                                    "run's own settings, all at once in the shared batch, and see them as a tree: each "
                                    "box is a token, as tall as the futures through it, coloured by its probability "
                                    "under the model. The run's own text is marked ★. Click a box to read its "
                                    "continuations. Needs the model (a loaded run keeps only compact records).")
                        with gr.Row():
                            c["futures_from"] = gr.Radio(list(ui_futures.FROM), value=ui_futures.FROM[0], label="From",
                                                         elem_id="futures-from", scale=2)
                            c["futures_n"] = gr.Number(16, label=f"futures N [1, {host.limits.max_rows}]", precision=0,
                                                       elem_id="futures-n", scale=1)
                            c["futures_k"] = gr.Number(6, label=f"tokens each k [1, {futures.MAX_TOKENS}]", precision=0,
                                                       elem_id="futures-k", scale=1)
                            c["futures_btn"] = gr.Button("Draw the futures", scale=1, elem_id="futures")
                        c["futures_status"] = gr.HTML(elem_id="futures-status")
                        c["futures_note"] = gr.Markdown(elem_id="futures-note")
                        c["futures_plot"] = gr.Plot(elem_id="futures-plot", show_label=False)
                        c["futures_node"] = gr.Textbox(futures.ROOT, label="Node (click a box in the tree)", elem_id="futures-node")
                        c["futures_texts"] = gr.HTML(elem_id="futures-texts")
                        c["futures_json"] = gr.File(label="The tree as JSON", elem_id="futures-json", interactive=False)
                        c["futures_state"] = gr.State(None)
                    with gr.Tab("Manual", id="manual", elem_id="tab-manual"):
                        gr.Markdown("Turn on **Manual mode** beside Generate, then Generate: the model computes the next "
                                    "step and stops. Choose its token from the whole vocabulary (searched, sorted and paged "
                                    "on the server), let the sampler draw it, or rewind. Needs the model.")
                        c["manual_note"] = gr.Markdown(elem_id="manual-note")
                        c["manual_text"] = gr.HTML(elem_id="manual-text")
                        with gr.Row():
                            c["manual_token"] = gr.Textbox(label="token id to pick", placeholder="click a row", max_lines=1,
                                                           elem_id="manual-token", scale=1)
                            c["manual_pick_btn"] = gr.Button("Pick this token", variant="primary", elem_id="manual-pick", scale=1)
                            c["manual_draw_btn"] = gr.Button("Let the sampler draw", elem_id="manual-draw", scale=1)
                            c["manual_rewind_n"] = gr.Number(1, label="steps to rewind", precision=0, minimum=1,
                                                             elem_id="manual-rewind-n", scale=1)
                            c["manual_rewind_btn"] = gr.Button("Rewind", elem_id="manual-rewind", scale=1)
                            c["manual_takeover_btn"] = gr.Button("Take over the shown run at the selected step", scale=2,
                                                                 elem_id="manual-takeover")
                        with gr.Row():
                            with gr.Column(scale=3):
                                with gr.Row():
                                    c["manual_search"] = gr.Textbox(label="Search the vocabulary (text, or #id)",
                                                                    elem_id="manual-search", scale=3)
                                    c["manual_sort"] = gr.Dropdown(list(manual_runs.SORTS), value="rank", label="sort by",
                                                                   elem_id="manual-sort", scale=2)
                                    c["manual_reverse"] = gr.Checkbox(False, label="reverse", elem_id="manual-reverse", scale=1)
                                    c["manual_page"] = gr.Number(1, label="page", precision=0, minimum=1,
                                                                 elem_id="manual-page", scale=1)
                                c["manual_table"] = gr.HTML(elem_id="manual-table", js_on_load=manual_events.ROW_JS)
                            with gr.Column(scale=2):
                                c["manual_inspector"] = gr.Plot(elem_id="manual-inspector", show_label=False)
                                c["manual_sentences"] = gr.Markdown(elem_id="manual-sentences")
                                c["manual_draw"] = gr.Plot(elem_id="manual-draw-plot", show_label=False)
                        c["manual_run"] = gr.State(None)
                    with gr.Tab("Logit lens", elem_id="tab-lens"):
                        gr.Markdown("What the model would predict if it stopped after each layer: the selected step's "
                                    "prefix goes through the model once, and every layer's hidden state is read through "
                                    "the model's final norm and output head. Needs the model, a local Llama-, Mistral- "
                                    "or Qwen-shaped one.")
                        c["lens_btn"] = gr.Button("Look through the layers at this step", elem_id="lens")
                        c["lens_note"] = gr.Markdown(elem_id="lens-note")
                        c["lens_heatmap"] = gr.Plot(elem_id="lens-heatmap", show_label=False)
                        c["lens_rank"] = gr.Plot(elem_id="lens-rank", show_label=False)

        _wire(demo, host, stops, c, buttons=dict(
            load=load_btn, load_box=load_box, reset=reset_btn, share=share_btn, save=save_btn, load_file=load_btn_file,
            apply_link=link_btn, generate=gen_btn, stop=stop_btn, clear=clear_btn, cont=continue_btn, sweep=sweep_btn, branch=branch_btn,
            compare=compare_btn, replay=replay_btn, draws=draws_btn, orders=orders_btn))

    sizes = QueueLimits.of(host.limits)
    demo.max_threads = sizes.max_threads  # read when the mounted app starts (launch() would set it)
    # Places in Gradio's own queue are sent every STATUS_EVERY_S rather than to every waiting event each time
    # one starts ("auto"): eight pages clicking at once got up to five such messages each before their run
    # began, and each costs a page a status refresh. A run's place in the model's queue is the run's own text.
    demo.queue(default_concurrency_limit=sizes.other, max_size=sizes.max_size, status_update_rate=STATUS_EVERY_S)
    return demo


def _wire(demo: gr.Blocks, host: ModelHost, stops: Stops, c: dict[str, Component], buttons: dict[str, Any]) -> None:
    b = buttons
    sizes = QueueLimits.of(host.limits)
    pick = lambda *names: {n: c[n] for n in names}  # noqa: E731
    settings = pick(*SETTINGS)
    selection = pick("runs", "view", "completion", "step")
    view_out = pick(*ui_events.EMPTY_VIEW)
    model_events = {"concurrency_limit": sizes.model, "concurrency_id": "model"}
    quiet = {"show_progress": "hidden"}
    bound = lambda fn: functools.partial(fn, host=host, stops=stops)  # noqa: E731
    controls = [c[n] for n in (*SETTINGS, "order_preset") if not isinstance(c[n], gr.State)]

    # ---- validation and code snippets, live as settings change ----
    validate_out = pick(*(f"error_{g}" for g in GROUPS), "bias_preview", "curl", "python")
    validate = functools.partial(ui_events.validate, host=host)
    # The message box by the user's typing only: a finished run empties it, and the request it last sent is
    # what the snippets already show. Events that set it (a share link, a loaded run) validate after.
    validate_in = {**settings, "runs": c["runs"]}
    _on([x.change for x in controls if x is not c["message"]] + [c["message"].input, demo.load], validate, validate_in,
        validate_out, trigger_mode="always_last", **quiet)

    # ---- a shared link restores settings and prompt ----
    demo.load(None, js=LINK_JS)
    linked = _on(b["apply_link"].click, functools.partial(ui_events.apply_link, host=host), {"query": c["link_query"]},
                 pick(*UI_KNOBS, "model", "system", "message", "link_note"), js="() => [location.search]")
    _then(linked, validate, validate_in, validate_out, **quiet)

    # ---- generate: stream tokens, keep and select the run; then draw it ----
    whatif_in = {**settings, **selection, "live": c["live"]}
    whatif_out = pick("whatif_note", *ui_events.WHATIF_CHARTS, "ledger")
    # The selected step and all that follows it is drawn by one event (`_draw_step`), after whatever selects
    # a step: the step slider's `input` is the user's own move only, so a step set by an event draws nothing
    # by itself, and nothing is drawn twice.
    draws_in = {**settings, **selection, "draws": c["draws_n"], "draws_seed": c["draws_seed"]}
    draws_out, orders_out = pick("draws_note", "draws_plot"), pick("orders_note", "orders_table", "orders_plot")
    draw_in = {**whatif_in, "mode": c["mode"], "draws": c["draws_n"], "draws_seed": c["draws_seed"],
               "draws_note": c["draws_note"], "orders_note": c["orders_note"]}
    draw_out = {**view_out, **whatif_out, **draws_out, **orders_out}

    def draw_after(event):
        return _then(event, bound(_draw_step), draw_in, draw_out, **quiet, **model_events)

    # Hidden progress: the streamed heads already say waiting or generating, and Gradio's overlay timer redraws.
    # Manual mode (its toggle beside Generate) starts here too: manual_events.generate picks.
    table_in = {"search": c["manual_search"], "sort": c["manual_sort"], "reverse": c["manual_reverse"]}
    manual_out = pick(*manual_events.PANEL, "manual_run", "manual_page", "runs", "view", "completion", "step")
    gen_event = _on([b["generate"].click, c["message"].submit], bound(manual_events.generate),
                    {**settings, "manual": c["manual"], **table_in},
                    {**pick("run_error", "completions", "tokens", "history", "chat", "message", "prompt"), **manual_out},
                    **quiet, **model_events)
    # Manual mode opens its tab in the page itself: a layout block among a server event's outputs costs the
    # page a walk of all it holds (here every teaching view) at each later status update of any event.
    gr.on([b["generate"].click, c["message"].submit], None, c["manual"], c["tabs"], js=OPEN_MANUAL_JS)
    draw_after(gen_event)
    _on(b["stop"].click, functools.partial(ui_events.stop, stops=stops), {}, {}, concurrency_limit=None, **quiet)
    _on(b["clear"].click, ui_events.clear, {}, pick("history", "chat", "run_error"))

    # ---- selection: which run, completion and step the pictures show ----
    draw_after(_on(c["view"].input, ui_events.pick_view, pick("runs", "view"), pick("completion", "step")))
    draw_after(_on(c["completion"].input, ui_events.pick_completion, pick("runs", "view", "completion"), pick("step")))
    _on([c["step"].input, c["mode"].input], bound(_draw_step), draw_in, draw_out, trigger_mode="always_last", **quiet,
        **model_events)
    draw_after(c["tokens"].click(_pick_token, None, c["step"], **quiet))

    # ---- what-if: the selected step, again, under the current settings ----
    what_if = bound(ui_events.what_if)
    _on([x.change for x in controls if x is not c["message"]] + [c["live"].change], what_if, whatif_in, whatif_out,
        trigger_mode="always_last", **quiet, **model_events)
    _on(b["cont"].click, bound(ui_events.continue_here), {**settings, **selection}, pick("whatif_branch", "runs", "view"),
        **model_events)

    # ---- sweeps ----
    sweep_in = {**settings, "runs": c["runs"], "knob": c["sweep_knob"], "start": c["sweep_from"], "end": c["sweep_to"],
                "count": c["sweep_count"], "samples": c["sweep_samples"], "tokens": c["sweep_tokens"],
                "knob2": c["sweep_knob2"], "start2": c["sweep_from2"], "end2": c["sweep_to2"], "count2": c["sweep_count2"]}
    _on(b["sweep"].click, bound(ui_events.sweep), sweep_in,
        pick("sweep_status", "sweep_plot", "sweep_pick", "sweep_texts", "sweep_state", "sweep_csv"), **model_events)
    _on(c["sweep_pick"].input, ui_events.pick_sweep_point, {"result": c["sweep_state"], "index": c["sweep_pick"]},
        pick("sweep_texts", "sweep_plot"), **quiet)

    # ---- branch, compare, replay ----
    _on(b["branch"].click, bound(ui_events.branch), {**selection, "alt": c["alt"]}, pick("branch_view", "runs", "view"),
        **model_events)
    _on(b["compare"].click, bound(ui_events.compare), {**settings, "runs": c["runs"], "overrides": c["settings_b"]},
        pick("compare_view", "runs", "view"), **model_events)
    _on(b["replay"].click, bound(ui_events.replay), {**selection, "preset": c["replay_order"]},
        pick("replay_note", "replay_plot"), **model_events)

    # ---- many futures, the logit lens ----
    _on(c["futures_btn"].click, bound(ui_futures.run_futures),
        {**selection, "start_from": c["futures_from"], "n": c["futures_n"], "k": c["futures_k"]},
        pick("futures_status", "futures_note", "futures_plot", "futures_state", "futures_texts", "futures_json"),
        **model_events)
    _on(c["futures_node"].change, ui_futures.pick_node, {"result": c["futures_state"], "node": c["futures_node"]},
        pick("futures_texts"), **quiet)
    _on(c["lens_btn"].click, functools.partial(ui_lens.lens, host=host), selection,
        pick("lens_note", "lens_heatmap", "lens_rank"), **model_events)

    # ---- manual mode: Generate makes one step and waits for a pick, a draw or a rewind ----
    manual_in = {"manual_run": c["manual_run"], **table_in}
    draw_after(_on(c["manual_draw_btn"].click, bound(manual_events.draw), manual_in, manual_out, **model_events))
    draw_after(_on(c["manual_takeover_btn"].click, bound(manual_events.take_over), {**selection, **table_in},
                   manual_out, **model_events))
    draw_after(_on(c["manual_pick_btn"].click, bound(manual_events.pick), {**manual_in, "token": c["manual_token"]},
                   manual_out, **model_events))
    draw_after(_on(c["manual_rewind_btn"].click, bound(manual_events.rewind),
                   {**manual_in, "count": c["manual_rewind_n"]}, manual_out, **model_events))
    # A new search or order starts at page 1 (browse's default); the page box moves within it.
    _on([c["manual_search"].input, c["manual_sort"].input, c["manual_reverse"].input], bound(manual_events.browse), manual_in,
        manual_out, trigger_mode="always_last", **quiet, **model_events)
    _on(c["manual_page"].input, bound(manual_events.browse), {**manual_in, "page": c["manual_page"]}, manual_out,
        trigger_mode="always_last", **quiet, **model_events)
    c["manual_table"].click(_pick_row, None, c["manual_token"], **quiet)

    # ---- teaching: the selected step drawn N times; under every engine's order (once drawn, they follow the step) ----
    _on([b["draws"].click, c["draws_n"].change, c["draws_seed"].change], bound(ui_manydraws.sample_step), draws_in,
        draws_out, trigger_mode="always_last", **quiet, **model_events)
    _on(b["orders"].click, bound(ui_orders.all_orders), {**settings, **selection}, orders_out, **model_events)

    # ---- share, save, load ----
    _on(b["share"].click, ui_events.share_link, settings, pick("share_url"))
    _on(b["save"].click, ui_events.save_run, pick("runs", "view"), pick("run_file", "file_note"))
    loaded = _on(b["load_file"].upload, functools.partial(ui_events.load_run, host=host), {"path": b["load_file"]},
                 pick(*UI_KNOBS, "file_note", "runs", "view", "completion", "step", "completions", "message", "system"))
    draw_after(loaded)
    _then(loaded, validate, validate_in, validate_out, **quiet)

    # ---- settings helpers ----
    _on(b["reset"].click, ui_events.reset, {}, pick(*UI_KNOBS, *ui_events.EXTRA_CONTROLS))
    _on(c["order_preset"].input, ui_events.pick_order, {"preset": c["order_preset"]}, pick("sampler_order"))

    # ---- models ----
    # Its own queue slot: a Hub load can take minutes (or retry for a while offline) without holding up generation.
    outputs = [c["model"], c["model_info"]]
    loading = b["load"].click(functools.partial(_load_model, host=host, outputs=outputs), b["load_box"], outputs,
                              concurrency_limit=1, concurrency_id="load")
    _then(loading, functools.partial(ui_remote.model_choices, host=host), {}, pick("model"), **quiet)  # + this session's
    _on(c["remote_list"].click, functools.partial(ui_remote.list_models, host=host),
        {"url": c["remote_url"], "key": c["remote_key"]}, pick("remote_models", "remote_note"))
    _on(c["remote_connect"].click, functools.partial(ui_remote.connect_server, host=host),
        {"url": c["remote_url"], "key": c["remote_key"], "model": c["remote_models"]},
        pick("model", "model_info", "remote_key", "remote_note"))
    _on(c["model"].change, functools.partial(ui_events.pick_model, host=host), {"name": c["model"]},
        pick("model_info", "reasoning_effort"))
