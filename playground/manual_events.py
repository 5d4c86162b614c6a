"""Manual mode's handlers (the "Manual mode" toggle beside Generate, and its tab): module-level functions of
plain values returning {output name: value}, as playground/ui_events.py's; playground/manual_runs.py does
the work.

Each action ends with the panel: the run so far (hand-picked tokens underlined in purple), a sentence on
where it stands, one page of the waiting step's vocabulary table, and the stage pictures of the step the
sampler's draw would make. Once the run has a step it is also the page's shown run, so the step inspector,
what-if, Save and the other tabs work on it like on a generated run.
"""

from __future__ import annotations

import math
from html import escape
from typing import Any, Iterator

import gradio as gr

from engine.knobs import ParamError
from engine.model import LoadedModel
from engine.scheduler import Refused
from engine.stages import ALL, visible
from playground import figures, manual_runs, tokenview, ui_events
from playground.manual_runs import Refusal, Run, Waiting
from playground.models import ModelHost
from playground.ui_events import Inputs, Stops, _encoder, _selected, view_choices
from playground.ui_settings import collect, describe_error

Out = dict[str, Any]
PANEL = ("manual_note", "manual_text", "manual_table", "manual_inspector", "manual_sentences", "manual_draw")
NEEDS = ("Manual mode needs the model: it computes every step. A share link carries only the prompt and the "
         "settings, never the tokens picked by hand: save the run (under the settings) to hand it on.")

# A click on a row of the table says which token it is (playground/ui.py turns it into the token to pick).
ROW_JS = """
element.addEventListener('click', (e) => {
  const r = e.target.closest('[data-token]');
  if (r) trigger('click', {token: Number(r.dataset.token)});
});
"""

CSS = """
.vocab-wrap { max-height: 520px; overflow-y: auto; border: 1px solid #e2e8f0; border-radius: 8px; }
table.vocab { border-collapse: collapse; font-size: 12px; width: 100%; }
table.vocab th { position: sticky; top: 0; background: #f8fafc; text-align: left; padding: 3px 6px; }
table.vocab td { padding: 2px 6px; border-bottom: 1px solid #eef2f7; font-family: ui-monospace, monospace; }
table.vocab tr[data-token] { cursor: pointer; }
table.vocab tr[data-token]:hover td { background: #e0f2fe; }
table.vocab tr.removed td { color: #94a3b8; }
table.vocab tr.forbidden td { color: #b91c1c; text-decoration: line-through; }
table.vocab tr.drawn td { background: #ffedd5; font-weight: 600; }
.vocab-count { font-size: 12px; color: #475569; margin: 4px 0; }
"""


def generate(host: ModelHost, stops: Stops, ui: Inputs, session: str, manual: bool = False, search: str = "",
             sort: str = "rank", reverse: bool = False) -> Iterator[Out]:
    """Generate as usual, unless manual mode is on: then `start` makes the run one step at a time. One
    event for both: every event a page runs costs it (and the server) work on each later update."""
    if manual:
        yield from start(host, stops, ui, session, True, search, sort, reverse)
        return
    yield from ui_events.generate(host, stops, ui, session)


def start(host: ModelHost, stops: Stops, ui: Inputs, session: str, manual: bool = False, search: str = "",
          sort: str = "rank", reverse: bool = False) -> Iterator[Out]:
    """Manual mode's Generate: a new run with the current settings and message, waiting at its first step."""
    if not manual:
        yield {}
        return
    try:
        lm = host.get(ui.model)
        params = collect(ui.knobs, _encoder(lm))
        if not ui.message.strip():
            raise ParamError("message", "type a message first")
        run = manual_runs.new_run(lm, ui.conversation(), params, ui.extras())
    except ParamError as e:
        yield {"manual_note": describe_error(e)}
        return
    except KeyError:
        yield {"manual_note": f"⚠️ model {ui.model!r} is not loaded"}
        return
    yield {"manual_run": run, "manual_page": 1}
    yield from _wait_and_show(host, stops, lm, run, session, search, sort, reverse, 1, said="A new manual run.")


def take_over(host: ModelHost, stops: Stops, runs: list[dict], view: Any, completion: Any, step: Any, session: str,
              search: str = "", sort: str = "rank", reverse: bool = False) -> Iterator[Out]:
    """Continue the shown run (generated, branched, loaded) by hand from its selected step."""
    try:
        run, c, pos = _selected(runs, view, completion, step)
        lm = host.get(run["model"])
        manual = manual_runs.take_over(lm, run, c, pos)
    except (ValueError, KeyError) as e:
        yield {"manual_note": _problem(e)}
        return
    yield {"manual_run": manual, "manual_page": 1}
    yield from _wait_and_show(host, stops, lm, manual, session, search, sort, reverse, 1,
                              said=f"Completion {c + 1} of {run['label']}, taken over by hand at step {pos}.")


def draw(host: ModelHost, stops: Stops, manual_run: Run | None, session: str, search: str = "", sort: str = "rank",
         reverse: bool = False) -> Iterator[Out]:
    """Let the sampler draw the waiting step, with the seed contract's random number for it."""
    yield from _act(host, stops, manual_run, session, None, search, sort, reverse)


def pick(host: ModelHost, stops: Stops, manual_run: Run | None, token: Any, session: str, search: str = "",
         sort: str = "rank", reverse: bool = False) -> Iterator[Out]:
    """Take the learner's token at the waiting step (a token a truncation removed too)."""
    text = str(token if token is not None else "").strip().removeprefix("#")
    if not text:
        yield {"manual_note": "Click a row of the table (or type a token id) first, then press Pick."}
        return
    if not text.isdigit():
        yield {"manual_note": f"⚠️ **token**: a token id is a whole number in [0, {host.get(manual_run['model']).vocab_size - 1}] "
                              f"(click a row to fill it in), got {text!r}" if manual_run else "Turn on manual mode and press Generate first."}
        return
    yield from _act(host, stops, manual_run, session, int(text), search, sort, reverse)


def rewind(host: ModelHost, stops: Stops, manual_run: Run | None, count: Any, session: str, search: str = "",
           sort: str = "rank", reverse: bool = False) -> Iterator[Out]:
    """Drop the last `count` steps; the run waits at the step after what is left."""
    try:
        lm, run = _model_and_run(host, manual_run)
        run = manual_runs.rewind(lm, run, int(count or 1))
    except (ValueError, KeyError) as e:  # ParamError is a ValueError
        yield {"manual_note": _problem(e)}
        return
    n = int(count or 1)
    yield {"manual_run": run, "manual_page": 1, **_publish(run)}
    yield from _wait_and_show(host, stops, lm, run, session, search, sort, reverse, 1,
                              said=f"Rewound {n} step{'s' * (n != 1)}.")


def browse(host: ModelHost, stops: Stops, manual_run: Run | None, session: str, search: str = "", sort: str = "rank",
           reverse: bool = False, page: Any = 1) -> Iterator[Out]:
    """Another page, search or order of the waiting step's table (computed on the server; one page is sent)."""
    if not manual_run:
        return
    try:
        lm, run = _model_and_run(host, manual_run)
    except (ValueError, KeyError) as e:
        yield {"manual_note": _problem(e)}
        return
    yield from _wait_and_show(host, stops, lm, run, session, search, sort, reverse, page)


# --- the work shared by the actions ---------------------------------------------------------------------


def _model_and_run(host: ModelHost, run: Run | None) -> tuple[LoadedModel, Run]:
    if not run:
        raise ValueError("Turn on manual mode and press Generate first.")
    return host.get(run["model"]), run


def _problem(e: Exception) -> str:
    if isinstance(e, ParamError):
        return describe_error(e)
    if isinstance(e, KeyError):
        return "⚠️ The manual run's model is not loaded here."
    return f"⚠️ {e}"


def _act(host: ModelHost, stops: Stops, manual_run: Run | None, session: str, token: int | None, search: str, sort: str,
         reverse: bool) -> Iterator[Out]:
    try:
        lm, run = _model_and_run(host, manual_run)
    except (ValueError, KeyError) as e:
        yield {"manual_note": _problem(e)}
        return
    if run["completions"][0]["finish_reason"] is not None:
        yield {"manual_note": f"The run has finished ({run['completions'][0]['finish_reason']}): rewind to take another path."}
        return
    wait = yield from _waiting(host, stops, lm, run, session)
    if wait is None:
        return
    try:
        new = manual_runs.take(lm, host.scheduler(lm.name), run, wait, token)
    except Refusal as e:
        yield {"manual_note": f"⚠️ Refused: {e}. Only what the grammar or the thinking budget forbids is refused."}
        return
    step = new["completions"][0]["steps"][-1]
    said = _taken(step, wait, new["texts"], token is not None)
    yield {"manual_run": new, "manual_page": 1, **_publish(new)}
    yield from _wait_and_show(host, stops, lm, new, session, search, sort, reverse, 1, said=said)


def _waiting(host: ModelHost, stops: Stops, lm: LoadedModel, run: Run, session: str) -> Iterator[Out]:
    """The step the run waits at (a generator: its value is the Waiting, or None after saying why)."""
    wait = manual_runs.waiting(session, run)
    if wait is not None:
        return wait
    idle = manual_runs.WAITS.dropped(session)
    position = len(run["completions"][0]["steps"])
    note = f"Computing step {position}: the model reads the prompt and the {position} tokens so far…"
    if idle is not None:
        note = (f"This run waited {idle / 60:.0f} minutes without an action, so the step it waited at was let go "
                f"(its logits and table, about 1 MB). " + note)
    yield {"manual_note": note}
    with stops.run(session) as flag:
        try:
            wait = manual_runs.wait_at(lm, host.scheduler(lm.name), run, session, cancel=flag.is_set)
        except (ParamError, Refused) as e:
            yield {"manual_note": f"⚠️ Cannot compute the step: {e.message}"}
            return None
    if wait is None:
        yield {"manual_note": "Stopped."}
    return wait


def _wait_and_show(host: ModelHost, stops: Stops, lm: LoadedModel, run: Run, session: str, search: str, sort: str,
                   reverse: bool, page: Any, said: str = "") -> Iterator[Out]:
    c = run["completions"][0]
    text = _text_html(run)
    if c["finish_reason"] is not None:
        yield {"manual_note": f"{said} The run has finished ({c['finish_reason']}) after {len(c['steps'])} tokens. "
                              "Rewind to take another path; the step inspector, what-if and Save work on it. " + NEEDS,
               "manual_text": text, "manual_table": "", "manual_inspector": None, "manual_sentences": "", "manual_draw": None}
        return
    wait = yield from _waiting(host, stops, lm, run, session)
    if wait is None:
        return
    try:
        table = manual_runs.page_of(lm, wait, search, sort or "rank", bool(reverse), int(page or 1))
    except ParamError as e:
        yield {"manual_note": describe_error(e)}
        return
    texts = {**run["texts"], **wait.texts}
    yield {
        "manual_note": (said + " " if said else "") + _waiting_sentence(wait, texts) + " " + NEEDS,
        "manual_text": text,
        "manual_table": table_html(table, wait, len(wait.vocabulary), search),
        "manual_page": table.page,
        "manual_inspector": figures.inspector_figure(wait.drawn, texts, run["params"]),
        "manual_sentences": "\n".join(f"- {line}" for line in figures.stage_sentences(wait.drawn, texts, run["params"])),
        "manual_draw": figures.draw_figure(wait.drawn, texts),
    }


def _publish(run: Run) -> Out:
    """The run as the page's shown run (inspector, what-if, Save), selected at its last step."""
    steps = run["completions"][0]["steps"]
    if not steps:
        return {}
    return {"runs": [run], "view": gr.update(choices=view_choices([run]), value=0),
            "completion": gr.update(choices=["1"], value="1"),
            "step": gr.update(maximum=max(len(steps) - 1, 1), value=len(steps) - 1)}


# --- what the learner reads -------------------------------------------------------------------------------


def _q(text: str) -> str:
    return "'" + visible(text) + "'"


def _waiting_sentence(wait: Waiting, texts: dict[int, str]) -> str:
    d = wait.drawn
    word = _q(texts.get(d["token_id"], d["shown"]))
    if d["draw"] is None:
        how = f"the sampler is greedy here and would take the most likely token, {word}"
    else:
        p = 0.0 if d["logprob"] is None else math.exp(d["logprob"])
        how = (f"the sampler's random number for this step ({d['draw']:.3f}) would draw {word} "
               f"(final p {p:.3f})")
    return (f"**Step {wait.position}** is waiting for you. The table holds all {len(wait.vocabulary):,} tokens the model "
            f"could write next; {how}. Click a row and press **Pick this token**, press **Let the sampler draw**, or "
            f"rewind. A token a stage removed (grey) can be picked: the sampler itself could never draw it. Only "
            f"what the grammar forbids (struck through) is refused.")


def _taken(step: dict, wait: Waiting, texts: dict[int, str], by_hand: bool) -> str:
    word = _q(texts.get(step["token_id"], step["shown"]))
    if not by_hand:
        return f"The sampler drew {word} at step {wait.position}."
    v = wait.vocabulary
    t = step["token_id"]
    raw = float(v.raw_p[t])
    if v.removed_by[t] >= 0:
        stage = v.stages[v.removed_by[t]]
        return (f"You picked {word} at step {wait.position}: {ALL[stage].label} had removed it, so the sampler could "
                f"never have drawn it (raw p {raw:.4f}, final p 0).")
    drawn = _q(texts.get(wait.drawn["token_id"], wait.drawn["shown"]))
    return (f"You picked {word} at step {wait.position} (raw p {raw:.4f}, final p {float(v.final_p[t]):.4f}); "
            f"the sampler would have drawn {drawn}.")


def _text_html(run: Run) -> str:
    steps = run["completions"][0]["steps"]
    picked = len(run.get("hand_picked", []))
    head = (f"<div class='vocab-count'>{len(steps)} token{'s' * (len(steps) != 1)} so far; {picked} picked by hand "
            "(underlined in purple).</div>")
    if not steps:
        return head + "<div class='tv'><span class='tv-empty'>No token yet.</span></div>"
    return head + tokenview.token_view_html(steps, run["texts"], legend=False)


def _p(p: float) -> str:
    """A probability that stays readable when tiny: a token ranked 800th is not 0.0000, only one removed is 0."""
    return "0" if p == 0 else f"{p:.4f}" if p >= 1e-4 else f"{p:.1e}"


def table_html(table: manual_runs.Table, wait: Waiting, vocab_size: int, search: str = "") -> str:
    """One page of the vocabulary table: a row per token, clickable (ROW_JS), the sampler's draw highlighted,
    tokens a stage removed grey, tokens the grammar forbids struck through."""
    first = (table.page - 1) * manual_runs.PAGE + 1 if table.rows else 0
    last = first + len(table.rows) - 1 if table.rows else 0
    what = f"{table.total:,} tokens match {search.strip()!r}" if (search or "").strip() else f"all {vocab_size:,} tokens"
    count = (f"<div class='vocab-count'>Rows {first:,}–{last:,} of {what} (page {table.page} of {table.pages}). "
             "Click a row to choose its token.</div>")
    allowed = wait.snapshot.allowed
    rows = []
    for r in table.rows:
        classes = []
        if allowed is not None and not bool(allowed[r["id"]]):
            classes.append("forbidden")
        elif r["removed_by"]:
            classes.append("removed")
        if r["id"] == wait.drawn["token_id"]:
            classes.append("drawn")
        rows.append(f"<tr data-token='{r['id']}' class='{' '.join(classes)}'><td>{r['rank']}</td><td>{r['id']}</td>"
                    f"<td>{escape(_q(r['text']))}</td><td>{_p(r['raw_p'])}</td><td>{_p(r['final_p'])}</td>"
                    f"<td>{escape(r['removed_by'])}</td></tr>")
    head = ("<tr><th>rank</th><th>id</th><th>token</th><th>raw p</th><th>final p</th><th>removed by</th></tr>")
    return (count + "<div class='vocab-wrap'><table class='vocab'><thead>" + head + "</thead><tbody>" + "".join(rows)
            + "</tbody></table></div>")
