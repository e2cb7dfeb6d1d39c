"""AWS cron expressions ('cron(0 2 ? * SUN *)') of maintenance windows: parse, next occurrence.

Pure (no I/O, nothing of ours): the model reads job windows with it. The simulator runs
windows on a parser of its own (simulator/cron.py), and a property test checks they agree."""

from __future__ import annotations

import bisect
import calendar
import re
from dataclasses import dataclass, field
from datetime import datetime

_MONTHS = ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")
# AWS numbers days of the week 1-7 from Sunday, unlike Unix cron.
_DAYS = ("SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT")
_EXPR = re.compile(r"^cron\((.*)\)$")
# AWS's own bound on a CronExpression (botocore's IoT model: max 256); a longer text is
# not one AWS would send, and the numbers in it could be as long as the text.
MAX_EXPRESSION_LENGTH = 256
# The longest each month can be, February in a leap year.
_LONGEST = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


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
        # isdigit() alone passes '²' and other digits int() refuses, and any number of them.
        if not (token.isascii() and token.isdigit() and len(token) <= 4):
            raise CronError(f"{token!r} is not a number")
        value = int(token)
        if not low <= value <= high:
            raise CronError(f"{value} is outside {low}-{high}")
        return value

    for part in text.split(","):
        step = 1
        if "/" in part:
            part, step_text = part.split("/", 1)
            if not (step_text.isascii() and step_text.isdigit() and len(step_text) <= 4):
                raise CronError(f"bad step {step_text!r}")
            if int(step_text) < 1:
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
    # False when no date can ever match, such as 30 FEB or 31 APR: known at parse, so the
    # search for a next occurrence of such a window costs nothing (issue 18, D5).
    possible: bool = field(init=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "possible", self._can_match())

    def _can_match(self) -> bool:
        # Every month has every day of the week, so only a day of the month can miss.
        if self.days is None:
            return True
        leap = any(calendar.isleap(year) for year in self.years)
        longest = max(28 if m == 2 and not leap else _LONGEST[m - 1] for m in self.months)
        return min(self.days) <= longest

    @classmethod
    def parse(cls, expression: str) -> CronExpression:
        if len(expression) > MAX_EXPRESSION_LENGTH:
            raise CronError(f"longer than {MAX_EXPRESSION_LENGTH} characters")
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

    def _weekday_matches(self, year: int, month: int, day: int) -> bool:
        # calendar: Monday = 0; AWS: Sunday = 1.
        return (
            self.weekdays is None
            or (calendar.weekday(year, month, day) + 1) % 7 + 1 in self.weekdays
        )

    def next_at_or_after(self, when: datetime) -> datetime | None:
        """The first occurrence at or after `when` (naive or aware, kept as given); None
        when there is none.

        The walk goes month by month through the expression's own years (at most 2199), so
        it is bounded without a horizon and exact however far the next occurrence is (29 FEB
        can be eight years off): at most one visit per listed month of each listed year, and
        none at all for an expression that can never match.
        """
        if not self.possible:
            return None
        years = sorted(self.years)
        months, days = sorted(self.months), sorted(self.days or range(1, 32))
        hours, minutes = sorted(self.hours), sorted(self.minutes)
        today = (when.year, when.month, when.day)
        for year in years[bisect.bisect_left(years, when.year) :]:
            for month in months:
                if (year, month) < today[:2]:
                    continue
                length = _month_length(year, month)
                for day in days:
                    if day > length:
                        break
                    date = (year, month, day)
                    if date < today or not self._weekday_matches(*date):
                        continue
                    for hour in hours:
                        if date == today and hour < when.hour:
                            continue
                        for minute in minutes:
                            candidate = when.replace(
                                year=year, month=month, day=day, hour=hour, minute=minute,
                                second=0, microsecond=0,
                            )  # fmt: skip
                            if candidate >= when:
                                return candidate
        return None


def _month_length(year: int, month: int) -> int:
    """Days in the month: one call per month the search visits (tests count them)."""
    return calendar.monthrange(year, month)[1]
