"""Issue 10's CPU question: would a static KV cache and torch.compile (Inductor) speed up the decode step
on this machine? Measures the model's forward pass for one decode step, side by side in one process:

- dynamic: a DynamicCache, eager (what the shared decode loop runs today);
- static: a StaticCache, eager;
- static + compile: a StaticCache with torch.compile(dynamic=False), compiled for each batch shape.

Prints the median step time over the steps after a warm-up, the first (compiling) step, and ratios
against dynamic. Asserts nothing about time.

    .venv/bin/python bench/bench_compile_cpu.py [--steps 48] [--rows 1,8]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
from transformers import DynamicCache, StaticCache  # noqa: E402

from engine.model import load_model  # noqa: E402

PROMPT = 64
KINDS = ("dynamic", "static", "static + compile")


def step_times(model, kind: str, rows: int, steps: int) -> tuple[float, float]:
    """(median ms of a decode step after 8 warm-up steps, ms of the first step) for greedy decoding."""
    ids = torch.randint(100, 1000, (rows, PROMPT), generator=torch.Generator().manual_seed(0))
    cache = (DynamicCache(config=model.config) if kind == "dynamic"
             else StaticCache(config=model.config, max_cache_len=PROMPT + steps + 8))
    forward = torch.compile(model, dynamic=False) if kind == "static + compile" else model
    times = []
    with torch.inference_mode():
        out = model(input_ids=ids, past_key_values=cache, use_cache=True,
                    position_ids=torch.arange(PROMPT)[None].expand(rows, PROMPT), cache_position=torch.arange(PROMPT))
        token = out.logits[:, -1].argmax(-1, keepdim=True)
        for s in range(steps):
            at = PROMPT + s
            start = time.perf_counter()
            out = forward(input_ids=token, past_key_values=cache, use_cache=True, position_ids=torch.full((rows, 1), at),
                          cache_position=torch.tensor([at]))
            token = out.logits[:, -1].argmax(-1, keepdim=True)
            times.append(time.perf_counter() - start)
    warm = sorted(times[8:])
    return warm[len(warm) // 2] * 1000, times[0] * 1000


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=48)
    ap.add_argument("--rows", default="1,8")
    args = ap.parse_args()
    lm = load_model()
    print(f"{lm.name} on {lm.device} as {str(lm.dtype).removeprefix('torch.')}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    print(f"| rows | {' | '.join(KINDS)} | compile (first step) |")
    print("|---|---|---|---|---|")
    for rows in (int(r) for r in args.rows.split(",")):
        results = {kind: step_times(lm.model, kind, rows, args.steps) for kind in KINDS}
        base = results["dynamic"][0]
        cells = [f"{ms:.1f} ms ({base / ms:.2f}x)" for ms, _ in results.values()]
        print(f"| {rows} | {' | '.join(cells)} | {results['static + compile'][1] / 1000:.0f} s |", flush=True)


if __name__ == "__main__":
    main()
