"""A sorted set of integers in chunks: a page of a filtered listing without a scan of the job.

ListJobExecutionsForJob filtered by status pages through the executions of one state in a
fixed order, while executions keep moving between states. One of these per state, holding
the executions' positions, answers "the next `n` after this one" in O(log size + n) and
takes a state change in O(log size + chunk), where a sorted list would move every later
element on each change and a scan would touch every execution of the job. The layout is
sortedcontainers' SortedList (sorted chunks and their maxima), cut down to what the
simulator needs so that it ships no dependency for it.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right, insort

# Chunks split at twice this size. Small enough that an insertion moves a few kilobytes,
# large enough that the list of chunks stays short for a job of 100,000 executions.
_CHUNK = 500


class SortedPositions:
    """A set of ints, kept sorted; `after(x, n)` gives the first `n` members above `x`."""

    __slots__ = ("_chunks", "_maxes", "_size")

    def __init__(self) -> None:
        self._chunks: list[list[int]] = []
        self._maxes: list[int] = []
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def __contains__(self, value: int) -> bool:
        i = bisect_left(self._maxes, value)
        if i == len(self._maxes):
            return False
        chunk = self._chunks[i]
        j = bisect_left(chunk, value)
        return j < len(chunk) and chunk[j] == value

    def add(self, value: int) -> None:
        if not self._chunks:
            self._chunks.append([value])
            self._maxes.append(value)
            self._size = 1
            return
        # The chunk whose maximum is the first ≥ value; past the last one, the last one
        # (the common case: a new execution has the highest position yet).
        i = min(bisect_left(self._maxes, value), len(self._maxes) - 1)
        chunk = self._chunks[i]
        j = bisect_left(chunk, value)
        if j < len(chunk) and chunk[j] == value:
            return
        insort(chunk, value, lo=j, hi=j)
        self._maxes[i] = chunk[-1]
        self._size += 1
        if len(chunk) > 2 * _CHUNK:
            self._chunks[i : i + 1] = [chunk[:_CHUNK], chunk[_CHUNK:]]
            self._maxes[i : i + 1] = [chunk[_CHUNK - 1], chunk[-1]]

    def discard(self, value: int) -> None:
        i = bisect_left(self._maxes, value)
        if i == len(self._maxes):
            return
        chunk = self._chunks[i]
        j = bisect_left(chunk, value)
        if j == len(chunk) or chunk[j] != value:
            return
        del chunk[j]
        self._size -= 1
        if chunk:
            self._maxes[i] = chunk[-1]
        else:
            del self._chunks[i]
            del self._maxes[i]

    def after(self, value: int, limit: int) -> list[int]:
        """The first `limit` members greater than `value`, in order."""
        out: list[int] = []
        i = bisect_right(self._maxes, value)
        while i < len(self._chunks) and len(out) < limit:
            chunk = self._chunks[i]
            j = bisect_right(chunk, value) if not out else 0
            out += chunk[j : j + limit - len(out)]
            i += 1
        return out
