"""Remote mode against this server on loopback, next to local mode, in one run: tokens/s and bytes per step
of the whole vocabulary as JSON, as the base64 float32 extension, and the top 20 as JSON; then a
response_format run (a JSON array of colours) locally, over the whole vocabulary, and over the top 20 with
the grammar's allowed tokens asked for by id (vLLM's logprob_token_ids), with requests per step.

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

from engine.constraints import Grammar  # noqa: E402
from engine.generator import Generation  # noqa: E402
from engine.knobs import SamplingParams  # noqa: E402
from engine.model import load_model  # noqa: E402
from engine.remote import connect  # noqa: E402
from tests.serving import start_server  # noqa: E402

HELLO = [{"role": "user", "content": "Tell me a long story about a cat and a lighthouse."}]
# A grammar that cannot finish within the run: every run makes exactly --tokens tokens, each step's allowed set small.
COLOURS = {"type": "array", "items": {"enum": ["red", "green", "blue", "yellow"]}, "minItems": 200}


def timed(lm, prompt: list[int], params: SamplingParams, grammar: Grammar | None = None) -> tuple[float, int, int, int]:
    """(seconds, tokens, bytes received, requests) of one whole generation."""
    server = getattr(lm, "server", None)
    before = (server.received, server.requests) if server is not None else (0, 0)
    start = time.perf_counter()
    gen = Generation(lm, prompt, params, grammar=grammar)
    for _ in gen:
        pass
    seconds = time.perf_counter() - start
    after = (server.received, server.requests) if server is not None else (0, 0)
    return seconds, gen.completion_tokens, after[0] - before[0], after[1] - before[1]


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
    colours = Grammar.json_schema(COLOURS)
    grammar_params = SamplingParams.build(seed=1, n=args.n, max_tokens=args.tokens)  # no bias: the grammar cannot end
    with start_server("--max-logprobs", "-1", "--logprobs-mode", "raw_logits") as srv:
        def remote(binary: bool = True, top: int = -1, ids: bool = False):
            lm = connect(srv.url, local.name, tokenizer_object=local.tokenizer, binary=binary)
            if top >= 0:  # as a server started with --max-logprobs 20 connects (ids: one that answers logprob_token_ids)
                lm.logprobs, lm.token_ids = top, ids
            return lm

        # (model, grammar, knobs, the mode its ratio is to). The plain top-20 line asks for no ids, so the end
        # token's logit_bias stays in its rest (with ids it would cost a second request a step for that one id).
        modes = {
            "local": (local, None, params, "local"),
            "remote, whole vocabulary, JSON": (remote(binary=False), None, params, "local"),
            "remote, whole vocabulary, base64": (remote(), None, params, "local"),
            "remote, top-20, JSON": (remote(binary=False, top=20), None, params, "local"),
            "local, response_format": (local, colours, grammar_params, "local, response_format"),
            "remote, whole vocab, base64, resp_format": (remote(), colours, grammar_params, "local, response_format"),
            "remote, top-20 + ids, JSON, resp_format": (remote(binary=False, top=20, ids=True), colours, grammar_params,
                                                        "local, response_format"),
        }
        results: dict[str, list[tuple[float, int, int, int]]] = {m: [] for m in modes}
        # Warm-up: the server's first requests and this process's first steps.
        for k, (lm, grammar, knobs, _) in enumerate(modes.values()):
            timed(lm, prompt, knobs.with_(max_tokens=4, seed=1000 + k), grammar)
        # Every run its own seed: the server keeps the sequences it served (engine/kvstore.py), and a request
        # for a sequence it keeps costs no forward pass, so a repeated run would measure its cache.
        for r in range(args.rounds):
            for k, (name, (lm, grammar, knobs, _)) in enumerate(modes.items()):
                results[name].append(timed(lm, prompt, knobs.with_(seed=r * len(modes) + k), grammar))
    print(f"n = {args.n}, {args.tokens} tokens, {args.rounds} rounds, dtype {local.dtype}; "
          "client and server share this machine's cores")
    rates = {name: statistics.median(t / s for s, t, _, _ in runs) for name, runs in results.items()}
    for name, runs in results.items():
        base = modes[name][3]
        steps = args.tokens + 1  # a request for the prompt, then one a token
        per_step = statistics.median(b for _, _, b, _ in runs) / steps
        asks = statistics.median(q for _, _, _, q in runs) / steps
        extra = f", {per_step / 1024:8.1f} KiB, {asks:4.2f} requests per step" if per_step else ""
        print(f"  {name:40s} {rates[name]:6.2f} tokens/s  ({rates[name] / rates[base]:4.2f}x {base}){extra}")


if __name__ == "__main__":
    main()
