"""The Gradio UI: a slider for every knob, and pictures of what each sampler stage did.

Thin by design: controls come from engine.knobs.KNOBS (ui_settings), generation runs through ui_runs,
and everything drawn is a pure function (figures, tokenview, snippets). Per-session state is a list of
runs (plain dicts) and the chat history; the model lives in the ModelHost, never in gr.State.
"""

from __future__ import annotations

import secrets
import threading
from dataclasses import dataclass
from typing import Any

import gradio as gr

from engine.knobs import KNOBS, REQUEST_KNOBS, STAGE_ORDER, ParamError, SamplingParams
from engine.model import LoadedModel
from engine.reasoning import supports_thinking
from engine.scheduler import Refused
from engine.stages import PRESETS, STAGES
from playground import figures, snippets, tokenview, ui_records, ui_runs
from playground.models import ModelHost
from playground.ui_settings import (
    GROUP_TITLES,
    GROUPS,
    ORDER_PRESETS,
    TOOL_CHOICES,
    UI_KNOBS,
    bias_preview,
    collect,
    control_spec,
    describe_error,
    parse_logit_bias,
    parse_overrides,
    request_extras,
)

# UI events that may generate at once: each only waits on the model's scheduler, which batches them (and
# queues past its limits, showing each run its place).
MODEL_CONCURRENCY = 64
DEFAULT_MESSAGE = "Write a short poem about the sea."
DEFAULT_SETTINGS_B = '{"temperature": 1.5, "top_p": 1.0, "min_p": 0.0}'

INTRO = f"""# Sampling Playground
Every knob of an OpenAI-style chat-completions API, and what each sampler stage did to the distribution a
token was drawn from. Pipeline (default order): **raw → {' → '.join(STAGES[n].label for n in STAGE_ORDER)} → draw**.
Generate, then click any token."""

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
    document.querySelectorAll('#timeline .js-plotly-plot').forEach((plot) => {
      if (plot.dataset.stepHook || typeof plot.on !== 'function') return;
      plot.dataset.stepHook = '1';
      plot.on('plotly_click', (ev) => {
        const step = ev.points && ev.points.length ? ev.points[0].x : null;
        const tok = document.querySelector(`#tokenview [data-step="${step}"]`);
        if (tok) tok.click();
      });
    });
  };
  new MutationObserver(hook).observe(document.documentElement, {childList: true, subtree: true});
})();
</script>
"""

CSS = tokenview.CSS + """
.knob-error p { color: #b91c1c; font-weight: 600; margin: 2px 0; }
#run-error p { color: #b91c1c; font-weight: 600; }
#sentences li { margin: 2px 0; }
"""

# Per browser session, the Stop button's flag; the running generation reads it between steps.
_stops: dict[str, threading.Event] = {}


def launch_kwargs() -> dict:
    """css/head/theme for gr.mount_gradio_app (Gradio 6 takes them at launch, not in Blocks)."""
    # System fonts: the default theme fetches Google fonts, which an offline machine cannot reach.
    theme = gr.themes.Default(
        primary_hue="orange",
        font=["ui-sans-serif", "system-ui", "sans-serif"],
        font_mono=["ui-monospace", "SFMono-Regular", "monospace"],
    )
    return {"css": CSS, "head": HEAD, "theme": theme}


def model_info(lm: LoadedModel) -> str:
    return (
        f"**{lm.name}** · {lm.source} · {lm.device} · {str(lm.dtype).removeprefix('torch.')} · "
        f"context {lm.context_length} tokens · vocabulary {lm.vocab_size} · loaded in {lm.load_seconds:.1f} s"
    )


def _encoder(lm: LoadedModel):
    return lambda text: lm.tokenizer.encode(text, add_special_tokens=False)


def _conversation(system: str, history: list[dict], message: str) -> list[dict]:
    msgs = [{"role": "system", "content": system}] if system.strip() else []
    msgs += [{"role": m["role"], "content": m["content"]} for m in history]
    if message.strip():
        msgs.append({"role": "user", "content": message})
    return msgs


def _new_stop(request: gr.Request) -> threading.Event:
    event = threading.Event()
    _stops[request.session_hash] = event
    return event


def _base_url(request: gr.Request | None) -> str:
    if request is None:
        return "http://127.0.0.1:7860/v1"
    headers = request.headers
    host = headers.get("x-forwarded-host") or headers.get("host") or "127.0.0.1:7860"
    scheme = headers.get("x-forwarded-proto") or "http"
    return f"{scheme}://{host}/v1"


@dataclass
class Inputs:
    """The settings-side inputs of an event, in the order `_settings_inputs` lists them."""

    model: str
    system: str
    message: str
    history: list[dict]
    knobs: dict[str, Any]
    tools: str
    tool_choice: str
    reasoning_effort: str | None
    response_format: str

    def extras(self) -> dict[str, Any]:
        return request_extras(self.tools, self.tool_choice, self.reasoning_effort, self.response_format)

    @classmethod
    def of(cls, args) -> "Inputs":
        model, system, message, history, *rest = args
        knobs = dict(zip(UI_KNOBS, rest[: len(UI_KNOBS)]))
        tools, tool_choice, effort, response_format = rest[len(UI_KNOBS):]
        return cls(model, system or "", message or "", history or [], knobs, tools or "", tool_choice or "none",
                   effort if effort and effort != "none" else None, response_format or "text")


def _view_choices(runs: list[dict]) -> list[tuple[str, int]]:
    return [(r["label"], i) for i, r in enumerate(runs)]


def _most_uncertain(steps: list[dict]) -> int:
    """The step where the raw distribution was widest: where sampling settings matter most."""
    return max(range(len(steps)), key=lambda i: steps[i]["stages"][0]["entropy"]) if steps else 0


def build_ui(host: ModelHost) -> gr.Blocks:
    with gr.Blocks(title="Sampling Playground", analytics_enabled=False) as demo:
        runs_state = gr.State([])
        history_state = gr.State([])
        gr.Markdown(INTRO)
        with gr.Row(equal_height=True):
            model_dd = gr.Dropdown(host.names(), value=host.default, label="Model", scale=3)
            load_box = gr.Textbox(label="Load another model", placeholder="Hugging Face id or local folder", scale=3)
            load_btn = gr.Button("Load model", scale=1)
        model_md = gr.Markdown(model_info(host.get()), elem_id="model-info")

        with gr.Row():
            # ---- settings: one control per knob, grouped as in engine/knobs.py ----
            with gr.Column(scale=2, min_width=330):
                gr.Markdown("### Sampling settings")
                controls: dict[str, gr.components.Component] = {}
                group_errors: dict[str, gr.Markdown] = {}
                for group in GROUPS:
                    with gr.Accordion(GROUP_TITLES[group], open=group != "advanced"):
                        group_errors[group] = gr.Markdown(elem_classes=["knob-error"], elem_id=f"error-{group}")
                        for name in UI_KNOBS:
                            if KNOBS[name].group != group:
                                continue
                            if name == "sampler_order":
                                order_preset = gr.Dropdown(list(ORDER_PRESETS), value=list(ORDER_PRESETS)[0],
                                                           label="sampler order preset")
                            controls[name] = _control(name)
                            if name == "logit_bias":
                                bias_md = gr.Markdown(elem_id="bias-preview")
                        if group == "advanced":
                            tools_box = gr.Code(language="json", label="tools (JSON list of functions)",
                                                value="", lines=3, elem_id="tools")
                            tool_choice_dd = gr.Radio(list(TOOL_CHOICES), value="auto", label="tool_choice", elem_id="tool-choice",
                                                      info=REQUEST_KNOBS["tool_choice"].help)
                            effort_dd = gr.Radio(["none", *REQUEST_KNOBS["reasoning_effort"].choices], value="none",
                                                 label="reasoning_effort", elem_id="effort",
                                                 **_effort_state(host.get(host.default)))
                            format_radio = gr.Radio(["text", "json_object"], value="text", label="response_format",
                                                    info=REQUEST_KNOBS["response_format"].help, elem_id="response-format")
                reset_btn = gr.Button("Reset to defaults", elem_id="reset")

            # ---- conversation, output and the pictures ----
            with gr.Column(scale=5):
                chatbot = gr.Chatbot(label="Conversation", height=240, elem_id="chat")
                system_box = gr.Textbox(label="System prompt", placeholder="empty: the chat template's default", lines=1)
                msg_box = gr.Textbox(label="Your message", value=DEFAULT_MESSAGE, lines=2, elem_id="message")
                with gr.Row():
                    gen_btn = gr.Button("Generate", variant="primary", elem_id="generate")
                    stop_btn = gr.Button("Stop", variant="stop", elem_id="stop")
                    clear_btn = gr.Button("Clear conversation", elem_id="clear")
                run_error = gr.Markdown(elem_id="run-error")
                completions = gr.HTML(elem_id="completions")
                with gr.Row():
                    view_dd = gr.Dropdown([], label="Showing", elem_id="view", scale=2)
                    completion_radio = gr.Radio(["1"], value="1", label="Completion", scale=2)
                    mode_radio = gr.Radio(list(tokenview.MODES), value=tokenview.MODES[0], label="Colour tokens by", scale=3)
                token_html = gr.HTML(tokenview.token_view_html([], {}), elem_id="tokenview", js_on_load=TOKENVIEW_JS)
                timeline_plot = gr.Plot(elem_id="timeline", show_label=False)
                step_slider = gr.Slider(0, 1, value=0, step=1, label="Step", elem_id="step",
                                        info="Or click a token above, or a point on the timeline.")
                with gr.Row():
                    with gr.Column(scale=3):
                        inspector_plot = gr.Plot(elem_id="inspector", show_label=False)
                    with gr.Column(scale=2):
                        sentences_md = gr.Markdown(elem_id="sentences")
                        alts_html = gr.HTML(elem_id="alternatives")
                draw_plot = gr.Plot(elem_id="draw", show_label=False)
                with gr.Tabs():
                    with gr.Tab("Branch"):
                        gr.Markdown("Pick another token at the selected step and continue from there; the earlier "
                                    "tokens stay, the original stays to compare.")
                        with gr.Row():
                            alt_dd = gr.Dropdown([], label="Alternative at the selected step", scale=3, elem_id="alt")
                            branch_btn = gr.Button("Continue from here", scale=1, elem_id="branch")
                        branch_html = gr.HTML(elem_id="branch-view")
                    with gr.Tab("Compare"):
                        gr.Markdown("Run the last prompt with the same seed under the current settings (A) and "
                                    "with these overrides (B), and see where and why the texts part.")
                        with gr.Row():
                            settings_b = gr.Textbox(DEFAULT_SETTINGS_B, label="Settings B: knob overrides (JSON)", scale=3,
                                                    elem_id="settings-b")
                            compare_btn = gr.Button("Compare", scale=1, elem_id="compare")
                        compare_html = gr.HTML(elem_id="compare-view")
                    with gr.Tab("Replay"):
                        gr.Markdown("Redo the selected step with the same random number under another engine's "
                                    "sampler order, and see whether it would have picked another token.")
                        with gr.Row():
                            replay_dd = gr.Dropdown(list(PRESETS), value="llama.cpp", label="Engine order", scale=3,
                                                    elem_id="replay-order")
                            replay_btn = gr.Button("Replay this step", scale=1, elem_id="replay")
                        replay_md = gr.Markdown(elem_id="replay-note")
                        replay_plot = gr.Plot(elem_id="replay-plot", show_label=False)
                    with gr.Tab("View code"):
                        gr.Markdown("The current settings as a request to this server's OpenAI-compatible API "
                                    "(only knobs that differ from the API defaults are sent).")
                        curl_code = gr.Code(language="shell", label="curl", elem_id="curl")
                        python_code = gr.Code(language="python", label="openai Python client", elem_id="python")
                    with gr.Tab("Prompt"):
                        gr.Markdown("The last prompt as the model saw it, after its chat template.")
                        prompt_code = gr.Code(language=None, label="templated prompt", elem_id="prompt")

        knob_controls = [controls[name] for name in UI_KNOBS]
        settings_inputs = [model_dd, system_box, msg_box, history_state, *knob_controls, tools_box, tool_choice_dd, effort_dd,
                           format_radio]
        view_inputs = [runs_state, view_dd, completion_radio, step_slider, mode_radio]
        view_outputs = [token_html, timeline_plot, inspector_plot, sentences_md, alts_html, draw_plot, alt_dd]
        model_events = {"concurrency_limit": MODEL_CONCURRENCY, "concurrency_id": "model"}

        # ---- validation and code snippets, live as settings change ----
        validate_outputs = [*(group_errors[g] for g in GROUPS), bias_md, curl_code, python_code]
        def validate(request: gr.Request, runs, *args):
            ui = Inputs.of(args)
            errors = {g: "" for g in GROUPS}
            preview, body = "", None
            try:
                lm = host.get(ui.model)
                entries = parse_logit_bias(ui.knobs["logit_bias"] or "", _encoder(lm))
                preview = bias_preview(entries, lm.token_text)
                params = collect(ui.knobs, _encoder(lm))
                extras = ui.extras()
                # With the message box empty (just after Generate), show the request that was last sent.
                messages = _conversation(ui.system, ui.history, ui.message)
                if not ui.message.strip() and runs:
                    messages = runs[0]["messages"]
                body = snippets.request_body(params.to_dict(), messages, lm.name, extras)
            except ParamError as e:
                group = KNOBS[e.param].group if e.param in KNOBS else "advanced"
                errors[group] = describe_error(e)
            except KeyError:
                errors["advanced"] = f"⚠️ model {ui.model!r} is not loaded"
            out = [errors[g] for g in GROUPS] + [preview]
            if body is None:
                return out + [gr.skip(), gr.skip()]
            base = _base_url(request)
            return out + [snippets.curl(body, base), snippets.python(body, base)]

        gr.on(
            [c.change for c in settings_inputs if not isinstance(c, gr.State)] + [demo.load],
            validate, [runs_state, *settings_inputs], validate_outputs, trigger_mode="always_last", show_progress="hidden",
        )

        # ---- generate: stream tokens, then keep the run ----
        def generate(request: gr.Request, *args):
            ui = Inputs.of(args)
            try:
                lm = host.get(ui.model)
                params = collect(ui.knobs, _encoder(lm))
                extras = ui.extras()
                if not ui.message.strip():
                    raise ParamError("message", "type a message first")
                messages = _conversation(ui.system, ui.history, ui.message)
                stop = _new_stop(request)
                gen, run = ui_runs.start(lm, messages, params, "Generated", extras, cancel=stop.is_set)
                ticket = ui_runs.submit(host.scheduler(lm.name), gen)
            except ParamError as e:
                yield {run_error: describe_error(e)}
                return
            except Refused as e:
                yield {run_error: f"⚠️ {e.message}"}
                return
            except KeyError:
                yield {run_error: f"⚠️ model {ui.model!r} is not loaded"}
                return
            chat = [*ui.history, {"role": "user", "content": ui.message}, {"role": "assistant", "content": ""}]
            for run in ui_runs.advance(lm, ticket, run):
                chat[-1]["content"] = run["completions"][0]["text"]
                yield {
                    run_error: "",
                    completions: tokenview.completions_html(run["completions"], running=True, waiting=run["waiting"]),
                    token_html: tokenview.token_view_html(run["completions"][0]["steps"], run["texts"]),
                    chatbot: chat,
                }
            steps = run["completions"][0]["steps"]
            n = len(run["completions"])
            yield {
                completions: tokenview.completions_html(run["completions"]),
                runs_state: [run],
                history_state: chat,
                chatbot: chat,
                msg_box: "",
                view_dd: gr.update(choices=_view_choices([run]), value=0),
                completion_radio: gr.update(choices=[str(i + 1) for i in range(n)], value="1"),
                step_slider: gr.update(maximum=max(len(steps) - 1, 1), value=_most_uncertain(steps)),
                prompt_code: lm.tokenizer.decode(run["prompt_ids"]),
            }

        gen_event = gr.on(
            [gen_btn.click, msg_box.submit], generate, settings_inputs,
            [run_error, completions, token_html, chatbot, runs_state, history_state, msg_box, view_dd,
             completion_radio, step_slider, prompt_code],
            **model_events,
        )
        gen_event.then(show, view_inputs, view_outputs, show_progress="hidden").then(
            validate, [runs_state, *settings_inputs], validate_outputs, show_progress="hidden")

        def stop(request: gr.Request):
            event = _stops.get(request.session_hash)
            if event is not None:
                event.set()

        stop_btn.click(stop, None, None, concurrency_limit=None, show_progress="hidden")

        def clear():
            return [], [], ""

        clear_btn.click(clear, None, [history_state, chatbot, run_error])

        # ---- selection: which run, completion and step the pictures show ----
        def pick_view(runs, view):
            if not runs or view is None:
                return gr.skip(), gr.skip()
            comps = runs[view]["completions"]
            steps = comps[0]["steps"]
            return (gr.update(choices=[str(i + 1) for i in range(len(comps))], value="1"),
                    gr.update(maximum=max(len(steps) - 1, 1), value=_most_uncertain(steps)))

        view_dd.input(pick_view, [runs_state, view_dd], [completion_radio, step_slider]).then(
            show, view_inputs, view_outputs, show_progress="hidden")

        def pick_completion(runs, view, completion):
            if not runs or view is None:
                return gr.skip()
            steps = runs[view]["completions"][int(completion) - 1]["steps"]
            return gr.update(maximum=max(len(steps) - 1, 1), value=_most_uncertain(steps))

        completion_radio.input(pick_completion, [runs_state, view_dd, completion_radio], step_slider).then(
            show, view_inputs, view_outputs, show_progress="hidden")

        gr.on([step_slider.change, mode_radio.change], show, view_inputs, view_outputs,
              trigger_mode="always_last", show_progress="hidden")

        def pick_token(evt: gr.EventData):
            return int(evt._data["step"])

        token_html.click(pick_token, None, step_slider, show_progress="hidden")

        # ---- branch: continue from an alternative at the selected step ----
        def branch(runs, view, completion, step, alt_id, request: gr.Request):
            if not runs or view is None:
                yield {branch_html: "<p class='note'>Generate first, then pick a step and an alternative.</p>"}
                return
            if alt_id is None:
                yield {branch_html: "<p class='note'>Pick an alternative token first.</p>"}
                return
            run, c, pos = runs[view], int(completion) - 1, int(step)
            lm = host.get(run["model"])
            label = f"Branch {sum(1 for r in runs if r['branch_of']) + 1}: step {pos} → '{ui_records.token_label(run['texts'], alt_id)}'"
            stop = _new_stop(request)
            try:
                gen, new, prefix_text = ui_runs.branch(lm, run, c, pos, int(alt_id), label, cancel=stop.is_set)
                ticket = None if gen is None else ui_runs.submit(host.scheduler(lm.name), gen)
            except (ParamError, IndexError, Refused) as e:
                yield {branch_html: f"<p class='note'>Cannot branch: {e}</p>"}
                return
            original = run["completions"][c]["steps"]

            def picture(b):
                return tokenview.side_by_side([
                    (f"Original ({run['label']}, completion {c + 1})",
                     tokenview.token_view_html(original, run["texts"], mark=pos, legend=False)),
                    (label, tokenview.token_view_html(b["completions"][0]["steps"], b["texts"], legend=False)),
                ], note=f"Both share the first {pos} tokens; at step {pos} (underlined) the branch takes your token "
                        f"instead of '{ui_records.token_label(run['texts'], original[pos]['token_id'])}'.")

            if ticket is not None:
                for new in ui_runs.advance(lm, ticket, new, prefix_text=prefix_text):
                    yield {branch_html: picture(new)}
            runs = [*runs, new]
            yield {branch_html: picture(new), runs_state: runs, view_dd: gr.update(choices=_view_choices(runs))}

        branch_btn.click(branch, [runs_state, view_dd, completion_radio, step_slider, alt_dd],
                         [branch_html, runs_state, view_dd], **model_events)

        # ---- compare: the same prompt and seed under settings A and B ----
        def compare(request: gr.Request, runs, overrides_text, *args):
            ui = Inputs.of(args)
            try:
                lm = host.get(ui.model)
                params_a = collect(ui.knobs, _encoder(lm))
                overrides = parse_overrides(overrides_text)
                base = runs[0] if runs else None
                prompt_ids = base["prompt_ids"] if base else None
                messages = base["messages"] if base else _conversation(ui.system, ui.history, ui.message)
                tk = base.get("extras", {}) if base else ui.extras()
                if base is None and not ui.message.strip():
                    raise ParamError("message", "type a message (or generate once) to compare on")
                seed = params_a.seed if params_a.seed is not None else (base["params"]["seed"] if base else secrets.randbits(63))
                params_a = params_a.with_(n=1, seed=seed)
                params_b = SamplingParams.build(**{**params_a.to_dict(), **overrides})
                k = sum(1 for r in runs if r["label"].startswith("Compare")) // 2 + 1
                stop = _new_stop(request)
                gen_a, run_a = ui_runs.start(lm, messages, params_a, f"Compare {k} A", tk, stop.is_set, prompt_ids)
                gen_b, run_b = ui_runs.start(lm, messages, params_b, f"Compare {k} B", tk, stop.is_set, run_a["prompt_ids"])
                # Both at once: they share the model's batch, and B's steps wait in its ticket while A is shown.
                scheduler = host.scheduler(lm.name)
                ticket_a = ui_runs.submit(scheduler, gen_a)
                try:
                    ticket_b = ui_runs.submit(scheduler, gen_b)
                except Refused:
                    ticket_a.cancel()
                    raise
            except ParamError as e:
                yield {compare_html: f"<p class='note'>{describe_error(e).replace('**', '')}</p>"}
                return
            except Refused as e:
                yield {compare_html: f"<p class='note'>{e.message}</p>"}
                return
            except KeyError:
                yield {compare_html: f"<p class='note'>model {ui.model!r} is not loaded</p>"}
                return
            a_dict, b_dict = params_a.to_dict(), params_b.to_dict()
            diff = ", ".join(f"{name} {a_dict[name]} → {b_dict[name]}" for name in b_dict if a_dict[name] != b_dict[name]) or "nothing"
            for _ in ui_runs.advance(lm, ticket_a, run_a):
                yield {compare_html: tokenview.side_by_side([("A", tokenview.completions_html(run_a["completions"], True))],
                                                            note=f"Seed {seed}. B changes: {diff}. Running A…")}
            for _ in ui_runs.advance(lm, ticket_b, run_b):
                yield {compare_html: tokenview.side_by_side(
                    [("A", tokenview.completions_html(run_a["completions"])), ("B", tokenview.completions_html(run_b["completions"], True))],
                    note=f"Seed {seed}. B changes: {diff}. Running B…")}
            a, b = run_a["completions"][0]["steps"], run_b["completions"][0]["steps"]
            texts = {**run_a["texts"], **run_b["texts"]}
            where = ui_records.first_divergence(a, b)
            why = ui_records.explain_divergence(a, b, texts)
            html = tokenview.side_by_side(
                [(f"A: current settings ({run_a['completions'][0]['finish_reason']}, {len(a)} tokens)", tokenview.token_view_html(a, texts, mark=where, legend=False)),
                 (f"B: {diff} ({run_b['completions'][0]['finish_reason']}, {len(b)} tokens)", tokenview.token_view_html(b, texts, mark=where, legend=False))],
                note=f"Seed {seed}, same prompt. {why}",
            )
            runs = [*runs, run_a, run_b]
            yield {compare_html: html, runs_state: runs, view_dd: gr.update(choices=_view_choices(runs))}

        compare_btn.click(compare, [runs_state, settings_b, *settings_inputs], [compare_html, runs_state, view_dd], **model_events)

        # ---- replay: the selected step under another engine's order ----
        def replay(runs, view, completion, step, preset, request: gr.Request):
            if not runs or view is None:
                yield {replay_md: "Generate first, then pick a step."}
                return
            run, c, pos = runs[view], int(completion) - 1, int(step)
            lm = host.get(run["model"])
            order = PRESETS[preset]
            stop = _new_stop(request)
            try:
                gens = ui_runs.replay(lm, run, c, pos, [tuple(run["params"]["sampler_order"]), order], cancel=stop.is_set)
                scheduler = host.scheduler(lm.name)
                tickets = [ui_runs.submit(scheduler, g) for g in gens]
            except (ParamError, IndexError, Refused) as e:
                yield {replay_md: f"Cannot replay: {e}"}
                return
            yield {replay_md: f"Replaying step {pos}…"}
            for ticket in tickets:
                for _ in ticket:
                    pass
            if any(not g.completions[0] for g in gens):
                yield {replay_md: "Replay stopped."}
                return
            texts = dict(run["texts"])
            mine, other = (ui_runs.replayed_step(lm, g, texts) for g in gens)
            recorded = run["completions"][c]["steps"][pos]
            note = ui_records.explain_replay(recorded, mine, other, texts, preset)
            params = {**run["params"], "sampler_order": list(order)}
            yield {replay_md: f"**Step {pos}**: {note}", replay_plot: figures.inspector_figure(other, texts, params)}

        replay_btn.click(replay, [runs_state, view_dd, completion_radio, step_slider, replay_dd], [replay_md, replay_plot],
                         **model_events)

        # ---- settings helpers ----
        def reset():
            values = [control_spec(KNOBS[name]).value for name in UI_KNOBS]
            return [*values, list(ORDER_PRESETS)[0], "", "auto", "none", "text"]

        reset_btn.click(reset, None, [*knob_controls, order_preset, tools_box, tool_choice_dd, effort_dd, format_radio])
        order_preset.input(lambda p: ", ".join(ORDER_PRESETS[p]), order_preset, controls["sampler_order"])

        # ---- models ----
        def load(name, progress=gr.Progress()):
            name = (name or "").strip()
            if not name:
                return gr.skip(), "⚠️ Type a Hugging Face model id or a local folder to load."
            said = []

            def say(message):
                said.append(message)
                progress((len(said), None), desc=message)

            try:
                lm = host.load(name, progress=say)
            except Exception as e:  # offline Hub, missing folder, unsupported model: say so, keep going
                return gr.skip(), f"⚠️ Could not load `{name}`: {type(e).__name__}: {e}"
            return gr.update(choices=host.names(), value=lm.name), model_info(lm)

        # Its own queue slot: a Hub load can take minutes (or retry for a while offline) without holding up generation.
        load_btn.click(load, load_box, [model_dd, model_md], concurrency_limit=1, concurrency_id="load")
        model_dd.change(lambda name: model_info(host.get(name)), model_dd, model_md)
        model_dd.change(lambda name: gr.update(value="none", **_effort_state(host.get(name))), model_dd, effort_dd)

    demo.queue(default_concurrency_limit=8, max_size=64)
    return demo


def _effort_state(lm: LoadedModel) -> dict[str, Any]:
    """reasoning_effort only works where the chat template can think; elsewhere the control says why."""
    if supports_thinking(lm):
        return {"interactive": True, "info": REQUEST_KNOBS["reasoning_effort"].help}
    return {"interactive": False,
            "info": f"Disabled: {lm.name}'s chat template has no <think> section, so there is no thinking to budget."}


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


def show(runs: list[dict], view: int | None, completion: str, step: float, mode: str):
    """Everything drawn for the selected run, completion and step (token view, charts, alternatives)."""
    if not runs or view is None or view >= len(runs):
        return [tokenview.token_view_html([], {}), None, None, "", "", None, gr.update(choices=[], value=None)]
    run = runs[view]
    c = min(max(int(completion or 1) - 1, 0), len(run["completions"]) - 1)
    steps = run["completions"][c]["steps"]
    if not steps:
        return [tokenview.token_view_html([], {}), None, None, "", "", None, gr.update(choices=[], value=None)]
    i = min(max(int(step or 0), 0), len(steps) - 1)
    s, texts, params = steps[i], run["texts"], run["params"]
    sentences = "\n".join(f"- {line}" for line in figures.stage_sentences(s, texts, params))
    alts = [a for a in ui_records.alternatives(s, texts) if not a["chosen"]]
    choices = [(f"'{ui_records.visible(a['text'])}'  raw {a['raw']:.3f} → final {a['final']:.3f}", a["id"]) for a in alts]
    return [
        tokenview.token_view_html(steps, texts, mode, selected=i),
        figures.timeline_figure(steps, texts, selected=i),
        figures.inspector_figure(s, texts, params),
        f"**Step {i}** of {run['label']}, completion {c + 1}:\n\n" + sentences,
        tokenview.alternatives_html(s, texts),
        figures.draw_figure(s, texts),
        gr.update(choices=choices, value=choices[0][1] if choices else None),
    ]
