"""How many intra-op threads the process's tensor work uses: chosen once at start, never changed.

PyTorch splits each matmul of the decode step across its intra-op (OpenMP) threads. The count decides
the order of float reductions, and with it the low bits of the logits: a seed gives the same text only
at the same count. So the count is set once, before the model loads, for the life of the process (never
per step or per batch size), and it is part of the run's system_fingerprint (playground/api_format.py).

Measured (bench/bench_threads.py through /v1 here; the engine alone on a quiet 16-core Xeon pinned to
2, 4 and 8 cores with taskset; the README has the tables): an OpenMP parallel region waits for its slowest
thread, and libgomp's threads spin while they wait. When the intra-op threads take every core and anything
else wants one (the UI's and HTTP's Python work in the same process, a browser, another program), a
descheduled thread stalls every op and the spinning ones steal the core back from the work they wait for:
2 threads on 2 cores with one core busy decoded 0.4 tokens/s against 12.6 for one thread (float32, n = 1).
With one core left free, the busy core costs nothing (4 cores, 3 threads: 24.9 quiet, 27.4 busy).
So the default leaves one core free, and OMP_WAIT_POLICY stays libgomp's own (spin, then sleep), which
was 1.2-1.3x faster than passive there. Only when the threads take every core (--threads at the core
count) does app.py ask for passive waiting, which held 11.7 tokens/s in the busy case above.

torch.set_num_threads on the main thread is enough: every thread that later runs a parallel op (the
scheduler's decode thread, started anew after each idle spell) initialises its OpenMP pool from it.
"""

from __future__ import annotations

import os

# Decoding a small model is memory-bound: 7 threads were only 1.14x faster than 3 at n = 1 (8 cores).
# Not measured past 8.
MAX_DEFAULT = 8


def usable_cores() -> int:
    """The cores this process may run on (its affinity mask, which containers and taskset narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows: no affinity mask
        return os.cpu_count() or 1


def default_threads(cores: int) -> tuple[int, str]:
    """(threads, why) for a machine with `cores` usable cores."""
    if cores <= 1:
        return 1, "1 core"
    n = min(cores - 1, MAX_DEFAULT)
    why = (f"{cores} cores: one is left for the UI, HTTP and browser work, because an OpenMP op waits for "
           f"its slowest thread and a thread that loses its core stalls the whole step")
    if cores - 1 > MAX_DEFAULT:
        why += f"; at most {MAX_DEFAULT}, as decoding is memory-bound"
    return n, why


def wait_policy(threads: int, cores: int) -> str | None:
    """The OMP_WAIT_POLICY to set before torch loads libgomp, or None for libgomp's own."""
    return "PASSIVE" if threads >= cores > 1 else None


def set_threads(n: int) -> None:
    """Fix the intra-op thread count for this process. Call once, before any tensor work."""
    import torch

    torch.set_num_threads(n)


def current_threads() -> int:
    """The intra-op thread count tensor work in this process uses (part of the fingerprint)."""
    import torch

    return torch.get_num_threads()
