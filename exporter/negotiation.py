"""HTTP content negotiation: `Accept`-style headers read as {value: q}."""

from __future__ import annotations


def qualities(header: str) -> dict[str, float]:
    """`Accept`-style header → {value: q}, the highest q when a value repeats."""
    out: dict[str, float] = {}
    for part in header.split(","):
        value, _, params = part.strip().partition(";")
        q = 1.0
        for param in params.split(";"):
            key, _, raw = param.strip().partition("=")
            if key.strip() == "q":
                try:
                    q = float(raw)
                except ValueError:
                    q = 0.0
        value = value.strip().lower()
        if value:
            out[value] = max(out.get(value, q), q)
    return out
