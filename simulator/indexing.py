"""Fleet indexing's aggregation calls over the simulated fleet: a small query language.

The query subset (anything else is InvalidQueryException), terms joined by ` AND `:

- `*`: every thing;
- `thingGroupNames:NAME`: the things in a thing group;
- `thingName:(A OR B ...)`: the things named (each name a term of the query's limit);
- `shadow.name.$package.reported.PACKAGE.version:VALUE`: the things reporting that
  version (`VALUE` may be `*`: any version). A backslash escapes the next character, as
  AWS's query syntax requires for `-` and other reserved characters in a name.

Group membership is read as it is now; the `$package` fields as the index has them
(`Packages.indexed`, trailing the shadows by the configured lag).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

from simulator.packages import Packages
from simulator.scenario import Indexing

INDEX_NAME = "AWS_Things"
# AWS IoT's fleet indexing limits (docs/simulator.md cites them).
MAX_TERMS = 5
MAX_QUERY_BYTES = 1000
_FIELD = re.compile(r"^shadow\.name\.\$package\.reported\.(?P<package>[^.]+)\.version$")
# A term has no unescaped white space: `a OR b`, `NOT a` and the like are not terms.
_TERM = re.compile(r"^(?P<field>(?:[^:\s\\]|\\.)+):(?P<value>(?:[^\s\\]|\\.)+)$")
# Field grouping of thing names: `thingName:(a OR b)`, each name a term.
_NAMES = re.compile(r"^thingName:\((?P<names>(?:[^\s\\()]|\\.)+(?: OR (?:[^\s\\()]|\\.)+)*)\)$")


class QueryError(Exception):
    """An error AWS answers for a fleet indexing request (code, HTTP status, message)."""

    def __init__(self, status: int, code: str, message: str, outcome: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.outcome = outcome


def _invalid_query(message: str) -> QueryError:
    return QueryError(400, "InvalidQueryException", message, "invalid_query")


def _invalid_aggregation(message: str) -> QueryError:
    return QueryError(400, "InvalidAggregationException", message, "invalid_aggregation")


def _unescape(text: str) -> str:
    return re.sub(r"\\(.)", r"\1", text)


@dataclass(frozen=True, slots=True)
class Term:
    kind: str  # "all", "group", "things" or "version"
    name: str = ""  # group or package
    value: str = ""  # version, or "*"
    names: tuple[str, ...] = ()  # things


def parse_query(query: str) -> tuple[Term, ...]:
    """The query's terms, or InvalidQueryException for anything outside the subset."""
    if len(query.encode()) > MAX_QUERY_BYTES:
        raise _invalid_query(f"The query is longer than {MAX_QUERY_BYTES} bytes.")
    parts = query.strip().split(" AND ")
    terms = []
    for raw in parts:
        part = raw.strip()
        if part == "*":
            terms.append(Term("all"))
            continue
        named = _NAMES.match(part)
        if named is not None:
            names = tuple(_unescape(n) for n in named["names"].split(" OR "))
            terms.append(Term("things", names=names))
            continue
        match = _TERM.match(part)
        if match is None:
            raise _invalid_query(f"Unsupported query term: {part[:80]!r}")
        name, value = _unescape(match["field"]), _unescape(match["value"])
        if name == "thingGroupNames" and value != "*":
            terms.append(Term("group", value))
            continue
        found = _FIELD.match(name)
        if found is not None:
            terms.append(Term("version", found["package"], value))
            continue
        raise _invalid_query(f"Unsupported query term: {part[:80]!r}")
    if sum(max(len(t.names), 1) for t in terms) > MAX_TERMS:
        raise _invalid_query(f"The query has more than {MAX_TERMS} terms.")
    return tuple(terms)


class FleetIndex:
    """Answers GetBucketsAggregation, GetStatistics and GetCardinality."""

    def __init__(
        self,
        groups: dict[str, dict[str, None]],
        things: dict[str, set[str]],
        packages: Packages,
    ) -> None:
        self.groups = groups
        self.things = things
        self.packages = packages

    def check(self, config: Indexing, index_name: str | None) -> None:
        """The errors of an index that is not there or not ready, before any query."""
        name = index_name or INDEX_NAME
        if name != INDEX_NAME or config.status == "OFF":
            raise QueryError(
                404, "ResourceNotFoundException", f"Index {name} does not exist.", "not_found"
            )
        if config.status != "ACTIVE":
            raise QueryError(400, "IndexNotReadyException", "The index is not ready.", "not_ready")

    def _package_of(self, config: Indexing, field: str, aggregate: bool) -> str:
        """The package whose version field this is; errors for any other field."""
        found = _FIELD.match(_unescape(field))
        if found is None:
            raise _invalid_aggregation(f"Unsupported aggregation field: {field[:120]!r}")
        package = found["package"]
        if not config.package_shadow or (aggregate and not config.version_fields):
            # Aggregating needs a custom field on the $package version (AWS's docs).
            raise _invalid_aggregation(
                f"Aggregation field {field[:120]!r} is not an indexed custom field."
            )
        return package

    def match(self, config: Indexing, query: str) -> set[str]:
        """The things a query selects, as the index sees them."""
        sets: list[Iterable[str]] = []
        for term in parse_query(query):
            if term.kind == "all":
                continue
            if term.kind == "group":
                sets.append(self.groups.get(term.name, {}))
                continue
            if term.kind == "things":
                sets.append(n for n in term.names if n in self.things)
                continue
            reported = self.packages.indexed.get(term.name)
            if reported is None or not config.package_shadow:
                # A field the index does not have matches nothing.
                return set()
            if term.value == "*":
                sets.append(reported.by_thing)
            else:
                sets.append(t for t, v in reported.by_thing.items() if v == term.value)
        if not sets:
            return set(self.things)
        ordered = sorted((set(s) for s in sets), key=len)
        out = ordered[0]
        for other in ordered[1:]:
            out &= other
        return out

    def buckets(
        self, config: Indexing, query: str, field: str, max_buckets: int
    ) -> dict[str, object]:
        package = self._package_of(config, field, aggregate=True)
        matched = self.match(config, query)
        reported = self.packages.indexed.get(package)
        counts: Counter[str] = Counter()
        if reported is not None:
            for thing in matched:
                version = reported.by_thing.get(thing)
                if version is not None:
                    counts[version] += 1
        ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:max_buckets]
        return {
            "totalCount": len(matched),
            "buckets": [{"keyValue": k, "count": n} for k, n in ranked],
        }

    def statistics(self, config: Indexing, query: str, field: str | None) -> dict[str, object]:
        matched = self.match(config, query)
        if field is None:
            # registry.version, AWS's default field: every simulated thing is at version 1.
            n = len(matched)
            if not n:
                return {"statistics": {"count": 0}}
            return {
                "statistics": {
                    "count": n,
                    "average": 1.0,
                    "sum": float(n),
                    "minimum": 1.0,
                    "maximum": 1.0,
                    "sumOfSquares": float(n),
                    "variance": 0.0,
                    "stdDeviation": 0.0,
                }
            }
        package = self._package_of(config, field, aggregate=True)
        reported = self.packages.indexed.get(package)
        have = reported.by_thing if reported is not None else {}
        # A string field: only the count of matching things that have it.
        return {"statistics": {"count": sum(1 for t in matched if t in have)}}

    def cardinality(self, config: Indexing, query: str, field: str | None) -> dict[str, object]:
        matched = self.match(config, query)
        if field is None:
            return {"cardinality": min(1, len(matched))}
        package = self._package_of(config, field, aggregate=True)
        reported = self.packages.indexed.get(package)
        have = reported.by_thing if reported is not None else {}
        return {"cardinality": len({have[t] for t in matched if t in have})}
