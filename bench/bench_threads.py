"""Decode speed by intra-op thread count and OpenMP wait policy, through the real /v1 API.

For each thread count and wait policy it starts a fresh server (OMP_WAIT_POLICY is read once, when
libgomp loads with torch, so it cannot change inside a process) and streams, with logprobs on:
one request of n = 1, one request of n = 8, and 8 clients of n = 1 at once. Each runs on a quiet
machine and again with one core busy (a bounded busy-loop process that the bench starts and stops).
It prints tokens/s, each figure's ratio to the first configuration's, and busy / quiet per configuration.
Asserts nothing about time (the machine may be shared: "quiet" is only as quiet as the machine is).

    .venv/bin/python bench/bench_threads.py [--threads 1,2] [--policies passive,active] [--tokens 48]

A policy of `unset` leaves OMP_WAIT_POLICY out of the server's environment: whatever app.py does then.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import openai  # noqa: E402

from tests.serving import start_server  # noqa: E402

MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
NO_EOS = {"2": -100}  # every completion runs its full length
CASES = [("n=1", 1, 1), ("n=8", 8, 1), ("8 clients", 1, 8)]  # (label, n per request, clients at once)


@contextlib.contextmanager
def busy_core(on: bool, limit_s: float = 600.0):
    """One core kept busy by a Python loop in its own process (it stops by itself after `limit_s`)."""
    if not on:
        yield
        return
    loop = f"import time\nend = time.time() + {limit_s}\nwhile time.time() < end: pass"
    proc = subprocess.Popen([sys.executable, "-c", loop])
    try:
        time.sleep(0.5)  # let it take its core
        yield
    finally:
        proc.terminate()
        proc.wait()


def stream(client: openai.OpenAI, n: int, tokens: int, seed: int) -> int:
    """Tokens received in one streamed request of `n` completions."""
    count = 0
    chunks = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Write a short story about a robot who learns to paint."}],
        max_tokens=tokens, n=n, seed=seed, stream=True, logprobs=True, logit_bias=NO_EOS)
    for chunk in chunks:
        for c in chunk.choices:
            if c.logprobs and c.logprobs.content:
                count += len(c.logprobs.content)
    return count


def tokens_per_s(client: openai.OpenAI, n: int, clients: int, tokens: int) -> float:
    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        counts = list(pool.map(lambda k: stream(client, n, tokens, seed=k), range(clients)))
    return sum(counts) / (time.perf_counter() - start)


@contextlib.contextmanager
def server_with(threads: int, policy: str):
    saved = os.environ.pop("OMP_WAIT_POLICY", None)  # the server's environment is the bench's plus `env`
    try:
        env = {} if policy == "unset" else {"OMP_WAIT_POLICY": policy}
        with start_server("--threads", str(threads), env=env) as server:
            yield server
    finally:
        if saved is not None:
            os.environ["OMP_WAIT_POLICY"] = saved


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", default="1,2", help="intra-op thread counts, one server each")
    ap.add_argument("--policies", default="passive,active", help="OMP_WAIT_POLICY values (or unset), one server each")
    ap.add_argument("--tokens", type=int, default=48, help="new tokens per completion")
    args = ap.parse_args()
    flags = sorted({f for line in open("/proc/cpuinfo") if line.startswith("flags") for f in line.split()
                    if f in ("avx2", "avx512f", "avx512_bf16")})
    print(f"{os.cpu_count()} cores, CPU flags {' '.join(flags) or '(none of avx2/avx512)'}; "
          f"{args.tokens} tokens per completion, streamed with logprobs; tokens/s", flush=True)
    print(f"{'threads':>7} {'policy':>8} {'load':>5} " + " ".join(f"{c[0]:>10}" for c in CASES), flush=True)
    rows = {}
    for threads in [int(t) for t in args.threads.split(",")]:
        for policy in args.policies.split(","):
            with server_with(threads, policy) as server:
                client = openai.OpenAI(base_url=server.api, api_key="unused", max_retries=0, timeout=900)
                stream(client, 8, 4, seed=0)  # warm-up: the first request's one-off costs stay out
                for load in ("quiet", "busy"):
                    with busy_core(load == "busy"):
                        figures = [tokens_per_s(client, n, clients, args.tokens) for _, n, clients in CASES]
                    rows[threads, policy, load] = figures
                    print(f"{threads:>7} {policy:>8} {load:>5} " + " ".join(f"{f:>10.1f}" for f in figures), flush=True)
    first = next(iter(rows))
    print(f"\nratio to {first[0]} thread(s), {first[1]}, same load:")
    for (threads, policy, load), figures in rows.items():
        base = rows[first[0], first[1], load]
        print(f"{threads:>7} {policy:>8} {load:>5} " + " ".join(f"{f / b:>10.2f}" for f, b in zip(figures, base)))
    print("\nbusy / quiet:")
    for (threads, policy, load), figures in rows.items():
        if load == "busy":
            quiet = rows[threads, policy, "quiet"]
            print(f"{threads:>7} {policy:>8} {'':>5} " + " ".join(f"{f / q:>10.2f}" for f, q in zip(figures, quiet)))


if __name__ == "__main__":
    main()
