"""Prometheus-style durations (`30s`, `5m`, `1h30m`): the one grammar, read and written.

Pure and imports nothing of ours: the config reader, the rules generator and the dashboard
generator all read durations through it, so a duration means the same in each.
"""

from __future__ import annotations

import math
import re

# Seconds per unit, as Prometheus spells them; years are left out (a year is not a fixed
# number of days to everyone, and no setting of ours is that long).
UNITS = {"w": 604800.0, "d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")
# Only a whole number of weeks is written in weeks: 12d reads better than 1w5d.
_EXACT = frozenset({"w"})


def parse(text: str) -> float | None:
    """The seconds of `text`, or None when it is not a duration.

    Parts may repeat units in any order and have a fraction (`1.5h`): more than Prometheus
    reads, kept because configs in use write them. Zero (`0s`) is a duration; whether a
    setting may be zero is its reader's business.
    """
    pos, total = 0, 0.0
    for match in _PART.finditer(text):
        if match.start() != pos:
            return None
        total += float(match.group(1)) * UNITS[match.group(2)]
        pos = match.end()
    if pos != len(text) or pos == 0 or not math.isfinite(total):
        return None
    return total


def seconds(text: str) -> float:
    """The seconds of `text`; ValueError when it is not a duration."""
    value = parse(text)
    if value is None:
        raise ValueError(f"{text!r} is not a Prometheus duration like 30s, 15m or 1h30m")
    return value


def format(value: float) -> str:
    """`value` seconds as Prometheus writes a duration, to the millisecond: 5400 → `1h30m`.

    Largest units first, as Prometheus' own model.Duration does, so parse() reads it back.
    """
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{value!r} seconds is not a duration")
    ms = round(value * 1000)
    if ms == 0:
        return "0s"
    out = []
    for unit, unit_seconds in UNITS.items():
        size = round(unit_seconds * 1000)
        if unit in _EXACT and ms % size:
            continue
        count, ms = divmod(ms, size)
        if count:
            out.append(f"{count}{unit}")
    return "".join(out)
