"""What one row-step costs a client that drives this server as its remote, on loopback: the server as a
subprocess (--max-logprobs -1 --logprobs-mode raw_logits), one client stepping a sequence through
/v1/completions (token prompt one token longer each request, max_tokens 1, KV reuse on). Per wire form:
the median ms per request (the client's wall time, parsing included) and the response's bytes.

- no logprobs: the server's own step, the floor;
- top-20 JSON; whole vocabulary as JSON with token-id names, and with text names;
- whole vocabulary as base64 float32 (the playground's extension).

Client and server share this machine's cores: say so beside the numbers. Asserts nothing about time.

    .venv/bin/python bench/bench_completions_wire.py [--steps 16]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx  # noqa: E402
import numpy as np  # noqa: E402

from playground.api_completions import decode_base64_entry  # noqa: E402
from tests.serving import start_server  # noqa: E402

FORMS = {
    "no logprobs": {},
    "top-20 JSON": {"logprobs": 20, "return_tokens_as_token_ids": True},
    "vocabulary JSON, token ids": {"logprobs": -1, "return_tokens_as_token_ids": True},
    "vocabulary JSON, text": {"logprobs": -1},
    "vocabulary base64 float32": {"logprobs": -1, "logprobs_format": "base64_float32"},
}


def next_token(choice: dict, vocab: int) -> int:
    """The client's own greedy pick from what came back (the server's draw when there is nothing)."""
    lp = choice["logprobs"]
    if lp is None:
        return -1
    if lp.get("top_logprobs_base64"):
        ids, values = decode_base64_entry(lp["top_logprobs_base64"][0], vocab)
        return int(ids[int(np.argmax(values))])
    top = lp["top_logprobs"][0]
    name = max(top, key=top.get)
    return int(name.removeprefix("token_id:")) if name.startswith("token_id:") else -1


def step(client: httpx.Client, ids: list[int], body: dict, vocab: int) -> tuple[float, int]:
    """One row-step: (seconds, response bytes); the sequence grows by the client's pick."""
    t = time.perf_counter()
    r = client.post("/v1/completions", json={"prompt": ids, "max_tokens": 1, "seed": 0, **body})
    choice = r.json()["choices"][0]
    seconds = time.perf_counter() - t
    token = next_token(choice, vocab)
    ids.append(token if token >= 0 else 198)  # no values to pick from: any token keeps the sequence growing
    return seconds, len(r.content)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=16)
    args = p.parse_args()
    with start_server("--max-logprobs", "-1", "--logprobs-mode", "raw_logits") as server:
        with httpx.Client(base_url=server.url, timeout=120) as client:
            prompt = client.post("/tokenize", json={"messages": [{"role": "user", "content": "Tell me about foxes."}]}).json()["tokens"]
            whole = client.post("/v1/completions", json={"prompt": prompt, "max_tokens": 1, "logprobs": -1,
                                                         "logprobs_format": "base64_float32"}).json()
            vocab = len(decode_base64_entry(whole["choices"][0]["logprobs"]["top_logprobs_base64"][0], 0)[1])
            client.post("/v1/completions", json={"prompt": prompt, "max_tokens": 1, "logprobs": -1})  # names table
            # Each form steps its own sequence (another's would be in the KV store already: no forward at all),
            # and the forms take turns, so a busy moment of this shared machine falls on all of them alike.
            seqs = {name: prompt[:-5] + [28 + k] + prompt[-5:] for k, name in enumerate(FORMS)}
            times: dict[str, list[float]] = {name: [] for name in FORMS}
            sizes: dict[str, list[int]] = {name: [] for name in FORMS}
            for _ in range(args.steps):
                for name, body in FORMS.items():
                    seconds, size = step(client, seqs[name], body, vocab)
                    times[name].append(seconds)
                    sizes[name].append(size)
            floor = statistics.median(times["no logprobs"][1:])
            print(f"{'form':30s} {'ms/step':>8s} {'bytes/step':>11s} {'x floor':>8s}")
            for name in FORMS:
                ms = statistics.median(times[name][1:])
                print(f"{name:30s} {ms * 1000:8.1f} {int(statistics.median(sizes[name])):11,d} {ms / floor:8.2f}")

if __name__ == "__main__":
    main()
