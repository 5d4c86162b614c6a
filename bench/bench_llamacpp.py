"""A third-party server: llama.cpp's own llama-server on the embedded GGUF, seen as a remote.

It starts llama-server on the embedded model's GGUF file (the wheel's Q4_1 weights, which llama.cpp runs
as they are), connects the playground to it (engine/remote.py), and makes the same greedy completion of
one chat prompt twice: through the playground's own step loop (one request a step, the server's raw
distribution, the playground's pipeline and argmax), and by llama-server itself (temperature 0). It prints
both texts, whether they are equal, and tokens/s of each. Asserts nothing about time.

    .venv/bin/python bench/bench_llamacpp.py --server PATH/TO/llama-server [--tokens 24]

llama-server is built from llama.cpp's sources: minutes on 2 cores, so not part of `make test`. Its copy
in the llama-cpp-python sdist works (pip download llama-cpp-python --no-deps; in vendor/llama.cpp):

    cmake -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF -DLLAMA_BUILD_SERVER=ON
    cmake --build build --target llama-server

(llama-cpp-python's own server, `python -m llama_cpp.server`, takes only text prompts on /v1/completions,
so it cannot drive a step loop: a text prompt is tokenised again at every step.)
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine.generator import Generation  # noqa: E402
from engine.knobs import SamplingParams  # noqa: E402
from engine.model import embedded_gguf  # noqa: E402
from engine.remote import connect  # noqa: E402
from tests.serving import free_port  # noqa: E402

MESSAGES = [{"role": "user", "content": "Write a short poem about the sea."}]
TOKENIZER = "HuggingFaceTB/SmolLM2-135M-Instruct"  # the embedded model's name: its tokenizer is found offline


def start(server: str, gguf: Path, port: int) -> subprocess.Popen:
    proc = subprocess.Popen([server, "-m", str(gguf), "--host", "127.0.0.1", "--port", str(port), "-c", "2048",
                             "--threads", "1", "--parallel", "1"], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"llama-server exited with {proc.returncode}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    proc.kill()
    raise SystemExit("llama-server was not ready after 120 s")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--server", required=True, help="the llama-server binary")
    ap.add_argument("--tokens", type=int, default=24)
    args = ap.parse_args()
    gguf = embedded_gguf()
    if gguf is None:
        raise SystemExit("the embedded model's wheel is not installed (bash scripts/setup.sh)")
    port = free_port()
    proc = start(args.server, gguf, port)
    url = f"http://127.0.0.1:{port}"
    try:
        name = httpx.get(url + "/v1/models", timeout=30).json()["data"][0]["id"]
        lm = connect(url, name, tokenizer=TOKENIZER)
        print(f"connected: {lm.name} ({lm.server.dialect} dialect, context {lm.context_length})", flush=True)
        prompt = lm.encode_chat(MESSAGES)
        gen = Generation(lm, prompt, SamplingParams.build(temperature=0.0, max_tokens=args.tokens, seed=1))
        t0, received = time.perf_counter(), lm.server.received
        for _ in gen:
            pass
        remote_s, received = time.perf_counter() - t0, lm.server.received - received
        mine = [s.token_id for s in gen.completions[0]]
        t0 = time.perf_counter()
        own = httpx.post(url + "/completion", json={"prompt": prompt, "n_predict": len(mine), "temperature": 0.0,
                                                    "top_k": 1, "cache_prompt": False, "return_tokens": True},
                         timeout=300).json()
        own_s = time.perf_counter() - t0
        theirs = own.get("tokens") or []
        print(f"playground's step loop on llama-server: {len(mine)} tokens in {remote_s:.2f} s "
              f"({len(mine) / remote_s:.1f} tok/s, {received / max(len(mine), 1) / 2**20:.1f} MiB a step)\n  {gen.texts[0]!r}")
        print(f"llama-server's own greedy:               {len(theirs)} tokens in {own_s:.2f} s "
              f"({len(theirs) / max(own_s, 1e-9):.1f} tok/s)\n  {own.get('content', '')!r}")
        same = mine == theirs[: len(mine)]
        print(f"same tokens: {same}" + ("" if same else f"\n  mine   {mine}\n  theirs {theirs}"))
    finally:
        proc.terminate()
        proc.wait(timeout=10)


if __name__ == "__main__":
    main()
