"""A run as one JSON file: save it, hand it to someone, load it back; every chart works without the model.

    text = dumps(run)            # model, messages, every knob, seed, prompt ids and the whole trace
    run, note = loads(text)      # a saved run, or an API response made with the `trace` extension

A saved file is the run as the UI keeps it (playground/ui_runs.py) plus a format marker. An API response
carries each choice's trace but not the request: its settings load as the defaults plus its seed and
sampler order (or the request's, when the file is {"request": ..., "response": ...}).
"""

from __future__ import annotations

import json
from typing import Any

from engine.knobs import KNOBS, ParamError, SamplingParams
from playground.ui_runs import blank_run

FORMAT = "sampling-playground/run"
VERSION = 1
MAX_BYTES = 50 * 2**20  # a 128-completion run of 256 tokens is about 30 MB
REQUEST_EXTRAS = ("tools", "tool_choice", "response_format", "reasoning_effort")  # what ChatRequest.build takes
_RUN_FIELDS = ("label", "model", "messages", "prompt_ids", "params", "stages", "completions", "texts")


def dumps(run: dict[str, Any]) -> str:
    body = {"format": FORMAT, "version": VERSION, **{k: v for k, v in run.items() if k != "waiting"}}
    body["texts"] = {str(k): v for k, v in run["texts"].items()}
    return json.dumps(body, ensure_ascii=False)


def loads(text: str | bytes) -> tuple[dict[str, Any], str]:
    """(run, a line saying what was loaded). ValueError with a plain message for anything else."""
    if len(text) > MAX_BYTES:
        raise ValueError(f"the file is {len(text) / 2**20:.0f} MB; a run file is at most {MAX_BYTES // 2**20} MB")
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"not JSON: {e}") from None
    if not isinstance(data, dict):
        raise ValueError("expected a JSON object: a saved run or a chat.completion response")
    if data.get("format") == FORMAT:
        return _saved(data), f"Loaded the saved run '{data.get('label', 'run')}' ({data.get('model')})."
    if "response" in data and isinstance(data["response"], dict):
        return _response(data["response"], data.get("request") if isinstance(data.get("request"), dict) else None)
    if "choices" in data:
        return _response(data, None)
    raise ValueError("not a Sampling Playground run (no \"format\": \"sampling-playground/run\") "
                     "nor a chat.completion response (no \"choices\")")


def _saved(data: dict[str, Any]) -> dict[str, Any]:
    if data.get("version") != VERSION:
        raise ValueError(f"run file version {data.get('version')!r} is not supported (this playground reads version {VERSION})")
    missing = [k for k in _RUN_FIELDS if k not in data]
    if missing:
        raise ValueError(f"the run file lacks {', '.join(missing)}")
    run = {k: v for k, v in data.items() if k not in ("format", "version")}
    run["params"] = _params(run["params"])
    run["texts"] = _texts(run["texts"])
    _check_completions(run["completions"], len(run["stages"]))
    _check_hand_picked(run)
    run.setdefault("branch_of", None)
    run.setdefault("first_index", 0)
    run.setdefault("extras", {})
    run.setdefault("functions", [])
    run.setdefault("tool_choice", "none")
    run.setdefault("thinking", False)
    run["waiting"] = None
    return run


def _response(resp: dict[str, Any], request: dict[str, Any] | None) -> tuple[dict[str, Any], str]:
    choices = resp.get("choices")
    if not isinstance(choices, list) or not choices:
        raise ValueError("the response has no choices")
    if any(not isinstance(c, dict) or not isinstance(c.get("trace"), dict) for c in choices):
        raise ValueError("the response has no trace: make the request with \"trace\": true (in extra_body with the "
                         "openai client) to get what the charts need")
    stages = choices[0]["trace"].get("stages")
    if not isinstance(stages, list) or not stages or stages[0] != "raw":
        raise ValueError("the trace has no stage list")
    texts: dict[int, str] = {}
    completions = []
    for c in sorted(choices, key=lambda c: c.get("index", 0)):
        trace = c["trace"]
        texts.update(_texts(trace.get("tokens", {})))
        steps = [dict(s) for s in trace.get("steps", [])]
        message = c.get("message") or {}
        # The UI's shape of an assistant message (ui_runs: engine.chat.assistant_message).
        shown = {"role": "assistant", "content": message.get("content") or "",
                 "reasoning_content": message.get("reasoning_content"), "tool_calls": message.get("tool_calls") or [],
                 "finish_reason": c.get("finish_reason")}
        completions.append({"steps": steps, "text": message.get("content") or "", "finish_reason": c.get("finish_reason"),
                            "message": shown})
    _check_completions(completions, len(stages))
    for c in completions:
        for s in c["steps"]:
            s.setdefault("shown", s.get("text") or texts.get(s["token_id"], f"#{s['token_id']}"))
    knobs = {k: v for k, v in (request or {}).items() if k in KNOBS}
    order = [s for s in stages if s not in ("raw", "constraint")]
    params = _params({**knobs, "sampler_order": order, "seed": resp.get("seed"), "n": len(completions)})
    run = blank_run(f"API {resp.get('id', 'response')}", resp.get("model", "unknown"), (request or {}).get("messages", []),
                    [], params, stages, len(completions))
    run.update(completions=completions, texts=texts,
               extras={k: request[k] for k in REQUEST_EXTRAS if request and request.get(k) is not None})
    note = (f"Loaded an API response from {run['model']} ({len(completions)} choice{'s' if len(completions) > 1 else ''}).")
    if request is None:
        note += (" It carries no request, so the settings shown are the defaults with its seed and sampler order; "
                 "what-if, branch and replay need the prompt, which it does not hold.")
    else:
        note += " With its request: the settings and messages are the request's."
    return run, note


def _params(raw: Any) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise ValueError("params must be an object of knob values")
    known = {k: v for k, v in raw.items() if k in KNOBS}
    try:
        params = SamplingParams.build(**known)
    except ParamError as e:
        raise ValueError(f"the file's {e.param} is invalid: {e.message}") from None
    return {**params.to_dict(), "seed": known.get("seed")}


def _texts(raw: Any) -> dict[int, str]:
    if not isinstance(raw, dict):
        raise ValueError("token texts must be an object {token id: text}")
    try:
        return {int(k): str(v) for k, v in raw.items()}
    except ValueError:
        raise ValueError("token texts must be keyed by token id") from None


def _check_hand_picked(run: dict[str, Any]) -> None:
    """A run's "hand_picked" (manual mode, playground/manual_runs.py): the positions of completion 1 whose token was
    chosen by hand. Files without it (older ones, or made by generating) picked none."""
    picked = run.get("hand_picked", [])
    made = len(run["completions"][0]["steps"])
    if not isinstance(picked, list) or not all(isinstance(p, int) and 0 <= p < made for p in picked):
        raise ValueError(f"hand_picked must be a list of step positions in [0, {made - 1}]")


def _check_completions(completions: Any, n_stages: int) -> None:
    if not isinstance(completions, list) or not completions:
        raise ValueError("the run holds no completions")
    for c in completions:
        steps = c.get("steps") if isinstance(c, dict) else None
        if not isinstance(steps, list):
            raise ValueError("each completion needs its list of steps")
        for s in steps:
            ok = isinstance(s, dict) and {"token_id", "stages", "candidates", "top"} <= set(s)
            if not ok or len(s["stages"]) != n_stages:
                raise ValueError("a step is incomplete: each needs token_id, candidates, top and one entry per stage")
