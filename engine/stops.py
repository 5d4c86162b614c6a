"""Stop sequences, matched on decoded text across token boundaries.

The text released so far never contains a stop sequence's beginning that might still complete: only
the tail that could grow into one is held back. On a match the text is cut right after the stop
sequence, which stays in the output as the API documents.
"""

from __future__ import annotations


class StopMatcher:
    def __init__(self, stops: tuple[str, ...]):
        self.stops = stops
        self.longest = max((len(s) for s in stops), default=0)
        self.text = ""
        self.released = 0

    def feed(self, delta: str) -> tuple[str, bool]:
        """Add decoded text; return (text now safe to release, whether a stop sequence matched)."""
        start = max(0, len(self.text) - self.longest + 1)
        self.text += delta
        hits = [(i, s) for s in self.stops if (i := self.text.find(s, start)) >= 0]
        if hits:
            i, s = min(hits, key=lambda h: (h[0], -len(h[1])))
            self.text = self.text[: i + len(s)]
            return self._release(len(self.text)), True
        return self._release(len(self.text) - self._held()), False

    def flush(self) -> str:
        """Release what was held back (the completion ended without a match)."""
        return self._release(len(self.text))

    def _held(self) -> int:
        # Length of the longest tail of the text that is a proper prefix of some stop sequence.
        for n in range(min(self.longest - 1, len(self.text)), 0, -1):
            tail = self.text[-n:]
            if any(s.startswith(tail) for s in self.stops):
                return n
        return 0

    def _release(self, upto: int) -> str:
        upto = max(upto, self.released)
        out = self.text[self.released : upto]
        self.released = upto
        return out
