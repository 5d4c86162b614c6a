"""The logit lens on a long prefix: one forward pass with every layer read through the final norm and
head (engine/lens.py), against the plain forward pass over the same prefix. Prints the median time of
each, their ratio, and the peak memory the lens added; asserts nothing about time.

    .venv/bin/python bench/bench_lens.py [--tokens 512] [--rounds 3]

Peak memory: on CUDA torch's max_memory_allocated; on the CPU the process's resident high-water mark
(VmHWM, reset through /proc/self/clear_refs before each measurement).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine.lens import logit_lens  # noqa: E402
from engine.model import load_model  # noqa: E402


def rss_peak_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def reset_peak(device: torch.device) -> float:
    """Reset the peak counter; the memory in use now, MB."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        return torch.cuda.memory_allocated() / 2**20
    Path("/proc/self/clear_refs").write_text("5")
    return rss_mb()


def peak(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() / 2**20
    return rss_peak_mb()


def measure(mode: str, tokens: int, rounds: int) -> None:
    """In this process alone: the first call's peak memory above what the loaded model held, then the
    median time of `rounds` more calls. Prints one line: mode, ms, MB."""
    lm = load_model()
    torch.manual_seed(0)
    ids = torch.randint(100, lm.vocab_size, (tokens,)).tolist()

    def plain() -> None:
        with torch.inference_mode():
            lm.model(input_ids=torch.tensor([ids], device=lm.device), use_cache=False, logits_to_keep=1)

    def lens() -> None:
        logit_lens(lm.model, ids, token=ids[-1])

    fn = lens if mode == "lens" else plain
    before = reset_peak(lm.device)
    fn()
    mb = peak(lm.device) - before
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        fn()
        if lm.device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    print(f"{mode} {1000 * statistics.median(times):.1f} {mb:.1f} {lm.name}|{lm.device}|{str(lm.dtype).removeprefix('torch.')}|"
          f"{lm.model.config.num_hidden_layers}|{torch.get_num_threads()}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=512)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--only", choices=["plain", "lens"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.only:
        measure(args.only, args.tokens, args.rounds)
        return
    # Each in a fresh process, so that one's freed memory (kept by the allocator) cannot hide the other's peak.
    got = {}
    for mode in ("plain", "lens"):
        out = subprocess.run([sys.executable, __file__, "--only", mode, "--tokens", str(args.tokens), "--rounds",
                              str(args.rounds)], capture_output=True, text=True, check=True).stdout.split()
        got[mode] = (float(out[1]), float(out[2]))
        name, device, dtype, layers, threads = out[3].split("|")
    print(f"{name} ({layers} layers) on {device} as {dtype}, prefix of {args.tokens} tokens, {threads} threads")
    for mode, label in (("plain", "plain forward"), ("lens", "logit lens")):
        print(f"{label:14s} {got[mode][0]:8.1f} ms   peak +{got[mode][1]:7.1f} MB (first call, above the loaded model)")
    print(f"ratio: the lens takes {got['lens'][0] / got['plain'][0]:.2f}x the time of a plain forward over the prefix")


if __name__ == "__main__":
    main()
