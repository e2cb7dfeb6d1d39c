"""Scenario YAML and admin-API JSON into typed values; every error names the file and field path.

The simulator's own reader, apart from the exporter's on purpose: the simulator is the
independent witness the exporter is tested against, so it shares none of its code.
Scenarios are written by the people running the simulator, so this is a strict reader
rather than a hardened one (no alias budget: a scenario is not untrusted input).
"""

from __future__ import annotations

import math
import os
import re
import reprlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")

# How long a value quoted in an error may be.
_SHOWN = 80

_repr = reprlib.Repr()
_repr.maxlevel = 2
_repr.maxlist = _repr.maxtuple = _repr.maxdict = _repr.maxset = 4
_repr.maxstring = _repr.maxother = _repr.maxlong = _SHOWN


def shown(value: Any) -> str:
    """A value as an error quotes it: its repr, cut short."""
    try:
        text = _repr.repr(value)
    except Exception:  # an int too long for str() has no repr either
        text = f"<{type(value).__name__}>"
    return text if len(text) <= _SHOWN else text[: _SHOWN - 3] + "..."


def _kind(value: Any) -> str:
    names = {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean",
             int: "an integer", float: "a number", type(None): "nothing"}  # fmt: skip
    return names.get(type(value), type(value).__name__)


class LocatedError(Exception):
    """A problem in a file (or an admin request), located by field path."""

    def __init__(self, file: str, path: str, message: str) -> None:
        super().__init__(f"{file}: {path}: {message}" if path else f"{file}: {message}")
        self.file = file
        self.path = path
        self.message = message


def join(path: str, key: str | int) -> str:
    """The path of a key or an index under `path`: `jobs[0].rollout`."""
    if isinstance(key, int):
        return f"{path}[{key}]"
    if not (key and len(key) <= _SHOWN and key.isprintable()):
        key = shown(key)
    return f"{path}.{key}" if path else key


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
    """YAML text as plain data (safe_load), or `error` at the line and column at fault."""
    try:
        return yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise error(file, where, f"invalid YAML: {exc.problem or 'not valid YAML'}") from None
    except (yaml.YAMLError, ValueError, RecursionError) as exc:
        raise error(file, "", f"invalid YAML: {type(exc).__name__}") from None


class Reader:
    """Reads one file's data, checking types and raising `error` with the field's path."""

    def __init__(self, file: str, error: type[LocatedError] = LocatedError) -> None:
        self.file = file
        self.error = error

    def fail(self, path: str, message: str) -> LocatedError:
        return self.error(self.file, path, message)

    def mapping(self, value: Any, path: str, allowed: tuple[str, ...]) -> Mapping[str, Any]:
        """A mapping with only `allowed` keys; nothing reads as an empty mapping."""
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            raise self.fail(path, f"expected a mapping, got {_kind(value)}")
        for key in value:
            if not isinstance(key, str):
                raise self.fail(path, f"keys must be strings, got {_kind(key)}")
            if key not in allowed:
                raise self.fail(
                    join(path, key), f"unknown key; expected one of {', '.join(allowed)}"
                )
        return value

    def seq(self, value: Any, path: str) -> list[Any]:
        """A list; nothing reads as an empty list."""
        if value is None:
            return []
        if not isinstance(value, list):
            raise self.fail(path, f"expected a list, got {_kind(value)}")
        return value

    def opt(
        self, data: Mapping[str, Any], key: str, path: str, read: Callable[[Any, str], T]
    ) -> T | None:
        """`read(value, path)` of an optional key; None when it is absent or null."""
        if data.get(key) is None:
            return None
        return read(data[key], join(path, key))

    def string(self, value: Any, path: str, pattern: re.Pattern[str] | None = None) -> str:
        """A non-empty string, matching `pattern` whole when one is given."""
        if not isinstance(value, str) or not value:
            raise self.fail(path, f"expected a non-empty string, got {_kind(value)}")
        if pattern is not None and not pattern.fullmatch(value):
            raise self.fail(
                path, f"expected a string matching {pattern.pattern}, got {shown(value)}"
            )
        return value

    def choice(self, value: Any, path: str, choices: tuple[Any, ...]) -> str:
        if value not in choices:
            listed = ", ".join(str(c) for c in choices)
            raise self.fail(path, f"{shown(value)} is not one of {listed}")
        return str(value)

    def boolean(self, value: Any, path: str) -> bool:
        if not isinstance(value, bool):
            raise self.fail(path, f"expected true or false, got {shown(value)}")
        return value

    def integer(
        self, value: Any, path: str, low: int | None = None, high: int | None = None
    ) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(path, f"expected an integer, got {shown(value)}")
        self._within("an integer", value, value, path, low, high)
        return value

    def number(
        self, value: Any, path: str, low: float | None = None, high: float | None = None
    ) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.fail(path, f"expected a number, got {shown(value)}")
        # float() of an int beyond a float's range raises; such a number is no number here.
        try:
            number = float(value)
        except OverflowError:
            number = math.inf
        if not math.isfinite(number):
            raise self.fail(path, f"expected a number, got {shown(value)}")
        self._within("a number", number, value, path, low, high)
        return number

    def probability(self, value: Any, path: str) -> float:
        return self.number(value, path, 0.0, 1.0)

    def _within(
        self,
        what: str,
        number: float,
        given: Any,
        path: str,
        low: float | None,
        high: float | None,
    ) -> None:
        """`number` within [low, high], else an error quoting the value as `given`."""
        if low is not None and number < low:
            raise self.fail(path, f"expected {what} ≥ {low:g}, got {shown(given)}")
        if high is not None and number > high:
            raise self.fail(path, f"expected {what} ≤ {high:g}, got {shown(given)}")
