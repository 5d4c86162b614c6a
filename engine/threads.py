"""How many intra-op threads the process's tensor work uses: chosen once at start, never changed.

PyTorch splits each matmul of the decode step across its intra-op (OpenMP) threads. The count decides
the order of float reductions, and with it the low bits of the logits: a seed gives the same text only
at the same count. So the count is set once, before the model loads, for the life of the process (never
per step or per batch size), and it is part of the run's system_fingerprint (playground/api_format.py).

Measured with bench/bench_threads.py (the real /v1 API; see the README's table): an OpenMP parallel
region waits for its slowest thread, so on a machine where anything else wants a core (the UI's and
HTTP's Python work in the same process, a browser, another program) a thread that gets descheduled
stalls every op. On 2 cores one thread decodes about as fast as two when the machine is quiet and
several times faster when one core is busy. So the default leaves one core free for the rest.

torch.set_num_threads on the main thread is enough: every thread that later runs a parallel op (the
scheduler's decode thread, started anew after each idle spell) initialises its OpenMP pool from it.
"""

from __future__ import annotations

import os

MAX_DEFAULT = 8  # decoding a small model is memory-bound: past a few threads, more only add waiting


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


def set_threads(n: int) -> None:
    """Fix the intra-op thread count for this process. Call once, before any tensor work."""
    import torch

    torch.set_num_threads(n)


def current_threads() -> int:
    """The intra-op thread count tensor work in this process uses (part of the fingerprint)."""
    import torch

    return torch.get_num_threads()
