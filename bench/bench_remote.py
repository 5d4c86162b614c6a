"""Remote mode against this server on loopback, next to local mode, in one run: tokens/s and bytes per step
of the whole vocabulary as JSON, as the base64 float32 extension, and the top 20 as JSON.

A second app process serves the same embedded model with `--max-logprobs -1 --logprobs-mode raw_logits`;
this process decodes the same seeded request locally and through it (engine/remote.py), interleaved over
rounds, and prints medians and each mode's ratio to local. Both processes share this machine's cores, so
a remote step pays for the client's work and the server's on the same cores. Asserts nothing about time.

    .venv/bin/python bench/bench_remote.py [--tokens 32] [--rounds 3] [--n 1]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import app  # noqa: E402

# This process computes local mode with the app's own thread policy (as the server process does): on a busy
# machine torch's default of one thread a core waits for descheduled OpenMP threads (engine/threads.py).
print(app.configure_threads(app.parse_args([])), flush=True)

from engine.generator import Generation  # noqa: E402
from engine.knobs import SamplingParams  # noqa: E402
from engine.model import load_model  # noqa: E402
from engine.remote import connect  # noqa: E402
from tests.serving import start_server  # noqa: E402

HELLO = [{"role": "user", "content": "Tell me a long story about a cat and a lighthouse."}]


def timed(lm, prompt: list[int], params: SamplingParams) -> tuple[float, int, int]:
    """(seconds, tokens, bytes received) of one whole generation."""
    server = getattr(lm, "server", None)
    before = server.received if server is not None else 0
    start = time.perf_counter()
    gen = Generation(lm, prompt, params)
    for _ in gen:
        pass
    seconds = time.perf_counter() - start
    return seconds, gen.completion_tokens, (server.received - before) if server is not None else 0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--n", type=int, default=1)
    args = ap.parse_args()

    local = load_model()
    prompt = local.encode_chat(HELLO)
    # The end token pushed out of reach: every run makes exactly --tokens tokens.
    params = SamplingParams.build(seed=1, n=args.n, max_tokens=args.tokens, logit_bias={str(min(local.eos_ids)): -100})
    with start_server("--max-logprobs", "-1", "--logprobs-mode", "raw_logits") as srv:
        modes = {
            "local": local,
            "remote, whole vocabulary, JSON": connect(srv.url, local.name, tokenizer_object=local.tokenizer, binary=False),
            "remote, whole vocabulary, base64": connect(srv.url, local.name, tokenizer_object=local.tokenizer),
            "remote, top-20, JSON": connect(srv.url, local.name, tokenizer_object=local.tokenizer, binary=False),
        }
        modes["remote, top-20, JSON"].logprobs = 20
        results: dict[str, list[tuple[float, int, int]]] = {m: [] for m in modes}
        for k, lm in enumerate(modes.values()):  # warm-up: the server's first requests and this process's first steps
            timed(lm, prompt, params.with_(max_tokens=4, seed=1000 + k))
        # Every run its own seed: the server keeps the sequences it served (engine/kvstore.py), and a request
        # for a sequence it keeps costs no forward pass, so a repeated run would measure its cache.
        for r in range(args.rounds):
            for k, (name, lm) in enumerate(modes.items()):
                results[name].append(timed(lm, prompt, params.with_(seed=r * len(modes) + k)))
    print(f"n = {args.n}, {args.tokens} tokens, {args.rounds} rounds, dtype {local.dtype}; "
          "client and server share this machine's cores")
    base = statistics.median(t / s for s, t, _ in results["local"])
    for name, runs in results.items():
        rate = statistics.median(t / s for s, t, _ in runs)
        steps = args.tokens + 1  # a request for the prompt, then one a token
        per_step = statistics.median(b for _, _, b in runs) / steps
        extra = f", {per_step / 1024:8.1f} KiB per step" if per_step else ""
        print(f"  {name:34s} {rate:6.2f} tokens/s  ({rate / base:4.2f}x local){extra}")


if __name__ == "__main__":
    main()
