"""The token view: a completion rendered token by token, coloured by probability or entropy.

A pure function of recorded steps (see playground/ui_records.py) to HTML. Each token is a span with
`data-step` (its index in the completion) so the page's script can turn a click into "select this step";
hovering shows the top alternatives through a CSS tooltip built from `data-tip`.
"""

from __future__ import annotations

import json
import secrets
from html import escape

from engine.whatif import PENALTIES
from playground.ui_records import STAGE_LABELS, Step, alternatives, prob, visible

MODES = ("raw probability", "final probability", "entropy")
ENTROPY_FULL = 6.0  # nats at which the entropy colour saturates (ln 400: hundreds of plausible tokens)
TIP_ALTERNATIVES = 6

CSS = """
.tv { font-family: ui-monospace, SFMono-Regular, Menlo, monospace; font-size: 15px; line-height: 2.0;
      white-space: pre-wrap; word-break: break-word; padding: 10px 12px; border: 1px solid #e2e8f0;
      border-radius: 8px; background: #fff; color: #0f172a; min-height: 48px; overflow: visible; }
.tv .tok { position: relative; cursor: pointer; border-radius: 3px; padding: 1px 0; margin: 0 0.5px;
           box-shadow: inset 0 -1px 0 rgba(0,0,0,.08); }
.tv .tok:hover { outline: 2px solid #0f172a; z-index: 5; }
.tv .tok.sel { outline: 2.5px solid #0f172a; outline-offset: 1px; }
.tv .tok.forced { box-shadow: inset 0 -3px 0 #9333ea; }
.tv .tok.diverge { box-shadow: inset 0 -3px 0 #dc2626; }
.tv .tok.ws { color: #64748b; }
.tv .tok:hover::after { content: attr(data-tip); position: absolute; left: 0; top: 1.9em; z-index: 50;
           white-space: pre; background: #0f172a; color: #f8fafc; font-size: 12px; line-height: 1.45;
           padding: 6px 8px; border-radius: 6px; pointer-events: none; box-shadow: 0 4px 14px rgba(0,0,0,.25); }
.tv-legend { display: flex; align-items: center; gap: 8px; font-size: 12px; color: #475569; margin: 2px 0 6px; }
.tv-legend .bar { width: 160px; height: 10px; border-radius: 5px;
                  background: linear-gradient(90deg, hsl(0,75%,82%), hsl(60,75%,82%), hsl(120,75%,82%)); }
.tv-legend .bar.rev { background: linear-gradient(90deg, hsl(120,75%,82%), hsl(60,75%,82%), hsl(0,75%,82%)); }
.tv-empty { color: #64748b; font-style: italic; }
.comps { display: flex; gap: 12px; flex-wrap: wrap; }
.comps .comp { flex: 1 1 260px; min-width: 0; border: 1px solid #e2e8f0; border-radius: 8px; padding: 8px 10px; background: #fff; }
.comp-head { font-size: 12px; font-weight: 600; color: #475569; margin-bottom: 4px; }
.comp-text { white-space: pre-wrap; word-break: break-word; font-size: 14px; color: #0f172a; }
.tool-call { margin: 4px 0; padding: 4px 8px; border-left: 3px solid #9333ea; background: #faf5ff; font-size: 13px; }
.thinking summary { cursor: pointer; color: #64748b; font-size: 13px; }
.comps .comp .tv { border: none; padding: 2px 0; }
.note { font-size: 14px; color: #0f172a; background: #fff7ed; border-left: 3px solid #ea580c; padding: 6px 10px; border-radius: 4px; }
table.alts { border-collapse: collapse; font-size: 12px; width: 100%; }
table.alts th, table.alts td { text-align: left; padding: 2px 5px; border-bottom: 1px solid #eef2f7; }
table.alts tr.chosen td { background: #ffedd5; }
"""


def colour(step: Step, mode: str) -> str:
    """Background for a token: red (unlikely / uncertain) through yellow to green (likely / certain)."""
    if mode == "entropy":
        u = min(step["stages"][0]["entropy"] / ENTROPY_FULL, 1.0)
        hue = 120 * (1 - u)
    elif mode == "final probability":
        hue = 120 * prob(step["logprob"])
    else:
        hue = 120 * prob(step["raw_logprob"])
    return f"hsl({hue:.0f},75%,82%)"


def tooltip(step: Step, texts: dict[int, str]) -> str:
    """The hover text: this token's numbers, then the raw top alternatives and what became of them."""
    lines = [
        f"'{visible(step['shown'])}'  raw p {prob(step['raw_logprob']):.3f} · final p {prob(step['logprob']):.3f}"
        f" · rank {step['rank']} · entropy {step['stages'][0]['entropy']:.2f}",
        "alternatives (raw → final):",
    ]
    for alt in alternatives(step, texts, TIP_ALTERNATIVES):
        fate = f" ({STAGE_LABELS[alt['removed_by']]})" if alt["removed_by"] else ""
        mark = "▶ " if alt["chosen"] else "  "
        lines.append(f"{mark}{visible(alt['text']):<14} {alt['raw']:.3f} → {alt['final']:.3f}{fate}")
    if step.get("forced"):
        lines.append("(picked by you to branch)")
    if step.get("finish_reason"):
        lines.append(f"finish: {step['finish_reason']}")
    return "\n".join(lines)


def _legend(mode: str) -> str:
    if mode == "entropy":
        return (f"<div class='tv-legend'>colour = entropy of the raw distribution: 0 nats"
                f"<span class='bar rev'></span>{ENTROPY_FULL:g}+ nats · hover a token for alternatives, click to inspect</div>")
    which = "final distribution (after every stage)" if mode == "final probability" else "model's raw distribution"
    return (f"<div class='tv-legend'>colour = probability of the chosen token under the {which}: 0"
            f"<span class='bar'></span>1 · hover a token for alternatives, click to inspect</div>")


def alternatives_html(step: Step, texts: dict[int, str], limit: int = 10) -> str:
    """A table of the raw distribution's top tokens at this step and what the sampler did to each."""
    rows = []
    for alt in alternatives(step, texts, limit):
        if alt["chosen"]:
            fate = "<b>chosen</b>"
        elif alt["removed_by"]:
            fate = f"removed by {STAGE_LABELS[alt['removed_by']]}"
        else:
            fate = "possible"
        rows.append(
            f"<tr class='{'chosen' if alt['chosen'] else ''}'><td><code>{escape(visible(alt['text']))}</code></td>"
            f"<td>{alt['id']}</td><td>{alt['raw']:.3f}</td><td>{alt['final']:.3f}</td><td>{fate}</td></tr>"
        )
    return (
        "<table class='alts'><thead><tr><th>alternative</th><th>id</th><th>raw</th><th>final</th>"
        "<th>fate</th></tr></thead><tbody>" + "".join(rows) + "</tbody></table>"
    )


def _waiting_note(waiting: int | None) -> str:
    if waiting is None:
        return ""
    ahead = "next in line" if waiting == 0 else f"{waiting} ahead of you"
    return f"<p class='note waiting'>⏳ Waiting for room in the model's shared batch: {ahead}.</p>"


def _reading_note(reading: int | None) -> str:
    """A run in the batch whose prompt has not gone in yet: prompts arriving together go in a few a turn
    (engine/scheduler.py), so a class that clicks at once sees its place move rather than nothing."""
    if reading is None:
        return ""
    before = "yours goes in next" if reading == 0 else f"{reading} before yours"
    return f"<p class='note reading'>⏳ Reading the prompts that arrived together: {before}.</p>"


def _head(i: int, reason: str, tokens: int) -> str:
    return f"Completion {i} · {reason} · {tokens} tokens"


def completions_html(completions: list[dict], running: bool = False, waiting: int | None = None) -> str:
    """The n completions side by side, each with its finish reason and token count. `waiting`: how many
    runs are ahead of this one in the model's queue, while it waits for room in the shared batch."""
    if not completions:
        return ""
    cols = []
    for i, c in enumerate(completions, start=1):
        reason = c["finish_reason"] or ("waiting…" if waiting is not None else "generating…" if running else "unfinished")
        message = c.get("message")
        body = f"<div class='comp-text'>{escape(c['text'])}</div>"
        if message:
            reason = message["finish_reason"] or reason
            body = ""
            if message["reasoning_content"] is not None:
                body += (f"<details class='thinking'><summary>thinking ({len(message['reasoning_content'])} characters)"
                         f"</summary><div class='comp-text'>{escape(message['reasoning_content'])}</div></details>")
            for call in message["tool_calls"]:
                fn = call["function"]
                body += f"<div class='tool-call'>tool call: <code>{escape(fn['name'])}({escape(fn['arguments'])})</code></div>"
            if message["content"]:
                body += f"<div class='comp-text'>{escape(message['content'])}</div>"
        cols.append(f"<div class='comp'><div class='comp-head'>{escape(_head(i, reason, len(c['steps'])))}</div>{body}</div>")
    return _waiting_note(waiting) + "<div class='comps'>" + "".join(cols) + "</div>"


def side_by_side(columns: list[tuple[str, str]], note: str = "") -> str:
    """Columns of (title, inner HTML) with an optional note above, for Branch and Compare."""
    cols = "".join(f"<div class='comp'><div class='comp-head'>{escape(t)}</div>{body}</div>" for t, body in columns)
    top = f"<p class='note'>{escape(note)}</p>" if note else ""
    return top + "<div class='comps'>" + cols + "</div>"


def token_span(step: Step, i: int, texts: dict[int, str], mode: str = "raw probability", selected: bool = False,
               diverge: bool = False) -> str:
    """One token of the token view: coloured, numbered by `data-step` for clicks, with its hover text."""
    shown = step["shown"]
    classes = ["tok"]
    if not shown.strip():
        classes.append("ws")
        # Whitespace-only tokens get a visible glyph, or nobody could hover or click them.
        shown = visible(shown) + ("\n" if "\n" in shown else "")
    if selected:
        classes.append("sel")
    if step.get("forced"):
        classes.append("forced")
    if diverge:
        classes.append("diverge")
    return (f"<span class='{' '.join(classes)}' data-step='{i}' style='background:{colour(step, mode)}' "
            f"data-tip='{escape(tooltip(step, texts))}'>{escape(shown)}</span>")


def token_view_html(
    steps: list[Step],
    texts: dict[int, str],
    mode: str = "raw probability",
    selected: int | None = None,
    mark: int | None = None,
    legend: bool = True,
) -> str:
    """HTML for one completion. `selected`: the inspected step (outlined); `mark`: a step to flag in
    red (where two runs diverge); `legend`: the colour key above (off in narrow side-by-side columns)."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    if not steps:
        return EMPTY_TOKENS
    spans = [token_span(step, i, texts, mode, i == selected, i == mark) for i, step in enumerate(steps)]
    return (_legend(mode) if legend else "") + "<div class='tv'>" + "".join(spans) + "</div>"


EMPTY_TOKENS = "<div class='tv'><span class='tv-empty'>Generate to see the completion token by token.</span></div>"


# --- streaming: a value that only grows ------------------------------------------------------------------
#
# A run in progress is not HTML that is rebuilt (and re-sent, and re-parsed by the browser) on every update:
# it is a log that only grows, MARK and a stream id on the first line, then one JSON record per line,
# ["set" | "add", slot, html]: set the inner HTML of the element with data-slot=slot (the component itself
# for ""), or add html at its end. STREAM_JS applies only the records it has not applied yet; any value
# without MARK is plain HTML, shown as it is (the finished run's full view).
#
# The records reach the page in one of two ways. A value that Gradio streams grows by them (Gradio sends a
# string that only grows as an "append" of its new end). Or the value holds one record ["live", url, part]:
# the page then reads the records from that HTTP stream (playground/ui_stream.py), one fetch per run for
# both views, and Gradio carries nothing per update. A late record of a run the view no longer shows is
# dropped.

MARK = "\u241e"

STREAM_JS = """
const runs = window.__playgroundLive || (window.__playgroundLive = {});
let stream = null, used = 0, live = null;
const run = (text) => {
  for (const line of text.split('\\n')) {
    if (!line) continue;
    const [op, slot, html] = JSON.parse(line);
    if (op === 'live') { listen(slot, html); continue; }
    const el = slot ? element.querySelector(`[data-slot="${slot}"]`) : element;
    if (el && op === 'set') el.innerHTML = html;
    else if (el) el.insertAdjacentHTML('beforeend', html);
  }
};
const listen = (url, part) => {
  live = url;
  let ch = runs[url];
  if (!ch) {
    ch = runs[url] = {views: {}, early: {}};
    read(url, ch);
  }
  ch.views[part] = (text) => { if (live === url) run(text); };
  for (const text of ch.early[part] || []) ch.views[part](text);
  delete ch.early[part];
};
const read = async (url, ch) => {
  try {
    const res = await fetch(url, {cache: 'no-store'});
    if (!res.ok || !res.body) return;
    const reader = res.body.getReader(), decoder = new TextDecoder();
    let buffer = '';
    for (;;) {
      const {value, done} = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, {stream: true});
      const end = buffer.lastIndexOf('\\n') + 1;
      for (const line of buffer.slice(0, end).split('\\n')) {
        if (!line) continue;
        const [part, text] = JSON.parse(line);
        if (ch.views[part]) ch.views[part](text);
        else (ch.early[part] = ch.early[part] || []).push(text);
      }
      buffer = buffer.slice(end);
    }
  } catch (e) {
    console.warn('live run stream ended early', e);  // the finished run still arrives through Gradio
  } finally {
    delete runs[url];
  }
};
const apply = () => {
  const value = props.value || '';
  if (!value.startsWith('\u241e')) { stream = null; live = null; element.innerHTML = value; return; }
  const head = value.indexOf('\\n');
  if (value.slice(0, head) !== stream) { stream = value.slice(0, head); used = head + 1; live = null; element.innerHTML = ''; }
  const end = value.lastIndexOf('\\n') + 1;
  run(value.slice(used, end));
  used = Math.max(used, end);
};
apply();
watch('value', apply);
"""


class Stream:
    """A streamed component's value (see above): `value` only grows while records are added."""

    def __init__(self):
        self.value = f"{MARK}{secrets.token_hex(6)}\n"

    def set(self, slot: str, html: str) -> None:
        self.value += json.dumps(["set", slot, html], ensure_ascii=False) + "\n"

    def add(self, slot: str, html: str) -> None:
        self.value += json.dumps(["add", slot, html], ensure_ascii=False) + "\n"


class LiveRun:
    """A run in progress as two streamed values, the completions and the token view of completion 1, that
    grow by what changed since the last update: new tokens, new text, a changed head or queue note. The
    bytes per update depend on what the update brings, never on how long the completion already is."""

    def __init__(self, n: int):
        self.completions, self.tokens = Stream(), Stream()
        heads = "".join(f"<div class='comp'><div class='comp-head' data-slot='head{i}'></div>"
                        f"<div class='comp-text' data-slot='text{i}'></div></div>" for i in range(n))
        self.completions.set("", f"<div data-slot='note'></div><div class='comps'>{heads}</div>")
        self.tokens.set("", _legend(MODES[0]) + "<div class='tv' data-slot='tv'></div>")
        self._note: str | None = None
        self._heads = [""] * n
        self._texts = [""] * n
        self._steps = 0  # token spans sent for completion 1

    def update(self, completions: list[dict], texts: dict[int, str], waiting: int | None = None,
               reading: int | None = None) -> tuple[str, str]:
        """(completions value, tokens value) after adding what changed in `completions` (a run's, in progress).
        waiting: runs ahead of it in the model's queue; reading: prompts that go in before its own."""
        note = _waiting_note(waiting) or _reading_note(reading)
        if note != self._note:
            self._note = note
            self.completions.set("note", note)
        for i, c in enumerate(completions):
            head = _head(i + 1, c["finish_reason"] or ("waiting…" if waiting is not None else "generating…"), len(c["steps"]))
            if head != self._heads[i]:
                self._heads[i] = head
                self.completions.set(f"head{i}", escape(head))
            text, sent = c["text"], self._texts[i]
            if text != sent:
                self._texts[i] = text
                if text.startswith(sent):
                    self.completions.add(f"text{i}", escape(text[len(sent):]))
                else:
                    self.completions.set(f"text{i}", escape(text))
        steps = completions[0]["steps"]
        if len(steps) > self._steps:
            self.tokens.add("tv", "".join(token_span(steps[i], i, texts) for i in range(self._steps, len(steps))))
            self._steps = len(steps)
        return self.completions.value, self.tokens.value


def ledger_html(rows: list[dict], stages: list[str]) -> str:
    """The penalty ledger of a step: each token the penalties touched, how often it occurred before the
    step, and how much logit each penalty took from it (negative: the penalty raised it)."""
    on = [s for s in PENALTIES if s in stages and any(s in r["loss"] for r in rows)]
    if not rows:
        return ("<p class='note' id='ledger-empty'>No penalty moved any logit at this step (repetition penalty, "
                "presence/frequency and DRY are off, or nothing they count has occurred yet).</p>")
    head = "".join(f"<th>{escape(STAGE_LABELS[s])}</th>" for s in on)
    body = []
    for r in rows:
        cells = "".join(f"<td>{r['loss'][s]:+.3f}</td>" if s in r["loss"] else "<td></td>" for s in on)
        body.append(f"<tr><td><code>{escape(visible(r['text']))}</code></td><td>{r['id']}</td><td>{r['in_prompt']}</td>"
                    f"<td>{r['in_output']}</td>{cells}<td><b>{r['total']:+.3f}</b></td></tr>")
    return ("<table class='alts ledger'><thead><tr><th>token</th><th>id</th><th>in prompt</th><th>in output</th>"
            f"{head}<th>logit lost</th></tr></thead><tbody>" + "".join(body) + "</tbody></table>")


def progress_html(done: int, total: int, label: str) -> str:
    return (f"<div class='sweep-progress'><progress value='{done}' max='{max(total, 1)}'></progress> "
            f"<span>{escape(label)}</span></div>")


def samples_html(point: dict) -> str:
    """The texts a sweep made at one point."""
    where = ", ".join(f"{k} = {v}" for k, v in point["settings"].items())
    items = "".join(f"<li><div class='comp-text'>{escape(t)}</div></li>" for t in point["texts"])
    return f"<p class='note'>{escape(where)}: {len(point['texts'])} samples</p><ol class='sweep-texts'>{items}</ol>"
