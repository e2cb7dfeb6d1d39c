"""AWS cron expressions of maintenance windows (`cron(0 2 ? * SUN *)`), as the fleet opens them.

Written apart from the exporter's parser on purpose, and simpler: the end-to-end tests
check the exporter's reading of a window against the simulator's, so the two must not
share a bug. Only what AWS documents for maintenance windows' `startTime` is accepted:
numbers, names, `*`, `?` (day of month or of week, exactly one), ranges, lists and steps.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta

MONTH_NAMES = ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")
# AWS numbers the days of the week from Sunday = 1 to Saturday = 7.
DAY_NAMES = ("SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT")
LAST_YEAR = 2199  # AWS's bound on the year field


class CronError(ValueError):
    """An expression the simulator does not accept, and why."""


def _value(token: str, low: int, high: int, names: tuple[str, ...]) -> int:
    if token.upper() in names:
        return names.index(token.upper()) + low
    if not (token.isascii() and token.isdigit()) or len(token) > 4:
        raise CronError(f"{token!r} is not a number")
    value = int(token)
    if value < low or value > high:
        raise CronError(f"{value} is not within {low}-{high}")
    return value


def _values(text: str, low: int, high: int, names: tuple[str, ...] = ()) -> frozenset[int]:
    """The set one field names: `*`, `5`, `MON-FRI`, `0/15`, `10-40/10`, lists of these."""
    out: set[int] = set()
    for item in text.split(","):
        base, slash, step_text = item.partition("/")
        step = 1
        if slash:
            if not (step_text.isascii() and step_text.isdigit()) or int(step_text) == 0:
                raise CronError(f"{step_text!r} is not a step")
            step = int(step_text)
        if base == "*":
            first, last = low, high
        elif "-" in base:
            start, _, end = base.partition("-")
            first, last = _value(start, low, high, names), _value(end, low, high, names)
            if first > last:
                raise CronError(f"{base!r} is an empty range")
        else:
            first = _value(base, low, high, names)
            # `5/15` means every 15 from 5 on, as `5-59/15` would.
            last = high if slash else first
        out.update(range(first, last + 1, step))
    return frozenset(out)


@dataclass(frozen=True, slots=True)
class Cron:
    """One expression's fields as the sets of values each allows."""

    minutes: tuple[int, ...]  # sorted
    hours: tuple[int, ...]  # sorted
    days_of_month: frozenset[int] | None  # None: '?'
    months: frozenset[int]
    days_of_week: frozenset[int] | None  # 1 = Sunday; None: '?'
    years: frozenset[int]

    @classmethod
    def parse(cls, expression: str) -> Cron:
        text = expression.strip()
        if not (text.startswith("cron(") and text.endswith(")")):
            raise CronError("expected cron(...)")
        parts = text[len("cron(") : -1].split()
        if len(parts) != 6:
            raise CronError(f"expected 6 fields, got {len(parts)}")
        minute, hour, day, month, weekday, year = parts
        if (day == "?") == (weekday == "?"):
            raise CronError("exactly one of day-of-month and day-of-week must be '?'")
        return cls(
            minutes=tuple(sorted(_values(minute, 0, 59))),
            hours=tuple(sorted(_values(hour, 0, 23))),
            days_of_month=None if day == "?" else _values(day, 1, 31),
            months=_values(month, 1, 12, MONTH_NAMES),
            days_of_week=None if weekday == "?" else _values(weekday, 1, 7, DAY_NAMES),
            years=_values(year, 1970, LAST_YEAR),
        )

    def _day_matches(self, day: date) -> bool:
        if self.days_of_month is not None:
            return day.day in self.days_of_month
        assert self.days_of_week is not None
        # isoweekday: Monday = 1 ... Sunday = 7; AWS: Sunday = 1 ... Saturday = 7.
        return day.isoweekday() % 7 + 1 in self.days_of_week

    def next_at_or_after(self, when: datetime) -> datetime | None:
        """The first start at or after `when`, in `when`'s time zone; None if there is none.

        A walk day by day from `when`, skipping whole months and years the expression
        leaves out, so that even an expression no date matches (30 FEB) ends at the last
        year it allows after a few thousand steps.
        """
        last_year = max(self.years)
        day = when.date()
        while day.year <= last_year:
            if day.year not in self.years:
                day = date(day.year + 1, 1, 1)
                continue
            if day.month not in self.months:
                day = (day.replace(day=28) + timedelta(days=4)).replace(day=1)
                continue
            if self._day_matches(day):
                for hour in self.hours:
                    for minute in self.minutes:
                        start = datetime(
                            day.year, day.month, day.day, hour, minute, tzinfo=when.tzinfo
                        )
                        if start >= when:
                            return start
            day += timedelta(days=1)
        return None
