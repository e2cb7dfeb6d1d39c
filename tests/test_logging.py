"""Log lines: one per event, with the event's context as keys of their own."""

from __future__ import annotations

import json
import logging

from exporter.logs import JsonFormatter, LogfmtFormatter, event_fields


def record(msg: str, *args: object) -> logging.LogRecord:
    return logging.LogRecord("exporter.collector", logging.WARNING, __file__, 1, msg, args, None)


def test_trailing_key_values_become_fields() -> None:
    r = record(
        "describe failed target=%s job_id=%s outcome=%s error=%r",
        "prod",
        "fw-1",
        "denied",
        "AccessDenied: no",
    )
    assert event_fields(r) == (
        "describe failed",
        [("target", "prod"), ("job_id", "fw-1"), ("outcome", "denied"),
         ("error", "AccessDenied: no")],
    )  # fmt: skip
    line = LogfmtFormatter().format(r)
    assert line.endswith(
        'msg="describe failed" target=prod job_id=fw-1 outcome=denied error="AccessDenied: no"'
    )
    entry = json.loads(JsonFormatter().format(r))
    assert entry["msg"] == "describe failed" and entry["job_id"] == "fw-1"
    assert entry["error"] == "AccessDenied: no" and entry["level"] == "warn"
    # The plain message, as caplog and other handlers see it, is unchanged.
    assert r.getMessage() == "describe failed target=prod job_id=fw-1 outcome=denied " + (
        "error='AccessDenied: no'"
    )


def test_other_messages_stay_whole() -> None:
    for r in (
        record("listening address=%s shard=%d/%d", "http://x", 0, 1),
        record("plain text"),
        record("value %s in the middle=%s", 1, 2),
        record("clash level=%s", "x"),
    ):
        assert event_fields(r) == (r.getMessage(), [])
        assert json.loads(JsonFormatter().format(r))["msg"] == r.getMessage()


def test_values_are_quoted_when_needed() -> None:
    line = LogfmtFormatter().format(record("event path=%s", 'a "b" = c'))
    assert line.endswith('msg=event path="a \\"b\\" = c"')
