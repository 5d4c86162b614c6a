"""What engine/lone_row.py costs: the decode forward of a row alone, with its linear layers computed on two
copies of the row (as the app does in bf16 on the CPU) and on the row itself, interleaved in one process.
Prints the median step time of each and their ratio; asserts nothing about time.

    .venv/bin/python bench/bench_lone_row.py [--steps 48] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine.batch import cache_of, forward  # noqa: E402
from engine.model import load_model  # noqa: E402


def hooks_off(model) -> list:
    """Take the lone-row hooks off every linear layer; returns them to put back."""
    taken = []
    for m in model.modules():
        if isinstance(m, torch.nn.Linear):
            taken.append((m, dict(m._forward_pre_hooks), dict(m._forward_hooks)))
            m._forward_pre_hooks.clear()
            m._forward_hooks.clear()
    return taken


def hooks_on(taken: list) -> None:
    for m, pre, post in taken:
        m._forward_pre_hooks.update(pre)
        m._forward_hooks.update(post)


def decode_ms(lm, steps: int) -> float:
    """Median ms of one decode step of one row after a 64-token prompt."""
    ids = torch.arange(100, 164)[None]
    with torch.inference_mode():
        out = forward(lm.model, ids, None, logits_to_keep=1)
        cache, token, times = cache_of(out), out.logits[:, -1].argmax(-1, keepdim=True), []
        for pos in range(64, 64 + steps):
            t = time.perf_counter()
            out = forward(lm.model, token, cache, position_ids=torch.tensor([[pos]]))
            times.append(time.perf_counter() - t)
            cache, token = cache_of(out), out.logits[:, -1].argmax(-1, keepdim=True)
    return 1000 * statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=48)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    lm = load_model()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {lm.dtype}, one row, {args.steps} steps")
    if not any(m._forward_pre_hooks for m in lm.model.modules() if isinstance(m, torch.nn.Linear)):
        print("lone_row is not installed for this model (float32 or not on the CPU): nothing to compare")
        return
    taken = hooks_off(lm.model)
    with_copy, plain = [], []
    for _ in range(args.rounds):
        hooks_on(taken)
        with_copy.append(decode_ms(lm, args.steps))
        taken = hooks_off(lm.model)
        plain.append(decode_ms(lm, args.steps))
    a, b = min(with_copy), min(plain)
    print(f"row alone, linear layers on two copies (the app): {a:.1f} ms/step")
    print(f"row alone, linear layers on the row itself:        {b:.1f} ms/step")
    print(f"cost of lone_row: {a / b:.2f}x")


if __name__ == "__main__":
    main()
