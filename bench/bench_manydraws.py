"""Sampling one step N times (engine/manydraws.py, the "Sample N times" view): prints the median time of
the draws alone (uniforms, tally, total variation, chi-square) over a real step's whole final
distribution (and its raw one, where every token is possible), and of the view's whole handler (the step's distribution computed from its captured
snapshot on the model's decode thread, the draws, the bars and the figure), for N = 10, 1,000 and
100,000; then the "All engine orders" view on the same step. Asserts nothing about time.

    .venv/bin/python bench/bench_manydraws.py [--rounds 7] [--busy] [--threads N]

--busy keeps one core spinning in another process meanwhile (a browser, another request). The load
average printed says how busy the machine was besides.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine.knobs import KNOBS  # noqa: E402
from engine.manydraws import chi_square, distributions, tally, total_variation, uniforms  # noqa: E402
from engine.model import load_model  # noqa: E402
from engine.threads import current_threads, default_threads, set_threads, usable_cores  # noqa: E402
from playground import ui_events, ui_manydraws, ui_orders, ui_runs  # noqa: E402
from playground.models import ModelHost  # noqa: E402
from playground.ui_events import Inputs, Stops  # noqa: E402
from playground.ui_settings import UI_KNOBS, collect, control_spec  # noqa: E402
from playground.ui_snapshot import At  # noqa: E402

STEP = 3


def median_ms(fn, rounds: int) -> float:
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1000 * statistics.median(times)


@contextlib.contextmanager
def busy_core(on: bool):
    proc = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if on else None
    try:
        yield
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--busy", action="store_true", help="one core kept busy by another process")
    ap.add_argument("--threads", type=int, help="intra-op threads (default: the app's, engine/threads.py)")
    args = ap.parse_args()
    set_threads(args.threads or default_threads(usable_cores())[0])
    lm = load_model()
    host = ModelHost(lm)
    values = {name: control_spec(KNOBS[name]).value for name in UI_KNOBS}
    values.update({"max_tokens": "8", "seed": "3", "temperature": 0.9, "top_p": 0.95})
    ui = Inputs(lm.name, "", "Write a line about the sea.", [], values, tool_choice="auto")
    out = {}
    for out in ui_events.generate(host, Stops(), ui, "bench"):
        pass
    runs = out["runs"]
    run, at = runs[0], At(runs[0], 0, STEP)
    scheduler = host.scheduler(lm.name)
    snap = ui_runs.cached_snapshot(lm, run, 0, STEP)
    params = collect(ui.knobs, lambda text: lm.tokenizer.encode(text, add_special_tokens=False))
    raw, final = scheduler.call(lambda: distributions(lm, snap, params, run["prompt_ids"], at.earlier, at.coords,
                                                      at.memory, at.constrained))
    print(f"{lm.name} ({str(lm.dtype).removeprefix('torch.')}), step {STEP}: {len(final):,} tokens, "
          f"{int((final > 0).sum()):,} with final probability > 0; {'one core kept busy' if args.busy else 'no core kept busy'} "
          f"by this bench, load average {os.getloadavg()[0]:.1f}; {current_threads()} intra-op thread(s); "
          f"median of {args.rounds}")
    with busy_core(args.busy):
        for log10_n in (1, 3, 5):
            n = ui_manydraws.draws_for(log10_n)

            def draws_only(n=n, probs=final):
                counts = tally(probs, uniforms(0, STEP, n))
                total_variation(counts, probs), chi_square(counts, probs)

            def view(log10_n=log10_n):
                for _ in ui_manydraws.sample_step(host, Stops(), ui, runs, 0, 1, STEP, log10_n, 0, "bench"):
                    pass

            every = functools.partial(draws_only, probs=raw)  # every token possible: the longest CDF
            print(f"  N = {n:>7,}: draws and statistics {median_ms(draws_only, args.rounds):6.1f} ms "
                  f"({median_ms(every, args.rounds):6.1f} ms from the raw distribution, every token possible); "
                  f"the whole view {median_ms(view, args.rounds):6.1f} ms")

        def orders():
            for _ in ui_orders.all_orders(host, Stops(), ui, runs, 0, 1, STEP, "bench"):
                pass

        print(f"  all four engine orders on the step: {median_ms(orders, args.rounds):6.1f} ms")
    scheduler.close()


if __name__ == "__main__":
    main()
