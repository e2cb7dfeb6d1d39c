"""Non-terminal executions of a job, read by ListJobExecutionsForJob, into counts by age.

Pure: a page of summaries becomes `ExecutionSummary` values, a sweep's summaries become
one `ExecutionSweep` (ages measured at the sweep's end, which the metric table reads), and
finished executions become observations of `TimeInState` histograms. No series carries a
thing name: the names of the oldest stuck executions are kept for the status page only.
"""

from __future__ import annotations

import email.utils
import heapq
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

# The states a sweep reads, as the API names them and as the metrics' `state` label does.
SWEPT_STATES = (("QUEUED", "queued"), ("IN_PROGRESS", "in_progress"))
# Upper bounds of the age buckets, seconds: 5m, 15m, 1h, 6h, 1d, 7d (and +Inf).
AGE_BOUNDS = (300.0, 900.0, 3600.0, 21600.0, 86400.0, 604800.0)
# Upper bounds of the time-in-state histograms, seconds.
DURATION_BOUNDS = (5.0, 15.0, 60.0, 300.0, 900.0, 3600.0, 21600.0, 86400.0)
# retryAttempt is at most 10 (retryCriteria.numberOfRetries); larger values are counted as 10.
MAX_RETRY_ATTEMPT = 10
# AWS's page size limit for ListJobExecutionsForJob.
PAGE_SIZE = 250
# Thing names are 1-128 characters; a longer one in an answer is cut to this.
MAX_THING_NAME = 128


class MalformedPage(ValueError):
    """A ListJobExecutionsForJob answer without the shape the API documents."""


@dataclass(frozen=True, slots=True)
class ExecutionSummary:
    """One execution of a job as ListJobExecutionsForJob reports it."""

    thing_name: str
    status: str
    queued_at: float | None
    started_at: float | None
    last_updated_at: float | None
    execution_number: int | None
    retry_attempt: int

    @property
    def since(self) -> float | None:
        """When the execution entered its state: startedAt in progress, else queuedAt."""
        if self.status == "IN_PROGRESS" and self.started_at is not None:
            return self.started_at
        return self.queued_at


def _timestamp(value: Any) -> float | None:
    """Epoch seconds as the JSON has them (or a datetime); None for anything else, a
    401-digit number included."""
    if isinstance(value, datetime):
        return value.timestamp()
    if isinstance(value, int | float) and not isinstance(value, bool):
        if isinstance(value, int) and not 0 <= value < 10**11:
            return None
        number = float(value)
        return number if math.isfinite(number) and 0 <= number < 1e11 else None
    return None


def _int(value: Any, low: int, high: int) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and low <= value <= high:
        return value
    return None


def _retry_attempt(value: Any) -> int:
    """retryAttempt, at most MAX_RETRY_ATTEMPT (AWS allows ten retries); 0 when unusable."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return min(value, MAX_RETRY_ATTEMPT)
    return 0


def thing_name(arn: str) -> str:
    """The thing's name from its ARN (`arn:aws:iot:region:account:thing/NAME`)."""
    _, _, name = arn.rpartition(":thing/")
    return (name or arn)[:MAX_THING_NAME]


def server_time(page: Any) -> float | None:
    """The answer's Date header (whole seconds): the instant ages are measured at, on the
    server's clock, so that the exporter host's clock skew does not move them."""
    try:
        date = page["ResponseMetadata"]["HTTPHeaders"]["date"]
        if isinstance(date, str) and len(date) <= 64:
            return email.utils.parsedate_to_datetime(date).timestamp()
    except (KeyError, TypeError, ValueError, IndexError, OverflowError):
        pass
    return None


def parse_page(page: Any) -> tuple[list[ExecutionSummary], str | None]:
    """The summaries and the next token of one page; MalformedPage when it has no such shape.

    The entries are read as the JSON has them (aws.py hands them past botocore's own
    conversion). An entry without a status or thing is skipped, a field that cannot be
    read is absent: one bad entry costs itself only. A page longer than the PAGE_SIZE
    entries asked for is read up to that.
    """
    if not isinstance(page, Mapping):
        raise MalformedPage("response: expected an object")
    # Always there, empty or not: an answer without it (an empty body) is not a listing,
    # and must not pass for a job whose stuck devices all left.
    items = page.get("executionSummaries")
    if not isinstance(items, list):
        raise MalformedPage("response.executionSummaries: expected a list")
    token = page.get("nextToken")
    if token is not None and (not isinstance(token, str) or len(token) > 4096):
        raise MalformedPage("response.nextToken: expected a string of at most 4096 characters")
    out = []
    for item in items[:PAGE_SIZE]:
        if not isinstance(item, Mapping):
            continue
        arn, summary = item.get("thingArn"), item.get("jobExecutionSummary")
        if not isinstance(arn, str) or not arn or not isinstance(summary, Mapping):
            continue
        status = summary.get("status")
        if not isinstance(status, str):
            continue
        out.append(
            ExecutionSummary(
                thing_name=thing_name(arn),
                status=status,
                queued_at=_timestamp(summary.get("queuedAt")),
                started_at=_timestamp(summary.get("startedAt")),
                last_updated_at=_timestamp(summary.get("lastUpdatedAt")),
                execution_number=_int(summary.get("executionNumber"), 0, 2**63 - 1),
                retry_attempt=_retry_attempt(summary.get("retryAttempt")),
            )
        )
    return out, token or None


@dataclass(frozen=True, slots=True)
class StuckExecution:
    """One of a job's oldest stuck executions, for the status page (never a label)."""

    thing_name: str
    state: str
    since: float
    retry_attempt: int
    execution_number: int | None


@dataclass(frozen=True, slots=True)
class StateCounts:
    """What a sweep found in one state."""

    # Executions with age <= AGE_BOUNDS[i], then all of them (+Inf): cumulative.
    by_age: tuple[int, ...]
    stuck: int
    threshold: float
    oldest: float | None
    # Executions by retryAttempt, 0..MAX_RETRY_ATTEMPT.
    retries: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class ExecutionSweep:
    """A complete read of a job's QUEUED and IN_PROGRESS executions."""

    ended_at: float
    states: tuple[tuple[str, StateCounts], ...]
    oldest_stuck: tuple[StuckExecution, ...] = ()
    pages: int = 0
    # True when the sweep stopped at max_executions_per_job: the counts are a lower bound.
    truncated: bool = False

    def counts(self, state: str) -> StateCounts | None:
        return dict(self.states).get(state)


def summarise(
    summaries: Mapping[str, Iterable[ExecutionSummary]],
    now: float,
    thresholds: Mapping[str, float],
    keep_stuck: int = 10,
    pages: int = 0,
    truncated: bool = False,
    ended_at: float | None = None,
    caps: Mapping[str, int] | None = None,
) -> ExecutionSweep:
    """One sweep's summaries, by API state (QUEUED, IN_PROGRESS), as counts at `now`.

    An execution is stuck when it has been in its state longer than `thresholds[label]`.
    An execution without a timestamp for its state counts in +Inf only, and is not stuck.
    `now` is on the server's clock when known; `ended_at` (default `now`) is when the
    sweep ended on the exporter's. `caps[label]` (the job's own count of the state, when
    known) bounds the stuck executions counted and listed in the state: the oldest ones.
    """
    states = []
    stuck_list: list[StuckExecution] = []
    for api_state, label in SWEPT_STATES:
        threshold = thresholds[label]
        buckets = [0] * (len(AGE_BOUNDS) + 1)
        retries = [0] * (MAX_RETRY_ATTEMPT + 1)
        stuck = 0
        oldest: float | None = None
        state_stuck: list[StuckExecution] = []
        for summary in summaries.get(api_state, ()):
            since = summary.since
            retries[summary.retry_attempt] += 1
            buckets[-1] += 1
            if since is None:
                continue
            age = max(0.0, now - since)
            for i, bound in enumerate(AGE_BOUNDS):
                if age <= bound:
                    buckets[i] += 1
            if oldest is None or since < oldest:
                oldest = since
            if age > threshold:
                stuck += 1
                state_stuck.append(
                    StuckExecution(
                        summary.thing_name,
                        label,
                        since,
                        summary.retry_attempt,
                        summary.execution_number,
                    )
                )
        cap = caps.get(label) if caps is not None else None
        if cap is not None and stuck > cap:
            stuck = max(0, cap)
            state_stuck = heapq.nsmallest(stuck, state_stuck, key=lambda s: (s.since, s.thing_name))
        stuck_list.extend(state_stuck)
        states.append(
            (label, StateCounts(tuple(buckets), stuck, threshold, oldest, tuple(retries)))
        )
    # The oldest few of what may be 100,000 stuck: no full sort.
    first = heapq.nsmallest(keep_stuck, stuck_list, key=lambda s: (s.since, s.thing_name))
    return ExecutionSweep(
        now if ended_at is None else ended_at,
        tuple(states),
        tuple(first),
        pages,
        truncated,
    )


@dataclass(frozen=True, slots=True)
class Exemplar:
    thing_name: str
    execution_number: int | None
    value: float
    at: float


@dataclass(frozen=True, slots=True)
class Histogram:
    """A cumulative histogram of durations with the last exemplar of each bucket."""

    # Non-cumulative counts per DURATION_BOUNDS bucket, then the +Inf one.
    counts: tuple[int, ...] = (0,) * (len(DURATION_BOUNDS) + 1)
    total: float = 0.0
    exemplars: tuple[Exemplar | None, ...] = (None,) * (len(DURATION_BOUNDS) + 1)
    # The smallest and largest value observed (OTLP histograms carry them).
    low: float = math.inf
    high: float = 0.0

    def observe(self, value: float, exemplar: Exemplar | None = None) -> Histogram:
        value = max(0.0, value)
        i = next((i for i, b in enumerate(DURATION_BOUNDS) if value <= b), len(DURATION_BOUNDS))
        counts = list(self.counts)
        counts[i] += 1
        exemplars = list(self.exemplars)
        if exemplar is not None:
            exemplars[i] = exemplar
        return Histogram(
            tuple(counts),
            self.total + value,
            tuple(exemplars),
            min(self.low, value),
            max(self.high, value),
        )

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> list[tuple[str, int, Exemplar | None]]:
        """(le, cumulative count, exemplar) per bucket, +Inf last."""
        out, running = [], 0
        bounds = [*(_bound(b) for b in DURATION_BOUNDS), "+Inf"]
        for le, n, exemplar in zip(bounds, self.counts, self.exemplars, strict=True):
            running += n
            out.append((le, running, exemplar))
        return out


def _bound(value: float) -> str:
    return str(int(value)) if value.is_integer() else repr(value)


AGE_LE = (*(_bound(b) for b in AGE_BOUNDS), "+Inf")


@dataclass(frozen=True, slots=True)
class TimeInState:
    """How long finished executions were queued (queuedAt to startedAt) and ran (startedAt
    to their end), since the exporter started."""

    queued: Histogram = Histogram()
    run: Histogram = Histogram()

    def started(self, summary: ExecutionSummary, at: float) -> TimeInState:
        if summary.started_at is None or summary.queued_at is None:
            return self
        value = summary.started_at - summary.queued_at
        exemplar = Exemplar(summary.thing_name, summary.execution_number, value, at)
        return replace(self, queued=self.queued.observe(value, exemplar))

    def finished(
        self, thing: str, number: int | None, started_at: float, ended_at: float
    ) -> TimeInState:
        value = ended_at - started_at
        exemplar = Exemplar(thing, number, value, ended_at)
        return replace(self, run=self.run.observe(value, exemplar))
