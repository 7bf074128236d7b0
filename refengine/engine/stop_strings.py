"""Stop strings over streamed text: a stop string may arrive split over any number of deltas.

The matcher emits text as soon as it is certain not to belong to a stop string, and holds back the
longest tail that could still grow into one:

    stops = ["###"]     feed("Hi #")  -> ("Hi ", False)    held "#"
                        feed("#")     -> ("", False)       held "##"
                        feed("# x")   -> ("", True)        "###" hit: the stop string is not emitted

Which stop wins when several could: the one that *completes first* in the text (generation would have
stopped there), and among those completing at the same character the one that starts first. The result
does not depend on how the text is cut into deltas.
"""

from __future__ import annotations

from typing import Sequence


class StopStringMatcher:
    def __init__(self, stops: Sequence[str]):
        self.stops = tuple(dict.fromkeys(s for s in stops if s))  # "" would stop before any text
        self._held = ""
        self.stopped = False

    def feed(self, delta: str) -> tuple[str, bool]:
        """(text safe to emit now, whether a stop string was hit). After a hit everything is dropped."""
        if self.stopped:
            return "", True
        text = self._held + delta
        cut = self._first_stop(text)
        if cut is not None:
            self._held, self.stopped = "", True
            return text[:cut], True
        keep = self._partial_tail(text)
        self._held = text[len(text) - keep:] if keep else ""
        return text[:len(text) - keep], False

    def flush(self) -> str:
        """At the end of generation: the held tail is plain text after all."""
        held, self._held = self._held, ""
        return "" if self.stopped else held

    def _first_stop(self, text: str) -> int | None:
        """Where to cut `text`: the start of the stop string that completes first, or None."""
        best: tuple[int, int] | None = None   # (end, start)
        for stop in self.stops:
            start = text.find(stop)
            if start >= 0 and (best is None or (start + len(stop), start) < best):
                best = (start + len(stop), start)
        return None if best is None else best[1]

    def _partial_tail(self, text: str) -> int:
        """Length of the longest tail of `text` that is a proper prefix of some stop string."""
        longest = 0
        for stop in self.stops:
            for k in range(min(len(stop) - 1, len(text)), longest, -1):
                if text.endswith(stop[:k]):
                    longest = k
                    break
        return longest
