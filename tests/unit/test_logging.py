"""Log lines: one per event, with the event's context as keys of their own."""

from __future__ import annotations

import json
import logging

from exporter.logs import JsonFormatter, LogfmtFormatter, event_fields


def record(msg: str, *args: object) -> logging.LogRecord:
    return logging.LogRecord(
        "exporter.collect.supervisor", logging.WARNING, __file__, 1, msg, args, None
    )


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


# Every character a terminal or a log pipeline acts on: C0, DEL, C1, the bidi controls,
# zero-width characters, line and paragraph separators, and a lone surrogate.
CONTROLS = [
    *map(chr, range(0x00, 0x20)),
    *map(chr, range(0x7F, 0xA0)),
    "\u061c", "\u200b", "\u200e", "\u200f", *map(chr, range(0x202A, 0x202F)),
    "\u2028", "\u2029", *map(chr, range(0x2066, 0x206A)), "\ufeff", "\ud800",
]  # fmt: skip
RAW = frozenset(CONTROLS)


def test_every_control_character_stays_escaped_on_one_line() -> None:
    for char in CONTROLS:
        for value in (f"{char}job-a", f"job{char}-a", f"job-a{char}", char):
            r = record("describe failed target=%s job_id=%s", value, value)
            r.exc_text = f"Error: {value}"
            for line in (LogfmtFormatter().format(r), JsonFormatter().format(r)):
                assert line.splitlines() == [line], (char, line)
                assert not RAW.intersection(line), (char, line)
            line = LogfmtFormatter().format(r)
            # Quoted as a JSON string: the escape is exact, the value comes back whole.
            token = line.split(" job_id=", 1)[1].split(" exc=", 1)[0]
            assert token.startswith('"') and json.loads(token) == value, (char, line)
            entry = json.loads(JsonFormatter().format(r))
            assert entry["job_id"] == value and entry["exc"] == f"Error: {value}"
            whole = LogfmtFormatter().format(record(f"plain {value}"))
            assert whole.splitlines() == [whole] and not RAW.intersection(whole), (char, whole)
