"""The logit lens: what the model would predict if it stopped after each layer.

nostalgebraist's "interpreting GPT: the logit lens" (2020): take the residual stream after layer l, apply
the model's own final norm and output head to it, and read the distribution as if it were the last
layer's. The last layer's row is then the model's real next-token distribution (the raw one, before any
sampler stage); earlier rows are hidden states read through a head that was trained only for the last,
so they are a picture of what the model "has in mind", not logits it ever sampled from.

    parts = lens_parts(model)                       # LensUnsupported for another architecture
    out = logit_lens(model, input_ids, token=chosen) # one forward pass over the prefix

It works for decoder-only transformers laid out as Llama, Mistral and Qwen are in transformers: a
ForCausalLM whose decoder (`get_decoder()`) holds `layers` and a final `norm`, and whose output head is
`get_output_embeddings()`. A model whose logits are also scaled or soft-capped after the head (Gemma 2,
Cohere) would get a wrong last row, so it is refused, as is any other layout.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

LAST_POSITIONS = 8  # the heatmap's columns: the prefix's last tokens
TOP = 5  # candidates per cell, for the hover


class LensUnsupported(ValueError):
    """The model is not laid out as a Llama/Mistral/Qwen-style decoder: no lens for it."""


@dataclass(frozen=True)
class LensParts:
    layers: torch.nn.ModuleList  # the decoder layers, in order
    norm: torch.nn.Module  # the final norm, applied before the head
    head: torch.nn.Module  # hidden -> vocabulary logits


@dataclass(frozen=True)
class Lens:
    """The lens over the prefix's last P positions, for the embeddings (row 0) and after each of L layers."""

    top_ids: torch.Tensor  # (L+1, P, TOP) int64, each row's most likely next tokens at each position
    top_probs: torch.Tensor  # (L+1, P, TOP) float32
    token_rank: torch.Tensor | None  # (L+1,) int64, 1 = most likely: the chosen token at the last position
    token_prob: torch.Tensor | None  # (L+1,) float32


def lens_parts(model: torch.nn.Module) -> LensParts:
    """The decoder layers, final norm and head of a Llama-, Mistral- or Qwen-shaped model; LensUnsupported
    naming the architecture otherwise."""
    config = getattr(model, "config", None)
    name = type(model).__name__
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
    layers = getattr(decoder, "layers", None)
    norm = getattr(decoder, "norm", None)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if not isinstance(layers, torch.nn.ModuleList) or not isinstance(norm, torch.nn.Module) or head is None:
        raise LensUnsupported(f"the logit lens needs a Llama-, Mistral- or Qwen-shaped model (decoder layers, a final "
                              f"norm, an output head); {name} is laid out otherwise")
    for attr in ("final_logit_softcapping", "logit_scale"):
        if getattr(config, attr, None) not in (None, 1.0):
            raise LensUnsupported(f"the logit lens reads the head's logits as they are, but {name} also applies "
                                  f"{attr} = {getattr(config, attr)} after its head")
    return LensParts(layers, norm, head)


@torch.inference_mode()
def logit_lens(model: torch.nn.Module, input_ids: list[int], token: int | None = None,
               last: int = LAST_POSITIONS, top: int = TOP) -> Lens:
    """One forward pass over `input_ids`, reading the residual stream before the first layer and after
    every layer (forward hooks, so only the last `last` positions are kept), each read through the final
    norm and head. `token`: the token actually chosen after the prefix, whose rank each layer gives."""
    parts = lens_parts(model)
    device = next(model.parameters()).device
    ids = torch.tensor([input_ids], device=device)  # (1, T)
    streams: list[torch.Tensor] = []  # L+1 of (P, H)

    def keep(hidden: torch.Tensor) -> None:
        streams.append(hidden[0, -last:].clone())

    hooks = [parts.layers[0].register_forward_pre_hook(lambda m, args, kwargs: keep(args[0] if args else kwargs["hidden_states"]),
                                                       with_kwargs=True)]
    # A decoder layer returns its hidden states, or a tuple that starts with them (older layouts).
    hooks += [layer.register_forward_hook(lambda m, args, out: keep(out[0] if isinstance(out, tuple) else out))
              for layer in parts.layers]
    try:
        model(input_ids=ids, use_cache=False, logits_to_keep=1)
    finally:
        for h in hooks:
            h.remove()
    # One layer at a time, top-k and ranks on the logits: a (P, V) tensor at a time. Measured on SmolLM2
    # (31 rows x 8 positions x 49,152 tokens, bf16, a 512-token prefix), peak memory above the loaded model:
    # +29 to +57 MB this way (a busy machine's resident-memory noise); +46 to +114 MB with one head matmul
    # over every row (its bf16 GEMM may pack a copy of the head's weights); +131 MB with a float32 softmax
    # over every row at once.
    ids_, probs_, ranks, chosen_probs = [], [], [], []
    for hidden in streams:
        logits = parts.head(parts.norm(hidden)).float()  # (P, V)
        norm = logits.logsumexp(dim=-1, keepdim=True)  # (P, 1)
        top_logits, top_ids = logits.topk(min(top, logits.shape[-1]), dim=-1)  # (P, top)
        ids_.append(top_ids)
        probs_.append((top_logits - norm).exp())
        if token is not None:
            chosen = logits[-1, token]  # the next token's logit after the whole prefix
            chosen_probs.append((chosen - norm[-1, 0]).exp())
            ranks.append((logits[-1] > chosen).sum() + 1)
    return Lens(torch.stack(ids_).cpu(), torch.stack(probs_).cpu(),
                torch.stack(ranks).cpu() if ranks else None, torch.stack(chosen_probs).cpu() if ranks else None)
