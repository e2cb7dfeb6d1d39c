"""Plain-text tables with aligned columns, and the small statistics the benchmarks print."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) by linear interpolation between closest ranks."""
    if not values:
        return math.nan
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    low = math.floor(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else math.nan


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms" if not math.isnan(seconds) else "-"


def size(n: float) -> str:
    for unit, scale in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n:.0f} B"


def ratio(value: float, base: float, digits: int = 2) -> str:
    """`value / base` as `1.23x`; `-` when either side is missing or zero."""
    if not base or math.isnan(value) or math.isnan(base):
        return "-"
    return f"{value / base:.{digits}f}x"


def verdict(ok: bool | None) -> str:
    return "-" if ok is None else ("met" if ok else "MISSED")


class Table:
    """Rows of strings printed with aligned columns; numbers are right-aligned."""

    def __init__(self, title: str, columns: Sequence[str]) -> None:
        self.title = title
        self.columns = list(columns)
        self.rows: list[list[str]] = []
        self.notes: list[str] = []

    def add(self, *cells: object) -> None:
        if len(cells) != len(self.columns):
            raise ValueError(f"{self.title}: {len(cells)} cells for {len(self.columns)} columns")
        self.rows.append([str(c) for c in cells])

    def note(self, text: str) -> None:
        self.notes.append(text)

    def render(self) -> str:
        widths = [len(c) for c in self.columns]
        for row in self.rows:
            widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]

        def line(cells: Sequence[str], header: bool = False) -> str:
            out = []
            for i, (cell, width) in enumerate(zip(cells, widths, strict=True)):
                numeric = not header and i > 0 and _numeric(cell)
                out.append(cell.rjust(width) if numeric else cell.ljust(width))
            return "  ".join(out).rstrip()

        rule = "  ".join("-" * w for w in widths)
        parts = [self.title, "=" * len(self.title), line(self.columns, header=True), rule]
        parts.extend(line(row) for row in self.rows)
        parts.extend(f"  {n}" for n in self.notes)
        return "\n".join(parts) + "\n"


def _numeric(cell: str) -> bool:
    return (bool(cell) and (cell[0].isdigit() or cell[0] in "-+.") and cell != "-") or cell == "-"
