"""A tiny fake language model and byte tokenizer: generator mechanics tested fast and exactly.

The fake model's next-token logits are a function of the whole history (prompt + output so far), so a
test scripts exactly what the "model" believes; its KV cache is just the token history per row.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Callable

import torch
from transformers import DynamicCache

from engine.model import LoadedModel

EOS = 0


class FakeTokenizer:
    """Each id stands for a fixed byte string; decoding joins bytes and replaces broken UTF-8."""

    def __init__(self, pieces: list[bytes], chat_template: str = ""):
        self.pieces = pieces
        self.eos_token_id = EOS
        self.chat_template = chat_template

    def encode(self, text: str, add_special_tokens=False) -> list[int]:
        """Greedy longest match over the pieces; a byte no piece starts with is skipped."""
        data, ids = text.encode(), []
        while data:
            matches = [i for i, p in enumerate(self.pieces) if p and data.startswith(p)]
            if not matches:
                data = data[1:]
                continue
            i = max(matches, key=lambda i: len(self.pieces[i]))
            ids.append(i)
            data = data[len(self.pieces[i]) :]
        return ids

    def decode(self, ids, skip_special_tokens=False, clean_up_tokenization_spaces=False) -> str:
        return b"".join(self.pieces[i] for i in ids).decode("utf-8", errors="replace")

    def apply_chat_template(self, messages, add_generation_prompt=True, tokenize=True, return_dict=True, **kw):
        """A plain template: the contents one after another, then the assistant's turn (<p>)."""
        ids = [i for m in messages for i in self.encode(m["content"] or "")] + [1]
        return {"input_ids": ids}

    def convert_ids_to_tokens(self, i):
        return self.pieces[i].decode("latin-1")

    def __len__(self):
        return len(self.pieces)


class FakeModel(torch.nn.Module):
    """Its "KV cache" is a real transformers DynamicCache whose keys hold the token ids, so the engine's
    ragged batching (padding, joining, dropping, trimming) runs on it exactly as on a real model, and a
    mistake in the padding mask or the position ids shows as a wrong history."""

    def __init__(self, next_logits: Callable[[list[int]], torch.Tensor]):
        super().__init__()
        self.next_logits = next_logits
        self.forward_calls = 0
        self.rows_seen: list[int] = []  # batch size of every forward, to check rows are dropped

    def forward(self, input_ids, use_cache=True, past_key_values=None, logits_to_keep=0, attention_mask=None,
                position_ids=None):
        self.forward_calls += 1
        B, q = input_ids.shape
        self.rows_seen.append(B)
        cache = past_key_values if past_key_values is not None else DynamicCache()
        ids = input_ids.to(torch.float32)[:, None, :, None]  # (B, 1, q, 1)
        keys, _ = cache.update(ids, ids.clone(), 0)
        T = keys.shape[2]
        mask = torch.ones(B, T, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
        assert mask.shape == (B, T), f"padding mask {tuple(mask.shape)} for a cache of {(B, T)}"
        histories = [keys[b, 0, mask[b], 0].long().tolist() for b in range(B)]
        if position_ids is not None:  # a token's position is its place in its own row, padding excluded
            for b in range(B):
                want = list(range(len(histories[b]) - q, len(histories[b])))
                assert position_ids[b].tolist() == want, f"row {b}: positions {position_ids[b].tolist()}, expected {want}"
        logits = torch.stack([self.next_logits(h) for h in histories])  # (B, V)
        return SimpleNamespace(logits=logits[:, None, :], past_key_values=cache)


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


def chatty(vocab: int) -> Callable[[list[int]], torch.Tensor]:
    """A model whose logits over the first `vocab` ids depend on the whole history, with an end token
    likely enough that rows end at different steps."""

    def next_logits(history: list[int]) -> torch.Tensor:
        g = torch.Generator().manual_seed(sum((i + 1) * t for i, t in enumerate(history)) % 100003)
        out = torch.randn(vocab, generator=g) * 2.5
        out[EOS] = -1.5
        return out

    return next_logits


def outcome(gen) -> tuple:
    """What a finished Generation made: each completion's token ids, its texts and finish reasons."""
    return [[s.token_id for s in c] for c in gen.completions], gen.texts, gen.finish_reasons
