"""One completion's text-side state: its detokeniser, stop matcher, thinking budget and grammar.

The decode loop holds tensors and a list of these; each turns the token its row drew into text, says
what may be streamed, and whether the completion ends (nanochat's RowState; vLLM's detokenizer + stop
checker per sequence).
"""

from __future__ import annotations

import torch

from engine.constraints import Matchers
from engine.detok import IncrementalDecoder
from engine.dry import DryHistory
from engine.reasoning import ThinkState
from engine.stops import StopMatcher


class RowState:
    def __init__(self, tokenizer, eos_ids: frozenset[int], stops: tuple[str, ...], think: ThinkState | None,
                 grammar: Matchers | None, index: int, prefix_ids: list[int] = (), history: DryHistory | None = None,
                 memory: dict | None = None):
        """history: the prompt and prefix ids with DRY's repeat lengths (engine/dry.py), appended to as the
        row draws; None when DRY is off. memory: what stateful stages keep between steps (mirostat's mu), to
        continue from."""
        self.eos_ids = eos_ids
        self.history = history
        self.memory = dict(memory or {})
        self.decoder = IncrementalDecoder(tokenizer)
        self.stops = StopMatcher(stops)
        self.think = think
        self.grammar = grammar  # the job's matchers; this row follows matcher `index`
        self.index = index
        self.graded = False  # this step's token is checked against the grammar
        # A branch's prefix continues the text (a stop sequence may span it) but is never released again.
        text = "".join(self.decoder.push(t) for t in prefix_ids)
        self.stops.text, self.stops.released = text, len(text)

    def allowed(self, vocab_size: int) -> torch.Tensor | None:
        """(V,) bool of the tokens this row may take next, or None when it may take any."""
        forced = self.think.next_forced() if self.think else None
        self.graded = False
        if forced is not None:
            mask = torch.zeros(vocab_size, dtype=torch.bool)
            mask[forced] = True
            return mask
        if self.grammar is not None and (self.think is None or self.think.done):
            self.graded = True
            return self.grammar.allowed(self.index)
        return None

    def feed(self, token: int, last: bool) -> tuple[str, str, str | None]:
        """The drawn token: (text it completed, text now safe to stream, finish reason or None).
        `last`: the completion has no room for another token."""
        if self.history is not None:
            self.history.append(token)
        if token in self.eos_ids:
            return "", self.flush(), "stop"
        text = self.decoder.push(token)
        delta, hit = self.stops.feed(text)
        if self.think:
            self.think.feed(token, text)
        if self.graded:
            self.grammar.consume(self.index, token)
        if hit:
            return text, delta, "stop"
        if self.graded and self.grammar.finished(self.index):
            return text, delta + self.flush(), "stop"
        if last:
            return text, delta + self.flush(), "length"
        return text, delta, None

    def flush(self) -> str:
        """Release everything held back: bytes of an unfinished character and text that might have begun a
        stop sequence. Called whenever a completion ends other than by a stop sequence (cancel included)."""
        delta, hit = self.stops.feed(self.decoder.flush())
        return delta if hit else delta + self.stops.flush()
