"""A row alone in a forward pass computes its linear layers as a row among others.

The seed contract needs a row's logits not to depend on the rows beside it. In bfloat16 on the CPU,
oneDNN multiplies a single row (M = 1) by another kernel than two or more rows, and that kernel rounds
differently in some products: measured on this project's avx512_bf16 AMD EPYC (no AMX), SmolLM2's
down_proj (K = 1536) gave a row 0.0078 apart alone and beside another row, which moved the logits of the
next steps by up to 0.25 and changed a seeded request's text at its third token whenever a second
request joined. Every M from 2 to 64 gave the row the same bits as M = 2.

So when a linear layer gets a single row, it is computed on that row twice (M = 2) and the copy is
dropped. The cost is one concatenation per linear layer of a lone decode step; a lone step is memory
bound (the weights are read once either way). It is installed with public module hooks, on CPU models in
a 16-bit dtype only: float32's MKL path rounds by M everywhere (M = 2 and M = 3 agree, no others), which
a copy cannot fix; the README says what float32 keeps.
"""

from __future__ import annotations

import torch


_doubled: set[int] = set()  # the linear layers whose current call got a copy of its lone row


def _two_rows(module: torch.nn.Linear, args: tuple) -> tuple | None:
    (x,) = args
    if x.numel() != x.shape[-1]:  # more than one row: the kernel is already the many-row one
        return None
    _doubled.add(id(module))
    return (torch.cat([x, x], dim=0),)


def _first_row(module: torch.nn.Linear, args: tuple, out: torch.Tensor) -> torch.Tensor | None:
    if id(module) not in _doubled:
        return None
    _doubled.discard(id(module))
    return out[:1]


def install(model: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> bool:
    """Hook every linear layer of a CPU model in bfloat16 or float16. Returns whether it did."""
    if device.type != "cpu" or dtype not in (torch.bfloat16, torch.float16):
        return False
    for module in model.modules():
        if isinstance(module, torch.nn.Linear):
            module.register_forward_pre_hook(_two_rows)
            module.register_forward_hook(_first_row)
    return True
