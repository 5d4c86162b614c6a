"""A model on an inference server, seen through this playground's own sampler: the remote backend.

    lm = connect("http://gpu-box:8000", "meta-llama/Llama-3.1-70B-Instruct", key, tokenizer="meta-llama/...")
    lm.name        # "meta-llama/Llama-3.1-70B-Instruct · remote · exact" (or "· remote · top-20")
    Generation(lm, ...), Scheduler(lm): exactly as for a local model

Each step, one request carries every active row: `/v1/completions` with the rows' token lists as the
prompt, `max_tokens: 1`, neutral sampling settings (temperature 1, no truncation, no penalties), and the
largest `logprobs` the server allows, with `return_tokens_as_token_ids`. What comes back becomes the
same (rows x V) float32 logits a local forward gives (`next_logits`), and the batch (engine/batch.py)
runs this playground's pipeline, draw and recorder on them. A server that keeps its rows' KV caches (vLLM's
prefix caching, this playground's own /v1/completions) costs one decode step per row per request.

Two modes, found when connecting (`connect` probes the server once):
- **exact**: the server returns the whole vocabulary (`logprobs: -1`; vLLM with `--max-logprobs -1`).
  With raw logits (vLLM's `--logprobs-mode raw_logits`) every stage is exact and a seed draws what a local
  run of the same weights draws from the same logits. With log-probabilities instead (the default raw
  logprobs), softmax cannot tell them from logits, except for the repetition penalty, which divides
  positive logits and multiplies negative ones: it is marked approximate.
- **top-K**: the server caps logprobs at K. The unknown tail becomes one "rest" bucket: its mass
  (1 - the known tokens') spread evenly over the other tokens, never above the least top-K value, as the
  true tail is. `approximate_stages` marks, per step, the stages whose result depended on
  how that mass is really spread; a draw that lands in the rest is drawn again within the known tokens
  with the same uniform (`redraw_known`), and the step says so.

Tokens outside the top K that a step needs (a grammar's allowed set, a thinking budget's forced token, a
job's logit_bias ids: `wants`, engine/backend.py) are asked for where the server can: vLLM's
`logprob_token_ids` reports given ids' values instead of the top K (at most 128 ids a request; `connect`
checks that the server honours it). After each step's request, the ids rows want and did not get go in
follow-up requests of at most 128 ids, each carrying only the rows that miss some of them, at most
EXTRA_ASKS a step; a row whose missing ids would not fit keeps them in the rest (its constraint stage is
then marked approximate, and the constraint masks the rest too: a forbidden token is never drawn). The
rest's ceiling stays the least top-K value, never an asked-for one (which may lie far below the true
tail). Where the server cannot be asked (an older vLLM, llama.cpp, a provider), grammars and thinking
budgets are refused on a top-K server, and a logit_bias on a tail token stays approximate.

A llama.cpp server, whose /v1/completions gives no logprobs over token prompts, is driven through its own
`/completion` (a token prompt, `n_probs` as large as the vocabulary, the raw softmax before its samplers)
one row a request, with its chat template from `/apply-template`. Its values are log-probabilities, so the
repetition penalty is approximate there.

The vocabulary's strings (stop matching, incremental text, DRY's breakers, grammars) come from a local
tokenizer: `--remote-tokenizer ID_OR_FOLDER`, else the model's own name as a Hub id or folder, else (no
`--remote-tokenizer` given) from the server's `/detokenize`, read once and cached (engine/remote_vocab.py);
grammars are refused then, since their automaton needs every token's exact bytes. The chat template comes
from the server where it offers one (`/tokenize` with messages), else from that tokenizer.
"""

from __future__ import annotations

import base64
import math
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from engine import remote_vocab
from engine.batch import wanted_ids
from engine.context import NEG_INF
from engine.knob import ParamError
from engine.model import LoadedModel
from engine.sampler import draw

if TYPE_CHECKING:
    from engine.generator import Generation

KEY_ENV = "PLAYGROUND_REMOTE_KEY"  # the key is read from here, never from the command line
TIMEOUT_ENV = "PLAYGROUND_REMOTE_TIMEOUT"  # seconds a step may wait for the server (default 60)
PROBE_LOGPROBS = (-1, 20, 5)  # asked for in turn when connecting: the whole vocabulary first
MINUS_INF_JSON = -9999.0  # how vLLM and OpenAI write a -inf log-probability in JSON
MAX_TOKEN_IDS = 128  # vLLM's MAX_LOGPROB_TOKEN_IDS: logprob_token_ids a request
EXTRA_ASKS = 8  # follow-up requests a step may make for tokens outside the top K (8 x 128 = 1024 ids)
# Stages that add to some logits and keep every token possible: exact while they leave the unknown tail alone.
ADDITIVE = frozenset({"logit_bias", "presence_frequency", "dry", "repetition_penalty"})
# Truncations whose cut, once it leaves no unknown token alive, is exactly where the whole vocabulary puts it:
# they keep the most likely tokens (top-k, top-p), a grammar's set, or the argmax (temperature 0).
TOP_CUTS = frozenset({"top_k", "top_p", "constraint", "temperature"})
# Stages computed from the whole distribution's shape (its entropy, its spread): approximate while the tail lives.
WHOLE_SHAPE = frozenset({"typical_p", "top_n_sigma"})


class RemoteError(RuntimeError):
    """The server could not be reached, refused us, or answered something this client cannot use. The API
    answers it with 502 (a bad gateway): the request was fine, the server behind this one was not."""

    http_status = 502


# --- turning an answer into logits ----------------------------------------------------------------------


Entries = list[tuple[np.ndarray, np.ndarray]]  # per row: (ids, values) as the server sent them


def dense_logits(entries: Entries, V: int, logprobs: bool, k: int | None = None,
                 extras: list[tuple[np.ndarray, np.ndarray] | None] | None = None,
                 ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """(B, V) float32 logits, (B, V) bool `known` (None when every row got the whole vocabulary), and (B, V)
    bool `top`, the known tokens that are the server's top K (None: all the known ones), from each row's
    (ids, values). k: the top's size (None: every entry is of it; a row's entries beyond its k highest are
    the sampled token vLLM adds); extras: per row, more (ids, values) asked for by id (logprob_token_ids).
    Where a row got fewer than V values, the rest of the mass (for log-probability values: 1 - the known
    tokens') is spread evenly over the unknown tokens, never above the least top-K value (the true tail lies
    below it; an asked-for token may lie far below the tail); raw logits carry no total, so their rest gets
    nothing."""
    B = len(entries)
    logits = torch.full((B, V), NEG_INF, dtype=torch.float32)
    known = torch.zeros(B, V, dtype=torch.bool)
    top = torch.zeros(B, V, dtype=torch.bool)
    for b, (ids, values) in enumerate(entries):
        inside = ids < V
        ids_t = torch.from_numpy(ids[inside].astype(np.int64))
        values_t = torch.from_numpy(values[inside].astype(np.float32))
        logits[b, ids_t] = values_t
        known[b, ids_t] = True
        top[b, ids_t if k is None or len(ids_t) <= k else ids_t[values_t.topk(k).indices]] = True
        if extras is not None and extras[b] is not None:
            more, more_values = extras[b]
            more_t = torch.from_numpy(more[more < V].astype(np.int64))
            fresh = ~known[b, more_t]  # (m,) a top-K value stays as the top K's request gave it
            logits[b, more_t[fresh]] = torch.from_numpy(more_values[more < V].astype(np.float32))[fresh]
            known[b, more_t] = True
    if bool(known.all()):
        return logits, None, None
    for b in range(B):
        unknown = int((~known[b]).sum())
        if not unknown or not logprobs:
            continue
        rest = 1.0 - float(logits[b][known[b]].double().exp().sum())
        if rest <= 0.0:
            continue
        least = float(logits[b][top[b]].min())  # the true tail lies below the least top-K value
        share = min(math.log(rest / unknown), least)
        logits[b].masked_fill_(~known[b], share)
    return logits, known, None if torch.equal(top, known) else top


def extra_asks(missing: list[np.ndarray | None], per_ask: int = MAX_TOKEN_IDS, asks: int = EXTRA_ASKS,
               ) -> list[tuple[np.ndarray, list[int]]]:
    """The follow-up requests that give rows the token ids they want but did not get: [(ids, rows)], at most
    `asks` of at most `per_ask` ids (the union over rows, in id order), each for the rows that miss some of
    its ids. missing: per row, (m,) int64 ids (None or empty: nothing). Rows are taken in order while the
    union fits; a row whose ids would not fit gets none of them (its step stays approximate: a grammar that
    allows thousands of tokens, inside a JSON string, gains nothing from a part of them)."""
    room = per_ask * asks
    union, served = np.zeros(0, dtype=np.int64), []
    for r, m in enumerate(missing):
        if m is None or not m.size:
            continue
        grown = np.union1d(union, m)
        if grown.size <= room:
            union, served = grown, served + [r]
    chunks = [union[i : i + per_ask] for i in range(0, union.size, per_ask)]
    return [(c, [r for r in served if np.isin(missing[r], c).any()]) for c in chunks]


def approximate_stages(stages: list[tuple[str, torch.Tensor]], known: torch.Tensor | None, signed: bool,
                       top: torch.Tensor | None = None) -> list[tuple[str, ...]]:
    """Per row, the stages (by name) whose output depends on what the server did not send.

    stages: [(name, (B, V) logits)] as run_pipeline made them, stages[0] raw; known: (B, V) bool, the tokens
    the server sent (None: all); signed: the values are raw logits (False: log-probabilities, which lost the
    sign the repetition penalty reads); top: (B, V) bool, the known tokens of its top K (None: every known
    one; tokens asked for by id are known but not of it). The rules, with the tail = the unknown tokens:
    - once a stage is approximate, every later one is (its input is);
    - with no tail token alive in its input, a stage is exact (the distribution is wholly known);
    - additive edits (bias, penalties, DRY) are exact while they change no tail token;
    - a truncation that keeps the most likely tokens (top-k, top-p, a grammar, temperature 0) is exact when
      no tail token survives it; other truncations (min-p, XTC, mirostat) also need the least top-K token
      gone (a true tail token may weigh up to it, and above a token asked for by id);
    - temperature (other than 0), typical-p and top-n-sigma reshape or measure the whole distribution:
      approximate while the tail lives.
    Raw logits of a top K carry no total: the rest's mass is unknown, so every stage that ran is approximate.
    A stage that was off (returned its input) is never marked."""
    B = stages[0][1].shape[0]
    if known is None and signed:
        return [()] * B
    if known is not None and signed:
        ran = tuple(name for (name, x), (_, before) in zip(stages[1:], stages) if x is not before)
        return [ran] * B
    unknown = None if known is None else ~known
    marked: list[list[str]] = [[] for _ in range(B)]
    inexact = torch.zeros(B, dtype=torch.bool)

    def tail_alive(x: torch.Tensor) -> torch.Tensor:  # (B,)
        return torch.zeros(B, dtype=torch.bool) if unknown is None else ((x > NEG_INF) & unknown).any(dim=-1)

    prev = stages[0][1]
    for name, x in stages[1:]:
        if x is prev:
            continue
        alive_in, alive_out = tail_alive(prev), tail_alive(x)
        if name == "repetition_penalty" and not signed:
            bad = torch.ones(B, dtype=torch.bool)
        elif name in ADDITIVE:
            bad = alive_in & ((x != prev) & unknown).any(dim=-1) if unknown is not None else torch.zeros(B, dtype=torch.bool)
        elif name in WHOLE_SHAPE:
            bad = alive_in
        elif name in TOP_CUTS:
            bad = alive_out
        else:
            least = prev.masked_fill(~(known if top is None else top), float("inf")).argmin(dim=-1, keepdim=True)  # (B, 1)
            bad = alive_out | (alive_in & (x.gather(1, least) > NEG_INF).squeeze(1))
        inexact |= bad
        for r in inexact.nonzero().squeeze(1).tolist():
            marked[r].append(name)
        prev = x
    return [tuple(m) for m in marked]


def redraw_known(final: torch.Tensor, chosen: torch.Tensor, u: torch.Tensor, greedy: torch.Tensor,
                 known: torch.Tensor | None) -> list[bool]:
    """Rows whose drawn token is one the server did not send are drawn again from the final logits
    renormalised within the known tokens, with the same uniform (writes `chosen`). Per row, whether it was.
    final: (B, V); chosen: (B,); u: (B,) float64; greedy: (B,) bool; known: (B, V) bool or None."""
    B = final.shape[0]
    if known is None:
        return [False] * B
    landed = ~known.gather(1, chosen[:, None]).squeeze(1) & ~greedy
    again = [r for r in landed.nonzero().squeeze(1).tolist() if bool((final[r][known[r]] > NEG_INF).any())]
    if again:
        inside = final[again].masked_fill(~known[again], NEG_INF)
        tokens, _ = draw(inside, u[again], torch.zeros(len(again), dtype=torch.bool))
        chosen[again] = tokens
    return [r in again for r in range(B)]


# --- the wire ---------------------------------------------------------------------------------------------


@dataclass
class Server:
    """An OpenAI/vLLM-compatible server: /v1/models, /v1/completions with token prompts, /tokenize."""

    url: str
    key: str | None = field(default=None, repr=False)  # a visitor's key: in no repr, no log, no message
    timeout: float = 60.0
    transport: Any = None  # an httpx transport (tests: httpx.MockTransport); None: the network
    binary: bool = False  # ask for the base64 float32 extension (connect finds whether the server has it)
    received: int = 0  # response bytes so far (bench/bench_remote.py)
    requests: int = 0  # requests so far (bench/bench_remote.py)
    dialect: str = "openai"  # or "llama.cpp": its /completion with n_probs (found when connecting)
    vocab_ask: bool = False  # the whole vocabulary is asked for by its size, not -1 (llama-server's /v1/completions)
    _client: Any = field(default=None, repr=False)

    def client(self):
        if self._client is None:
            import httpx

            headers = {"Authorization": f"Bearer {self.key}"} if self.key else {}
            self._client = httpx.Client(base_url=self.url.rstrip("/"), headers=headers, transport=self.transport,
                                        timeout=httpx.Timeout(self.timeout, connect=min(self.timeout, 10.0)))
        return self._client

    def call(self, method: str, path: str, body: dict | None = None) -> tuple[int, Any]:
        """(status, JSON body) of one request; RemoteError when there is no answer at all."""
        import httpx

        try:
            r = self.client().request(method, path, json=body)
        except httpx.TimeoutException as e:
            raise RemoteError(f"the server at {self.url} did not answer within {self.timeout:g} s ({type(e).__name__})") from e
        except httpx.HTTPError as e:
            raise RemoteError(f"cannot reach the server at {self.url}: {e}") from e
        self.received += len(r.content)
        self.requests += 1
        try:
            data = r.json()
        except ValueError:
            data = {"error": {"message": r.text[:300]}}
        return r.status_code, data

    def get(self, path: str, body: dict | None = None, method: str = "POST") -> Any:
        status, data = self.call(method, path, body)
        if status == 401 or status == 403:
            raise RemoteError(f"the server at {self.url} refused the key ({status}): set {KEY_ENV} to a key it accepts")
        if status != 200:
            raise RemoteError(f"the server at {self.url} answered {method} {path} with {status}: {_message(data)}")
        return data

    def completions(self, model: str, prompts: list[list[int]], logprobs: int, vocab: int,
                    token_ids: list[int] | None = None) -> Entries:
        """Per prompt, the (ids, values) of the next position's top `logprobs` (-1: every one of `vocab` tokens);
        with token_ids, those ids' values instead (vLLM's logprob_token_ids, at most 128), and the sampled token's."""
        if self.dialect == "llama.cpp":
            return [self.llama_probs(prompt, vocab if logprobs < 0 else logprobs) for prompt in prompts]
        data = self.get("/v1/completions", {
            "model": model, "prompt": prompts, "max_tokens": 1, "logprobs": vocab if logprobs < 0 and self.vocab_ask else logprobs,
            "return_tokens_as_token_ids": True, "temperature": 1.0, "top_p": 1.0, "n": 1, "stream": False,
            **({"logprob_token_ids": token_ids} if token_ids else {}), **self._format(),
        })
        choices = sorted(data.get("choices") or [], key=lambda c: c.get("index", 0))
        if len(choices) != len(prompts):
            raise RemoteError(f"the server answered {len(choices)} choices for {len(prompts)} token prompts: "
                              "it does not take a list of token-id prompts")
        return [_entries(c) for c in choices]

    def llama_probs(self, prompt: list[int], n: int) -> tuple[np.ndarray, np.ndarray]:
        """llama.cpp's /completion: one token prompt (its server takes one a request), `n_probs` of the raw
        softmax with ids (post_sampling_probs off: the distribution before its samplers)."""
        data = self.get("/completion", {"prompt": prompt, "n_predict": 1, "n_probs": n, "temperature": 1.0,
                                        "cache_prompt": True, "post_sampling_probs": False, "stream": False})
        probs = data.get("completion_probabilities") or []
        if not probs or not probs[0].get("top_logprobs"):
            raise RemoteError("the llama.cpp server sent no completion_probabilities: it must honour n_probs")
        top = probs[0]["top_logprobs"]
        values = [float("-inf") if t.get("logprob") is None else t["logprob"] for t in top]
        return np.array([t["id"] for t in top], dtype=np.int64), np.array(values, dtype=np.float32)

    def _format(self) -> dict:
        # The compact binary form, an extension this playground's own server answers (about a tenth of JSON's bytes).
        return {"logprobs_format": "base64_float32"} if self.binary else {}

    def close(self) -> None:
        if self._client is not None:
            self._client.close()


def _message(data: Any) -> str:
    if isinstance(data, dict):
        err = data.get("error", data)
        if isinstance(err, dict):
            return str(err.get("message") or err)[:300]
        return str(err)[:300]
    return str(data)[:300]


def _entries(choice: dict) -> tuple[np.ndarray, np.ndarray]:
    """(ids, values) of a choice's first position: from the base64 extension where the server sent it,
    else from top_logprobs keyed "token_id:ID" (vLLM's return_tokens_as_token_ids)."""
    lp = choice.get("logprobs") or {}
    packed = _packed(lp)
    if packed is not None:
        return packed
    content = lp.get("content")
    if isinstance(content, list) and content and isinstance(content[0].get("top_logprobs"), list):
        # llama.cpp's llama-server: the chat form, each entry {"id", "token", "bytes", "logprob"}
        top = content[0]["top_logprobs"]
        if top and all("id" in t for t in top):
            values = [float("-inf") if t.get("logprob") is None else t["logprob"] for t in top]
            return np.array([t["id"] for t in top], dtype=np.int64), np.array(values, dtype=np.float32)
    tops = lp.get("top_logprobs") or []
    if not tops or not tops[0]:
        raise RemoteError("the server sent no logprobs: it must return top_logprobs for /v1/completions")
    ids, values = [], []
    for key, value in tops[0].items():
        if not key.startswith("token_id:"):
            raise RemoteError(f"the server names tokens by text ({key!r}), not by id: it must honour return_tokens_as_token_ids")
        ids.append(int(key[len("token_id:"):]))
        values.append(float("-inf") if value is None or value <= MINUS_INF_JSON else value)
    return np.array(ids, dtype=np.int64), np.array(values, dtype=np.float32)


def _packed(lp: dict) -> tuple[np.ndarray, np.ndarray] | None:
    """This playground's base64 extension (playground/api_completions.py), when present: little-endian float32
    values in token-id order, and int32 ids (null for the whole vocabulary)."""
    packed = lp.get("top_logprobs_base64")
    if not packed:
        return None
    entry = packed[0]
    values = np.frombuffer(base64.b64decode(entry["values"]), dtype="<f4")
    if entry.get("ids") is None:
        return np.arange(len(values), dtype=np.int64), values
    return np.frombuffer(base64.b64decode(entry["ids"]), dtype="<i4").astype(np.int64), values


# --- the model and its rows -------------------------------------------------------------------------------


@dataclass
class RemoteModel(LoadedModel):
    server: Server | None = None
    remote_name: str = ""  # the model's name on the server
    logprobs: int = -1  # what each step asks for: -1 the whole vocabulary, else the top K
    signed: bool = True  # the server sends raw logits (False: log-probabilities)
    template_from_server: str = ""  # "tokenize" (with messages: vLLM, this playground), "apply-template" (llama.cpp), or ""
    detokenised: bool = False  # the vocabulary's strings came from the server's /detokenize (no local tokenizer)
    token_ids: bool = False  # a top-K server that reports given ids' values (vLLM's logprob_token_ids)
    ids_per_ask: int = MAX_TOKEN_IDS
    extra_asks: int = EXTRA_ASKS
    computes_here = False

    def token_text(self, token_id: int) -> str:
        if self.detokenised:  # the table's text; a byte of a character shows as U+FFFD (its byte is unknown)
            return self.tokenizer.convert_ids_to_tokens(int(token_id))
        return super().token_text(token_id)

    def check_grammar(self, param: str) -> None:
        if self.detokenised:  # llguidance builds its automaton from every token's exact bytes
            raise ParamError(param, f"{param}: {self.name} has no local tokenizer (its vocabulary came from the server's "
                             f"/detokenize, where {self.tokenizer.inexact} tokens are only part of a character), so a "
                             "grammar (tools with tool_choice required or named, response_format) cannot know every "
                             "token's bytes; give --remote-tokenizer ID_OR_FOLDER to use it")

    def token_bytes(self, token_id: int) -> bytes:
        if self.detokenised:
            return self.token_text(token_id).encode("utf-8")
        return super().token_bytes(token_id)

    @property
    def mode(self) -> str:
        return "exact" if self.logprobs < 0 else f"top-{self.logprobs}"

    def new_rows(self) -> "RemoteRows":
        return RemoteRows(self)

    @property
    def asks_ids(self) -> bool:
        """Tokens outside the top K can be asked for by id (a top-K server with logprob_token_ids)."""
        return self.token_ids and self.logprobs >= 0

    def next_logits(self, prompts: list[list[int]], wants=None) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """The next-token logits (B, V) float32 of each token prompt, which are known (None: all) and which of
        those are the top K (None: all known). wants(b): the ids whose values row b needs (engine/backend.py),
        asked for beyond the top K where the server can."""
        entries = self.server.completions(self.remote_name, prompts, self.logprobs, self.vocab_size)
        extras = self._extras(prompts, entries, wants) if wants is not None and self.asks_ids else None
        return dense_logits(entries, self.vocab_size, logprobs=not self.signed,
                            k=self.logprobs if self.logprobs >= 0 else None, extras=extras)

    def _extras(self, prompts: list[list[int]], entries: Entries, wants) -> list[tuple[np.ndarray, np.ndarray] | None]:
        """Per row, the values of the ids it wants and the top K did not give (None: none), from follow-up
        requests with logprob_token_ids (`extra_asks`)."""
        missing = []
        for b, (ids, _) in enumerate(entries):
            wanted = wants(b)
            missing.append(None if wanted is None else np.setdiff1d(wanted.numpy(), ids))
        extras: list[tuple[np.ndarray, np.ndarray] | None] = [None] * len(prompts)
        for chunk, rows in extra_asks(missing, self.ids_per_ask, self.extra_asks):
            got = self.server.completions(self.remote_name, [prompts[r] for r in rows], self.logprobs,
                                          self.vocab_size, token_ids=chunk.tolist())
            for r, (ids, values) in zip(rows, got):
                extras[r] = (ids, values) if extras[r] is None else \
                    (np.concatenate([extras[r][0], ids]), np.concatenate([extras[r][1], values]))
        return extras

    def encode_chat(self, messages: list[dict], **template_kwargs) -> list[int]:
        """The server's own chat template where it offers one (/tokenize with messages), else the tokenizer's."""
        if self.template_from_server == "apply-template":  # llama.cpp: its template, this vocabulary
            text = self.server.get("/apply-template", {"messages": messages, **template_kwargs})["prompt"]
            return self.tokenizer.encode(text, add_special_tokens=False)
        if self.template_from_server:
            body = {"model": self.remote_name, "messages": messages, "add_generation_prompt": True,
                    **({"tools": template_kwargs["tools"]} if template_kwargs.get("tools") else {})}
            extra = {k: v for k, v in template_kwargs.items() if k != "tools"}
            if extra:
                body["chat_template_kwargs"] = extra
            return list(self.server.get("/tokenize", body)["tokens"])
        return super().encode_chat(messages, **template_kwargs)


@dataclass
class _Prompt:
    """A prefilled remote job: its token list, and which of its logits the server sent."""

    ids: list[int]
    known: torch.Tensor | None  # (1, V) bool, None: all
    top: torch.Tensor | None = None  # (1, V) bool, the known tokens of the server's top K; None: all known


class RemotePrefill:
    """A job's prompt sent once; the server keeps (or rebuilds) its KV cache, so there are no chunks here."""

    def __init__(self, lm: RemoteModel, job: "Generation"):
        self.lm, self.job = lm, job
        self.ids = job.prompt_ids if job.replay_prefix else job.prompt_ids + job.prefix_ids
        self.done = 0
        self.cache: _Prompt | None = None
        self.logits: torch.Tensor | None = None

    def advance(self) -> bool:
        if self.lm.logprobs >= 0 and self.job.constrained and not self.lm.token_ids:
            raise ParamError("model", f"{self.lm.name} sends only its top {self.lm.logprobs} tokens a step and cannot be "
                             "asked for given token ids, so a grammar (tools, response_format) or a thinking budget "
                             "could need a token whose value it never sends; connect to a vLLM that honours "
                             "logprob_token_ids, or to a server that returns the whole vocabulary (vLLM: "
                             "--max-logprobs -1)")
        logits, known, top = self.lm.next_logits([self.ids], self._wants)
        self.cache, self.logits, self.done = _Prompt(list(self.ids), known, top), logits, len(self.ids)
        return True

    def _wants(self, b: int) -> torch.Tensor | None:
        """The first step's wants (engine/backend.py), from the job's fresh row state; every row of the job
        starts alike. A replay's first token is given: it wants none."""
        job = self.job
        if job.replay_prefix:
            return None
        return wanted_ids(job, job.row_state(0).allowed(self.lm.vocab_size) if job.constrained else None)


class RemoteRows:
    """A server's side of the rows (the Rows protocol, engine/backend.py): each row's token list, sent whole
    every step; the server's prefix cache makes that one decode step per row."""

    def __init__(self, lm: RemoteModel):
        self.lm = lm
        self.leave_all()

    def leave_all(self) -> None:
        self.ids: list[list[int]] = []
        self.known: torch.Tensor | None = None  # (B, V) bool for the logits last given; None: all known
        self.top: torch.Tensor | None = None  # (B, V) bool, the known ones of the server's top K; None: all known

    @property
    def width(self) -> int:
        return max((len(r) for r in self.ids), default=0)

    def prefill(self, job: "Generation", chunk: int = 0) -> RemotePrefill:
        return RemotePrefill(self.lm, job)

    def mergeable(self, cache: Any) -> bool:
        return True

    def join(self, job: "Generation", cache: _Prompt, n: int) -> None:
        B, V = len(self.ids), self.lm.vocab_size

        def rows(mask: torch.Tensor | None, count: int) -> torch.Tensor:  # (count, V) bool; None: all
            return torch.ones(count, V, dtype=torch.bool) if mask is None else mask.expand(count, -1)

        if self.top is not None or cache.top is not None:  # before `known` changes: top None means "as known"
            mine = self.top if self.top is not None else self.known
            self.top = torch.cat([rows(mine, B), rows(cache.top if cache.top is not None else cache.known, n)])
        if self.known is not None or cache.known is not None:
            self.known = torch.cat([rows(self.known, B), rows(cache.known, n)])
        self.ids += [list(cache.ids) for _ in range(n)]

    def keep(self, keep: list[int]) -> None:
        self.ids = [self.ids[b] for b in keep]
        if self.known is not None:
            self.known = self.known[keep]
        if self.top is not None:
            self.top = self.top[keep]

    def forward(self, tokens: torch.Tensor, wants=None) -> torch.Tensor:
        for row, token in zip(self.ids, tokens.tolist()):
            row.append(token)
        logits, self.known, self.top = self.lm.next_logits(self.ids, wants)
        return logits

    def approximate(self, stages: list[tuple[str, torch.Tensor]], members: list[int]) -> list[tuple[str, ...]]:
        known = None if self.known is None else self.known[members]
        top = None if self.top is None else self.top[members]
        return approximate_stages(stages, known, self.lm.signed, top)

    def redraw(self, final: torch.Tensor, chosen: torch.Tensor, u: torch.Tensor, greedy: torch.Tensor,
               members: list[int]) -> list[bool]:
        known = None if self.known is None else self.known[members]
        return redraw_known(final, chosen, u, greedy, known)


# --- connecting -------------------------------------------------------------------------------------------


def connect(url: str, model: str, key: str | None = None, tokenizer: str | None = None, timeout: float | None = None,
            transport: Any = None, tokenizer_object: Any = None, binary: bool | None = None,
            say: Any = None) -> RemoteModel:
    """Probe the server and return the model as a RemoteModel; RemoteError with a clear message when it
    cannot drive a step loop (unreachable, a refused key, an unknown model, no token prompts, no logprobs).
    key: None reads PLAYGROUND_REMOTE_KEY. tokenizer: a Hub id or folder for the vocabulary's strings
    (default: the model's own name, else the server's /detokenize); tokenizer_object: one already loaded.
    binary: False keeps to plain JSON (None: the base64 extension where the server has it). say: progress
    while a vocabulary is read from /detokenize (default: stderr)."""
    import time

    start = time.perf_counter()
    key = key if key is not None else os.environ.get(KEY_ENV) or None
    timeout = timeout if timeout is not None else float(os.environ.get(TIMEOUT_ENV, "60"))
    server = Server(url, key, timeout, transport)
    listed = server.get("/v1/models", method="GET").get("data") or []
    names = [m.get("id") for m in listed]
    if model not in names:
        raise RemoteError(f"the server at {url} has no model {model!r}; it serves {names}")
    info = listed[names.index(model)]
    try:
        tok = tokenizer_object if tokenizer_object is not None else _tokenizer(tokenizer or model)
    except RemoteError:
        if tokenizer is not None or not _has_detokenize(server, model):
            raise
        tok = None  # read from the server's /detokenize once the vocabulary's size is known
    V = len(tok) if tok is not None else 0
    probe = [[tok.eos_token_id if tok is not None and tok.eos_token_id is not None else 0]]
    logprobs, entries, why = None, None, ""
    asks = list(PROBE_LOGPROBS)
    for ask in asks:
        for server.binary in ((True, False) if binary is not False else (False,)):
            status, data = server.call("POST", "/v1/completions", {
                "model": model, "prompt": probe, "max_tokens": 1, "logprobs": ask, "return_tokens_as_token_ids": True,
                "temperature": 1.0, "stream": False, **server._format()})
            if status in (401, 403):
                raise RemoteError(f"the server at {url} refused the key ({status}): set {KEY_ENV} to a key it accepts")
            if status == 200:
                break
            why = _message(data)
        if status == 200:
            choices = data.get("choices") or []
            if len(choices) != 1:
                raise RemoteError(f"the server at {url} does not take token-id prompts on /v1/completions")
            try:
                entries = _entries(choices[0])
            except RemoteError as e:  # a 200 without logprobs for this ask: try the next
                why = str(e)
                if ask < 0 and V and V not in asks:  # llama-server: none for -1, the whole vocabulary asked by its size
                    asks.insert(asks.index(ask) + 1, V)
                continue
            logprobs = ask
            if V and ask == V and len(entries[1]) >= V:
                server.vocab_ask, logprobs = True, -1  # the whole vocabulary, asked by its size
            server.binary = bool((choices[0].get("logprobs") or {}).get("top_logprobs_base64"))
            break
    if entries is None and tok is not None:  # llama.cpp's own /completion: n_probs over a token prompt, as many as the vocabulary
        status, data = server.call("POST", "/completion", {"prompt": probe[0], "n_predict": 1, "n_probs": V,
                                                           "post_sampling_probs": False, "stream": False})
        if status == 200 and (data.get("completion_probabilities") or [{}])[0].get("top_logprobs"):
            server.dialect, logprobs = "llama.cpp", -1
            entries = server.llama_probs(probe[0], V)
    if entries is None:
        raise RemoteError(f"the server at {url} gives no logprobs for token-id prompts on /v1/completions ({why})")
    ids, values = entries
    whole = logprobs < 0
    if tok is None:
        if not whole:
            raise RemoteError(f"no tokenizer for the remote model {model!r}, and the server sends only its top "
                              f"{logprobs} tokens, so the vocabulary's size is unknown: give --remote-tokenizer ID_OR_FOLDER")
        tok = _detokenised(server, model, len(values), say)
    if whole:
        V = max(V, len(values))
    elif len(values) < logprobs:
        logprobs = len(values)
    finite = values[np.isfinite(values)].astype(np.float64)
    # Log-probabilities: the whole vocabulary's mass sums to 1 (log 0), a top K's to at most 1, all values <= 0.
    lse = float(np.log(np.exp(finite - finite.max()).sum()) + finite.max()) if finite.size else 0.0
    signed = not (abs(lse) < 1e-3 if whole else (finite.max() <= 1e-6 and lse <= 1e-3))
    eos = {tok.eos_token_id} if tok.eos_token_id is not None else set()
    context = int(info.get("max_model_len") or getattr(tok, "model_max_length", 0) or 4096)
    context = context if context < 10**7 else 4096  # a tokenizer without a limit says 1e30
    token_ids = not whole and server.dialect == "openai" and _honours_token_ids(server, model, probe, logprobs, ids, V)
    lm = RemoteModel(model=None, tokenizer=tok, name="", device=torch.device("cpu"), dtype=torch.float32,
                     context_length=context, eos_ids=frozenset(eos), vocab_size=V, source=f"remote {url}",
                     server=server, remote_name=model, logprobs=logprobs, signed=signed, token_ids=token_ids)
    lm.name = f"{model} · remote · {lm.mode}"
    lm.detokenised = tokenizer_object is None and isinstance(tok, remote_vocab.VocabTokenizer)
    lm.template_from_server = _has_chat_tokenize(server, model)
    lm.load_seconds = time.perf_counter() - start
    return lm


def _honours_token_ids(server: Server, model: str, probe: list[list[int]], logprobs: int, sent: np.ndarray, V: int) -> bool:
    """Whether a top-K server reports given ids' values (vLLM's logprob_token_ids): asked for two ids its top K
    did not hold, both come back. A server that ignores the field sends its top K, and its sampled token can
    be at most one of them; one that refuses unknown fields answers 400."""
    outside = np.setdiff1d(np.arange(V), sent)[:2].tolist()
    if len(outside) < 2:
        return False
    try:
        (got,) = server.completions(model, probe, logprobs, V, token_ids=outside)
    except RemoteError:
        return False
    return set(outside) <= set(got[0].tolist())


def _has_chat_tokenize(server: Server, model: str) -> str:
    """How the server applies its own chat template: "tokenize" (/tokenize with messages, vLLM's and this
    playground's), "apply-template" (llama.cpp's), or "" (the local tokenizer's template)."""
    hello = [{"role": "user", "content": "hi"}]
    if server.dialect != "llama.cpp":
        status, data = server.call("POST", "/tokenize", {"model": model, "messages": hello, "add_generation_prompt": True})
        if status == 200 and isinstance(data, dict) and isinstance(data.get("tokens"), list) and data["tokens"]:
            return "tokenize"  # llama-server answers a /tokenize without "content" with no tokens
    status, data = server.call("POST", "/apply-template", {"messages": hello})
    return "apply-template" if status == 200 and isinstance(data, dict) and isinstance(data.get("prompt"), str) else ""


def _has_detokenize(server: Server, model: str) -> bool:
    status, data = server.call("POST", "/detokenize", {"model": model, "tokens": [0]})
    return status == 200 and isinstance(data, dict) and isinstance(data.get("prompt"), str)


def _detokenised(server: Server, model: str, V: int, say: Any) -> "remote_vocab.VocabTokenizer":
    try:
        texts = remote_vocab.read_vocabulary(server, model, V, say)
    except ValueError as e:
        raise RemoteError(f"no tokenizer for the remote model {model!r}, and its vocabulary could not be read from "
                          f"{server.url}/detokenize ({e}): give --remote-tokenizer ID_OR_FOLDER") from e
    return remote_vocab.VocabTokenizer(server, model, texts, remote_vocab.find_eos(server, model, texts))


def _tokenizer(name: str):
    from transformers import AutoTokenizer

    from engine.model import DEFAULT_MODEL, _embedded_folder, embedded_gguf

    if name == DEFAULT_MODEL and (gguf := embedded_gguf()) is not None:  # as load_model reads that name: offline
        name = str(_embedded_folder(gguf, lambda message: None))
    try:
        return AutoTokenizer.from_pretrained(name)
    except Exception as e:
        raise RemoteError(f"no tokenizer for the remote model: {name!r} could not be loaded ({type(e).__name__}). Stop "
                          "matching, text, DRY and grammars need the vocabulary's strings: give --remote-tokenizer "
                          "ID_OR_FOLDER (a Hub id or a local folder with the model's tokenizer)") from e
