"""A tiny fake language model and byte tokenizer: generator mechanics tested fast and exactly.

The fake model's next-token logits are a function of the whole history (prompt + output so far), so a
test scripts exactly what the "model" believes; its KV cache is just the token history per row.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Callable

import torch

from engine.model import LoadedModel

EOS = 0


class FakeTokenizer:
    """Each id stands for a fixed byte string; decoding joins bytes and replaces broken UTF-8."""

    def __init__(self, pieces: list[bytes], chat_template: str = ""):
        self.pieces = pieces
        self.eos_token_id = EOS
        self.chat_template = chat_template

    def encode(self, text: str, add_special_tokens=False) -> list[int]:
        """Greedy longest match over the pieces."""
        data, ids = text.encode(), []
        while data:
            i = max((i for i, p in enumerate(self.pieces) if p and data.startswith(p)), key=lambda i: len(self.pieces[i]))
            ids.append(i)
            data = data[len(self.pieces[i]) :]
        return ids

    def decode(self, ids, skip_special_tokens=False, clean_up_tokenization_spaces=False) -> str:
        return b"".join(self.pieces[i] for i in ids).decode("utf-8", errors="replace")

    def convert_ids_to_tokens(self, i):
        return self.pieces[i].decode("latin-1")

    def __len__(self):
        return len(self.pieces)


class FakeCache:
    def __init__(self, tokens: torch.Tensor):
        self.tokens = tokens  # (B, T)

    def batch_repeat_interleave(self, n: int) -> None:
        self.tokens = self.tokens.repeat_interleave(n, dim=0)

    def batch_select_indices(self, idx: torch.Tensor) -> None:
        self.tokens = self.tokens[idx]


class FakeModel(torch.nn.Module):
    def __init__(self, next_logits: Callable[[list[int]], torch.Tensor]):
        super().__init__()
        self.next_logits = next_logits
        self.forward_calls = 0
        self.rows_seen: list[int] = []  # batch size of every forward, to check rows are dropped

    def forward(self, input_ids, use_cache=True, past_key_values=None, logits_to_keep=0):
        self.forward_calls += 1
        self.rows_seen.append(input_ids.shape[0])
        if past_key_values is None:
            past_key_values = FakeCache(input_ids.clone())
        else:
            past_key_values.tokens = torch.cat([past_key_values.tokens, input_ids], dim=1)
        logits = torch.stack([self.next_logits(row.tolist()) for row in past_key_values.tokens])  # (B, V)
        return SimpleNamespace(logits=logits[:, None, :], past_key_values=past_key_values)


def fake_lm(next_logits, pieces: list[bytes], context_length: int = 64, chat_template: str = "") -> LoadedModel:
    return LoadedModel(
        model=FakeModel(next_logits),
        tokenizer=FakeTokenizer(pieces, chat_template),
        name="fake",
        device=torch.device("cpu"),
        dtype=torch.float32,
        context_length=context_length,
        eos_ids=frozenset({EOS}),
        vocab_size=len(pieces),
    )


def fixed(probs: list[float]) -> Callable[[list[int]], torch.Tensor]:
    """A model that always predicts the same distribution."""
    logits = torch.tensor(probs, dtype=torch.float32).log()
    return lambda history: logits


def script(tokens: list[int], vocab: int) -> Callable[[list[int]], torch.Tensor]:
    """A model that is certain of `tokens` in turn after the prompt, then of EOS."""

    def next_logits(history: list[int]) -> torch.Tensor:
        # The prompt of these tests is always the single token 1; what follows is the output.
        done = len(history) - 1
        out = torch.full((vocab,), -20.0)
        out[tokens[done] if done < len(tokens) else EOS] = 0.0
        return out

    return next_logits
