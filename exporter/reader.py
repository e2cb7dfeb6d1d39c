"""Typed reading of untrusted YAML data; every error names the file, field path and expectation."""

from __future__ import annotations

import math
import os
import re
import reprlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml

from exporter import durations

T = TypeVar("T")

# A value quoted in an error is cut to this many characters: a config value can be
# megabytes long, or an alias graph whose repr would be billions of characters.
SHOWN_MAX = 80
# Backstops for a whole message and its field path, which quote keys of the file.
_MESSAGE_MAX = 1000
_PATH_MAX = 200
# Nodes that aliases may add to a document, counted as if every alias were written out.
# Anchors shared by a few targets (labels, discovery filters) use hundreds; a "billion
# laughs" bomb needs millions, and anything that walks or prints it pays for each one.
ALIAS_BUDGET = 10_000

_repr = reprlib.Repr()
_repr.maxlevel = 2
_repr.maxlist = _repr.maxtuple = _repr.maxdict = _repr.maxset = 4
_repr.maxstring = _repr.maxother = _repr.maxlong = SHOWN_MAX


def cut(text: str, limit: int = SHOWN_MAX) -> str:
    """`text` if short enough, else its start and an ellipsis, `limit` characters in all."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def shown(value: Any) -> str:
    """How a value is quoted in an error: its repr, at most SHOWN_MAX characters.

    reprlib stops at a few items per level and two levels deep, so even a value built of
    aliases that would expand to gigabytes is quoted in constant time.
    """
    try:
        text = _repr.repr(value)
    except Exception:  # a repr that fails (an int beyond str()'s digit limit) still reads
        text = f"<{type(value).__name__}>"
    return cut(text)


class LocatedError(Exception):
    """A problem in a file, located by field path (`targets[1].jobs.discover.status`)."""

    def __init__(self, file: str, path: str, message: str) -> None:
        path, message = cut(path, _PATH_MAX), cut(message, _MESSAGE_MAX)
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
    key = field_name(key)
    return f"{path}.{key}" if path else key


def field_name(key: Any) -> str:
    """A mapping key as it reads in a field path: as written if short and printable."""
    if isinstance(key, str) and key and len(key) <= SHOWN_MAX and key.isprintable():
        return key
    return shown(key)


def parse_duration(value: Any) -> float | None:
    """The seconds of a duration (`30s`, `5m`, `1h30m`: exporter.durations' grammar, blanks
    around it allowed); None when not one or not positive."""
    seconds = durations.parse(value.strip()) if isinstance(value, str) else None
    return seconds if seconds else None


def read_file(path: str | os.PathLike[str], error: type[LocatedError] = LocatedError) -> str:
    """A UTF-8 text file, or `error` naming it and why it could not be read."""
    name = os.fspath(path)
    try:
        return Path(name).read_text(encoding="utf-8")
    except OSError as exc:
        raise error(name, "", f"cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise error(name, "", "cannot read: not UTF-8 text") from None


class _AliasBudgetExceeded(yaml.YAMLError):
    def __init__(self, problem: str, mark: yaml.Mark) -> None:
        super().__init__(problem)
        self.problem = problem
        self.mark = mark


class _BudgetLoader(yaml.SafeLoader):
    """safe_load, refusing aliases that add more than ALIAS_BUDGET nodes in all.

    PyYAML shares an aliased node rather than copying it, so loading a bomb is cheap; it
    is every later walk or repr of the data that expands it. Counting at composition,
    before any of that, refuses it while it is still a few hundred bytes of text.
    """

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._added = 0
        self._sizes: dict[int, int] = {}
        self._open: list[str | None] = []

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()  # type: ignore[no-untyped-call]
            if event.anchor in self._open:
                raise _AliasBudgetExceeded(
                    f"alias *{cut(str(event.anchor))} refers to a node that contains it",
                    event.start_mark,
                )
            node = self.anchors.get(event.anchor)
            if node is not None:
                self._added += self._size(node)
                if self._added > ALIAS_BUDGET:
                    raise _AliasBudgetExceeded(
                        f"aliases expand to more than {ALIAS_BUDGET} values (an alias "
                        "bomb?); write repeated values out or alias less",
                        event.start_mark,
                    )
            return super().compose_node(parent, index)
        event = self.peek_event()  # type: ignore[no-untyped-call]
        anchor = getattr(event, "anchor", None)
        collection = isinstance(event, yaml.SequenceStartEvent | yaml.MappingStartEvent)
        if collection:
            self._open.append(anchor)
        try:
            return super().compose_node(parent, index)
        finally:
            if collection:
                self._open.pop()

    def _size(self, root: yaml.Node) -> int:
        """Nodes under `root` with aliases written out; once per node, capped past the budget."""
        sizes = self._sizes
        stack: list[tuple[yaml.Node, bool]] = [(root, False)]
        while stack:
            node, ready = stack.pop()
            if id(node) in sizes:
                continue
            if isinstance(node, yaml.ScalarNode):
                sizes[id(node)] = 1
                continue
            children: list[yaml.Node] = (
                [part for pair in node.value for part in pair]
                if isinstance(node, yaml.MappingNode)
                else list(node.value)
            )
            if ready:
                total = 1 + sum(sizes[id(child)] for child in children)
                sizes[id(node)] = min(total, ALIAS_BUDGET + 1)
            else:
                stack.append((node, True))
                stack.extend((child, False) for child in children if id(child) not in sizes)
        return sizes[id(root)]


def load_yaml(text: str, file: str, error: type[LocatedError] = LocatedError) -> Any:
    """YAML text as plain data (safe_load), or `error` with the line and column at fault."""
    loader: _BudgetLoader | None = None
    try:
        # The constructor reads the text already, and refuses control characters.
        loader = _BudgetLoader(text)
        return loader.get_single_data()
    except _AliasBudgetExceeded as exc:
        at = exc.mark
        raise error(file, f"line {at.line + 1}, column {at.column + 1}", exc.problem) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "not valid YAML"
        raise error(file, where, f"invalid YAML: {problem}") from None
    except (ValueError, RecursionError, MemoryError) as exc:
        # Deeply nested or numerically absurd documents break the loader itself.
        raise error(file, "", f"invalid YAML: {type(exc).__name__}") from None
    finally:
        if loader is not None:
            loader.dispose()


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
                where = join(path, key)
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
            what = "a value" if secret else kind(value)
            raise self.fail(path, f"expected a non-empty string, got {what}")
        if pattern is not None and not pattern.fullmatch(value):
            quoted = "a value" if secret else shown(value)
            if expect:
                raise self.fail(path, f"{'' if secret else quoted + ' '}is not {expect}")
            raise self.fail(path, f"expected a string matching {pattern.pattern}, got {quoted}")
        return value

    def choice(self, value: Any, path: str, choices: tuple[str, ...]) -> str:
        if value not in choices:
            raise self.fail(path, f"{shown(value)} is not one of {', '.join(choices)}")
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
        self._bounds("an integer", value, path, low, high)
        return value

    def number(
        self, value: Any, path: str, low: float | None = None, high: float | None = None
    ) -> float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        # math.isfinite raises OverflowError on an int beyond a float's range.
        if not ok or (isinstance(value, float) and not math.isfinite(value)):
            raise self.fail(path, f"expected a number, got {shown(value)}")
        self._bounds("a number", value, path, low, high)
        return float(value)

    def probability(self, value: Any, path: str) -> float:
        return self.number(value, path, 0.0, 1.0)

    def _bounds(
        self, what: str, value: float, path: str, low: float | None, high: float | None
    ) -> None:
        if low is not None and value < low:
            raise self.fail(path, f"expected {what} ≥ {low:g}, got {shown(value)}")
        if high is not None and value > high:
            raise self.fail(path, f"expected {what} ≤ {high:g}, got {shown(value)}")

    def duration(self, value: Any, path: str) -> float:
        seconds = parse_duration(value)
        if seconds is None:
            raise self.fail(path, f"expected a duration like 30s, 5m or 24h, got {shown(value)}")
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
                    where, f"{shown(text)} is not a valid regular expression: {exc}"
                ) from None
        return tuple(out)
