"""AWS cron expressions ('cron(0 2 ? * SUN *)') of maintenance windows: parse, next occurrence.

Pure (no I/O, nothing of ours): the model reads job windows with it, the simulator runs them."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta

_MONTHS = ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")
# AWS numbers days of the week 1-7 from Sunday, unlike Unix cron.
_DAYS = ("SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT")
_EXPR = re.compile(r"^cron\((.*)\)$")
# Two years of days: AWS schedules at most that far ahead, so an expression that matches
# nothing within it matches nothing useful.
_HORIZON_DAYS = 2 * 366 + 1


class CronError(ValueError):
    """An expression this parser does not accept."""


def _field(
    text: str, low: int, high: int, names: tuple[str, ...] = (), name_base: int = 1
) -> frozenset[int]:
    values: set[int] = set()

    def number(token: str) -> int:
        upper = token.upper()
        if upper in names:
            return names.index(upper) + name_base
        if not token.isdigit():
            raise CronError(f"{token!r} is not a number")
        value = int(token)
        if not low <= value <= high:
            raise CronError(f"{value} is outside {low}-{high}")
        return value

    for part in text.split(","):
        step = 1
        if "/" in part:
            part, step_text = part.split("/", 1)
            if not step_text.isdigit() or int(step_text) < 1:
                raise CronError(f"bad step {step_text!r}")
            step = int(step_text)
        if part in ("*", "?"):
            first, last = low, high
        elif "-" in part:
            a, b = part.split("-", 1)
            first, last = number(a), number(b)
            if last < first:
                raise CronError(f"empty range {part!r}")
        else:
            first = number(part)
            last = high if step > 1 else first
        values.update(range(first, last + 1, step))
    return frozenset(values)


@dataclass(frozen=True, slots=True)
class CronExpression:
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int] | None  # None: '?' (any day of the month)
    months: frozenset[int]
    weekdays: frozenset[int] | None  # AWS numbering, 1 = Sunday; None: '?'
    years: frozenset[int]

    @classmethod
    def parse(cls, expression: str) -> CronExpression:
        m = _EXPR.match(expression.strip())
        if m is None:
            raise CronError("expected cron(...)")
        fields = m.group(1).split()
        if len(fields) != 6:
            raise CronError(f"expected 6 fields, got {len(fields)}")
        minute, hour, dom, month, dow, year = fields
        if (dom == "?") == (dow == "?"):
            raise CronError("exactly one of day-of-month and day-of-week must be '?'")
        return cls(
            _field(minute, 0, 59),
            _field(hour, 0, 23),
            None if dom == "?" else _field(dom, 1, 31),
            _field(month, 1, 12, _MONTHS),
            None if dow == "?" else _field(dow, 1, 7, _DAYS),
            _field(year, 1970, 2199),
        )

    def _day_matches(self, day: datetime) -> bool:
        if day.year not in self.years or day.month not in self.months:
            return False
        if self.days is not None and day.day not in self.days:
            return False
        # Python: Monday = 0; AWS: Sunday = 1.
        return self.weekdays is None or (day.weekday() + 1) % 7 + 1 in self.weekdays

    def next_at_or_after(self, when: datetime) -> datetime | None:
        """The first occurrence at or after `when` (naive or aware, kept as given)."""
        day = when.replace(hour=0, minute=0, second=0, microsecond=0)
        hours = sorted(self.hours)
        minutes = sorted(self.minutes)
        for _ in range(_HORIZON_DAYS):
            if self._day_matches(day):
                for h in hours:
                    for m in minutes:
                        candidate = day.replace(hour=h, minute=m)
                        if candidate >= when:
                            return candidate
            day += timedelta(days=1)
        return None
