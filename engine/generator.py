"""The step-wise generator: prefill once, then one token per step for all n completions at once.

    gen = Generation(lm, prompt_ids, params)      # validates against the model; may raise ParamError
    for steps in gen:                              # one list per step: a Step per still-running completion
        ...
    gen.finish_reasons, gen.texts, gen.seed

The KV cache is filled once for the prompt and then repeated for the n rows; a row that finishes is
dropped from the batch. Randomness comes only from this request's torch.Generator, which draws one
uniform per completion per step, so the same seed gives the same n completions.
"""

from __future__ import annotations

import inspect
import secrets
from typing import Callable, Iterator

import torch

from engine.constraints import Grammar
from engine.detok import IncrementalDecoder
from engine.knobs import ParamError, SamplingParams
from engine.model import LoadedModel
from engine.reasoning import Thinking
from engine.sampler import SamplerContext, draw, run_pipeline
from engine.stops import StopMatcher
from engine.trace import Step, record


class Generation:
    def __init__(
        self,
        lm: LoadedModel,
        prompt_ids: list[int],
        params: SamplingParams,
        cancel: Callable[[], bool] | None = None,
        prefix_ids: list[int] = (),
        grammar: Grammar | None = None,
        thinking: Thinking | None = None,
    ):
        """prefix_ids: tokens the completion already holds (branching from a step): they count as
        generated for the penalties and continue the text, but are not emitted again.
        grammar: every completion must follow it (tool calls, response_format); thinking: a budget for
        the <think> section, closed by force when spent. Either adds the "constraint" stage."""
        self.lm = lm
        self.prompt_ids = list(prompt_ids)
        self.prefix_ids = list(prefix_ids)
        self.params = params
        self.cancel = cancel or (lambda: False)
        self.constrained = grammar is not None or thinking is not None
        self.stages = ("raw", *(("constraint",) if self.constrained else ()), *params.sampler_order)
        self.thinking = thinking
        self.seed = params.seed if params.seed is not None else secrets.randbits(63)
        self.max_tokens = self._fit_length()
        self.bias = self._dense_bias()
        n = params.n
        self.matchers = grammar.start(lm, n) if grammar is not None else None  # ParamError for a bad grammar
        self.thinks = [thinking.start() for _ in range(n)] if thinking else None
        self._follow_prefix()
        self.completions: list[list[Step]] = [[] for _ in range(n)]
        self.texts = [""] * n
        self.finish_reasons: list[str | None] = [None] * n

    def _follow_prefix(self) -> None:
        """A branch continues inside the same thinking section and grammar as the original."""
        if not self.prefix_ids or (self.matchers is None and self.thinks is None):
            return
        decoder = IncrementalDecoder(self.lm.tokenizer)
        for tok in self.prefix_ids:
            piece = decoder.push(tok)
            for i in range(self.params.n):
                in_grammar = self.matchers is not None and (self.thinks is None or self.thinks[i].done)
                if self.thinks:
                    self.thinks[i].feed(tok, piece)
                if in_grammar:
                    self.matchers.consume(i, tok)
        if self.matchers is not None and any(m.is_error() for m in self.matchers.matchers):
            raise ParamError("prefix_ids", "the chosen token breaks the grammar this completion must follow")

    @property
    def prompt_tokens(self) -> int:
        return len(self.prompt_ids)

    @property
    def completion_tokens(self) -> int:
        return sum(len(c) for c in self.completions)

    def _fit_length(self) -> int:
        ctx, used = self.lm.context_length, len(self.prompt_ids) + len(self.prefix_ids)
        if used == 0:
            raise ParamError("messages", "the prompt is empty")
        room = ctx - used
        if room <= 0:
            raise ParamError(
                "messages",
                f"the prompt is {used} tokens, but the model's context window is {ctx} tokens "
                f"and leaves no room for a completion",
                code="context_length_exceeded",
            )
        wanted = self.params.max_tokens
        if wanted is None:
            return room
        if wanted > room and self.params.context_length_exceeded_behavior == "error":
            raise ParamError(
                "max_tokens",
                f"max_tokens={wanted} plus the prompt's {used} tokens exceed the context window of {ctx}; "
                f"max_tokens must be in [1, {room}] (or set context_length_exceeded_behavior to 'truncate')",
                code="context_length_exceeded",
            )
        return min(wanted, room)

    def _dense_bias(self) -> torch.Tensor | None:
        if not self.params.logit_bias:
            return None
        V = self.lm.vocab_size
        bias = torch.zeros(V, dtype=torch.float32)
        for token, value in self.params.logit_bias:
            if token >= V:
                raise ParamError("logit_bias", f"logit_bias token id {token} is outside the vocabulary [0, {V - 1}]")
            bias[token] = value
        return bias.to(self.lm.device)

    def __iter__(self) -> Iterator[list[Step]]:
        lm, params, n = self.lm, self.params, self.params.n
        dev, V = lm.device, lm.vocab_size
        rng = torch.Generator(device="cpu").manual_seed(self.seed)
        decoders = [IncrementalDecoder(lm.tokenizer) for _ in range(n)]
        matchers = [StopMatcher(params.stop) for _ in range(n)]
        # seen / counts follow the batch: row b is completion active[b], like the KV cache.
        seen = torch.zeros(n, V, dtype=torch.bool, device=dev)
        prompt = torch.tensor(self.prompt_ids + self.prefix_ids, device=dev)
        seen[:, prompt[prompt < V]] = True
        counts = torch.zeros(n, V, dtype=torch.float32, device=dev)
        for tok in self.prefix_ids:
            counts[:, tok] += 1
        prefix_text = ""
        for tok in self.prefix_ids:
            for d in decoders:
                piece = d.push(tok)
            prefix_text += piece
        thinks = self.thinks
        for m in matchers:
            m.text, m.released = prefix_text, len(prefix_text)
        start = len(self.prefix_ids)
        active = list(range(n))  # original indices of the rows still in the batch, in batch order

        with torch.inference_mode():
            out = _forward(lm.model, prompt[None], None, logits_to_keep=1)
            cache = _cache_of(out)
            logits = out.logits[:, -1, :].float().expand(n, V)  # (n, V)
            if n > 1:
                cache.batch_repeat_interleave(n)

            for position in range(start, start + self.max_tokens):
                allowed, graded = self._allowed(active, V) if self.constrained else (None, [False] * n)
                ctx = SamplerContext(params, seen, counts, self.bias, allowed)
                stages = run_pipeline(logits, ctx, self.constrained)
                u = None if params.greedy else torch.rand(n, generator=rng, dtype=torch.float64)[active]
                tokens, landing = draw(stages[-1][1], u.float() if u is not None else None)
                records = record(stages, tokens, landing, params.record_k)

                batch = torch.arange(len(active), device=dev)
                seen[batch, tokens] = True
                counts[batch, tokens] += 1
                steps, still = [], []
                last = position == start + self.max_tokens - 1
                for b, i in enumerate(active):
                    tok = int(tokens[b])
                    finish = None
                    if tok in lm.eos_ids:
                        text, delta, finish = "", matchers[i].flush(), "stop"
                    else:
                        text = decoders[i].push(tok)
                        delta, hit = matchers[i].feed(text)
                        if thinks:
                            thinks[i].feed(tok, text)
                        if graded[i]:
                            self.matchers.consume(i, tok)
                        if hit or (graded[i] and self.matchers.finished(i)):
                            finish = "stop"
                            delta += matchers[i].flush() if not hit else ""
                        elif last:
                            delta += matchers[i].flush()
                            finish = "length"
                    step = Step(index=i, position=position, text=text, delta=delta, finish_reason=finish, **records[b])
                    self.completions[i].append(step)
                    self.texts[i] += delta
                    if finish:
                        self.finish_reasons[i] = finish
                    else:
                        still.append(b)
                    steps.append(step)
                yield steps

                if not still:
                    return
                if self.cancel():
                    for i in active:
                        if self.finish_reasons[i] is None:
                            self.finish_reasons[i] = "cancelled"
                    return
                if len(still) < len(active):
                    keep = torch.tensor(still, device=dev)
                    cache.batch_select_indices(keep)
                    tokens, seen, counts = tokens[keep], seen[keep], counts[keep]
                    active = [active[b] for b in still]
                out = _forward(lm.model, tokens[:, None], cache)
                cache = _cache_of(out)
                logits = out.logits[:, -1, :].float()  # (B, V)


    def _allowed(self, active, V) -> tuple[torch.Tensor | None, list[bool]]:
        """(B, V) mask of allowed tokens for the active rows (None when nothing is masked this step),
        and per original row whether its token is checked against the grammar."""
        masks, graded, thinks = [], [False] * self.params.n, self.thinks
        for i in active:
            mask = None
            forced = thinks[i].next_forced() if thinks else None
            if forced is not None:
                mask = torch.zeros(V, dtype=torch.bool)
                mask[forced] = True
            elif self.matchers is not None and (thinks is None or thinks[i].done):
                mask = self.matchers.allowed(i)
                graded[i] = True
            masks.append(mask)
        if all(m is None for m in masks):
            return None, graded
        full = torch.ones(V, dtype=torch.bool)
        return torch.stack([full if m is None else m for m in masks]).to(self.lm.device), graded


_CACHE_KW: dict[int, str] = {}


def _forward(model, input_ids, cache, **kw):
    # transformers 5 renames past_key_values= to cache=; speak whichever this version takes.
    key = _CACHE_KW.get(id(type(model)))
    if key is None:
        names = inspect.signature(model.forward).parameters
        key = "cache" if "cache" in names else "past_key_values"
        _CACHE_KW[id(type(model))] = key
    return model(input_ids=input_ids, use_cache=True, **{key: cache}, **kw)


def _cache_of(out):
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values
