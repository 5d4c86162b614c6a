"""Side-by-side throughput: this step-wise, recording generator vs transformers' generate().

Same process, same model, prompt and settings (every sampler stage on, recording on), interleaved
rounds so the machine's noise hits both alike. Prints tokens/s and ratios; asserts nothing about time.

    .venv/bin/python bench/bench_generate.py [--tokens 64] [--rounds 3] [--dtypes auto,float32]
"""

from __future__ import annotations

import argparse
import os
import pickle
import sys
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from engine.generator import Generation  # noqa: E402
from engine.knobs import SamplingParams  # noqa: E402
from engine.model import load_model  # noqa: E402

PROMPT = [{"role": "user", "content": "Write a short story about a robot who learns to paint."}]
KNOBS = dict(temperature=0.8, top_k=50, top_p=0.95, min_p=0.02, repetition_penalty=1.1)


def ours(lm, ids, n, tokens):
    eos = {str(t): -100 for t in lm.eos_ids}  # run the full length, as min_new_tokens does for generate()
    params = SamplingParams.build(**KNOBS, presence_penalty=0.3, frequency_penalty=0.3, logit_bias=eos,
                                  n=n, seed=0, max_tokens=tokens)
    gen = Generation(lm, ids, params)
    start = time.perf_counter()
    for _ in gen:
        pass
    return gen.completion_tokens / (time.perf_counter() - start)


def theirs(lm, ids, n, tokens):
    x = torch.tensor([ids], device=lm.device)
    start = time.perf_counter()
    with torch.inference_mode():
        out = lm.model.generate(x, attention_mask=torch.ones_like(x), do_sample=True, num_return_sequences=n,
                                max_new_tokens=tokens, min_new_tokens=tokens, pad_token_id=min(lm.eos_ids), **KNOBS)
    return (out.shape[1] - x.shape[1]) * n / (time.perf_counter() - start)


def trace_memory(lm, ids, tokens=512):
    params = SamplingParams.build(**KNOBS, logit_bias={str(t): -100 for t in lm.eos_ids}, seed=0, max_tokens=tokens)
    gen = Generation(lm, ids, params)
    tracemalloc.start()
    for _ in gen:
        pass
    retained, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return gen.completion_tokens, retained, peak, len(pickle.dumps(gen.completions))


def record_peak(lm, rows: int = 128, steps: int = 3) -> tuple[float, float]:
    """Peak extra resident memory (MiB) while one step of `rows` rows is recorded with every stage on,
    and the time it takes (ms). top_k 4000 keeps thousands of survivors, the recorder's worst case (its
    compact supports reach 4096 tokens). Torch's CPU tensors are invisible to tracemalloc, so a thread
    samples the process's resident set while record() runs."""
    import threading

    from engine.sampler import SamplerContext, draw, run_pipeline
    from engine.trace import record

    V = lm.vocab_size
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(rows, V, generator=g) * 3
    params = SamplingParams.build(**{**KNOBS, "top_k": 4000, "top_p": 1.0, "min_p": 0.0}, presence_penalty=0.3, frequency_penalty=0.3)
    seen = torch.zeros(rows, V, dtype=torch.bool)
    seen[:, :200] = True
    ctx = SamplerContext.of(params, seen, torch.zeros(rows, V))
    stages = run_pipeline(logits, ctx)
    tokens, landing = draw(stages[-1][1], torch.rand(rows, dtype=torch.float64), torch.zeros(rows, dtype=torch.bool))
    page = os.sysconf("SC_PAGE_SIZE")

    def rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * page

    peak, done = [0], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], rss())

    record(stages, tokens, landing, 20)  # warm-up: allocator caches
    base = rss()
    watcher = threading.Thread(target=sample)
    watcher.start()
    start = time.perf_counter()
    for _ in range(steps):
        record(stages, tokens, landing, 20)
    seconds = (time.perf_counter() - start) / steps
    done.set()
    watcher.join()
    return max(0, peak[0] - base) / 2**20, seconds * 1e3


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--dtypes", default="auto,float32")
    ap.add_argument("--skip-memory", action="store_true")
    args = ap.parse_args()
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.tokens} new tokens, best of {args.rounds} rounds")
    for dtype in args.dtypes.split(","):
        lm = load_model(dtype=dtype)
        ids = lm.encode_chat(PROMPT)
        name = str(lm.dtype).removeprefix("torch.") + (" (app default)" if dtype == "auto" else "")
        ours(lm, ids, 1, 8), theirs(lm, ids, 1, 8)  # warm-up
        best = {}
        for _ in range(args.rounds):
            for n in (1, 8):
                for who, fn in (("ours", ours), ("generate", theirs)):
                    tps = fn(lm, ids, n, args.tokens)
                    best[who, n] = max(best.get((who, n), 0.0), tps)
        print(f"\n{name} on {lm.device}")
        print(f"  n=1: ours {best['ours', 1]:7.1f} tok/s   generate {best['generate', 1]:7.1f} tok/s   ratio {best['ours', 1] / best['generate', 1]:.2f}x")
        print(f"  n=8: ours {best['ours', 8]:7.1f} tok/s   generate {best['generate', 8]:7.1f} tok/s   ratio {best['ours', 8] / best['generate', 8]:.2f}x")
        print(f"  ours n=8 total throughput / n=1: {best['ours', 8] / best['ours', 1]:.2f}x")
        if not args.skip_memory and dtype == "auto":
            n_tok, retained, peak, pickled = trace_memory(lm, ids)
            print(f"  trace of {n_tok} tokens: {retained / 2**20:.2f} MiB retained (peak {peak / 2**20:.2f} MiB of Python/numpy allocations), {pickled / 2**20:.2f} MiB pickled")
            extra, ms = record_peak(lm)
            print(f"  recording one step of n=128 rows (every stage on, top_k 4000): peak {extra:.0f} MiB above the process's resident set, {ms:.0f} ms")


if __name__ == "__main__":
    main()
