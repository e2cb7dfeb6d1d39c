"""Fleet index and package catalog answers → bounded counts per version; pure, defensive.

GetBucketsAggregation, GetStatistics, ListPackages and ListPackageVersions answers come
through botocore's parser, which checks little: a bucket key can arrive as a number or a
list, a count as a negative number, a list can hold 100,000 entries. Whatever they hold,
these functions return bounded, label-safe values or raise MalformedAnswer, so that one
bad answer costs its own family one interval and nothing else.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

# The field fleet indexing counts a package's version by: the reserved named shadow
# `$package` holds `reported.<package>.version` for each package a device runs.
VERSION_FIELD = "shadow.name.$package.reported.{package}.version"
# The label value of the versions past max_versions_per_package, summed.
OTHER = "other"
# Versions as the catalog spells them (botocore's VersionName: 1-64 of these characters);
# a device reports what it likes, so anything else is replaced and cut.
VERSION_MAX = 64
PACKAGE_MAX = 128
_NOT_NAME = re.compile(r"[^a-zA-Z0-9_.-]")
# Names a fleet indexing query can carry: group, package and version names as AWS allows
# them; `-` and `:` are reserved in its query syntax and escaped with a backslash.
_QUERY_TERM = re.compile(r"^[a-zA-Z0-9_.:-]{1,128}$")
_RESERVED = re.compile(r"([-:])")
# Buckets read of one answer: AWS returns at most maxBuckets (at most 10,000); a longer
# list is cut, not trusted.
MAX_BUCKETS = 10_000
# The largest count taken as a count of things: beyond it a value is not a fleet.
MAX_COUNT = 10**12


# The calls of the package families (aws.PackageSource), each under its own budget.
PACKAGE_OPERATIONS = ("GetBucketsAggregation", "GetStatistics", "ListPackages")


class MalformedAnswer(ValueError):
    """An answer that cannot be read as what its operation returns."""


def escape_label_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def format_value(value: float) -> str:
    """A sample value: counts as integers, times with their fraction."""
    if float(value).is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(float(value))


def label_value(text: str, limit: int) -> str:
    """A name from AWS or a device as a label value: catalog characters only, cut."""
    return _NOT_NAME.sub("_", text)[:limit]


def version_field(package: str) -> str:
    return VERSION_FIELD.format(package=package)


def query_term(value: str) -> str | None:
    """`value` as a query value, escaped, or None when it holds characters no name has."""
    return _RESERVED.sub(r"\\\1", value) if _QUERY_TERM.fullmatch(value) else None


def version_query(package: str, version: str) -> str:
    """The query term of things reporting `version` (`*`: any) of `package`."""
    field = version_field(query_term(package) or package)
    return f"{field}:{version if version == '*' else query_term(version)}"


def group_query(group: str) -> str:
    return f"thingGroupNames:{query_term(group)}"


def _count(value: Any) -> int | None:
    """A count of things, or None: negative, fractional, boolean, NaN or huge is no count."""
    if isinstance(value, bool):
        return None
    if isinstance(value, float):
        if value != value or not value.is_integer():
            return None
        value = int(value)
    if not isinstance(value, int) or value < 0 or value > MAX_COUNT:
        return None
    return value


def read_count(answer: Any) -> int:
    """GetStatistics' `statistics.count`: the things matching the query."""
    if not isinstance(answer, dict) or not isinstance(answer.get("statistics"), dict):
        raise MalformedAnswer("response.statistics: expected an object")
    count = _count(answer["statistics"].get("count"))
    if count is None:
        raise MalformedAnswer("response.statistics.count: expected a count of things")
    return count


@dataclass(frozen=True, slots=True)
class VersionCounts:
    """One package's things per version: the largest `max_versions`, the rest as other."""

    package: str
    versions: tuple[tuple[str, int], ...]
    # Things reporting a version not among `versions` (past the bound, or unreadable).
    other: int
    # Things reporting any version of the package (the aggregation's totalCount).
    reporting: int


def read_buckets(answer: Any, package: str, max_versions: int) -> VersionCounts:
    """GetBucketsAggregation's answer for a package's version field.

    Buckets past MAX_BUCKETS, with a key that is not a string or a count that is not a
    count are skipped (their things fall into `other`, since totalCount counts them).
    Keys that sanitise to one label value are summed.
    """
    if not isinstance(answer, dict):
        raise MalformedAnswer("response: expected an object")
    total = _count(answer.get("totalCount"))
    buckets = answer.get("buckets", [])
    if not isinstance(buckets, list):
        raise MalformedAnswer("response.buckets: expected a list")
    counts: dict[str, int] = {}
    for bucket in buckets[:MAX_BUCKETS]:
        if not isinstance(bucket, dict):
            continue
        key, count = bucket.get("keyValue"), _count(bucket.get("count"))
        if not isinstance(key, str) or not key or count is None:
            continue
        name = label_value(key, VERSION_MAX)
        if name == OTHER:
            name = f"{OTHER}_"  # a device's version must not pass for the remainder
        counts[name] = counts.get(name, 0) + count
    return top_versions(package, counts, total, max_versions)


def top_versions(
    package: str, counts: dict[str, int], total: int | None, max_versions: int
) -> VersionCounts:
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    kept = tuple(ranked[:max_versions])
    listed = sum(counts.values())
    # totalCount counts every thing the query matched; the buckets may list fewer (past
    # maxBuckets, or skipped). An answer whose buckets sum past it is taken at its buckets.
    reporting = max(total if total is not None else listed, listed)
    other = reporting - sum(count for _, count in kept)
    return VersionCounts(package, kept, other, reporting)


# Catalog pages: the largest AWS allows (botocore's PackageCatalogMaxResults).
CATALOG_PAGE_SIZE = 100


def read_packages(answer: Any) -> tuple[list[str], str | None]:
    """A ListPackages page: the names a query can count (others skipped), the next token."""
    if not isinstance(answer, dict):
        raise MalformedAnswer("response: expected an object")
    entries, token = answer.get("packageSummaries", []), answer.get("nextToken")
    if not isinstance(entries, list):
        raise MalformedAnswer("response.packageSummaries: expected a list")
    if not isinstance(token, str | None):
        raise MalformedAnswer("response.nextToken: expected a string")
    names = []
    # AWS answers at most the page size asked for; a longer list is not read past it.
    for entry in entries[:CATALOG_PAGE_SIZE]:
        name = entry.get("packageName") if isinstance(entry, dict) else None
        if isinstance(name, str) and query_term(name) is not None:
            names.append(name)
    return names, token or None


_PACKAGE_ARN = re.compile(r"^arn:aws[a-z-]*:iot:[^:]*:\d*:package/([^/]+)/version/([^/]+)$")
_GROUP_ARN = re.compile(r"^arn:aws[a-z-]*:iot:[^:]*:\d*:thinggroup/([^/]+)$")
_THING_ARN = re.compile(r"^arn:aws[a-z-]*:iot:[^:]*:\d*:thing/([^/]+)$")
# Things named in one query. Fleet indexing allows 5 terms and 1,000 bytes a query
# (docs/simulator.md cites the limits); the job's version is one term, each name another.
THINGS_PER_QUERY = 4
MAX_QUERY_BYTES = 1000
# The query syntax's operators: a thing of that name would read as one.
_OPERATORS = frozenset({"AND", "OR", "NOT"})


def package_version(arn: str) -> tuple[str, str] | None:
    """(package, version) of a package version ARN (DescribeJob's destinationPackageVersions)."""
    match = _PACKAGE_ARN.match(arn)
    if not match or query_term(match.group(1)) is None or query_term(match.group(2)) is None:
        return None
    return match.group(1), match.group(2)


def target_group(arn: str) -> str | None:
    """The thing group a job target names; None for a thing (or anything else)."""
    match = _GROUP_ARN.match(arn)
    if match and _queryable(match.group(1)):
        return match.group(1)
    return None


def _queryable(name: str) -> bool:
    """A thing or group name a query can carry: query characters, and not an operator."""
    return query_term(name) is not None and name.upper() not in _OPERATORS


def target_thing(arn: str) -> str | None:
    """The thing a job target names directly; None for a group (or anything else)."""
    match = _THING_ARN.match(arn)
    if match and _queryable(match.group(1)):
        return match.group(1)
    return None


def things_query(names: list[str]) -> str:
    """The query term of the things named (valid query terms)."""
    return "thingName:(" + " OR ".join(str(query_term(n)) for n in names) + ")"


def things_queries(names: list[str], rest: str) -> list[str]:
    """Queries `thingName:(...) AND rest` that name every thing once, each within fleet
    indexing's limits: at most THINGS_PER_QUERY names and MAX_QUERY_BYTES bytes."""
    queries: list[str] = []
    chunk: list[str] = []
    for name in names:
        candidate = [*chunk, name]
        too_long = len(f"{things_query(candidate)} AND {rest}".encode()) > MAX_QUERY_BYTES
        if chunk and (len(candidate) > THINGS_PER_QUERY or too_long):
            queries.append(f"{things_query(chunk)} AND {rest}")
            candidate = [name]
        chunk = candidate
    if chunk:
        queries.append(f"{things_query(chunk)} AND {rest}")
    return [q for q in queries if len(q.encode()) <= MAX_QUERY_BYTES]


@dataclass(frozen=True, slots=True)
class GroupProgress:
    """A thing group of a job: its things, and those reporting the job's version."""

    group: str
    things: int
    on_version: int


@dataclass(frozen=True, slots=True)
class Adoption:
    """A job's destination version: the things among its targets that report it."""

    job_id: str
    package: str
    version: str
    things: int
    groups: tuple[GroupProgress, ...] = ()
    # The job's account (from its ARN), as on the job's own series: joins need it equal.
    account_id: str = ""


@dataclass(frozen=True, slots=True)
class PackageFamily:
    """A row of the package metric table, with its row of docs/metrics.md."""

    name: str
    help: str
    # Its own labels: identity labels (target, region, account_id, static labels, and
    # job_id for a job's rows) are added when rendered.
    labels: tuple[str, ...]
    per_job: bool
    series: str
    source: str
    doc: str
    type: str = "gauge"


VERSION_THINGS = PackageFamily(
    "aws_iot_package_version_things",
    "Things whose $package shadow reports this version of the package, per the fleet index.",
    ("package", "version"),
    False,
    "per package: at most `max_versions_per_package` + 1",
    "GetBucketsAggregation on `shadow.name.$package.reported.<package>.version`",
    "Things per reported version, the largest `max_versions_per_package` versions by "
    'count; the rest summed as `version="other"`. Counted every `collector.packages.'
    "interval`, trailing the devices by the index's lag.",
)
UNREPORTED = PackageFamily(
    "aws_iot_package_things_unreported",
    "Indexed things whose $package shadow reports no version of the package.",
    ("package",),
    False,
    "1 per package",
    "GetStatistics `*` (the index's things) less the aggregation's `totalCount`",
    "Things in the index with no version of the package: with the versions, the whole "
    "indexed fleet (`sum by (package)` of both).",
)
COUNTED_AT = PackageFamily(
    "aws_iot_package_counted_timestamp_seconds",
    "Unix time of the last successful count of the package's versions.",
    ("package",),
    False,
    "1 per package",
    "the exporter's clock when GetBucketsAggregation answered",
    "When the package's counts were last read; they keep their value while later counts "
    "fail, so `time() -` this is their age (the index's own lag comes on top).",
)
JOB_ADOPTION = PackageFamily(
    "aws_iot_job_package_adoption_things",
    "Things among the job's targets (its thing groups and the things it names) that report "
    "the job's destination version.",
    ("package", "version"),
    True,
    "per destination version of an active job (at most 25)",
    "the sum of `aws_iot_job_group_package_version_things` over the job's groups, plus "
    "GetStatistics `thingName:(T1 OR ...) AND <version field>:V` over the things it names, "
    f"{THINGS_PER_QUERY} a call; the job's `destinationPackageVersions` and `targets` from "
    "DescribeJob",
    "Devices now on the version the job installs, over its first `max_groups_per_job` thing "
    "group targets and its first `max_things_per_job` thing targets (a thing in two of "
    'them counts twice). Beside `aws_iot_job_executions{state="succeeded"}` the gap is '
    "devices that reported success but not the version, or the reverse.",
)
GROUP_THINGS = PackageFamily(
    "aws_iot_job_group_things",
    "Things in a thing group the job targets, per the fleet index.",
    ("thing_group",),
    True,
    "per thing group target of an active job with a destination version, at most "
    "`max_groups_per_job`",
    "GetStatistics `thingGroupNames:G`",
    "The group's size, the denominator of its progress.",
)
GROUP_ADOPTION = PackageFamily(
    "aws_iot_job_group_package_version_things",
    "Things in a thing group the job targets that report the job's destination version.",
    ("thing_group", "package", "version"),
    True,
    "per thing group target and destination version of an active job, at most "
    "`max_groups_per_job` groups",
    "GetStatistics `thingGroupNames:G AND <version field>:V`",
    "A group's progress: divided by `aws_iot_job_group_things`, the share of the group on "
    "the version. Executions per group are not given by AWS without a call per device.",
)
PACKAGE_FAMILIES = (
    VERSION_THINGS,
    UNREPORTED,
    COUNTED_AT,
    JOB_ADOPTION,
    GROUP_THINGS,
    GROUP_ADOPTION,
)
