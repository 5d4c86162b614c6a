"""What the UI does on each event: module-level functions of plain values, tested without a browser.

Each handler takes named values (the settings as `Inputs`, the session's runs, the selected view, ...)
and returns, or yields while it streams, a dict {output name: value}; playground/ui.py binds the names
to components. Gradio appears only as gr.update / gr.skip for choices and untouched outputs.
"""

from __future__ import annotations

import contextlib
import secrets
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import parse_qsl

import gradio as gr

from engine.knobs import KNOBS, REQUEST_KNOBS, ParamError, SamplingParams
from engine.model import LoadedModel
from engine.reasoning import supports_thinking
from engine.scheduler import Refused
from engine.stages import PRESETS
from playground import figures, runfile, share, snippets, sweeps, tokenview, ui_records, ui_runs, ui_stream
from playground.models import ModelHost, ModelMissing
from playground.ui_settings import (
    GROUPS,
    ORDER_PRESETS,
    UI_KNOBS,
    bias_preview,
    collect,
    control_spec,
    control_values,
    describe_error,
    parse_logit_bias,
    parse_overrides,
    request_extras,
)

Out = dict[str, Any]
SETTINGS = ("model", "system", "message", "history", *UI_KNOBS, "tools", "tool_choice", "reasoning_effort", "response_format")
# The what-if's own charts, hidden while they would repeat the recorded step's. Each is shown or hidden by
# itself, not through the column around them: a layout block among an event's outputs costs the page a walk
# of all it holds at each later status update of any event (Gradio 6's frontend, playground/ui_stream.py).
WHATIF_CHARTS = ("whatif_sentences", "whatif_plot", "whatif_draw")
EXTRA_CONTROLS = ("order_preset", "tools", "tool_choice", "reasoning_effort", "response_format")


@dataclass
class Inputs:
    """The settings side of the page: model, conversation, every knob's control value, request extras."""

    model: str
    system: str
    message: str
    history: list[dict]
    knobs: dict[str, Any]
    tools: str = ""
    tool_choice: str = "none"
    reasoning_effort: str | None = None
    response_format: str = "text"

    @classmethod
    def of(cls, values: dict[str, Any]) -> "Inputs":
        effort = values.get("reasoning_effort")
        return cls(values.get("model") or "", values.get("system") or "", values.get("message") or "",
                   values.get("history") or [], {name: values.get(name) for name in UI_KNOBS},
                   values.get("tools") or "", values.get("tool_choice") or "none",
                   effort if effort and effort != "none" else None, values.get("response_format") or "text")

    def extras(self) -> dict[str, Any]:
        return request_extras(self.tools, self.tool_choice, self.reasoning_effort, self.response_format)

    def conversation(self) -> list[dict]:
        msgs = [{"role": "system", "content": self.system}] if self.system.strip() else []
        msgs += [{"role": m["role"], "content": m["content"]} for m in self.history]
        if self.message.strip():
            msgs.append({"role": "user", "content": self.message})
        return msgs


class Stops:
    """One Stop flag per run. The Stop button sets the flags of every run its session has going; a run
    that ends takes its flag away."""

    def __init__(self):
        self._flags: dict[str, set[threading.Event]] = {}
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def run(self, session: str) -> Iterator[threading.Event]:
        flag = threading.Event()
        with self._lock:
            self._flags.setdefault(session, set()).add(flag)
        try:
            yield flag
        finally:
            with self._lock:
                flags = self._flags.get(session, set())
                flags.discard(flag)
                if not flags:
                    self._flags.pop(session, None)

    def stop(self, session: str) -> int:
        """Stop the session's running runs; how many there were."""
        with self._lock:
            flags = list(self._flags.get(session, ()))
        for flag in flags:
            flag.set()
        return len(flags)

    def running(self, session: str) -> int:
        with self._lock:
            return len(self._flags.get(session, ()))


# --- small helpers ------------------------------------------------------------------------------------


def model_info(lm: LoadedModel) -> str:
    return (
        f"**{lm.name}** · {lm.source} · {lm.device} · {str(lm.dtype).removeprefix('torch.')} · "
        f"context {lm.context_length} tokens · vocabulary {lm.vocab_size} · loaded in {lm.load_seconds:.1f} s"
    )


def effort_state(lm: LoadedModel) -> dict[str, Any]:
    """reasoning_effort only works where the chat template can think; elsewhere the control says why."""
    if supports_thinking(lm):
        return {"interactive": True, "info": REQUEST_KNOBS["reasoning_effort"].help}
    return {"interactive": False,
            "info": f"Disabled: {lm.name}'s chat template has no <think> section, so there is no thinking to budget."}


def _encoder(lm: LoadedModel):
    return lambda text: lm.tokenizer.encode(text, add_special_tokens=False)


def view_choices(runs: list[dict]) -> list[tuple[str, int]]:
    return [(r["label"], i) for i, r in enumerate(runs)]


def most_uncertain(steps: list[dict]) -> int:
    """The step where the raw distribution was widest: where sampling settings matter most."""
    return max(range(len(steps)), key=lambda i: steps[i]["stages"][0]["entropy"]) if steps else 0


def origin_of(headers: Any) -> str:
    host = headers.get("x-forwarded-host") or headers.get("host") or "127.0.0.1:7860"
    scheme = headers.get("x-forwarded-proto") or "http"
    return f"{scheme}://{host}"


def _selected(runs: list[dict], view: Any, completion: Any, step: Any) -> tuple[dict, int, int]:
    """(run, completion index, step index) of the selection; ValueError with what to do first."""
    if not runs or view is None or int(view) >= len(runs):
        raise ValueError("Generate (or load a run) first, then pick a step.")
    run = runs[int(view)]
    c = min(max(int(completion or 1) - 1, 0), len(run["completions"]) - 1)
    steps = run["completions"][c]["steps"]
    if not steps:
        raise ValueError("This completion has no steps.")
    return run, c, min(max(int(step or 0), 0), len(steps) - 1)


def _prompt(ui: Inputs, runs: list[dict]) -> tuple[list[dict], list[int] | None, dict]:
    """The conversation to run again (Compare, sweeps): the last run's exact prompt, else the message box."""
    base = runs[0] if runs and runs[0].get("prompt_ids") else None
    if base is not None:
        return base["messages"], base["prompt_ids"], base.get("extras", {})
    if not ui.message.strip():
        raise ParamError("message", "type a message (or generate once) first")
    return ui.conversation(), None, ui.extras()


# --- settings: validation, code snippets, reset, share links -----------------------------------------


def validate(host: ModelHost, ui: Inputs, runs: list[dict], origin: str = "http://127.0.0.1:7860") -> Out:
    errors = {g: "" for g in GROUPS}
    out: Out = {}
    try:
        lm = host.get(ui.model)
        entries = parse_logit_bias(ui.knobs["logit_bias"] or "", _encoder(lm))
        out["bias_preview"] = bias_preview(entries, lm.token_text)
        params = collect(ui.knobs, _encoder(lm))
        extras = ui.extras()
        # With the message box empty (just after Generate), show the request that was last sent.
        messages = ui.conversation()
        if not ui.message.strip() and runs:
            messages = runs[0]["messages"]
        body = snippets.request_body(params.to_dict(), messages, lm.name, extras)
        out["curl"], out["python"] = snippets.curl(body, origin + "/v1"), snippets.python(body, origin + "/v1")
    except ParamError as e:
        group = KNOBS[e.param].group if e.param in KNOBS else "advanced"
        errors[group] = describe_error(e)
    except KeyError:
        errors["advanced"] = f"⚠️ model {ui.model!r} is not loaded"
    return {**out, **{f"error_{g}": errors[g] for g in GROUPS}}


def reset() -> Out:
    out: Out = {name: control_spec(KNOBS[name]).value for name in UI_KNOBS}
    return {**out, "order_preset": list(ORDER_PRESETS)[0], "tools": "", "tool_choice": "auto", "reasoning_effort": "none",
            "response_format": "text"}


def pick_order(preset: str) -> Out:
    return {"sampler_order": ", ".join(ORDER_PRESETS[preset])}


def share_link(ui: Inputs, origin: str) -> Out:
    fields = {"model": ui.model, "system": ui.system, "message": ui.message}
    query = share.query(fields, ui.knobs)
    return {"share_url": f"{origin}/?{query}" if query else f"{origin}/"}


def apply_link(host: ModelHost, query: str) -> Out:
    """A shared link's settings and prompt onto the page (`query`: the page's query string, "?" and all);
    what cannot be applied is said, not applied."""
    link = dict(parse_qsl(query.removeprefix("?"), keep_blank_values=True))
    if not link:
        return {}
    fields, controls, problems = share.parse(link)
    out: Out = dict(controls)
    if "message" in fields:
        out["message"] = fields["message"]
    if "system" in fields:
        out["system"] = fields["system"]
    if "model" in fields:
        if fields["model"] in host.names():
            out["model"] = fields["model"]
        else:
            problems.append(f"model {fields['model']!r} is not loaded here; kept {host.default}")
    applied = len(controls) + len(fields) - (0 if "model" not in fields or "model" in out else 1)
    note = f"Restored {applied} setting{'s' * (applied != 1)} from the link."
    if problems:
        note += " Not applied: " + "; ".join(problems) + "."
    return {**out, "link_note": note}


# --- generating ---------------------------------------------------------------------------------------


def generate(host: ModelHost, stops: Stops, ui: Inputs, session: str) -> Iterator[Out]:
    """Stream a run into the completions and the token view, then keep it: its last message is the
    finished run, selected (`finished_run`), which the page then draws (playground/ui.py's `_draw_step`).

    While it runs, Gradio carries nothing: the two views are a tokenview.LiveRun, which the page reads
    from the run's ui_stream channel (Gradio's per-update cost grows with the page, playground/ui_stream.py
    says how). An update costs what it adds, whatever the completion's length."""
    try:
        lm = host.get(ui.model)
        params = collect(ui.knobs, _encoder(lm))
        extras = ui.extras()
        if not ui.message.strip():
            raise ParamError("message", "type a message first")
    except ParamError as e:
        yield {"run_error": describe_error(e)}
        return
    except KeyError as e:  # ModelMissing says why (another session's, or let go)
        yield {"run_error": f"⚠️ {e}" if isinstance(e, ModelMissing) else f"⚠️ model {ui.model!r} is not loaded"}
        return
    with stops.run(session) as stop:
        try:
            gen, run = ui_runs.start(lm, ui.conversation(), params, "Generated", extras, cancel=stop.is_set, capture=True)
            ticket = ui_runs.submit(host.scheduler(lm.name), gen, session)
        except ParamError as e:
            yield {"run_error": describe_error(e)}
            return
        except Refused as e:
            yield {"run_error": f"⚠️ {e.message}"}
            return
        live = tokenview.LiveRun(len(run["completions"]))
        with ui_stream.CHANNELS.open(live) as channel:
            yield {"run_error": "", **channel.page_values()}  # the page reads the rest from the channel
            for run in ui_runs.advance(lm, ticket, run):
                live.update(run["completions"], run["texts"], run["waiting"], run.get("reading"))
    chat = [*ui.history, {"role": "user", "content": ui.message}, {"role": "assistant", "content": run["completions"][0]["text"]}]
    # The token view keeps its stream until `show` draws the finished run (a skip here: the event's last
    # message carries every output's last value whole, and the stream is the largest).
    yield {"run_error": "", "completions": tokenview.completions_html(run["completions"]), **finished_run(lm, run, chat)}


def finished_run(lm: LoadedModel, run: dict, chat: list[dict]) -> Out:
    """A finished run kept and selected: the chat, an empty message box, the run at its most uncertain
    step, and its templated prompt. Sent with the run's last message rather than by an event of its own:
    each event costs the page a refresh of every component's loading status."""
    steps = run["completions"][0]["steps"]
    return {
        "runs": [run],
        "history": chat,
        "chat": chat,
        "message": "",
        "view": gr.update(choices=view_choices([run]), value=0),
        "completion": gr.update(choices=[str(i + 1) for i in range(len(run["completions"]))], value="1"),
        "step": gr.update(maximum=max(len(steps) - 1, 1), value=most_uncertain(steps)),
        "prompt": lm.tokenizer.decode(run["prompt_ids"]),
    }


def stop(stops: Stops, session: str) -> Out:
    stops.stop(session)
    return {}


def clear() -> Out:
    return {"history": [], "chat": [], "run_error": ""}


# --- selection and what is drawn for it ----------------------------------------------------------------


def pick_view(runs: list[dict], view: Any) -> Out:
    if not runs or view is None:
        return {}
    comps = runs[int(view)]["completions"]
    steps = comps[0]["steps"]
    return {"completion": gr.update(choices=[str(i + 1) for i in range(len(comps))], value="1"),
            "step": gr.update(maximum=max(len(steps) - 1, 1), value=most_uncertain(steps))}


def pick_completion(runs: list[dict], view: Any, completion: Any) -> Out:
    if not runs or view is None:
        return {}
    steps = runs[int(view)]["completions"][int(completion) - 1]["steps"]
    return {"step": gr.update(maximum=max(len(steps) - 1, 1), value=most_uncertain(steps))}


EMPTY_VIEW: Out = {"tokens": tokenview.token_view_html([], {}), "timeline": None, "inspector": None, "sentences": "",
                   "alternatives": "", "draw": None, "alt": gr.update(choices=[], value=None)}


def show(runs: list[dict], view: Any, completion: Any, step: Any, mode: str) -> Out:
    """Everything drawn for the selected run, completion and step (token view, charts, alternatives)."""
    try:
        run, c, i = _selected(runs, view, completion, step)
    except ValueError:
        return dict(EMPTY_VIEW)
    steps = run["completions"][c]["steps"]
    s, texts, params = steps[i], run["texts"], run["params"]
    sentences = "\n".join(f"- {line}" for line in figures.stage_sentences(s, texts, params))
    alts = [a for a in ui_records.alternatives(s, texts) if not a["chosen"]]
    choices = [(f"'{ui_records.visible(a['text'])}'  raw {a['raw']:.3f} → final {a['final']:.3f}", a["id"]) for a in alts]
    return {
        "tokens": tokenview.token_view_html(steps, texts, mode or tokenview.MODES[0], selected=i),
        "timeline": figures.timeline_figure(steps, texts, selected=i),
        "inspector": figures.inspector_figure(s, texts, params),
        "sentences": f"**Step {i}** of {run['label']}, completion {c + 1}:\n\n" + sentences,
        "alternatives": tokenview.alternatives_html(s, texts),
        "draw": figures.draw_figure(s, texts),
        "alt": gr.update(choices=choices, value=choices[0][1] if choices else None),
    }


# --- live what-if and the penalty ledger -----------------------------------------------------------------


def what_if(host: ModelHost, stops: Stops, ui: Inputs, runs: list[dict], view: Any, completion: Any, step: Any,
            live: bool, session: str) -> Iterator[Out]:
    """The selected step sampled again under the current settings, from its exact raw logits (replayed
    once per completion and cached), with the penalty ledger. No generation: the step only."""
    if not live:
        return
    try:
        run, c, pos = _selected(runs, view, completion, step)
    except ValueError as e:
        yield {"whatif_note": str(e)}
        return
    if not run.get("prompt_ids"):
        yield {"whatif_note": "This run holds no prompt (an API response): what-if needs the prompt to recompute the step."}
        return
    try:
        lm = host.get(run["model"])
        params = collect(ui.knobs, _encoder(lm))
    except KeyError:
        yield {"whatif_note": f"What-if needs the run's model, {run['model']!r}, which is not loaded here."}
        return
    except ParamError as e:
        yield {"whatif_note": describe_error(e)}
        return
    scheduler = host.scheduler(lm.name)
    snap = ui_runs.cached_snapshot(lm, run, c, pos)
    if snap is None:
        yield {"whatif_note": f"Getting step {pos}'s exact logits: replaying the {pos} earlier token{'s' * (pos != 1)} "
                              "of this completion once (cached afterwards)…"}
        with stops.run(session) as flag:
            try:
                snap = ui_runs.snapshot(lm, scheduler, run, c, pos, cancel=flag.is_set, session=session)
            except (Refused, ParamError) as e:
                yield {"whatif_note": f"Cannot recompute this step: {getattr(e, 'message', e)}"}
                return
        if snap is None:
            yield {"whatif_note": "Stopped."}
            return
    out = ui_runs.what_if(lm, scheduler, snap, run, c, pos, params)
    recorded, shown = run["completions"][c]["steps"][pos], out["step"]
    texts = out["texts"]
    theirs = run["params"]
    mine = {**out["params"], "seed": theirs.get("seed")}
    changes = [f"{k} {theirs.get(k)} → {v}" for k, v in mine.items() if theirs.get(k) != v and k not in ("n", "seed", "logprobs", "top_logprobs", "max_tokens", "stop")]
    note = f"**Step {pos}**: " + ui_records.explain_what_if(recorded, shown, texts, changes)
    ledger = tokenview.ledger_html(out["ledger"], [s["name"] for s in shown["stages"]])
    if not changes and shown["token_id"] == recorded["token_id"]:
        # The step as recorded and drawn above (the same token and draw, tested): its charts again would cost
        # each page two more plotly drawings after every run, for nothing new.
        yield {"whatif_note": note + " Move a setting to see it sampled again under that.", "ledger": ledger,
               **{k: gr.update(visible=False) for k in WHATIF_CHARTS}}
        return
    yield {
        "whatif_note": note,
        "whatif_sentences": gr.update(visible=True, value="\n".join(
            f"- {line}" for line in figures.stage_sentences(shown, texts, out["params"]))),
        "whatif_plot": gr.update(visible=True, value=figures.inspector_figure(shown, texts, out["params"])),
        "whatif_draw": gr.update(visible=True, value=figures.draw_figure(shown, texts)),
        "ledger": ledger,
    }


def continue_here(host: ModelHost, stops: Stops, ui: Inputs, runs: list[dict], view: Any, completion: Any, step: Any,
                  session: str) -> Iterator[Out]:
    """Branch from the selected step under the current settings: the step is drawn anew (what the
    what-if showed), then the completion goes on."""
    try:
        run, c, pos = _selected(runs, view, completion, step)
        if not run.get("prompt_ids"):
            raise ValueError("This run holds no prompt (an API response): it cannot be continued.")
        lm = host.get(run["model"])
        params = collect(ui.knobs, _encoder(lm))
    except ValueError as e:  # ParamError is one
        yield {"whatif_branch": f"<p class='note'>{describe_error(e) if isinstance(e, ParamError) else e}</p>"}
        return
    except KeyError:
        yield {"whatif_branch": f"<p class='note'>model {run['model']!r} is not loaded</p>"}
        return
    label = f"What-if {sum(1 for r in runs if r['label'].startswith('What-if')) + 1}: step {pos} on"
    with stops.run(session) as flag:
        try:
            gen, new, prefix_text = ui_runs.continue_with(lm, run, c, pos, params, label, cancel=flag.is_set)
            ticket = ui_runs.submit(host.scheduler(lm.name), gen, session)
        except (ParamError, Refused) as e:
            yield {"whatif_branch": f"<p class='note'>Cannot continue: {e.message}</p>"}
            return
        note = (f"Both share the first {pos} tokens; from step {pos} (underlined) on, the current settings decide, "
                "with the same random numbers.")

        def picture(b: dict) -> str:
            return _beside_original(run, c, pos, label, b, note, mark_new=True)

        for new in ui_runs.advance(lm, ticket, new, prefix_text=prefix_text):
            yield {"whatif_branch": picture(new)}
    runs = [*runs, new]
    yield {"whatif_branch": picture(new), "runs": runs, "view": gr.update(choices=view_choices(runs))}


def _beside_original(run: dict, c: int, pos: int, label: str, new: dict, note: str, mark_new: bool) -> str:
    """A run that continues completion c of `run` from step `pos`, next to that completion."""
    original = run["completions"][c]["steps"]
    return tokenview.side_by_side([
        (f"Original ({run['label']}, completion {c + 1})", tokenview.token_view_html(original, run["texts"], mark=pos, legend=False)),
        (label, tokenview.token_view_html(new["completions"][0]["steps"], new["texts"], mark=pos if mark_new else None,
                                          legend=False)),
    ], note=note)


# --- branch, compare, replay ---------------------------------------------------------------------------


def branch(host: ModelHost, stops: Stops, runs: list[dict], view: Any, completion: Any, step: Any, alt: Any,
           session: str) -> Iterator[Out]:
    try:
        run, c, pos = _selected(runs, view, completion, step)
    except ValueError:
        yield {"branch_view": "<p class='note'>Generate first, then pick a step and an alternative.</p>"}
        return
    if alt is None:
        yield {"branch_view": "<p class='note'>Pick an alternative token first.</p>"}
        return
    try:
        lm = host.get(run["model"])
    except KeyError:
        yield {"branch_view": f"<p class='note'>model {run['model']!r} is not loaded</p>"}
        return
    label = f"Branch {sum(1 for r in runs if r['branch_of']) + 1}: step {pos} → '{ui_records.token_label(run['texts'], int(alt))}'"
    with stops.run(session) as flag:
        try:
            gen, new, prefix_text = ui_runs.branch(lm, run, c, pos, int(alt), label, cancel=flag.is_set)
            ticket = None if gen is None else ui_runs.submit(host.scheduler(lm.name), gen, session)
        except (ParamError, IndexError, Refused) as e:
            yield {"branch_view": f"<p class='note'>Cannot branch: {e}</p>"}
            return
        was = ui_records.token_label(run["texts"], run["completions"][c]["steps"][pos]["token_id"])
        note = f"Both share the first {pos} tokens; at step {pos} (underlined) the branch takes your token instead of '{was}'."

        def picture(b: dict) -> str:
            return _beside_original(run, c, pos, label, b, note, mark_new=False)

        if ticket is not None:
            for new in ui_runs.advance(lm, ticket, new, prefix_text=prefix_text):
                yield {"branch_view": picture(new)}
    runs = [*runs, new]
    yield {"branch_view": picture(new), "runs": runs, "view": gr.update(choices=view_choices(runs))}


def compare(host: ModelHost, stops: Stops, ui: Inputs, runs: list[dict], overrides: str, session: str) -> Iterator[Out]:
    with stops.run(session) as flag:
        try:
            lm = host.get(ui.model)
            params_a = collect(ui.knobs, _encoder(lm))
            changes = parse_overrides(overrides)
            messages, prompt_ids, extras = _prompt(ui, runs)
            seed = params_a.seed if params_a.seed is not None else (runs[0]["params"]["seed"] if runs else secrets.randbits(63))
            params_a = params_a.with_(n=1, seed=seed)
            params_b = SamplingParams.build(**{**params_a.to_dict(), **changes})
            k = sum(1 for r in runs if r["label"].startswith("Compare")) // 2 + 1
            gen_a, run_a = ui_runs.start(lm, messages, params_a, f"Compare {k} A", extras, flag.is_set, prompt_ids, capture=True)
            gen_b, run_b = ui_runs.start(lm, messages, params_b, f"Compare {k} B", extras, flag.is_set, run_a["prompt_ids"],
                                         capture=True)
            # Both at once: they share the model's batch, and B's steps wait in its ticket while A is shown.
            scheduler = host.scheduler(lm.name)
            ticket_a = ui_runs.submit(scheduler, gen_a, session)
            try:
                ticket_b = ui_runs.submit(scheduler, gen_b, session)
            except Refused:
                ticket_a.cancel()
                raise
        except ParamError as e:
            yield {"compare_view": f"<p class='note'>{describe_error(e).replace('**', '')}</p>"}
            return
        except Refused as e:
            yield {"compare_view": f"<p class='note'>{e.message}</p>"}
            return
        except KeyError:
            yield {"compare_view": f"<p class='note'>model {ui.model!r} is not loaded</p>"}
            return
        a_dict, b_dict = params_a.to_dict(), params_b.to_dict()
        diff = ", ".join(f"{name} {a_dict[name]} → {b_dict[name]}" for name in b_dict if a_dict[name] != b_dict[name]) or "nothing"
        for _ in ui_runs.advance(lm, ticket_a, run_a):
            yield {"compare_view": tokenview.side_by_side([("A", tokenview.completions_html(run_a["completions"], True))],
                                                          note=f"Seed {seed}. B changes: {diff}. Running A…")}
        for _ in ui_runs.advance(lm, ticket_b, run_b):
            yield {"compare_view": tokenview.side_by_side(
                [("A", tokenview.completions_html(run_a["completions"])), ("B", tokenview.completions_html(run_b["completions"], True))],
                note=f"Seed {seed}. B changes: {diff}. Running B…")}
    a, b = run_a["completions"][0]["steps"], run_b["completions"][0]["steps"]
    texts = {**run_a["texts"], **run_b["texts"]}
    where = ui_records.first_divergence(a, b)
    html = tokenview.side_by_side(
        [(f"A: current settings ({run_a['completions'][0]['finish_reason']}, {len(a)} tokens)", tokenview.token_view_html(a, texts, mark=where, legend=False)),
         (f"B: {diff} ({run_b['completions'][0]['finish_reason']}, {len(b)} tokens)", tokenview.token_view_html(b, texts, mark=where, legend=False))],
        note=f"Seed {seed}, same prompt. {ui_records.explain_divergence(a, b, texts)}",
    )
    runs = [*runs, run_a, run_b]
    yield {"compare_view": html, "runs": runs, "view": gr.update(choices=view_choices(runs))}


def replay(host: ModelHost, stops: Stops, runs: list[dict], view: Any, completion: Any, step: Any, preset: str,
           session: str) -> Iterator[Out]:
    try:
        run, c, pos = _selected(runs, view, completion, step)
        if not run.get("prompt_ids"):
            raise ValueError("This run holds no prompt (an API response): it cannot be replayed.")
        lm = host.get(run["model"])
    except ValueError as e:
        yield {"replay_note": str(e)}
        return
    except KeyError:
        yield {"replay_note": f"model {run['model']!r} is not loaded"}
        return
    order = PRESETS[preset]
    with stops.run(session) as flag:
        try:
            gens = ui_runs.replay(lm, run, c, pos, [tuple(run["params"]["sampler_order"]), order], cancel=flag.is_set)
            scheduler = host.scheduler(lm.name)
            tickets = [ui_runs.submit(scheduler, g, session) for g in gens]
        except (ParamError, IndexError, Refused) as e:
            yield {"replay_note": f"Cannot replay: {e}"}
            return
        yield {"replay_note": f"Replaying step {pos}…"}
        for ticket in tickets:
            for _ in ticket:
                pass
    if any(not g.completions[0] for g in gens):
        yield {"replay_note": "Replay stopped."}
        return
    texts = dict(run["texts"])
    mine, other = (ui_runs.replayed_step(lm, g, texts) for g in gens)
    note = ui_records.explain_replay(run["completions"][c]["steps"][pos], mine, other, texts, preset)
    params = {**run["params"], "sampler_order": list(order)}
    yield {"replay_note": f"**Step {pos}**: {note}", "replay_plot": figures.inspector_figure(other, texts, params)}


# --- knob sweeps -----------------------------------------------------------------------------------------


def sweep(host: ModelHost, stops: Stops, ui: Inputs, runs: list[dict], knob: str, start: float, end: float,
          count: Any, samples: Any, tokens: Any, session: str, knob2: str | None = None, start2: float = 0.0,
          end2: float = 1.0, count2: Any = 3) -> Iterator[Out]:
    """Generate `samples` texts per value of `knob` over [start, end] (and per value of `knob2` over
    [start2, end2], for a heatmap), all in the model's shared batch with one seed, so points differ by the
    knobs alone; plot the metrics of playground/sweeps.py."""
    if isinstance(tokens, float) and tokens.is_integer():
        tokens = int(tokens)
    knob2 = None if knob2 in (None, "", "none") else knob2
    try:
        lm = host.get(ui.model)
        k = sweeps.check_samples(samples)
        values = sweeps.sweep_values(knob, float(start), float(end), count)
        values2 = sweeps.sweep_values(knob2, float(start2), float(end2), count2) if knob2 else None
        points = sweeps.grid(knob, values, knob2, values2, k)
        base = collect({**ui.knobs, "max_tokens": tokens, "n": 1}, _encoder(lm))
        messages, prompt_ids, extras = _prompt(ui, runs)
        seed = base.seed if base.seed is not None else secrets.randbits(63)
        jobs = []
        for point in points:
            params = SamplingParams.build(**{**base.to_dict(), **point, "n": k, "seed": seed})
            jobs.append(ui_runs.start(lm, messages, params, sweeps.label(point), extras, None, prompt_ids))
    except ParamError as e:
        yield {"sweep_status": f"<p class='note'>{describe_error(e).replace('**', '')}</p>"}
        return
    except (TypeError, ValueError):
        yield {"sweep_status": "<p class='note'>⚠️ sweep from, to, values and samples must be numbers</p>"}
        return
    except KeyError:
        yield {"sweep_status": f"<p class='note'>model {ui.model!r} is not loaded</p>"}
        return
    total = sum(gen.params.n * gen.max_tokens for gen, _ in jobs)
    with stops.run(session) as flag:
        for gen, _ in jobs:
            gen.cancel = flag.is_set
        try:
            for made in ui_runs.run_many(lm, host.scheduler(lm.name), jobs, session=session):
                done = sum(1 for _, r in jobs for c in r["completions"] if c["finish_reason"])
                yield {"sweep_status": tokenview.progress_html(made, total, f"{done} of {len(jobs) * k} samples done "
                                                                            f"({made} tokens)")}
        except Refused as e:
            yield {"sweep_status": f"<p class='note'>{e.message}</p>"}
            return
    eos = lm.eos_ids
    result = [{"settings": point, "samples": k, "metrics": sweeps.metrics(r["completions"], eos),
               "texts": [c["text"] for c in r["completions"]]} for point, (_, r) in zip(points, jobs)]
    stopped = any(c["finish_reason"] == "cancelled" for _, r in jobs for c in r["completions"])
    shape = f"{len(values)} values" if not knob2 else f"{len(values)} × {len(values2)} values of {knob} × {knob2}"
    name = f"sweep-{knob}" + (f"-{knob2}" if knob2 else "") + ".csv"
    yield {
        "sweep_status": tokenview.progress_html(1, 1, f"{'Stopped: ' if stopped else ''}{shape} × {k} sample{'s' * (k != 1)}, seed {seed}."),
        "sweep_plot": figures.sweep_figure(result),
        "sweep_pick": gr.update(choices=[(sweeps.label(p["settings"]), i) for i, p in enumerate(result)], value=None),
        "sweep_texts": "",
        "sweep_state": {"seed": seed, "points": result},
        "sweep_csv": _write(name, sweeps.table(result)),
    }


def pick_sweep_point(result: dict | None, index: Any) -> Out:
    if not result or index is None:
        return {}
    i = int(index)
    return {"sweep_texts": tokenview.samples_html(result["points"][i]),
            "sweep_plot": figures.sweep_figure(result["points"], selected=i)}


# --- save, load ------------------------------------------------------------------------------------------


def _write(name: str, text: str) -> str:
    folder = Path(tempfile.mkdtemp(prefix="playground-"))
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def save_run(runs: list[dict], view: Any) -> Out:
    if not runs or view is None:
        return {"file_note": "Generate (or load) a run first."}
    run = runs[int(view)]
    slug = "".join(ch if ch.isalnum() else "-" for ch in run["label"].lower()).strip("-")[:40] or "run"
    return {"run_file": _write(f"{slug}.json", runfile.dumps(run)), "file_note": f"Saved '{run['label']}' with its whole trace."}


def load_run(host: ModelHost, path: Any) -> Out:
    if not path:
        return {}
    try:
        data = Path(path).read_bytes()
        run, note = runfile.loads(data)
    except (OSError, ValueError) as e:
        return {"file_note": f"⚠️ Could not load that file: {e}"}
    if run["model"] in host.names():
        try:
            run = ui_runs.with_prompt(host.get(run["model"]), run)
        except ParamError as e:  # the request's messages or tools do not fit this model's template
            note += f" Its prompt could not be rebuilt ({e.message}): what-if, branch and replay are off for it."
    steps = run["completions"][0]["steps"]
    last_user = next((m.get("content") or "" for m in reversed(run["messages"]) if m.get("role") == "user"), "")
    system = next((m.get("content") or "" for m in run["messages"] if m.get("role") == "system"), "")
    return {
        **control_values(run["params"]),
        "file_note": note,
        "runs": [run],
        "view": gr.update(choices=view_choices([run]), value=0),
        "completion": gr.update(choices=[str(i + 1) for i in range(len(run["completions"]))], value="1"),
        "step": gr.update(maximum=max(len(steps) - 1, 1), value=most_uncertain(steps)),
        "completions": tokenview.completions_html(run["completions"]),
        "message": last_user,
        "system": system if isinstance(system, str) else "",
    }


# --- models ---------------------------------------------------------------------------------------------


def load_model(host: ModelHost, name: str, say=None) -> Out:
    name = (name or "").strip()
    if not name:
        return {"model_info": "⚠️ Type a Hugging Face model id or a local folder to load."}
    try:
        lm = host.load(name, progress=say)
    except Exception as e:  # offline Hub, missing folder, unsupported model: say so, keep going
        return {"model_info": f"⚠️ Could not load `{name}`: {type(e).__name__}: {e}"}
    return {"model": gr.update(choices=host.names(), value=lm.name), "model_info": model_info(lm)}


def pick_model(host: ModelHost, name: str) -> Out:
    lm = host.get(name)
    return {"model_info": model_info(lm), "reasoning_effort": gr.update(value="none", **effort_state(lm))}
