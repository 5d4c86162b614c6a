"""The random numbers of a completion: a pure function of (seed, completion index, position).

A counter-based generator (the idea of Salmon et al. 2011, "Parallel random numbers: as easy as 1, 2, 3"):
the uniform for a draw is a hash of its coordinates, never the next value of a stream. So completion i
draws the same numbers whether it runs alone, as one of n, beside other people's rows in a shared batch,
or as a branch that starts at position p; nothing about the batch around it can shift its stream.

BLAKE2b (hashlib) is the hash: keyed-quality mixing, in the standard library, about a microsecond a call.
"""

from __future__ import annotations

import hashlib
import struct

_SCALE = 2.0**-53


def uniform(seed: int, index: int, position: int, stream: int = 0) -> float:
    """A float64 uniform in [0, 1) with 53 random bits for draw number `position` of completion `index`.

    `stream` separates independent uses at the same position (0: the token draw)."""
    digest = hashlib.blake2b(struct.pack("<QQQQ", seed, index, position, stream), digest_size=8).digest()
    return (int.from_bytes(digest, "little") >> 11) * _SCALE
