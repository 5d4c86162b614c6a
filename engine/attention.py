"""Attention for rows of different lengths that gives every row exactly what it gets alone.

Rows in the shared batch are left-padded (engine/batch.py). With a padding mask, PyTorch's scaled dot
product attention takes another kernel path than for an unpadded row (a mask, other key lengths, GQA
packed differently), and in bfloat16 that moved logits by up to 0.45, enough to change the token a
seed draws in most requests under load. Measured on this CPU, everything else in the forward pass is
already row-for-row identical in bfloat16 whatever the batch (the linear layers, the norms, the MLP).

So where rows differ in length, attention runs once per group of rows of equal length, on those rows'
own key and value columns with no mask: the very call a row alone makes. Where all rows have the same
length, nothing changes. The cost is one attention call per distinct length per layer (about +10% per
step at 8 rows of different lengths, +25% at 32, on this CPU).

It is installed only on models whose attention is PyTorch's SDPA; others keep the padding mask.
"""

from __future__ import annotations

import torch

NAME = "ragged_sdpa"  # the attention implementation's name in transformers' registry
_registered = False


def install(model) -> bool:
    """Use ragged attention in this model when it uses SDPA. Returns whether it does now."""
    global _registered
    config = getattr(model, "config", None)
    if getattr(config, "_attn_implementation", None) not in ("sdpa", NAME):
        return False
    if not _registered:
        from transformers import AttentionInterface, AttentionMaskInterface
        from transformers.masking_utils import sdpa_mask

        AttentionInterface.register(NAME, ragged_sdpa)
        AttentionMaskInterface.register(NAME, sdpa_mask)  # masks as for SDPA (prefill chunks, sliding windows)
        _registered = True
    model.set_attn_implementation(NAME)
    return True


def groups(lengths: list[int]) -> list[tuple[int, list[int]]] | None:
    """[(length, rows)] of the rows' key lengths for the next step; None when all are equal."""
    by_length: dict[int, list[int]] = {}
    for row, length in enumerate(lengths):
        by_length.setdefault(length, []).append(row)
    return None if len(by_length) == 1 else list(by_length.items())


def ragged_sdpa(module, query, key, value, attention_mask, ragged_rows=None, **kwargs):
    """transformers' SDPA attention; with `ragged_rows` ([(key length, rows)]), per group of rows on their
    own last `length` key columns. query: (B, H, q, D); key, value: (B, H_kv, W, D)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if ragged_rows is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    W = key.shape[2]
    outs, order = [], []
    for length, rows in ragged_rows:
        if len(rows) == 1:  # a view, like the row's own cache: no copy
            pick = slice(rows[0], rows[0] + 1)
        else:
            pick = torch.tensor(rows, device=query.device)
        out, _ = sdpa_attention_forward(module, query[pick], key[pick, :, W - length :], value[pick, :, W - length :],
                                        None, **kwargs)
        outs.append(out)  # (b, q, H, D)
        order += rows
    out = torch.cat(outs)
    inverse = torch.empty(len(order), dtype=torch.long, device=out.device)
    inverse[torch.tensor(order, device=out.device)] = torch.arange(len(order), device=out.device)
    return out[inverse], None
