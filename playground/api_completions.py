"""POST /v1/completions, POST /tokenize and POST /detokenize: the vLLM-compatible subset that lets another
playground (or any vLLM client) use this server as its remote, one step at a time.

    POST /v1/completions   {"prompt": [1, 2, 3], "max_tokens": 1, "logprobs": -1, "return_tokens_as_token_ids": true}
    POST /tokenize         {"prompt": "text"} or {"messages": [...], "add_generation_prompt": true}
    POST /detokenize       {"tokens": [1, 2, 3]}

The wire format is vLLM's (vllm/entrypoints/openai/protocol.py): `prompt` is a text, a list of token ids,
or a list of either (several prompts give several choices, prompt-major: choice index = prompt x n + i);
every sampling knob of the chat endpoint is a top-level field, checked by the same engine code
(engine/knobs.py). `logprobs: K` returns per token the chosen token's value and the K highest values of
the position as {token: value}, highest first, plus the chosen token's when it is not among them (vLLM's
completions shape: tokens, token_logprobs, top_logprobs, text_offset); the whole vocabulary comes in
token-id order. K is capped by the server's --max-logprobs (default 20); with --max-logprobs -1 there is
no cap and `logprobs: -1` returns the whole vocabulary. Which values: the server's --logprobs-mode, as in
vLLM, never the request: raw_logprobs (default) and raw_logits are the model's own, before logit_bias,
penalties, temperature and truncation; processed_logprobs and processed_logits are those of the final
distribution, the one the token was drawn from (-inf for tokens a truncation removed: -9999.0 in JSON).

`logprob_token_ids: [ids]` (vLLM, PR #43463) reports exactly those ids' values at every position instead
of the natural top K (in the order given, duplicates dropped), plus the chosen token's as always; it still
needs `logprobs` set (its count no longer matters), holds at most 128 ids, and is not capped by
--max-logprobs. A remote playground asks for it to learn the values of tokens outside a server's top K that
a grammar, a thinking budget or a logit_bias needs (engine/remote.py).

Extension: `logprobs_format: "base64_float32"` replaces top_logprobs with `top_logprobs_base64`, one
{"ids", "values"} per token: the K values as little-endian float32 in token-id order, base64, and their
ids as little-endian int32 (null when K is the whole vocabulary: then value i is token i's); with
logprob_token_ids, those ids in the order given. SmolLM2's
whole vocabulary is 0.8 to 1.3 MB of JSON per token, 263 KB as base64.

Each (prompt, completion) runs as its own one-row job of the shared decode loop, with the completion's
index for its random numbers (the seed contract: completion i draws what it draws whatever n is). Jobs
get the model's KVStore (engine/kvstore.py): a token prompt that continues a sequence this server has
just served costs one decode step, with the logits local decoding gives, and the prompts of one request
that each continue a kept sequence by a token go through the model together, as the rows of a decode
step do. `stream: true` sends vLLM's chunks (one per token per choice, logprobs included). Refused:
echo, suffix, best_of other than n, prompt_logprobs.
"""

from __future__ import annotations

import asyncio
import base64
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import orjson
import torch
from fastapi import FastAPI, Request
from fastapi.responses import Response, StreamingResponse
from pydantic import Field, create_model
from starlette.concurrency import run_in_threadpool

from engine.chat import check_messages
from engine.context import SamplerContext
from engine.dry import uses_dry
from engine.generator import Generation
from engine.knobs import KNOBS, ParamError, SamplingParams
from engine.kvstore import KVStore, step_together
from engine.model import LoadedModel
from engine.sampler import learn, run_pipeline
from engine.scheduler import END
from engine.tools import prompt_messages
from playground.api import Steps, client_of, job_error, lookup
from playground.api_format import fingerprint
from playground.models import ModelHost
from playground.schema import Message, StreamOptions, _knob_field, _Wire

LOGPROBS_MODES = ("raw_logprobs", "raw_logits", "processed_logprobs", "processed_logits")
MAX_LOGPROB_TOKEN_IDS = 128  # vLLM's limit on logprob_token_ids (vllm/sampling_params.py)
DEFAULT_MAX_TOKENS = 16  # OpenAI's and vLLM's completions default (the chat endpoint's is "until the context is full")


# The chat endpoint's knobs, less its logprobs pair: here `logprobs` is the number of top values.
_Knobs = create_model("CompletionSamplingFields",
                      **{name: _knob_field(k) for name, k in KNOBS.items() if name not in ("logprobs", "top_logprobs")})


class CompletionRequest(_Knobs, _Wire):
    """POST /v1/completions (vLLM's subset). Every sampling knob of the playground is a top-level field."""

    model: str | None = Field(None, description="Which model answers; absent: the server's default.")
    prompt: str | list[int] | list[str] | list[list[int]] = Field(
        description="A text, a list of token ids, or a list of either (one choice group per prompt).")
    logprobs: int | None = Field(None, description="Return the chosen token's value and the top K values of each "
                                 "position; capped by the server's --max-logprobs; -1: the whole vocabulary (needs "
                                 "--max-logprobs -1). What the values are is the server's --logprobs-mode.")
    logprob_token_ids: list[int] | None = Field(
        None, description=f"Report these token ids' values (at most {MAX_LOGPROB_TOKEN_IDS}) instead of the top K at "
        "each position, plus the chosen token's (vLLM); needs logprobs set, whose count then does not matter.")
    return_tokens_as_token_ids: bool | None = Field(None, description="Name tokens 'token_id:123' instead of by their text (vLLM).")
    logprobs_format: Literal["json", "base64_float32"] | None = Field(
        None, description="Playground extension: base64_float32 sends the top values as base64 float32 in token-id "
        "order (top_logprobs_base64) instead of top_logprobs.")
    add_special_tokens: bool | None = Field(None, description="For a text prompt: add the tokenizer's special tokens (default true).")
    echo: bool | None = Field(None, description="Not supported: must be false.")
    suffix: str | None = Field(None, description="Not supported.")
    best_of: int | None = Field(None, description="Accepted only equal to n.")
    prompt_logprobs: int | None = Field(None, description="Not supported.")
    stream: bool | None = Field(None, description="Send each token of each choice as a server-sent event, ending with data: [DONE].")
    stream_options: StreamOptions | None = None
    user: str | None = None


@dataclass
class Plan:
    prompts: list[list[int]]
    params: SamplingParams  # with n = 1 and a fixed seed: each (prompt, i) is its own job
    n: int
    top: int | None  # None: no logprobs; else how many top values (V: all of them)
    token_ids: np.ndarray | None  # (k,) int64 logprob_token_ids, in the order given without repeats; None: the top
    as_ids: bool
    binary: bool
    id: str = field(default_factory=lambda: "cmpl-" + secrets.token_hex(12))
    created: int = field(default_factory=lambda: int(time.time()))


def plan(req: CompletionRequest, lm: LoadedModel, max_logprobs: int) -> Plan:
    """The one conversion from the wire to the engine; ParamError naming the field when something is off."""
    for name, on in (("echo", req.echo), ("suffix", req.suffix is not None),
                     ("prompt_logprobs", req.prompt_logprobs is not None)):
        if on:
            raise ParamError(name, f"{name} is not supported by this server's /v1/completions; leave it out",
                             code="unsupported_parameter")
    if req.stream_options is not None and not req.stream:
        raise ParamError("stream_options", "stream_options is only allowed when stream is true")
    knobs = {name: getattr(req, name) for name in KNOBS if name not in ("logprobs", "top_logprobs")}
    if knobs["max_tokens"] is None and knobs["max_completion_tokens"] is None:
        knobs["max_tokens"] = DEFAULT_MAX_TOKENS
    params = SamplingParams.build(**knobs)
    if req.best_of is not None and req.best_of != params.n:
        raise ParamError("best_of", f"best_of must equal n ({params.n}) here; got {req.best_of}")
    V = lm.vocab_size
    prompts = [tokens(lm, p, req.add_special_tokens is not False, f"prompt[{k}]" if k is not None else "prompt")
               for k, p in _prompt_list(req.prompt)]
    return Plan(prompts, params.with_(n=1, seed=params.seed if params.seed is not None else secrets.randbits(63)),
                params.n, top_count(req.logprobs, max_logprobs, V), token_ids(req.logprob_token_ids, req.logprobs, V),
                bool(req.return_tokens_as_token_ids), req.logprobs_format == "base64_float32")


def token_ids(ids: list[int] | None, logprobs: int | None, V: int) -> np.ndarray | None:
    """logprob_token_ids checked as vLLM checks them (empty: the natural top K), repeats dropped."""
    if not ids:
        return None
    param = "logprob_token_ids"
    if logprobs is None:
        raise ParamError(param, f"{param} needs logprobs set (any count: the values reported are those ids')")
    if len(ids) > MAX_LOGPROB_TOKEN_IDS:
        raise ParamError(param, f"{param} holds at most {MAX_LOGPROB_TOKEN_IDS} ids; got {len(ids)}")
    bad = next((t for t in ids if not 0 <= t < V), None)
    if bad is not None:
        raise ParamError(param, f"{param}: token id {bad} is outside the vocabulary [0, {V - 1}]")
    return np.array(list(dict.fromkeys(ids)), dtype=np.int64)


def _prompt_list(prompt) -> list[tuple[int | None, str | list[int]]]:
    if isinstance(prompt, str) or (prompt and isinstance(prompt[0], int)):
        return [(None, prompt)]
    if not prompt:
        raise ParamError("prompt", "prompt must not be empty: a text, a list of token ids, or a list of either")
    return list(enumerate(prompt))


def tokens(lm: LoadedModel, prompt: str | list[int], special: bool, param: str) -> list[int]:
    """A prompt's token ids, checked against the vocabulary and the context window."""
    if isinstance(prompt, str):
        ids = list(lm.tokenizer(prompt, add_special_tokens=special)["input_ids"])
    else:
        ids = list(prompt)
        bad = next((t for t in ids if not 0 <= t < lm.vocab_size), None)
        if bad is not None:
            raise ParamError(param, f"{param}: token id {bad} is outside the vocabulary [0, {lm.vocab_size - 1}]")
    if not ids:
        raise ParamError(param, f"{param} is empty: at least one token is needed")
    if len(ids) >= lm.context_length:
        raise ParamError(param, f"{param} is {len(ids)} tokens, but the model's context window is {lm.context_length} "
                         f"tokens and leaves no room for a completion: at most {lm.context_length - 1}",
                         code="context_length_exceeded")
    return ids


def top_count(logprobs: int | None, cap: int, V: int) -> int | None:
    """How many top values per token a request gets (V: all), or None without logprobs."""
    if logprobs is None:
        return None
    if cap == -1:
        if logprobs < -1:
            raise ParamError("logprobs", f"logprobs must be -1 (the whole vocabulary) or in [0, {V}]; got {logprobs}")
        return V if logprobs == -1 else min(logprobs, V)
    if logprobs == -1:
        raise ParamError("logprobs", f"logprobs -1 (the whole vocabulary) needs a server started with --max-logprobs -1; "
                         f"this one allows [0, {cap}]")
    if not 0 <= logprobs <= cap:
        raise ParamError("logprobs", f"logprobs must be in [0, {cap}] on this server (--max-logprobs {cap}); got {logprobs}")
    return logprobs


# --- the values a position reports ------------------------------------------------------------------

@dataclass
class Top:
    """One position's report: the chosen token's value and the top values, as plain arrays."""

    chosen: float
    ids: np.ndarray | None  # (k,) int32; None: the whole vocabulary, value i being token i's
    values: np.ndarray  # (k,) float32: highest first for JSON, in token-id order for base64 and the whole vocabulary


class Reporter:
    """A job's logprobs as its steps are made: the values `mode` names at each drawn position, the chosen
    token's and the top k (k = V: all, in token-id order; sorting 49k values costs more than a client gains
    from the order). `feed` runs on the decode loop's thread, as the steps are delivered: all tensor work
    happens there (engine/scheduler.py), and each position's captured logits are released once reported.

    Processed values run the pipeline again on the raw logits with the row's history and the stateful
    stages' memory, exactly as the decode loop ran it (engine/whatif.py does the same for one step)."""

    def __init__(self, gen: Generation, mode: str, k: int, id_order: bool, token_ids: np.ndarray | None = None):
        """token_ids: report these ids' values instead of the top k (logprob_token_ids)."""
        self.gen, self.mode, self.k, self.id_order = gen, mode, k, id_order
        self.token_ids = None if token_ids is None else torch.from_numpy(token_ids)
        self.tops: list[Top] = []
        self._pipeline = None  # (seen, counts, bias, history, memory) once a processed mode needs it

    def feed(self, steps: list) -> list[Top]:
        made = []
        for step in steps:
            x = self.gen.snapshots.pop(step.position).logits  # (V,) the model's raw logits, kept as drawn
            if self.mode.startswith("processed"):
                x = self._final(x, step)
            if self.mode.endswith("logprobs"):
                x = torch.log_softmax(x.float(), dim=-1)
            made.append(self._top(x, step.token_id))
        self.tops += made
        return made

    def _top(self, x: torch.Tensor, token: int) -> Top:
        if self.token_ids is not None:
            return Top(float(x[token]), self.token_ids.numpy().astype(np.int32), x[self.token_ids].float().numpy())
        if self.k >= x.shape[-1]:
            return Top(float(x[token]), None, x.float().numpy())
        values, ids = x.topk(self.k)
        if self.id_order:
            ids = ids.sort().values
            values = x[ids]
        return Top(float(x[token]), ids.numpy().astype(np.int32), values.float().numpy())

    def _final(self, x: torch.Tensor, step) -> torch.Tensor:
        gen = self.gen
        params, V, dev = gen.params, gen.lm.vocab_size, gen.lm.device
        if self._pipeline is None:
            seen = torch.zeros(1, V, dtype=torch.bool, device=dev)
            seen[0, torch.tensor(gen.prompt_ids, device=dev)] = True
            bias = gen.dense_bias()
            self._pipeline = (seen, torch.zeros(1, V, dtype=torch.float32, device=dev),
                              None if bias is None else bias[None], list(gen.prompt_ids), [dict(gen.memory)])
        seen, counts, bias, history, memory = self._pipeline
        ctx = SamplerContext.of(params, seen.clone(), counts.clone(), bias, None,
                                history=[list(history) if uses_dry(params) else None], breakers=[gen.dry_breakers],
                                memory=memory, coords=[(gen.seed, gen.first_index, step.position)])
        stages = run_pipeline(x.to(dev)[None], ctx)
        token = step.token_id
        learn(stages, ctx, torch.tensor([token], device=dev))
        seen[0, token] = True
        counts[0, token] += 1
        history.append(token)
        return stages[-1][1][0].float().cpu()


class ReportedSteps(Steps):
    """A job's steps on the event loop, each list with its Reporter's logprobs: (steps, tops or None)."""

    def __init__(self, scheduler, gen: Generation, client, reporter: Reporter | None):
        self.reporter = reporter  # before submitting: the loop may deliver at once
        super().__init__(scheduler, gen, client)

    def _put(self, item) -> None:
        if isinstance(item, list):
            try:
                item = (item, None if self.reporter is None else self.reporter.feed(item))
            except Exception as e:  # this job's report failed: it ends with the error, no other job is touched
                self.gen.stop()
                item = e
        super()._put(item)


# --- the response -----------------------------------------------------------------------------------

class Names:
    """Token names for logprobs: the token's text (as the chat endpoint shows it) or 'token_id:123' (vLLM's
    return_tokens_as_token_ids). Built once per model: the whole vocabulary is named at every step."""

    def __init__(self, lm: LoadedModel):
        self.lm = lm
        self._tables: dict[bool, list[str]] = {}
        self._lock = threading.Lock()

    def of(self, ids, as_ids: bool) -> list[str]:
        """The names of `ids`; of the whole vocabulary when ids is None."""
        with self._lock:
            if as_ids not in self._tables:
                V = self.lm.vocab_size
                self._tables[as_ids] = [f"token_id:{i}" for i in range(V)] if as_ids else [self.lm.token_text(i) for i in range(V)]
            table = self._tables[as_ids]
        return table if ids is None else [table[i] for i in ids]


def _json_values(values: np.ndarray) -> list[float]:
    # JSON has no -inf (a token a truncation removed): vLLM and OpenAI report -9999.0.
    return np.where(np.isfinite(values), values, -9999.0).tolist()


def logprobs_body(steps: list, tops: list[Top], plan_: Plan, names: Names, offset: int = 0) -> dict:
    """vLLM's completions logprobs object for these steps of one completion (or its base64 form); `offset`:
    where the first step's text starts in the completion's text."""
    chosen = [s.token_id for s in steps]
    offsets = offset + np.cumsum([0] + [len(s.text) for s in steps])[:-1]
    out = {"text_offset": offsets.tolist(), "token_logprobs": _json_values(np.array([t.chosen for t in tops])),
           "tokens": names.of(chosen, plan_.as_ids), "top_logprobs": []}
    if plan_.binary:
        out["top_logprobs"] = None
        out["top_logprobs_base64"] = [
            {"ids": None if t.ids is None else base64.b64encode(t.ids.astype("<i4").tobytes()).decode(),
             "values": base64.b64encode(t.values.astype("<f4").tobytes()).decode()} for t in tops]
        return out
    for token, value, t in zip(out["tokens"], out["token_logprobs"], tops):
        entry = dict(zip(names.of(t.ids, plan_.as_ids), _json_values(t.values)))
        entry.setdefault(token, value)  # vLLM adds the chosen token when it is not among the top
        out["top_logprobs"].append(entry)
    return out


def decode_base64_entry(entry: dict, V: int) -> tuple[np.ndarray, np.ndarray]:
    """(ids, values) from a top_logprobs_base64 entry: what a client does with one."""
    values = np.frombuffer(base64.b64decode(entry["values"]), dtype="<f4")
    ids = np.arange(V) if entry["ids"] is None else np.frombuffer(base64.b64decode(entry["ids"]), dtype="<i4")
    return ids, values


# --- routes -----------------------------------------------------------------------------------------

class TokenizeRequest(_Wire):
    """POST /tokenize: vLLM's TokenizeCompletionRequest or TokenizeChatRequest (prompt or messages)."""

    model: str | None = None
    prompt: str | None = None
    messages: list[Message] | None = None
    add_special_tokens: bool | None = None  # default: true for a prompt, false for messages (as vLLM)
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    return_token_strs: bool = False


class DetokenizeRequest(_Wire):
    model: str | None = None
    tokens: list[int]


def install_completions(app: FastAPI, host: ModelHost, settings) -> None:
    """Add the routes to the API app (before its catch-all /v1 route). `settings`: the ApiSettings, whose
    max_logprobs, logprobs_mode and kv_store_bytes are the server's flags."""
    if settings.logprobs_mode not in LOGPROBS_MODES:
        raise ValueError(f"logprobs_mode must be one of {', '.join(LOGPROBS_MODES)}; got {settings.logprobs_mode!r}")
    stores: dict[str, KVStore] = {}
    names: dict[str, Names] = {}
    lock = threading.Lock()

    def store(lm: LoadedModel) -> KVStore | None:
        if settings.kv_store_bytes <= 0:
            return None
        with lock:
            return stores.setdefault(lm.name, KVStore(settings.kv_store_bytes))

    def names_of(lm: LoadedModel) -> Names:
        with lock:
            return names.setdefault(lm.name, Names(lm))

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request):
        lm = lookup(host, body.model)
        p = await run_in_threadpool(plan, body, lm, settings.max_logprobs)
        if len(p.prompts) * p.n > host.limits.max_rows:
            raise ParamError("n", f"prompts x n = {len(p.prompts)} x {p.n} is more than this server decodes at once "
                             f"({host.limits.max_rows} rows); send fewer prompts or a lower n")
        capture, kv = p.top is not None, store(lm)
        jobs = []
        for ids in p.prompts:
            for i in range(p.n):
                gen = Generation(lm, ids, p.params, first_index=i, capture=capture)
                gen.kv_store = kv
                jobs.append(gen)
        reporters = [Reporter(gen, settings.logprobs_mode, p.top, p.binary, p.token_ids) if capture else None for gen in jobs]
        scheduler = host.scheduler(lm.name)
        if kv is not None and len(p.prompts) > 1:  # rows a client steps together: one forward pass for all
            await run_in_threadpool(scheduler.call, lambda: step_together(lm, kv, p.prompts))
        client = client_of(settings, request.headers, request.client.host if request.client else None)
        try:
            feeds = [ReportedSteps(scheduler, gen, client, r) for gen, r in zip(jobs, reporters)]
        except BaseException:
            for gen in jobs:
                gen.stop()
            raise
        if body.stream:
            return StreamingResponse(_stream(lm, jobs, feeds, p, names_of(lm), body), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        try:
            for feed in feeds:
                while (item := await feed.next(timeout=0.5)) is not END:
                    if item is None and await request.is_disconnected():
                        return Response(status_code=499)
        finally:
            for gen in jobs:
                gen.stop()
        tops = None if not capture else [r.tops for r in reporters]
        text = await run_in_threadpool(_body, lm, jobs, tops, p, names_of(lm))
        return Response(text, media_type="application/json")

    @app.post("/tokenize")
    async def tokenize(body: TokenizeRequest):
        lm = lookup(host, body.model)
        return await run_in_threadpool(_tokenize, lm, body)

    @app.post("/detokenize")
    async def detokenize(body: DetokenizeRequest):
        lm = lookup(host, body.model)
        bad = next((t for t in body.tokens if not 0 <= t < lm.vocab_size), None)
        if bad is not None:
            raise ParamError("tokens", f"token id {bad} is outside the vocabulary [0, {lm.vocab_size - 1}]")
        return {"prompt": lm.tokenizer.decode(body.tokens, skip_special_tokens=False, clean_up_tokenization_spaces=False)}


def _body(lm: LoadedModel, jobs: list[Generation], tops: list[list[Top]] | None, p: Plan, names: Names) -> bytes:
    choices = []
    for k, gen in enumerate(jobs):
        choices.append({
            "index": k, "text": gen.texts[0],
            "logprobs": None if tops is None else logprobs_body(gen.completions[0], tops[k], p, names),
            "finish_reason": gen.finish_reasons[0], "stop_reason": None, "prompt_logprobs": None,
        })
    body = {**_head(lm, p), "choices": choices, "usage": _usage(jobs, p)}
    return orjson.dumps(body)  # the whole vocabulary is ~50k entries a token: orjson takes a tenth of json's time


def _head(lm: LoadedModel, p: Plan) -> dict:
    return {"id": p.id, "object": "text_completion", "created": p.created, "model": lm.name,
            "system_fingerprint": fingerprint(lm), "seed": p.params.seed}


def _usage(jobs: list[Generation], p: Plan) -> dict:
    prompt_tokens = sum(len(ids) for ids in p.prompts)  # once per prompt, whatever n is (as vLLM)
    completion_tokens = sum(g.completion_tokens for g in jobs)
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def _event(obj: dict) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


async def _stream(lm: LoadedModel, jobs: list[Generation], feeds: list[ReportedSteps], p: Plan, names: Names,
                  body: CompletionRequest):
    """Data-only server-sent events as vLLM sends them: one text_completion chunk per token per choice
    (its logprobs with it), a usage chunk if asked, then [DONE]. A failure once streaming has begun ends
    the stream with one event in the error shape, then [DONE]. When the client goes away Starlette cancels
    this generator, and `finally` stops every job."""
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    head = {**_head(lm, p), **({"usage": None} if include_usage else {})}
    merged: asyncio.Queue = asyncio.Queue()

    async def pump(k: int, feed: ReportedSteps) -> None:
        try:
            async for item in feed:
                await merged.put((k, item))
        except Exception as e:
            await merged.put((k, e))
        await merged.put((k, END))

    tasks = [asyncio.create_task(pump(k, feed)) for k, feed in enumerate(feeds)]
    offsets = [0] * len(jobs)
    try:
        running = len(feeds)
        while running:
            k, item = await merged.get()
            if item is END:
                running -= 1
                continue
            if isinstance(item, Exception):
                yield _event(job_error(item).body)
                yield b"data: [DONE]\n\n"
                return
            steps, tops = item
            for j, step in enumerate(steps):
                lp = None if tops is None else logprobs_body([step], [tops[j]], p, names, offsets[k])
                offsets[k] += len(step.text)
                yield _event({**head, "choices": [{"index": k, "text": step.delta, "logprobs": lp,
                                                   "finish_reason": step.finish_reason, "stop_reason": None}]})
        if include_usage:
            yield _event({**head, "choices": [], "usage": _usage(jobs, p)})
        yield b"data: [DONE]\n\n"
    finally:
        for task in tasks:
            task.cancel()
        for gen in jobs:
            gen.stop()


def _tokenize(lm: LoadedModel, body: TokenizeRequest) -> dict:
    if (body.prompt is None) == (body.messages is None):
        raise ParamError("prompt", "send either prompt (a text) or messages (a conversation), not both and not neither")
    if body.prompt is not None:
        ids = list(lm.tokenizer(body.prompt, add_special_tokens=body.add_special_tokens is not False)["input_ids"])
    else:
        messages = check_messages([m.model_dump(exclude_none=True) for m in body.messages])
        msgs, kwargs = prompt_messages(messages, [], lm.tokenizer)
        try:
            text = lm.tokenizer.apply_chat_template(
                msgs, add_generation_prompt=body.add_generation_prompt and not body.continue_final_message,
                continue_final_message=body.continue_final_message, tokenize=False, **kwargs)
        except Exception as e:  # a template may refuse a conversation (roles out of order, ...)
            raise ParamError("messages", f"the model's chat template refused these messages: {e}") from None
        # As vLLM: the template's text, tokenized without the tokenizer's own special tokens unless asked.
        ids = list(lm.tokenizer(text, add_special_tokens=body.add_special_tokens is True)["input_ids"])
    out = {"count": len(ids), "max_model_len": lm.context_length, "tokens": ids, "token_strs": None}
    if body.return_token_strs:
        out["token_strs"] = lm.tokenizer.convert_ids_to_tokens(ids)
    return out
