"""The engine on a GPU, in one run: environment, throughput against transformers' generate(), and the
seed contract (a seeded job gives the same tokens alone and in a batch) through the shared Scheduler.

Made for a lent CUDA machine that has torch and transformers but no Gradio, HTTP stack or pytest, so it
imports only engine/ (and playground/api_format.py for the fingerprint, which needs no more). Each
section catches its own failure and prints the traceback, so one broken part does not cost the others
(device minutes are scarce). Prints a compact report; asserts nothing about time.

    python3 bench/bench_cuda.py                      # cuda where present: auto dtype (bf16) and float32
    python3 bench/bench_cuda.py --device cpu --tokens 16 --jobs 4 --ns 1,2 --rounds 1   # a quick check here

Per dtype:
  throughput  bench_generate's `ours` (the step-wise, recording generator) and `theirs` (generate(),
              do_sample, the same knobs), tokens/s at each n, best of --rounds interleaved rounds.
  seed        --jobs seeded jobs (different prompts, every sampler stage on, end token banned so each runs
              --tokens tokens), each submitted alone, then half of them at once, then all at once. For each
              pair of runs: how many token sequences differ and at which step they part, and how far the
              rows' raw logits (captured for every step) and chosen-token raw logprobs moved up to that step.
              On CUDA no lone-row hook is installed (engine/lone_row.py is for CPU bf16/fp16), so "alone"
              runs one-row matrix products and the batch many-row ones.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from bench.bench_generate import KNOBS, PROMPT, ours, theirs  # noqa: E402
from engine.generator import Generation  # noqa: E402
from engine.knobs import SamplingParams  # noqa: E402
from engine.model import LoadedModel, load_model, pick_device, pick_dtype  # noqa: E402
from engine.scheduler import Scheduler  # noqa: E402

PROMPTS = [
    "Write a short story about a robot who learns to paint.", "Explain how a rainbow forms.",
    "List some facts about the moon.", "Describe your favourite meal in detail.",
    "Why is the sky blue?", "Give me three tips for learning a language.",
    "Write a poem about autumn leaves.", "How does a bicycle stay upright?",
    "Tell me about the history of tea.", "What makes a good friend?",
    "Describe a city at night.", "Explain photosynthesis to a child.",
    "Write a letter to your future self.", "What are volcanoes made of?",
    "Invent a new board game and its rules.", "Describe the sound of rain on a roof.",
]
T0 = time.perf_counter()


def say(msg: str) -> None:
    print(f"[{time.perf_counter() - T0:6.1f}s] {msg}", flush=True)


def section(name: str, fn, *args):
    """fn(*args), or its traceback printed and None: the remaining sections still run."""
    say(f"-- {name}")
    try:
        return fn(*args)
    except Exception:
        print(traceback.format_exc(), flush=True)
        say(f"-- {name} FAILED (above); going on")
        return None


def environment(device: str) -> None:
    dev = pick_device(device)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    auto = str(pick_dtype(dev, "auto")).removeprefix("torch.")
    cuda = f"cuda {torch.version.cuda}, tf32 matmul {torch.backends.cuda.matmul.allow_tf32}" if dev.type == "cuda" else "no cuda"
    say(f"torch {torch.__version__}, {cuda}, device {dev} = {name}, load_model's auto dtype {auto}, "
        f"{torch.get_num_threads()} cpu threads")


def model_facts(lm: LoadedModel) -> None:
    hooked = any(m._forward_pre_hooks for m in lm.model.modules() if isinstance(m, torch.nn.Linear))
    say(f"{lm.name} on {lm.device} as {str(lm.dtype).removeprefix('torch.')}, loaded in {lm.load_seconds:.1f} s; "
        f"lone-row hooks (engine/lone_row.py) {'installed' if hooked else 'NOT installed: a lone row runs one-row kernels'}; "
        f"ragged attention {lm.ragged_attention}")


def fingerprint(lm: LoadedModel) -> None:
    from playground.api_format import fingerprint as fp

    say(f"system_fingerprint {fp(lm)}")


def sync(lm: LoadedModel) -> None:
    if lm.device.type == "cuda":
        torch.cuda.synchronize(lm.device)


def throughput(lm: LoadedModel, ns: list[int], tokens: int, rounds: int) -> None:
    ids = lm.encode_chat(PROMPT)
    if lm.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(lm.device)
    ours(lm, ids, 1, 8), theirs(lm, ids, 1, 8)  # warm-up (kernels, allocator)
    best: dict[tuple[str, int], float] = {}
    for r in range(rounds):
        for n in ns:
            for who, fn in (("ours", ours), ("generate", theirs)):
                sync(lm)
                best[who, n] = max(best.get((who, n), 0.0), fn(lm, ids, n, tokens))
        say(f"round {r + 1} of {rounds} done")
    for n in ns:
        o, g = best["ours", n], best["generate", n]
        print(f"  n={n:<3} ours {o:9.1f} tok/s   generate {g:9.1f} tok/s   ratio {o / g:.2f}x", flush=True)
    if lm.device.type == "cuda":
        print(f"  peak GPU memory {torch.cuda.max_memory_allocated(lm.device) / 2**30:.2f} GiB", flush=True)


def job(lm: LoadedModel, k: int, tokens: int) -> Generation:
    eos = {str(t): -100 for t in lm.eos_ids}  # every job runs its full length, so they overlap in the batch
    params = SamplingParams.build(**KNOBS, presence_penalty=0.3, frequency_penalty=0.3, logit_bias=eos,
                                  seed=k, max_tokens=tokens)
    ids = lm.encode_chat([{"role": "user", "content": PROMPTS[k % len(PROMPTS)]}])
    return Generation(lm, ids, params, capture=True)


def run_together(scheduler: Scheduler, jobs: list[Generation]) -> list[Generation]:
    """Submit every job at once (they share the decode loop's forward passes) and wait for all."""
    tickets = [scheduler.submit(j) for j in jobs]
    for t in tickets:
        for _ in t:
            pass
    return jobs


def compare(a: Generation, b: Generation) -> tuple[int | None, float, float]:
    """(step where the token sequences part or None, max |raw logit| difference over the steps whose context
    is still the same (the parting step included), max |chosen-token raw logprob| difference over the steps
    that chose the same token)."""
    ta, tb = [s.token_id for s in a.completions[0]], [s.token_id for s in b.completions[0]]
    part = next((i for i, (x, y) in enumerate(zip(ta, tb)) if x != y), None if len(ta) == len(tb) else min(len(ta), len(tb)))
    same = len(ta) if part is None else part + 1  # the parting step's logits still come from the same context
    logit = max((float((a.snapshots[i].logits - b.snapshots[i].logits).abs().max())
                 for i in range(same) if i in a.snapshots and i in b.snapshots), default=math.nan)
    lp = max((abs(a.completions[0][i].raw_logprob - b.completions[0][i].raw_logprob)
              for i in range(min(same - (part is not None), len(ta), len(tb)))), default=math.nan)
    return part, logit, lp


def most(xs) -> float:
    """The largest of xs that is a number (a pair that parts at its first step has no chosen-token difference)."""
    return max((x for x in xs if not math.isnan(x)), default=math.nan)


def report(label: str, xs: list[Generation], ys: list[Generation]) -> None:
    results = [compare(a, b) for a, b in zip(xs, ys)]
    differ = [(k, p) for k, (p, _, _) in enumerate(results) if p is not None]
    texts = sum(a.texts != b.texts for a, b in zip(xs, ys))
    exact = sum(lg == 0.0 for _, lg, _ in results)
    print(f"  {label}: {len(differ)} of {len(xs)} token sequences differ ({texts} texts)"
          + (f", parting at steps {', '.join(f'job {k}: {p}' for k, p in differ)}" if differ else "")
          + f"; max |raw logit diff| (up to the parting step) {most(lg for _, lg, _ in results):.3g}, max |chosen raw logprob diff| "
          f"{most(lp for _, _, lp in results):.3g} (before any parting); {exact} of {len(xs)} rows bit-identical logits",
          flush=True)


def seed_contract(lm: LoadedModel, jobs: int, tokens: int) -> None:
    scheduler = Scheduler(lm)
    try:
        alone = [run_together(scheduler, [job(lm, k, tokens)])[0] for k in range(jobs)]
        say(f"{jobs} jobs alone done")
        half = run_together(scheduler, [job(lm, k, tokens) for k in range(jobs // 2)])
        say(f"{jobs // 2} jobs at once done")
        full = run_together(scheduler, [job(lm, k, tokens) for k in range(jobs)])
        say(f"{jobs} jobs at once done (most jobs in one step: {scheduler.stats['most_jobs_in_a_step']})")
    finally:
        scheduler.close()
    print(f"  seed contract, {jobs} seeded jobs x {tokens} tokens, every stage on, {str(lm.dtype).removeprefix('torch.')} "
          f"on {lm.device}:", flush=True)
    report(f"alone vs {jobs} at once", alone, full)
    report(f"alone vs {jobs // 2} at once", alone[: jobs // 2], half)
    report(f"{jobs // 2} at once vs {jobs} at once", half, full[: jobs // 2])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="auto", help="auto (cuda where present), cuda, cpu")
    ap.add_argument("--dtypes", default="auto,float32")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--jobs", type=int, default=16, help="seeded jobs for the seed contract")
    ap.add_argument("--ns", default="1,8,64", help="completions per request for the throughput")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--skip", default="", help="comma list of sections to skip: throughput, seed")
    args = ap.parse_args()
    torch.manual_seed(0)
    skip = set(filter(None, args.skip.split(",")))
    section("environment", environment, args.device)
    for dtype in args.dtypes.split(","):
        lm = section(f"load {dtype}", load_model, None, args.device, dtype, say)
        if lm is None:
            continue
        section("model", model_facts, lm)
        section("fingerprint", fingerprint, lm)
        if "throughput" not in skip:
            section(f"throughput {dtype}, {args.tokens} new tokens, every stage on", throughput, lm,
                    [int(n) for n in args.ns.split(",")], args.tokens, args.rounds)
        if "seed" not in skip:
            section(f"seed contract {dtype}", seed_contract, lm, args.jobs, args.tokens)
        del lm
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    say("done")


if __name__ == "__main__":
    main()
