"""A generation: one request's n completions of a prompt, validated, stepping one token at a time.

    gen = Generation(lm, prompt_ids, params)      # validates against the model; may raise ParamError
    for steps in gen:                              # one list per step: a Step per still-running completion
        ...
    gen.finish_reasons, gen.texts, gen.seed

Iterating a Generation runs it alone: prefill once, then one batched forward pass per step for its n
rows (engine/batch.py). A server submits it to the model's Scheduler instead (engine/scheduler.py),
where its rows share each forward pass with everyone else's; the steps are the same either way.

The seed contract: every random number completion i uses is a function of (seed, i, position) only
(engine/rng.py), and every sampler stage works row by row, so the same (model, dtype, device, prompt,
knobs, seed) gives the same completion i whatever n is and whatever else runs beside it, up to the
model's own float math on a batch of another shape (see the README).
"""

from __future__ import annotations

import secrets
import threading
from typing import Callable, Iterator

import torch

from engine.batch import Batch
from engine.constraints import Grammar
from engine.detok import IncrementalDecoder
from engine.dry import DryHistory, dry_breakers, uses_dry
from engine.knobs import ParamError, SamplingParams
from engine.model import LoadedModel
from engine.reasoning import Thinking
from engine.rows import RowState
from engine.trace import Step
from engine.whatif import Snapshot


class Generation:
    kv_store = None  # a KVStore (engine/kvstore.py) its prefill may continue from and adds to; /v1/completions sets it

    def __init__(
        self,
        lm: LoadedModel,
        prompt_ids: list[int],
        params: SamplingParams,
        cancel: Callable[[], bool] | None = None,
        prefix_ids: list[int] = (),
        grammar: Grammar | None = None,
        thinking: Thinking | None = None,
        first_index: int = 0,
        memory: dict | None = None,
        replay_prefix: bool = False,
        capture: bool = False,
    ):
        """prefix_ids: tokens the completion already holds (branching from a step): they count as
        generated for the penalties and continue the text, but are not emitted again.
        grammar: every completion must follow it (tool calls, response_format); thinking: a budget for
        the <think> section, closed by force when spent. Either adds the "constraint" stage.
        first_index: the completion index of this generation's first completion for its random numbers
        (a branch of completion 3 continues completion 3's numbers). memory: the stateful stages' state to
        start from (a branch continues its original's mirostat mu). replay_prefix: feed the prefix through
        the model one token per step, exactly as the run that drew it did, instead of with the prompt, so
        the next step's logits are the run's (a replay of a recorded step): bit for bit in bf16 and where
        the run's row was alone in its forward passes, else within float32's batch effect (engine/whatif.py).
        capture: keep what completion 0's sampler saw (its raw logits, and a grammar's mask) at every step it draws and, without
        a grammar, at every position of a replayed prefix (`snapshots`: position -> Snapshot,
        engine/whatif.py), for a live what-if on those steps; the caller takes them out as it goes."""
        self.lm = lm
        self.prompt_ids = list(prompt_ids)
        self.prefix_ids = list(prefix_ids)
        self.params = params
        self.cancel = cancel or (lambda: False)
        self._stop = threading.Event()
        self.first_index = first_index
        self.memory = dict(memory or {})
        self.replay_prefix = replay_prefix and bool(prefix_ids)
        self.capture = capture
        self.snapshots: dict[int, "Snapshot"] = {}  # position -> what completion 0 sampled from there
        self.constrained = grammar is not None or thinking is not None
        self.stages = ("raw", *(("constraint",) if self.constrained else ()), *params.sampler_order)
        self.grammar, self.thinking = grammar, thinking  # kept to rebuild it elsewhere (playground/zerogpu.py)
        self.seed = params.seed if params.seed is not None else secrets.randbits(63)
        self.max_tokens = self._fit_length()
        self._check_bias()
        self.dry_breakers = dry_breakers(lm.tokenizer, params.dry_sequence_breakers) if uses_dry(params) else frozenset()
        # DRY's repeat lengths over the prompt and prefix, built once (linear time); each row copies them.
        self.dry_history = DryHistory(self.prompt_ids + self.prefix_ids, self.dry_breakers) if uses_dry(params) else None
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

    def _check_bias(self) -> None:
        V = self.lm.vocab_size
        for token, _ in self.params.logit_bias:
            if token >= V:
                raise ParamError("logit_bias", f"logit_bias token id {token} is outside the vocabulary [0, {V - 1}]")

    def dense_bias(self) -> torch.Tensor | None:
        """(V,) float32 logit_bias on the model's device, None without one. Built by the decode loop's
        thread, where all tensor work happens (see engine/scheduler.py on OpenMP)."""
        if not self.params.logit_bias:
            return None
        bias = torch.zeros(self.lm.vocab_size, dtype=torch.float32, device=self.lm.device)
        ids, values = zip(*self.params.logit_bias)
        bias[list(ids)] = torch.tensor(values, dtype=torch.float32, device=self.lm.device)
        return bias

    def row_state(self, i: int) -> RowState:
        history = self.dry_history.copy() if self.dry_history is not None else None
        return RowState(self.lm.tokenizer, self.lm.eos_ids, self.params.stop, self.thinks[i] if self.thinks else None,
                        self.matchers, i, self.prefix_ids, history, self.memory)

    def stop(self) -> None:
        """Ask for the end: the completions still running finish as cancelled within one step."""
        self._stop.set()

    def stopping(self) -> bool:
        return self._stop.is_set() or self.cancel()

    @property
    def done(self) -> bool:
        return all(reason is not None for reason in self.finish_reasons)

    def __iter__(self) -> Iterator[list[Step]]:
        """Run alone (no scheduler): one list of Steps per step, until every completion has finished."""
        batch = Batch(self.lm)
        prefill = batch.prefill(self)
        while not prefill.advance():
            if self.stopping():
                break
        if self.stopping():
            self.finish_reasons = [r or "cancelled" for r in self.finish_reasons]
            return
        batch.join(self, prefill.cache, prefill.logits)
        while batch.rows:
            steps, _ = batch.step()
            if self in steps:
                yield steps[self]
