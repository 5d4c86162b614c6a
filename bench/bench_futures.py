"""Many futures on the embedded model: N futures x k tokens from one step of a run, as the UI draws them
(one n=N job in the shared decode loop), against one future alone. Prints times and their ratio;
asserts nothing about time.

    .venv/bin/python bench/bench_futures.py [--n 64] [--k 8] [--rounds 3] [--busy]

--busy keeps one core spinning in another process meanwhile (a 2-core machine shared with anything).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine.knobs import SamplingParams  # noqa: E402
from engine.model import load_model  # noqa: E402
from engine.scheduler import Limits, Scheduler  # noqa: E402
from playground import futures, ui_runs  # noqa: E402


def a_run(lm):
    gen, run = ui_runs.start(lm, [{"role": "user", "content": "Write a short poem about the sea."}],
                             SamplingParams.build(max_tokens=16, seed=4, temperature=0.8), "bench")
    for run in ui_runs.advance(lm, gen, run, every_s=1e9):
        pass
    return run


def seconds(lm, scheduler, run, n: int, k: int) -> tuple[float, int]:
    gen = futures.start(lm, run, 0, 4, n, k)
    t = time.perf_counter()
    for _ in futures.grow(scheduler, gen, every_s=1.0):
        pass
    return time.perf_counter() - t, sum(len(c) for c in gen.completions)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--busy", action="store_true")
    args = ap.parse_args()
    lm = load_model()
    run = a_run(lm)
    scheduler = Scheduler(lm, Limits())
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if args.busy else None
    try:
        seconds(lm, scheduler, run, 2, 2)  # warm-up
        many, one = [], []
        for _ in range(args.rounds):
            many.append(seconds(lm, scheduler, run, args.n, args.k))
            one.append(seconds(lm, scheduler, run, 1, args.k))
    finally:
        if spinner is not None:
            spinner.kill()
        scheduler.close()
    t_many = statistics.median(t for t, _ in many)
    t_one = statistics.median(t for t, _ in one)
    tokens = many[0][1]
    print(f"{lm.name} on {lm.device} as {str(lm.dtype).removeprefix('torch.')}, prompt {len(run['prompt_ids'])} tokens "
          f"+ 4 earlier tokens{', one core busy elsewhere' if args.busy else ''}")
    print(f"{args.n} futures x {args.k} tokens: {t_many:.2f} s ({tokens} tokens, {tokens / t_many:.0f} tokens/s)")
    print(f"1 future x {args.k} tokens:  {t_one:.2f} s")
    print(f"ratio: {t_many / t_one:.1f}x the time of one future for {args.n}x the tokens")


if __name__ == "__main__":
    main()
