"""Manual mode's costs on the embedded model: what a learner waits for at each step, and what a table page
costs. Prints milliseconds and bytes; asserts nothing about time.

    .venv/bin/python bench/bench_manual.py [--rounds 3] [--positions 0 16 64]

- "next step (cold)": the step after p tokens, computed by a one-token job in the shared batch that replays
  the p tokens one decode step each (manual_runs.wait_at with nothing cached), plus the sampler's draw and
  the whole vocabulary table on the decode thread;
- "next step (cached)": the same step once its logits are in the what-if cache (a rewind): the table only;
- "pick": taking a hand-picked token (its record from the step's logits);
- "table page": one page of 200 rows searched / sorted on the server, and the HTML bytes it sends.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine.knobs import SamplingParams  # noqa: E402
from engine.model import load_model  # noqa: E402
from engine.scheduler import Scheduler  # noqa: E402
from engine.whatif import Snapshots  # noqa: E402
from playground import manual_events, manual_runs, ui_runs  # noqa: E402

MESSAGES = [{"role": "user", "content": "Write a long story about a lighthouse keeper and the sea."}]


def ms(f, rounds: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(rounds):
        t = time.perf_counter()
        out = f()
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times), out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--positions", type=int, nargs="+", default=[0, 16, 64])
    args = ap.parse_args()
    lm = load_model()
    scheduler = Scheduler(lm)
    params = SamplingParams.build(max_tokens=max(args.positions) + 1, seed=1, top_k=40, top_p=0.9)
    gen, run = ui_runs.start(lm, MESSAGES, params, "Generated")
    t = time.perf_counter()
    for run in ui_runs.advance(lm, ui_runs.submit(scheduler, gen), run, every_s=60.0):
        pass
    made = len(run["completions"][0]["steps"])
    print(f"{lm.name}, {str(lm.dtype).removeprefix('torch.')}, prompt {len(run['prompt_ids'])} tokens; "
          f"Generate for reference: {(time.perf_counter() - t) * 1000 / made:.0f} ms a token over {made} tokens")
    manual_runs.vocabulary_texts(lm)  # built once per model
    print(f"{'after p tokens':>15} {'next step (cold)':>17} {'(cached)':>9} {'pick':>7}")
    for p in [p for p in args.positions if p <= made]:
        manual = manual_runs.new_run(lm, MESSAGES, params)
        manual["completions"][0]["steps"] = run["completions"][0]["steps"][:p]
        manual["texts"] = dict(run["texts"])

        def cold():
            ui_runs.SNAPSHOTS = Snapshots()  # nothing cached: the one-token job runs
            return manual_runs.wait_at(lm, scheduler, manual)

        cold_ms, wait = ms(cold, args.rounds)
        warm_ms, wait = ms(lambda: manual_runs.wait_at(lm, scheduler, manual), args.rounds)
        token = int(wait.vocabulary.rank.argmax())  # the least likely token: every stage removed it
        pick_ms, _ = ms(lambda: manual_runs.take(lm, scheduler, manual, wait, token), args.rounds)
        print(f"{p:>15} {cold_ms:>14.0f} ms {warm_ms:>6.0f} ms {pick_ms:>4.0f} ms")
    print(f"a waiting step holds {wait.nbytes / 2**20:.2f} MiB (its logits and its vocabulary table)")
    print(f"{'table page':>28} {'ms':>6} {'HTML bytes':>11}")
    for label, query in [("rank, page 1", {}), ("final p, page 5", {"sort": "final p", "page": 5}),
                         ("search 'the'", {"search": "the"}), ("search 'the', by id", {"search": "the", "sort": "id"})]:
        page_ms, table = ms(lambda: manual_runs.page_of(lm, wait, **query), args.rounds * 3)
        html = manual_events.table_html(table, wait, lm.vocab_size, query.get("search", ""))
        print(f"{label:>28} {page_ms:>6.1f} {len(html.encode()):>11,}")
    scheduler.close()


if __name__ == "__main__":
    main()
