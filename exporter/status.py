"""The status page: the collector's status snapshot, and its rendering as escaped HTML or JSON."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from exporter import __version__
from exporter.logs import summarise
from exporter.negotiation import qualities
from exporter.safe import html_text, json_safe, url_component

log = logging.getLogger(__name__)

HTML_TYPE = "text/html"
JSON_TYPE = "application/json"


@dataclass(frozen=True, slots=True)
class LastError:
    """The most recent failed call of a target: its class and a sanitised message."""

    at: float
    outcome: str
    operation: str
    message: str
    job_id: str | None = None


@dataclass(frozen=True, slots=True)
class StaleJob:
    job_id: str
    age_seconds: float


@dataclass(frozen=True, slots=True)
class FailingJob:
    """A job whose last describe failed, with that failure: apart from jobs merely due."""

    job_id: str
    # Age of the data still exported; None when the job was never described.
    age_seconds: float | None
    error: LastError


@dataclass(frozen=True, slots=True)
class StuckRow:
    """One of a job's oldest stuck executions: the device to look at, by name."""

    job_id: str
    thing_name: str
    # queued or in_progress
    state: str
    since: float
    retry_attempt: int
    execution_number: int | None


@dataclass(frozen=True, slots=True)
class StuckJob:
    """A job with stuck executions at its last sweep, and the oldest of them."""

    job_id: str
    # Stuck executions by state at the last sweep.
    stuck: tuple[tuple[str, int], ...]
    swept_at: float
    oldest: tuple[StuckRow, ...]


@dataclass(frozen=True, slots=True)
class EventsStatus:
    """A target's event path: whether events drive it, and what the queue did lately."""

    queue_url: str
    driven: bool
    # Why the target polls (or "events flow" when it does not).
    reason: str
    last_error: LastError | None
    last_message: float | None
    # From AWS publishing the last event (that had a timestamp) to reading it.
    lag_seconds: float | None
    # Over the status window (api_window_seconds).
    received: int
    describes: int
    unknown_waiting: int


@dataclass(frozen=True, slots=True)
class TargetStatus:
    """What the status page shows of one target, read at one instant."""

    name: str
    region: str
    discovery: bool
    ready: bool
    collection_success: bool | None
    last_discovery_success: float | None
    last_collection_success: float | None
    last_error: LastError | None
    api_window_seconds: float
    api_calls: int
    api_throttled: int
    api_failed: int
    jobs_by_state: tuple[tuple[str, int], ...]
    jobs_by_status: tuple[tuple[str, int], ...]
    stale_after_seconds: float
    stale_total: int
    stale_jobs: tuple[StaleJob, ...]
    # What the staleness threshold follows: "interval" (polling) or "reconcile_interval".
    stale_basis: str = "interval"
    failing_total: int = 0
    failing_jobs: tuple[FailingJob, ...] = ()
    events: EventsStatus | None = None
    stuck_jobs: tuple[StuckJob, ...] = ()


@dataclass(frozen=True, slots=True)
class Status:
    generated_at: float
    ready: bool
    targets: tuple[TargetStatus, ...]
    # Package counts (collect/versions.py): one line per target with `packages:`, sanitised.
    packages: tuple[str, ...] = ()


# The status page counts API calls and events over this window ("the last minutes").
STATUS_WINDOW = 300.0
# Jobs listed per target and list (stale, failing); the count says how many there are.
LISTED = 50

# (time, attempts, throttled, failed, events received, event describes) of a target's
# counters: the collector samples them once per cycle.
Sample = tuple[float, int, int, int, int, int]


def window_base(samples: Sequence[Sample], now: Sample) -> Sample:
    """The sample the window's counts start from: the newest at least STATUS_WINDOW old,
    else the oldest; `now` itself when there is none, or when the counters started again
    (a removed and re-added target, a new consumer), so no count is ever negative."""
    old = [c for c in samples if c[0] <= now[0] - STATUS_WINDOW]
    base = old[-1] if old else (samples[0] if samples else None)
    if base is None or base[1] > now[1] or base[4] > now[4] or base[5] > now[5]:
        return now
    return base


@dataclass(frozen=True, slots=True)
class JobView:
    """What the status page reads of a tracked job."""

    job_id: str
    # One of the tracked states: active, frozen, pending.
    state: str
    status: str | None
    fetched_at: float | None
    frozen: bool


@dataclass(frozen=True, slots=True)
class JobLists:
    by_state: tuple[tuple[str, int], ...]
    by_status: tuple[tuple[str, int], ...]
    stale_total: int
    stale: tuple[StaleJob, ...]
    failing_total: int
    failing: tuple[FailingJob, ...]


def job_lists(
    jobs: Iterable[JobView],
    errors: Mapping[str, LastError],
    states: Iterable[str],
    now: float,
    stale_after: float,
) -> JobLists:
    """Counts by state and status; failing jobs (their last describe failed, newest failure
    first) apart from stale ones (not failing, data older than `stale_after`, oldest first)."""
    by_state = dict.fromkeys(states, 0)
    by_status: dict[str, int] = {}
    stale: list[StaleJob] = []
    fetched: dict[str, float | None] = {}
    for job in jobs:
        by_state[job.state] = by_state.get(job.state, 0) + 1
        fetched[job.job_id] = job.fetched_at
        if job.fetched_at is None:
            continue
        status = job.status or "UNKNOWN"
        by_status[status] = by_status.get(status, 0) + 1
        age = now - job.fetched_at
        if not job.frozen and age > stale_after and job.job_id not in errors:
            stale.append(StaleJob(job.job_id, age))
    stale.sort(key=lambda j: (-j.age_seconds, j.job_id))
    failing = []
    for job_id, error in errors.items():
        at = fetched.get(job_id)
        failing.append(FailingJob(job_id, None if at is None else now - at, error))
    failing.sort(key=lambda j: (-j.error.at, j.job_id))
    return JobLists(
        tuple(by_state.items()),
        tuple(sorted(by_status.items())),
        len(stale),
        tuple(stale[:LISTED]),
        len(failing),
        tuple(failing[:LISTED]),
    )


def wants_json(accept: str) -> bool:
    """True when the client ranks JSON above HTML (`Accept: application/json`)."""
    ranks = qualities(accept)
    js = ranks.get(JSON_TYPE, 0.0)
    return js > 0 and js > ranks.get(HTML_TYPE, -1.0)


def _error(error: LastError | None) -> dict[str, Any] | None:
    if error is None:
        return None
    return {
        "at": error.at,
        "class": error.outcome,
        "operation": error.operation,
        "job_id": error.job_id,
        "message": error.message,
    }


def _events(e: EventsStatus | None) -> dict[str, Any] | None:
    if e is None:
        return None
    return {
        "mode": "event-driven" if e.driven else "polling",
        "reason": e.reason,
        "queue_url": e.queue_url,
        "last_error": _error(e.last_error),
        "last_message": e.last_message,
        "lag_seconds": None if e.lag_seconds is None else round(e.lag_seconds, 3),
        "received": e.received,
        "describes": e.describes,
        "unknown_waiting": e.unknown_waiting,
    }


def _target(t: TargetStatus) -> dict[str, Any]:
    return {
        "name": t.name,
        "region": t.region,
        "discovery": t.discovery,
        "ready": t.ready,
        "collection_success": t.collection_success,
        "last_discovery_success": t.last_discovery_success,
        "last_collection_success": t.last_collection_success,
        "last_error": _error(t.last_error),
        "api": {
            "window_seconds": round(t.api_window_seconds, 3),
            "calls": t.api_calls,
            "throttled": t.api_throttled,
            "failed": t.api_failed,
        },
        "jobs_by_state": dict(t.jobs_by_state),
        "jobs_by_status": dict(t.jobs_by_status),
        "mode": "event-driven" if t.events is not None and t.events.driven else "polling",
        "events": _events(t.events),
        "failing": {
            "total": t.failing_total,
            "jobs": [
                {
                    "job_id": j.job_id,
                    "age_seconds": None if j.age_seconds is None else round(j.age_seconds, 3),
                    "error": _error(j.error),
                }
                for j in t.failing_jobs
            ],
        },
        "stuck": [
            {
                "job_id": j.job_id,
                "stuck": dict(j.stuck),
                "swept_at": j.swept_at,
                "oldest": [
                    {
                        "thing_name": r.thing_name,
                        "state": r.state,
                        "since": r.since,
                        "retry_attempt": r.retry_attempt,
                        "execution_number": r.execution_number,
                        "console_url": console_url(t.region, r.thing_name),
                    }
                    for r in j.oldest
                ],
            }
            for j in t.stuck_jobs
        ],
        "stale": {
            "after_seconds": t.stale_after_seconds,
            "basis": t.stale_basis,
            "total": t.stale_total,
            "jobs": [
                {"job_id": j.job_id, "age_seconds": round(j.age_seconds, 3)} for j in t.stale_jobs
            ],
        },
    }


def to_dict(status: Status) -> dict[str, Any]:
    return {
        "version": __version__,
        "generated_at": status.generated_at,
        "ready": status.ready,
        "targets": [_target(t) for t in status.targets],
        "packages": list(status.packages),
    }


def render_json(status: Status) -> bytes:
    # ensure_ascii: the body is plain ASCII whatever a job id or an AWS message holds.
    # json_safe: no lone surrogate, which a strict parser would refuse the document for.
    return json.dumps(json_safe(to_dict(status)), indent=2, ensure_ascii=True).encode() + b"\n"


def _when(at: float | None, now: float) -> str:
    if at is None:
        return "never"
    stamp = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(at))
    return f"{stamp} ({_age(now - at)} ago)"


def _age(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


_e = html_text


def _counts(pairs: tuple[tuple[str, int], ...]) -> str:
    if not pairs:
        return "none"
    return ", ".join(f"{_e(name)}&nbsp;{count}" for name, count in pairs)


def _error_html(e: LastError, now: float, with_job: bool = True) -> str:
    job = f" job <code>{_e(e.job_id)}</code>" if e.job_id and with_job else ""
    return (
        f'<span class="bad">{_e(e.outcome)}</span> in {_e(e.operation)}{job}, '
        f"{_e(_when(e.at, now))}<br><code>{_e(e.message)}</code>"
    )


def _data_age(age: float | None) -> str:
    return "never described" if age is None else f"{_age(age)} old"


def _mode_html(t: TargetStatus) -> str:
    if t.events is None:
        return "polling every interval (no <code>events:</code> configured)"
    if t.events.driven:
        return (
            '<span class="ok">event-driven</span> (events flow; active jobs reconciled '
            "every reconcile interval)"
        )
    return f'<span class="bad">polling</span>: {_e(t.events.reason)}'


def _events_html(e: EventsStatus | None, now: float, window: str) -> str:
    if e is None:
        return ""
    error = "none" if e.last_error is None else _error_html(e.last_error, now)
    lag = "no event with a timestamp yet" if e.lag_seconds is None else _age(e.lag_seconds)
    return (
        f"<tr><th>Event queue</th><td><code>{_e(e.queue_url)}</code></td></tr>\n"
        f"<tr><th>Last queue error</th><td>{error}</td></tr>\n"
        f"<tr><th>Events (last {_e(window)})</th><td>{e.received} received, "
        f"{e.describes} describes caused; last message {_e(_when(e.last_message, now))}; "
        f"lag of the last event {_e(lag)}; {e.unknown_waiting} unknown job ids waiting"
        "</td></tr>\n"
    )


_OK = '<span class="ok">OK</span>'
_FAILING = '<span class="bad">failing</span>'


def console_url(region: str, thing: str) -> str:
    """The thing's page in the AWS IoT console (its job executions are listed there)."""
    return (
        f"https://{url_component(region)}.console.aws.amazon.com/iot/home"
        f"?region={url_component(region)}#/thing/{url_component(thing)}"
    )


def _stuck_html(t: TargetStatus, now: float) -> str:
    if not t.stuck_jobs:
        return "none"
    rows = []
    for j in t.stuck_jobs:
        counts = ", ".join(f"{_e(state)}&nbsp;{n}" for state, n in j.stuck if n)
        things = "".join(
            f'<li><a href="{_e(console_url(t.region, r.thing_name))}"><code>'
            f"{_e(r.thing_name)}</code></a> {_e(r.state.replace('_', ' '))} since "
            f"{_e(_when(r.since, now))}, retry attempt {r.retry_attempt}</li>"
            for r in j.oldest
        )
        rows.append(
            f"<li><code>{_e(j.job_id)}</code>: {counts} (swept {_e(_age(now - j.swept_at))} "
            f"ago)<ul>{things}</ul></li>"
        )
    return "<ul>" + "".join(rows) + "</ul>"


def _target_html(t: TargetStatus, now: float) -> str:
    state = (
        "not run yet" if t.collection_success is None else _OK if t.collection_success else _FAILING
    )
    ready = "yes" if t.ready else '<span class="bad">no</span>'
    error = "none" if t.last_error is None else _error_html(t.last_error, now)
    discovery = _e(_when(t.last_discovery_success, now)) if t.discovery else "not configured"
    stale_rows = "".join(
        f"<li><code>{_e(j.job_id)}</code>: {_e(_age(j.age_seconds))} old</li>" for j in t.stale_jobs
    )
    more = t.stale_total - len(t.stale_jobs)
    if more > 0:
        stale_rows += f"<li>… and {more} more</li>"
    stale = f"<ul>{stale_rows}</ul>" if stale_rows else "none"
    window = _age(t.api_window_seconds)
    failing_rows = "".join(
        f"<li><code>{_e(j.job_id)}</code>: {_error_html(j.error, now, with_job=False)}"
        f" (data {_e(_data_age(j.age_seconds))})</li>"
        for j in t.failing_jobs
    )
    if t.failing_total > len(t.failing_jobs):
        failing_rows += f"<li>… and {t.failing_total - len(t.failing_jobs)} more</li>"
    failing = (
        f'<span class="bad">{t.failing_total}</span><ul>{failing_rows}</ul>'
        if t.failing_total
        else "none"
    )
    basis = "reconcile interval" if t.stale_basis == "reconcile_interval" else "interval"
    return f"""<section>
<h2>Target <code>{_e(t.name)}</code> <small>{_e(t.region)}</small></h2>
<table>
<tr><th>Collection</th><td>{state}</td></tr>
<tr><th>Ready</th><td>{ready}</td></tr>
<tr><th>Last successful discovery</th><td>{discovery}</td></tr>
<tr><th>Last successful collection</th><td>{_e(_when(t.last_collection_success, now))}</td></tr>
<tr><th>Collection mode</th><td>{_mode_html(t)}</td></tr>
{_events_html(t.events, now, window)}<tr><th>Last error</th><td>{error}</td></tr>
<tr><th>API calls (last {_e(window)})</th><td>{t.api_calls} attempts, {t.api_throttled} throttled, {t.api_failed} failed</td></tr>
<tr><th>Jobs tracked</th><td>{_counts(t.jobs_by_state)}</td></tr>
<tr><th>Jobs by status</th><td>{_counts(t.jobs_by_status)}</td></tr>
<tr><th>Failing jobs (last describe failed)</th><td>{failing}</td></tr>
<tr><th>Stuck executions (oldest first)</th><td>{_stuck_html(t, now)}</td></tr>
<tr><th>Stale jobs (data older than {_e(_age(t.stale_after_seconds))}, twice the {basis})</th><td>{t.stale_total}{stale if t.stale_total else ""}</td></tr>
</table>
</section>
"""  # noqa: E501


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; max-width: 60em; color: #222; }
table { border-collapse: collapse; margin-bottom: 1em; }
th, td { text-align: left; vertical-align: top; padding: .3em .8em; border-bottom: 1px solid #ddd; }
th { font-weight: 600; white-space: nowrap; }
code { background: #f4f4f4; padding: 0 .2em; overflow-wrap: anywhere; }
.ok { color: #1a7f37; font-weight: 600; }
.bad { color: #c62828; font-weight: 600; }
small { color: #666; font-weight: normal; }
ul { margin: .3em 0; padding-left: 1.2em; }
"""


# /status is rendered at most once per this many seconds and format, however many clients
# poll it: each request between renders is served the same bytes.
STATUS_REFRESH_SECONDS = 1.0


class StatusPages:
    """The status page in both formats, rendered from `snapshot` at most once per `every`
    seconds each: a poll is a dictionary read, not a render of every target's lists on
    the event loop that also serves /metrics.

    Should a render ever fail, the last good page is served (None before the first).
    """

    def __init__(
        self,
        snapshot: Callable[[], Status],
        telemetry_path: str = "/metrics",
        every: float = STATUS_REFRESH_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._snapshot = snapshot
        self._telemetry_path = telemetry_path
        self._every = every
        self._clock = clock
        # Per format (True: JSON): when it was rendered, and the bytes.
        self._pages: dict[bool, tuple[float, bytes]] = {}
        self.renders = 0

    def page(self, as_json: bool) -> bytes | None:
        now = self._clock()
        cached = self._pages.get(as_json)
        if cached is not None and now - cached[0] < self._every:
            return cached[1]
        try:
            status = self._snapshot()
            body = render_json(status) if as_json else render_html(status, self._telemetry_path)
        except Exception as exc:
            log.error("status page not rendered error=%r", summarise(exc))
            # Tried again at the next interval, not at every request meanwhile.
            if cached is not None:
                self._pages[as_json] = (now, cached[1])
            return cached[1] if cached is not None else None
        self.renders += 1
        self._pages[as_json] = (now, body)
        return body


def render_html(status: Status, telemetry_path: str = "/metrics") -> bytes:
    """A page without scripts; every value from AWS or the config is escaped."""
    now = status.generated_at
    ready = "ready" if status.ready else '<span class="bad">not ready</span>'
    sections = "".join(_target_html(t, now) for t in status.targets) or "<p>No targets.</p>"
    if status.packages:
        items = "".join(f"<li>{_e(line)}</li>" for line in status.packages)
        sections += f"<h2>Package versions</h2><ul>{items}</ul>"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>AWS IoT Jobs Exporter status</title>
<style>{_STYLE}</style></head>
<body><h1>AWS IoT Jobs Exporter status</h1>
<p>Version {_e(__version__)}; {ready}; as of {_e(_when(now, now).split(" (")[0])}.
<a href="{_e(telemetry_path)}">Metrics</a> · <a href="/">Home</a> ·
JSON: <code>curl -H 'Accept: application/json' …/status</code></p>
{sections}</body></html>
""".encode()
