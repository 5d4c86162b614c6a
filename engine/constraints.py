"""Constrained decoding: a grammar (llguidance) that every completion must follow.

The grammar becomes a mask of allowed next tokens per completion per step; the sampler applies it as
its first stage ("constraint"), so the step inspector shows how much probability mass it removed and
which tokens it forbade. Truncations run after it, on the allowed tokens only, so they can never leave
an empty distribution.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import torch

from engine.knobs import ParamError
from engine.model import LoadedModel

_TOKENIZERS: dict[int, Any] = {}
_LOCK = threading.Lock()


def _ll_tokenizer(lm: LoadedModel):
    # Building llguidance's view of the vocabulary takes ~0.3 s: once per model.
    import llguidance.hf

    with _LOCK:
        key = id(lm.tokenizer)
        if key not in _TOKENIZERS:
            _TOKENIZERS[key] = llguidance.hf.from_tokenizer(
                lm.tokenizer, n_vocab=lm.vocab_size, eos_token=sorted(lm.eos_ids)[0]
            )
        return _TOKENIZERS[key]


class Grammar:
    """A compiled-on-demand llguidance grammar plus a name for the UI ("json_schema", "tool call")."""

    def __init__(self, grammar: str, label: str, param: str):
        self.grammar = grammar
        self.label = label
        self.param = param  # the request field the grammar came from, for error messages

    @classmethod
    def json_schema(cls, schema: dict, label: str = "json_schema", param: str = "response_format") -> "Grammar":
        import llguidance

        try:
            grammar = llguidance.LLMatcher.grammar_from_json_schema(schema, defaults={"whitespace_flexible": False})
        except ValueError as e:
            raise ParamError(param, f"{param}: not a usable JSON schema: {e}") from None
        return cls(grammar, label, param)

    @classmethod
    def lark(cls, lark: str, label: str, param: str) -> "Grammar":
        import llguidance

        return cls(llguidance.LLMatcher.grammar_from_lark(lark), label, param)

    def start(self, lm: LoadedModel, n: int) -> "Matchers":
        import llguidance

        lm.check_grammar(self.param)
        tokenizer = _ll_tokenizer(lm)
        error = llguidance.LLMatcher.validate_grammar(self.grammar, tokenizer)
        if error:
            raise ParamError(self.param, f"{self.param}: the grammar cannot be used: {error}")
        return Matchers([llguidance.LLMatcher(tokenizer, self.grammar, log_level=0) for _ in range(n)], lm.vocab_size)


class Matchers:
    """One grammar matcher per completion."""

    def __init__(self, matchers: list, vocab_size: int):
        self.matchers = matchers
        self.V = vocab_size

    def allowed(self, i: int) -> torch.Tensor:
        """(V,) bool: the tokens completion i may take next."""
        bits = np.frombuffer(self.matchers[i].compute_bitmask(), dtype=np.uint8)
        return torch.from_numpy(np.unpackbits(bits, bitorder="little")[: self.V].astype(bool))

    def consume(self, i: int, token: int) -> None:
        self.matchers[i].consume_token(token)

    def finished(self, i: int) -> bool:
        """The grammar is complete and allows nothing more (only end of sequence)."""
        return self.matchers[i].is_stopped()
