"""What the ZeroGPU mode costs against the shared loop, on this machine with the mode forced (each call's
request and every yield pass through pickle, the call on a thread of its own: playground/zerogpu.py
`pickled`), or on CUDA where there is one. Prints numbers and ratios; asserts nothing about time.

    .venv/bin/python bench/bench_zerogpu.py [--tokens 128] [--rounds 3] [--busy]

For n = 1 and n = 8 (one UI generate, completion 1's logits captured for the what-if, as the UI does;
the end token banned so every run makes all its tokens), interleaved rounds of the same job through the
shared loop (engine/scheduler.py) and through a forced GPU call:
  - tokens/s and time to first token (from submit to the first step's arrival), medians;
  - the pickled bytes of one call's yields (what ZeroGPU would carry back), with and without capture.
--busy runs a spinning process on one core meanwhile (TOOLCHAIN.md: OpenMP regions wait for a
descheduled thread, so a busy core is the common case on a shared CPU).
"""

from __future__ import annotations

import argparse
import pickle
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import app  # noqa: E402

# The app's thread policy, before torch loads (two spinning threads on a busy 2-core machine crawl).
print(app.configure_threads(app.parse_args([])), flush=True)

from engine.generator import Generation  # noqa: E402
from engine.knobs import SamplingParams  # noqa: E402
from engine.model import load_model  # noqa: E402
from engine.scheduler import Scheduler  # noqa: E402
from playground import zerogpu  # noqa: E402

PROMPT = [{"role": "user", "content": "Tell me a long story about a lighthouse keeper."}]


def job(lm, prompt_ids: list[int], n: int, tokens: int, capture: bool = True) -> Generation:
    eos = sorted(lm.eos_ids)[0]
    params = SamplingParams.build(n=n, max_tokens=tokens, seed=11, temperature=1.0, logit_bias={str(eos): -100})
    return Generation(lm, prompt_ids, params, capture=capture)


def timed(scheduler, gen: Generation) -> tuple[float, float]:
    """(seconds to the first step, tokens/s) of one job through a scheduler."""
    start = time.perf_counter()
    first = None
    for _ in scheduler.submit(gen):
        if first is None:
            first = time.perf_counter() - start
    total = time.perf_counter() - start
    return first, gen.completion_tokens / total


def yield_bytes(lm, prompt_ids: list[int], n: int, tokens: int, capture: bool) -> tuple[int, int]:
    """(pickled bytes of every yield of one call, of which the snapshots), as ZeroGPU would carry them."""
    zerogpu.register(lm)
    total = snaps = 0
    for updates in zerogpu.decode([zerogpu.GpuRequest.of(job(lm, prompt_ids, n, tokens, capture))], max_rows=n):
        total += len(pickle.dumps(updates))
        snaps += sum(len(pickle.dumps(u.snapshots)) for u in updates if u.snapshots)
    return total, snaps


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--busy", action="store_true", help="one core kept busy by another process meanwhile")
    args = ap.parse_args()
    lm = load_model()
    prompt_ids = lm.encode_chat(PROMPT)
    print(f"{lm.name} on {lm.device}, {str(lm.dtype).removeprefix('torch.')}; {len(prompt_ids)}-token prompt, "
          f"{args.tokens} new tokens, {args.rounds} rounds" + ("; one core busy" if args.busy else ""))

    for n in (1, 8):
        total, snaps = yield_bytes(lm, prompt_ids, n, args.tokens, capture=True)
        bare, _ = yield_bytes(lm, prompt_ids, n, args.tokens, capture=False)
        print(f"n={n}: one call's yields pickle to {total / 1e6:.2f} MB with completion 1's snapshots "
              f"({snaps / 1e6:.2f} MB of them, {snaps / args.tokens / 1e3:.0f} kB a step), {bare / 1e6:.2f} MB without "
              f"({bare / args.tokens / n / 1e3:.1f} kB a token)")

    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if args.busy else None
    try:
        shared, gpu = Scheduler(lm), zerogpu.GpuScheduler(lm, gpu=zerogpu.pickled)
        for n in (1, 8):
            timed(shared, job(lm, prompt_ids, n, 8))  # warm both paths (first forward, thread pools)
            timed(gpu, job(lm, prompt_ids, n, 8))
            runs: dict[str, list[tuple[float, float]]] = {"shared loop": [], "GPU call": []}
            for _ in range(args.rounds):
                runs["shared loop"].append(timed(shared, job(lm, prompt_ids, n, args.tokens)))
                runs["GPU call"].append(timed(gpu, job(lm, prompt_ids, n, args.tokens)))
            med = {k: (statistics.median(f for f, _ in v), statistics.median(r for _, r in v)) for k, v in runs.items()}
            for k, (first, rate) in med.items():
                print(f"n={n} {k:>11}: {rate:6.1f} tokens/s, first token after {1000 * first:6.0f} ms")
            (f0, r0), (f1, r1) = med["shared loop"], med["GPU call"]
            print(f"n={n}   GPU call / shared loop: tokens/s x{r1 / r0:.3f}, time to first token x{f1 / f0:.2f} "
                  f"(+{1000 * (f1 - f0):.0f} ms)")
        shared.close()
    finally:
        if busy is not None:
            busy.kill()


if __name__ == "__main__":
    main()
