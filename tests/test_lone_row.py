"""A lone row's linear layers compute as a row among others (engine/lone_row.py)."""

from __future__ import annotations

import torch

from engine import lone_row


def linear(dtype=torch.bfloat16) -> torch.nn.Linear:
    torch.manual_seed(0)
    return torch.nn.Linear(1536, 576, bias=False).to(dtype)


def test_a_lone_row_gets_the_bits_it_gets_beside_another_row():
    layer = linear()
    lone_row.install(layer, torch.device("cpu"), torch.bfloat16)
    for trial in range(20):
        x, other = torch.randn(2, 1, 1, 1536, dtype=torch.bfloat16) * (1 + trial)
        with torch.inference_mode():
            assert torch.equal(layer(x), layer(torch.cat([x, other]))[:1]), trial


def test_rows_of_a_real_batch_all_come_back():
    layer = linear()
    lone_row.install(layer, torch.device("cpu"), torch.bfloat16)
    for rows in (2, 3, 8):
        x = torch.randn(rows, 1, 1536, dtype=torch.bfloat16)
        with torch.inference_mode():
            assert layer(x).shape == (rows, 1, 576)
    with torch.inference_mode():
        assert layer(torch.randn(1, 1536, dtype=torch.bfloat16)).shape == (1, 576)


def test_only_16_bit_models_on_the_cpu_are_hooked():
    assert lone_row.install(linear(), torch.device("cpu"), torch.bfloat16)
    assert not lone_row.install(linear(torch.float32), torch.device("cpu"), torch.float32)
    assert not lone_row.install(linear(), torch.device("cuda"), torch.bfloat16)
    plain = linear(torch.float32)
    lone_row.install(plain, torch.device("cpu"), torch.float32)
    assert not plain._forward_pre_hooks
