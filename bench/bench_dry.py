"""DRY's cost per step: the quadratic definition the engine used before (tests/dry_reference.py) vs the
linear-time stage (engine/dry.py), side by side in one run, on repetitive histories of the embedded
model's tokenizer. Prints milliseconds and ratios; asserts only that both give the same logits.

    .venv/bin/python bench/bench_dry.py [--rounds 5] [--threads 1]

"step" is what the decode loop pays per token: append the drawn token to the row's DryHistory, then run
the stage. "cold" is a history given as plain ids (a what-if), rebuilt with the Z-algorithm first.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from engine.dry import DryHistory, dry_breakers  # noqa: E402
from engine.knobs import SamplingParams  # noqa: E402
from engine.model import load_model  # noqa: E402
from engine.sampler import SamplerContext  # noqa: E402
from engine.stages import STAGES  # noqa: E402
from tests.dry_reference import reference_dry  # noqa: E402

PARAGRAPH = ("The old lighthouse keeper climbed the stairs every night, counting each step, and every night "
             "the sea answered him with the same slow song. ")
KNOBS = dict(dry_multiplier=0.8, dry_base=1.75, dry_allowed_length=2)


def repetitive(tokenizer, n: int) -> list[int]:
    ids = tokenizer.encode(PARAGRAPH * (n // 20 + 2), add_special_tokens=False)
    return ids[:n]


def context(histories, breakers, V):
    B = len(histories)
    return SamplerContext.of(SamplingParams.build(**KNOBS), torch.zeros(B, V, dtype=torch.bool), torch.zeros(B, V),
                             history=histories, breakers=[breakers] * B)


def timed(prepare, run, rounds: int) -> tuple[float, torch.Tensor]:
    """Median milliseconds of run(*prepare()) over rounds; what prepare builds (the context the decode loop
    builds once per step for every stage) is not timed."""
    times, out = [], None
    for _ in range(rounds):
        args = prepare()
        start = time.perf_counter()
        out = run(*args)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3, out


def case(name, ids, breakers, V, rows, rounds):
    logits = torch.randn(rows, V, generator=torch.Generator().manual_seed(0))
    plain = lambda: (context([ids] * rows, breakers, V),)  # noqa: E731
    old_ms, old = timed(plain, lambda ctx: reference_dry(logits, ctx), 1)  # seconds: once
    start = DryHistory(ids[:-1], breakers)  # the rows' histories before the step's token

    def kept():
        histories = [start.copy() for _ in range(rows)]
        return histories, context(histories, breakers, V)

    def step(histories, ctx):
        for h in histories:
            h.append(ids[-1])
        return STAGES["dry"](logits, ctx)

    new_ms, new = timed(kept, step, rounds)
    cold_ms, cold = timed(plain, lambda ctx: STAGES["dry"](logits, ctx), rounds)
    assert torch.equal(old, new) and torch.equal(old, cold), name
    print(f"| {name} | {len(ids):,} | {rows} | {old_ms:,.1f} | {new_ms:.2f} | {cold_ms:.2f} | {old_ms / new_ms:,.0f}x |")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (the app's default on 2 cores is 1)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    tokenizer = load_model().tokenizer
    V = len(tokenizer)
    breakers = dry_breakers(tokenizer, SamplingParams.build().dry_sequence_breakers)
    print(f"DRY, one step ({KNOBS}), new: median of {args.rounds} rounds, old: one; "
          f"torch threads {torch.get_num_threads()}")
    print("| history | tokens | rows | old ms | new step ms | new cold ms | old / new step |")
    print("|---|---|---|---|---|---|---|")
    for n in (1000, 4000, 6000):  # a word repeated: the worst case of the quadratic scan
        case('" ha" x n', tokenizer.encode(" ha" * n, add_special_tokens=False), breakers, V, 1, args.rounds)
    # The model goes on laughing: "ha" x 6,000 tokenizes as hah, aha, aha, ..., ah; the history ends in "aha".
    ha = tokenizer.encode("ha" * 6000, add_special_tokens=False)[:-1]
    case('"ha" x 6,000', ha, breakers, V, 1, args.rounds)
    case("a paragraph repeated", repetitive(tokenizer, 6000), breakers, V, 1, args.rounds)
    case('" ha" x n', tokenizer.encode(" ha" * 6000, add_special_tokens=False), breakers, V, 8, args.rounds)
    case("a paragraph repeated", repetitive(tokenizer, 6000), breakers, V, 8, args.rounds)

if __name__ == "__main__":
    main()
