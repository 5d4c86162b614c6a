"""What one row-step costs a client that drives this server as its remote, on loopback: the server as a
subprocess (--max-logprobs -1 --logprobs-mode raw_logits), one client stepping a sequence through
/v1/completions (token prompt one token longer each request, max_tokens 1, KV reuse on). Per wire form,
per request: the client's wall time (parsing included; median), the CPU time the server process and the
client spent (steadier than wall time on a busy machine; mean), and the response's bytes.

- no logprobs: the server's own step, the floor;
- top-20 JSON; whole vocabulary as JSON with token-id names, and with text names;
- whole vocabulary as base64 float32 (the playground's extension).

Client and server share this machine's cores: say so beside the numbers. Asserts nothing about time.

    .venv/bin/python bench/bench_completions_wire.py [--steps 16]
"""

from __future__ import annotations

import argparse
import os
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


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def step(client: httpx.Client, server_pid: int, ids: list[int], body: dict, vocab: int) -> tuple[float, float, float, int]:
    """One row-step: (wall s, server CPU s, client CPU s, response bytes); the sequence grows by the client's pick."""
    t, server_cpu, client_cpu = time.perf_counter(), cpu_seconds(server_pid), time.process_time()
    r = client.post("/v1/completions", json={"prompt": ids, "max_tokens": 1, "seed": 0, **body})
    token = next_token(r.json()["choices"][0], vocab)
    out = (time.perf_counter() - t, cpu_seconds(server_pid) - server_cpu, time.process_time() - client_cpu, len(r.content))
    ids.append(token if token >= 0 else 198)  # no values to pick from: any token keeps the sequence growing
    return out


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
            got: dict[str, list[tuple]] = {name: [] for name in FORMS}
            names = list(FORMS)
            for r in range(args.steps):
                for name in names[r % len(names):] + names[: r % len(names)]:  # each round starts with another form
                    got[name].append(step(client, server.proc.pid, seqs[name], FORMS[name], vocab))
            # Wall time and bytes: medians. CPU time: means (/proc counts in 10 ms ticks; a mean resolves less).
            med = {name: [statistics.median(col) if k in (0, 3) else statistics.mean(col) for k, col in enumerate(zip(*rows[1:]))]
                   for name, rows in got.items()}
            floor = med["no logprobs"][0]
            print(f"{'form':30s} {'wall ms':>8s} {'x floor':>8s} {'server CPU ms':>14s} {'client CPU ms':>14s} {'bytes':>11s}")
            for name, (wall, server_cpu, client_cpu, size) in med.items():
                print(f"{name:30s} {wall * 1000:8.1f} {wall / floor:8.2f} {server_cpu * 1000:14.1f} "
                      f"{client_cpu * 1000:14.1f} {int(size):11,d}")

if __name__ == "__main__":
    main()
