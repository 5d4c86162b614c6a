"""Step records -> the OpenAI response shapes (chat.completion and chat.completion.chunk).

Logprobs: `logprob` and `top_logprobs` are under the model's RAW distribution, before any sampler stage,
as OpenAI and vLLM (by default) report them: they do not move with temperature, top_p or penalties. The
distribution a token was actually drawn from is in the opt-in `trace` (each stage's probabilities).
`token` is the token's own text (a fragment of a multi-byte character shows as <0xAB>, as in the UI);
`bytes` is its exact UTF-8 bytes, so joining `bytes` rebuilds the content.

The EOS token ends a completion but is not part of its text, so it gets no logprobs entry; the token
that completes a stop sequence does (the stop sequence is part of the text).

Tool calls and thinking are only known once a completion is whole (the engine's ChatRequest.message
splits them out of the text). So when a request may call a tool (tool_choice other than none) or think
(reasoning_effort), a stream still sends one chunk per token, with its logprobs and trace, but an empty
delta; the choice's last chunk carries the content, reasoning_content and tool_calls all at once.
"""

from __future__ import annotations

import hashlib
import math
import secrets
import time
from pathlib import Path

import torch

from engine.chat import ChatRequest
from engine.generator import Generation
from engine.model import LoadedModel
from engine.threads import current_threads
from engine.trace import Step


def _engine_code_hash() -> str:
    # The engine has no version number; its source is what decides the numbers, so hash that.
    h = hashlib.sha256()
    for path in sorted((Path(__file__).resolve().parent.parent / "engine").glob("*.py")):
        h.update(path.read_bytes())
    return h.hexdigest()


ENGINE_CODE = _engine_code_hash()


def fingerprint(lm: LoadedModel) -> str:
    """Stable while model, dtype, device, torch, the engine's code and the intra-op thread count stay the
    same (OpenAI's system_fingerprint: when it changes, the same seed may give other text). The thread
    count is in it because it decides the order of float reductions, and so the logits' low bits."""
    key = f"{lm.name}|{lm.dtype}|{lm.device}|{torch.__version__}|{ENGINE_CODE}|threads={current_threads()}"
    return "fp_" + hashlib.sha256(key.encode()).hexdigest()[:12]


class Meta:
    """What every chunk and the final body of one request share."""

    def __init__(self, chat: ChatRequest, gen: Generation, trace: bool):
        self.id = "chatcmpl-" + secrets.token_hex(12)
        self.created = int(time.time())
        self.lm, self.chat, self.gen = chat.lm, chat, gen
        self.want_logprobs, self.top_logprobs, self.trace = gen.params.logprobs, gen.params.top_logprobs, trace
        self.buffered = chat.tool_choice != "none" or chat.thinking is not None
        self.fingerprint = fingerprint(chat.lm)

    def head(self, obj: str) -> dict:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.lm.name,
                "system_fingerprint": self.fingerprint, "seed": self.gen.seed}

    def is_eos(self, step: Step) -> bool:
        return step.token_id in self.lm.eos_ids

    def logprob_entry(self, step: Step) -> dict:
        lm = self.lm
        top = [_token(lm, int(i), float(lp)) for i, lp in zip(step.top_ids[: self.top_logprobs], step.top_raw_logprobs)]
        return {**_token(lm, step.token_id, step.raw_logprob), "top_logprobs": top}

    def logprobs(self, steps: list[Step]) -> dict | None:
        if not self.want_logprobs:
            return None
        return {"content": [self.logprob_entry(s) for s in steps if not self.is_eos(s)], "refusal": None}

    def trace_of(self, steps: list[Step]) -> dict:
        """The UI's record of these steps, with the text of every token id they mention."""
        ids = {s.token_id for s in steps}
        for s in steps:
            ids.update(int(i) for i in s.cand_ids)
            ids.update(int(i) for i in s.top_ids)
        return {
            "stages": list(self.gen.stages),
            "steps": [s.to_dict(self.gen.stages) for s in steps],
            "tokens": {str(i): self.lm.token_text(i) for i in sorted(ids)},
        }

    def usage(self) -> dict:
        gen = self.gen
        return {"prompt_tokens": gen.prompt_tokens, "completion_tokens": gen.completion_tokens,
                "total_tokens": gen.prompt_tokens + gen.completion_tokens}

    def completion(self) -> dict:
        """The whole chat.completion body once the generation has finished."""
        choices = []
        for i, steps in enumerate(self.gen.completions):
            message, finish = self.message(i)
            choice = {"index": i, "message": {"role": "assistant", **message, "refusal": None},
                      "logprobs": self.logprobs(steps), "finish_reason": finish}
            if self.trace:
                choice["trace"] = self.trace_of(steps)
            choices.append(choice)
        return {**self.head("chat.completion"), "choices": choices, "usage": self.usage()}

    def message(self, i: int) -> tuple[dict, str | None]:
        """Completion i as message fields (content, and reasoning_content / tool_calls when present) and
        its finish_reason (tool_calls when it called one)."""
        m = self.chat.message(self.gen.texts[i], self.gen.finish_reasons[i])
        fields = {"content": m["content"]}
        if m["reasoning_content"] is not None:
            fields["reasoning_content"] = m["reasoning_content"]
        if m["tool_calls"]:
            fields["tool_calls"] = m["tool_calls"]
        return fields, m["finish_reason"]

    def chunk(self, choices: list[dict], usage: dict | None = None, include_usage: bool = False) -> dict:
        body = {**self.head("chat.completion.chunk"), "choices": choices}
        if include_usage:
            body["usage"] = usage  # null on every chunk but the last, as OpenAI sends it
        return body

    def first_delta(self, index: int) -> dict:
        return {"index": index, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}

    def step_delta(self, step: Step) -> dict:
        """One token of one choice. Its text may be '' (held back while it could start a stop sequence, or
        an unfinished character); the final EOS step carries only what was held back, if anything."""
        eos, finish = self.is_eos(step), step.finish_reason
        if self.buffered:
            delta = {}
            if finish:
                delta, finish = self.message(step.index)
                if "tool_calls" in delta:  # a stream numbers its calls, so deltas of one call can be joined
                    delta["tool_calls"] = [{"index": k, **call} for k, call in enumerate(delta["tool_calls"])]
        else:
            delta = {} if eos and not step.delta else {"content": step.delta}
        choice = {"index": step.index, "delta": delta, "logprobs": None, "finish_reason": finish}
        if self.want_logprobs and not eos:
            choice["logprobs"] = {"content": [self.logprob_entry(step)], "refusal": None}
        if self.trace:
            choice["trace"] = self.trace_of([step])
        return choice


def _token(lm: LoadedModel, token_id: int, logprob: float) -> dict:
    # JSON has no -inf; OpenAI reports -9999.0 for tokens with no probability.
    value = logprob if math.isfinite(logprob) else -9999.0
    return {"token": lm.token_text(token_id), "logprob": value, "bytes": list(lm.token_bytes(token_id))}
