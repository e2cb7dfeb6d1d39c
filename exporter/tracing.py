"""Spans of collection cycles and AWS calls as the core sees them: a protocol and a no-op.

Dependency-free on purpose: the source and the scheduler report spans through `Tracing`
without loading OpenTelemetry or the OTLP push (exporter/otel.py implements it).
"""

from __future__ import annotations

import contextlib
from contextlib import AbstractContextManager
from typing import Protocol

AttributeValue = str | bool | int | float


class SpanHandle(Protocol):
    """What the collector may say about a span without knowing OpenTelemetry."""

    def set_outcome(self, outcome: str) -> None: ...
    def set_attribute(self, key: str, value: AttributeValue) -> None: ...


class Tracing(Protocol):
    """Spans of collection cycles and AWS calls; NOOP_TRACING when tracing is off."""

    def cycle_span(self, target: str) -> AbstractContextManager[SpanHandle]: ...
    def api_span(
        self, target: str, operation: str, job_id: str | None = None
    ) -> AbstractContextManager[SpanHandle]: ...


class _NoopHandle:
    def set_outcome(self, outcome: str) -> None:
        pass

    def set_attribute(self, key: str, value: AttributeValue) -> None:
        pass


class NoopTracing:
    """Tracing that records nothing, at the cost of returning one shared context manager."""

    # nullcontext is reusable and reentrant, so every call can hand out the same one.
    _context = contextlib.nullcontext(_NoopHandle())

    def cycle_span(self, target: str) -> AbstractContextManager[SpanHandle]:
        return self._context

    def api_span(
        self, target: str, operation: str, job_id: str | None = None
    ) -> AbstractContextManager[SpanHandle]:
        return self._context


NOOP_TRACING: Tracing = NoopTracing()
