"""Typed reading of untrusted YAML data; every error names the file, field path and expectation."""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}


class LocatedError(Exception):
    """A problem in a file, located by field path (`targets[1].jobs.discover.status`)."""

    def __init__(self, file: str, path: str, message: str) -> None:
        super().__init__(f"{file}: {path}: {message}" if path else f"{file}: {message}")
        self.file = file
        self.path = path
        self.message = message


def kind(value: Any) -> str:
    """How a value reads in an error message, without quoting it."""
    if value is None:
        return "nothing"
    names = {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean",
             int: "an integer", float: "a number"}  # fmt: skip
    return names.get(type(value), type(value).__name__)


def join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


def parse_duration(value: Any) -> float | None:
    """Prometheus-style durations (`30s`, `5m`, `1h30m`); None when not one or not positive."""
    if not isinstance(value, str):
        return None
    text = value.strip()
    pos, total = 0, 0.0
    for match in _DURATION_PART.finditer(text):
        if match.start() != pos:
            return None
        total += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        pos = match.end()
    if pos != len(text) or pos == 0 or total <= 0:
        return None
    return total


def read_file(path: str | os.PathLike[str], error: type[LocatedError] = LocatedError) -> str:
    """A UTF-8 text file, or `error` naming it and why it could not be read."""
    name = os.fspath(path)
    try:
        return Path(name).read_text(encoding="utf-8")
    except OSError as exc:
        raise error(name, "", f"cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise error(name, "", "cannot read: not UTF-8 text") from None


def load_yaml(text: str, file: str, error: type[LocatedError] = LocatedError) -> Any:
    """YAML text as plain data (safe_load), or `error` with the line and column at fault."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "not valid YAML"
        raise error(file, where, f"invalid YAML: {problem}") from None
    except (ValueError, RecursionError) as exc:
        # Deeply nested or numerically absurd documents break the loader itself.
        raise error(file, "", f"invalid YAML: {type(exc).__name__}") from None


class Reader:
    """Walks one file's data, checking types and raising `error` with the field's path."""

    def __init__(self, file: str, error: type[LocatedError] = LocatedError) -> None:
        self.file = file
        self.error = error

    def fail(self, path: str, message: str) -> LocatedError:
        return self.error(self.file, path, message)

    def mapping(self, value: Any, path: str, allowed: tuple[str, ...]) -> Mapping[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            raise self.fail(path, f"expected a mapping, got {kind(value)}")
        for key in value:
            if not isinstance(key, str):
                raise self.fail(path, f"keys must be strings, got {kind(key)}")
            if key not in allowed:
                where = join(path, key or repr(key))
                raise self.fail(where, f"unknown key; expected one of {', '.join(allowed)}")
        return value

    def seq(self, value: Any, path: str) -> list[Any]:
        if value is None:
            return []
        if not isinstance(value, list):
            raise self.fail(path, f"expected a list, got {kind(value)}")
        return value

    def opt(
        self, data: Mapping[str, Any], key: str, path: str, read: Callable[[Any, str], T]
    ) -> T | None:
        """`read(value, path)` of an optional key; None when it is absent or null."""
        if data.get(key) is None:
            return None
        return read(data[key], join(path, key))

    def string(
        self,
        value: Any,
        path: str,
        pattern: re.Pattern[str] | None = None,
        expect: str = "",
        secret: bool = False,
    ) -> str:
        """A non-empty string; `secret` keeps the value out of the message."""
        if not isinstance(value, str) or value == "":
            shown = "a value" if secret else kind(value)
            raise self.fail(path, f"expected a non-empty string, got {shown}")
        if pattern is not None and not pattern.match(value):
            shown = "a value" if secret else repr(value)
            if expect:
                raise self.fail(path, f"{'' if secret else shown + ' '}is not {expect}")
            raise self.fail(path, f"expected a string matching {pattern.pattern}, got {shown}")
        return value

    def choice(self, value: Any, path: str, choices: tuple[str, ...]) -> str:
        if value not in choices:
            raise self.fail(path, f"{value!r} is not one of {', '.join(choices)}")
        return str(value)

    def boolean(self, value: Any, path: str) -> bool:
        if not isinstance(value, bool):
            raise self.fail(path, f"expected true or false, got {value!r}")
        return value

    def integer(
        self, value: Any, path: str, low: int | None = None, high: int | None = None
    ) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(path, f"expected an integer, got {value!r}")
        self._bounds("an integer", value, path, low, high)
        return value

    def number(
        self, value: Any, path: str, low: float | None = None, high: float | None = None
    ) -> float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        if not ok or not math.isfinite(value):
            raise self.fail(path, f"expected a number, got {value!r}")
        self._bounds("a number", value, path, low, high)
        return float(value)

    def probability(self, value: Any, path: str) -> float:
        return self.number(value, path, 0.0, 1.0)

    def _bounds(
        self, what: str, value: float, path: str, low: float | None, high: float | None
    ) -> None:
        if low is not None and value < low:
            raise self.fail(path, f"expected {what} ≥ {low:g}, got {value:g}")
        if high is not None and value > high:
            raise self.fail(path, f"expected {what} ≤ {high:g}, got {value:g}")

    def duration(self, value: Any, path: str) -> float:
        seconds = parse_duration(value)
        if seconds is None:
            raise self.fail(path, f"expected a duration like 30s, 5m or 24h, got {value!r}")
        return seconds

    def regexes(self, value: Any, path: str) -> tuple[re.Pattern[str], ...]:
        """One regular expression or a list of them, each compiled."""
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list):
            raise self.fail(path, f"expected a list of regular expressions, got {kind(value)}")
        out = []
        for i, item in enumerate(value):
            where = join(path, i)
            text = self.string(item, where)
            try:
                out.append(re.compile(text))
            except re.error as exc:
                raise self.fail(
                    where, f"{text!r} is not a valid regular expression: {exc}"
                ) from None
        return tuple(out)
