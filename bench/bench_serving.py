"""Serving under concurrency: the app on a free loopback port, driven by the official openai client.

For 1, 4, 8, 16 and 32 concurrent clients (streaming, logprobs on, every sampler stage on, 64 tokens,
n = 1) it prints aggregate tokens/s and its ratio to one client's, p50/p95 latency and p50/p95 time to
first token, and how many requests failed or were refused. Then the seed contract under load: seeded
requests run alone, then all at once, and how many texts differ (bfloat16 and float32 servers).
Asserts nothing about time (the machine is shared and noisy).

    .venv/bin/python bench/bench_serving.py [--clients 1,4,8,16,32] [--tokens 64] [--dtypes auto,float32]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import openai  # noqa: E402

from tests.serving import start_server  # noqa: E402

MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
PROMPTS = ["Write a short story about a robot who learns to paint.", "Explain how a rainbow forms.",
           "List some facts about the moon.", "Describe your favourite meal in detail.",
           "What would you pack for a week at the sea?", "Tell me about the history of bicycles."]
EVERY_STAGE = dict(temperature=0.8, top_p=0.95, presence_penalty=0.3, frequency_penalty=0.3,
                   logit_bias={"2": -100},  # no end token: every request runs its full length
                   extra_body={"top_k": 50, "min_p": 0.02, "repetition_penalty": 1.1})


def one_request(client: openai.OpenAI, k: int, tokens: int, seed: int | None = None) -> dict:
    start = time.perf_counter()
    first, text, count = None, "", 0
    stream = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": PROMPTS[k % len(PROMPTS)]}], max_tokens=tokens,
        stream=True, logprobs=True, seed=seed, **EVERY_STAGE)
    for chunk in stream:
        for c in chunk.choices:
            if c.logprobs and c.logprobs.content:
                count += len(c.logprobs.content)
                first = first or time.perf_counter()
            text += c.delta.content or ""
    end = time.perf_counter()
    return {"latency": end - start, "ttft": (first or end) - start, "tokens": count, "text": text}


def sweep(url: str, clients: int, tokens: int, rounds: int) -> dict:
    """`clients` threads, each sending `rounds` requests one after another."""
    client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=600)
    results, errors = [], []
    lock = threading.Lock()

    def worker(c: int) -> None:
        for r in range(rounds):
            try:
                out = one_request(client, c * rounds + r, tokens)
                with lock:
                    results.append(out)
            except openai.APIStatusError as e:
                with lock:
                    errors.append(e.status_code)
            except Exception as e:  # noqa: BLE001 - counted and reported, never hidden
                with lock:
                    errors.append(type(e).__name__)

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(worker, range(clients)))
    wall = time.perf_counter() - start
    lat = sorted(r["latency"] for r in results)
    ttft = sorted(r["ttft"] for r in results)
    return {"tok_s": sum(r["tokens"] for r in results) / wall, "p50": _q(lat, 0.5), "p95": _q(lat, 0.95),
            "ttft50": _q(ttft, 0.5), "ttft95": _q(ttft, 0.95), "errors": len([e for e in errors if e != 429]),
            "refused": errors.count(429), "requests": len(results)}


def _q(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    return statistics.quantiles(values, n=100, method="inclusive")[int(q * 100) - 1] if len(values) > 1 else values[0]


def seeds_under_load(url: str, requests: int, tokens: int) -> tuple[int, float]:
    """Seeded requests alone, then all at once: (texts that differ, mean share of tokens before they part)."""
    client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=600)
    alone = [one_request(client, k, tokens, seed=k)["text"] for k in range(requests)]
    with ThreadPoolExecutor(requests) as pool:
        loaded = list(pool.map(lambda k: one_request(client, k, tokens, seed=k)["text"], range(requests)))
    differ = [(a, b) for a, b in zip(alone, loaded) if a != b]
    agree = [next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b))) / max(len(a), 1) for a, b in differ]
    return len(differ), (sum(agree) / len(agree) if agree else 1.0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", default="1,4,8,16,32")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=2, help="requests per client, one after another")
    ap.add_argument("--dtypes", default="auto,float32", help="server dtypes for the seed check (the sweep uses the first)")
    ap.add_argument("--seed-requests", type=int, default=16)
    args = ap.parse_args()
    dtypes = args.dtypes.split(",")
    for d, dtype in enumerate(dtypes):
        with start_server("--dtype", dtype) as server:
            one_request(openai.OpenAI(base_url=server.api, api_key="unused"), 0, 8)  # warm-up
            if d == 0:
                print(f"serving sweep: {args.tokens} tokens per request, n=1, streaming, logprobs, every stage on, "
                      f"{args.rounds} requests per client, server dtype {dtype}")
                print(f"{'clients':>7} {'tok/s':>8} {'x one':>6} {'p50 s':>7} {'p95 s':>7} {'ttft50':>7} {'ttft95':>7} {'errors':>6} {'429':>4}")
                base = None
                for c in [int(x) for x in args.clients.split(",")]:
                    r = sweep(server.api, c, args.tokens, args.rounds)
                    base = base or r
                    print(f"{c:>7} {r['tok_s']:>8.1f} {r['tok_s'] / base['tok_s']:>6.2f} {r['p50']:>7.2f} {r['p95']:>7.2f} "
                          f"{r['ttft50']:>7.2f} {r['ttft95']:>7.2f} {r['errors']:>6} {r['refused']:>4}", flush=True)
                print(f"  p50 latency at 8 clients / one client: see the rows above")
            differ, agree = seeds_under_load(server.api, args.seed_requests, args.tokens)
            print(f"seed check ({dtype} server): {differ} of {args.seed_requests} seeded texts differ between alone and "
                  f"{args.seed_requests} at once" + (f"; those agree for {agree:.0%} of their text before parting" if differ else ""),
                  flush=True)


if __name__ == "__main__":
    main()
