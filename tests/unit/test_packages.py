"""Fleet index and catalog answers (exporter/packages.py), their rendering
(exporter/collect/versions.py) and their config: exhaustive cases and properties of
untrusted input."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from exporter.collect.versions import PackageState, VersionStore, render_state
from exporter.config import ConfigError, PackageSettings, parse_config
from exporter.packages import (
    MAX_BUCKETS,
    OTHER,
    PACKAGE_FAMILIES,
    Adoption,
    GroupProgress,
    MalformedAnswer,
    group_query,
    package_version,
    read_buckets,
    read_count,
    read_packages,
    target_group,
    target_thing,
    things_query,
    version_query,
)
from exporter.status import Status, render_html, render_json
from tests.support import ROOT

TARGET = "targets: [{name: t, region: eu-west-1, jobs: {ids: [j]}, packages: %s}]\n"


def test_buckets_keep_the_largest_and_sum_the_rest_as_other() -> None:
    answer = {
        "totalCount": 20,
        "buckets": [
            {"keyValue": "1.0", "count": 3},
            {"keyValue": "2.0", "count": 9},
            {"keyValue": "1.5", "count": 3},
            {"keyValue": "0.1", "count": 1},
        ],
    }
    counts = read_buckets(answer, "fw", 2)
    assert counts.versions == (("2.0", 9), ("1.0", 3))
    # 1.5 and 0.1 (4), and the 4 things totalCount counts beyond the buckets.
    assert counts.other == 8 and counts.reporting == 20


@pytest.mark.parametrize(
    "bucket",
    [
        {"keyValue": "x", "count": -1},
        {"keyValue": "x", "count": 1.5},
        {"keyValue": "x", "count": math.nan},
        {"keyValue": "x", "count": True},
        {"keyValue": "x", "count": "3"},
        {"keyValue": "x", "count": 10**13},
        {"keyValue": 7, "count": 1},
        {"keyValue": ["x"], "count": 1},
        {"keyValue": "", "count": 1},
        {"count": 1},
        "not a bucket",
    ],
)
def test_a_bucket_that_is_not_one_is_skipped(bucket: Any) -> None:
    counts = read_buckets(
        {"totalCount": 2, "buckets": [bucket, {"keyValue": "1", "count": 2}]}, "p", 5
    )
    assert counts.versions == (("1", 2),) and counts.other == 0


@pytest.mark.parametrize("answer", [[], "x", {"buckets": {}}, {"buckets": "x"}, None])
def test_an_answer_that_is_not_an_aggregation_is_malformed(answer: Any) -> None:
    with pytest.raises(MalformedAnswer):
        read_buckets(answer, "p", 5)


def test_bucket_lists_are_cut_at_what_aws_can_answer() -> None:
    answer = {"buckets": [{"keyValue": f"v{i}", "count": 1} for i in range(MAX_BUCKETS + 500)]}
    counts = read_buckets(answer, "p", 10)
    assert counts.reporting == MAX_BUCKETS and len(counts.versions) == 10


def test_a_device_cannot_pass_its_version_off_as_other() -> None:
    counts = read_buckets({"buckets": [{"keyValue": OTHER, "count": 5}]}, "p", 5)
    assert counts.versions == ((f"{OTHER}_", 5),)


@given(
    st.lists(
        st.fixed_dictionaries(
            {
                "keyValue": st.one_of(st.text(), st.integers(), st.none()),
                "count": st.one_of(st.integers(), st.floats(allow_nan=True), st.text()),
            }
        ),
        max_size=40,
    ),
    st.one_of(st.none(), st.integers(-5, 10**6)),
    st.integers(1, 12),
)
def test_any_buckets_give_bounded_label_safe_counts(
    buckets: list[dict[str, Any]], total: int | None, most: int
) -> None:
    counts = read_buckets({"totalCount": total, "buckets": buckets}, "p", most)
    assert len(counts.versions) <= most
    assert counts.other >= 0 and counts.reporting >= sum(n for _, n in counts.versions)
    for version, n in counts.versions:
        assert 0 < len(version) <= 64 and n >= 0
        assert all(c.isascii() and (c.isalnum() or c in "_.-") for c in version)


@pytest.mark.parametrize(
    ("answer", "count"),
    [({"statistics": {"count": 5}}, 5), ({"statistics": {"count": 0, "average": 1.0}}, 0)],
)
def test_statistics_count(answer: Any, count: int) -> None:
    assert read_count(answer) == count


@pytest.mark.parametrize(
    "answer",
    [{}, {"statistics": {}}, {"statistics": {"count": -1}}, {"statistics": {"count": "1"}}, []],
)
def test_a_statistics_answer_without_a_count_is_malformed(answer: Any) -> None:
    with pytest.raises(MalformedAnswer):
        read_count(answer)


def test_package_pages_keep_names_a_query_can_carry() -> None:
    names, token = read_packages(
        {
            "packageSummaries": [
                {"packageName": "fw"},
                {"packageName": "a b"},
                {"packageName": 3},
                "x",
                {"packageName": "x" * 200},
            ],
            "nextToken": "t",
        }
    )
    assert (names, token) == (["fw"], "t")
    with pytest.raises(MalformedAnswer):
        read_packages({"packageSummaries": [], "nextToken": 5})


def test_queries_escape_what_the_query_syntax_reserves() -> None:
    assert version_query("meter-fw", "1.2-rc1") == (
        "shadow.name.$package.reported.meter\\-fw.version:1.2\\-rc1"
    )
    assert version_query("fw", "*") == "shadow.name.$package.reported.fw.version:*"
    assert group_query("eu:meters") == "thingGroupNames:eu\\:meters"


def test_arns_of_versions_and_groups() -> None:
    arn = "arn:aws:iot:eu-west-1:123456789012:package/fw/version/2.0.0"
    assert package_version(arn) == ("fw", "2.0.0")
    assert package_version("arn:aws:iot:eu-west-1:1:package/f w/version/1") is None
    assert target_group("arn:aws:iot:eu-west-1:123456789012:thinggroup/eu") == "eu"
    assert target_group("arn:aws:iot:eu-west-1:123456789012:thing/t1") is None


def test_a_rendering_parses_and_is_documented_family_by_family() -> None:
    config = parse_config(TARGET % "{names: [fw]}")
    state = PackageState(indexed=12)
    state.counts["fw"] = (
        read_buckets({"totalCount": 10, "buckets": [{"keyValue": "1", "count": 10}]}, "fw", 5),
        100.5,
    )
    state.adoption[("j", "fw", "1")] = Adoption("j", "fw", "1", 4, (GroupProgress("g", 8, 4),))
    store = VersionStore()
    store.put(config.targets[0], "123456789012", state)
    text = store.body().decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert set(families) == {f.name for f in PACKAGE_FAMILIES}
    assert families["aws_iot_package_things_unreported"].samples[0].value == 2
    assert 'job_id="j"' in text and 'account_id="123456789012"' in text
    # Rendered when it changes: the same state gives the same bytes, no new join.
    before = store.body()
    store.put(config.targets[0], "123456789012", state)
    assert store.body() is before
    assert render_state(config.targets[0], "", PackageState())[PACKAGE_FAMILIES[0]] == []


def test_package_settings_defaults_and_bounds() -> None:
    config = parse_config(TARGET % "{discover: true, include: ['^fw']}")
    assert config.collector.packages == PackageSettings()
    packages = config.targets[0].packages
    assert packages is not None and packages.discover and packages.matches("fw-x")
    assert not packages.matches("modem")


@pytest.mark.parametrize(
    ("text", "where"),
    [
        (TARGET % "{}", "targets[0].packages: expected names, discover: true, or both"),
        (TARGET % "{names: ['a b']}", "targets[0].packages.names[0]"),
        (TARGET % "{names: [fw, fw]}", "targets[0].packages.names[1]"),
        (TARGET % "{names: [fw], colour: red}", "targets[0].packages.colour"),
        (TARGET % "{discover: yes please}", "targets[0].packages.discover"),
        (
            "collector: {packages: {requests_per_second: -1}}\n" + TARGET % "{names: [fw]}",
            "collector.packages.requests_per_second",
        ),
        (
            "collector: {packages: {interval: 0s}}\n" + TARGET % "{names: [fw]}",
            "collector.packages.interval",
        ),
        (
            "collector: {packages: {max_versions_per_package: 0}}\n" + TARGET % "{names: [fw]}",
            "collector.packages.max_versions_per_package",
        ),
        (
            "collector: {packages: {max_groups_per_job: 101}}\n" + TARGET % "{names: [fw]}",
            "collector.packages.max_groups_per_job",
        ),
        (
            "targets: [{name: t, region: eu-west-1, jobs: {ids: [j]}, labels: {version: x}}]\n",
            "targets[0].labels.version",
        ),
    ],
)
def test_bad_package_config_names_file_and_field(text: str, where: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "c.yaml")
    assert str(info.value).startswith(f"c.yaml: {where}"), str(info.value)


def test_every_package_family_and_label_is_documented() -> None:
    doc = (ROOT / "docs" / "metrics.md").read_text()
    for family in PACKAGE_FAMILIES:
        rows = [line for line in doc.splitlines() if line.startswith(f"| `{family.name}` |")]
        assert len(rows) == 1, family.name
        assert f"| {family.type} |" in rows[0]
        for label in family.labels:
            assert f"`{label}`" in rows[0], f"{family.name}: {label}"
    # No static label can take a name these families set.
    for label in {label for family in PACKAGE_FAMILIES for label in family.labels}:
        with pytest.raises(ConfigError):
            parse_config(
                f"targets: [{{name: t, region: eu-west-1, jobs: {{ids: [j]}}, "
                f"labels: {{{label}: x}}}}]\n"
            )


def test_the_status_page_escapes_what_the_package_line_holds() -> None:
    status = Status(generated_at=0.0, ready=True, targets=(), packages=("t: <script>x</script>",))
    page = render_html(status).decode()
    assert "<h2>Package versions</h2>" in page
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert json.loads(render_json(status))["packages"] == ["t: <script>x</script>"]


def test_a_thing_target_is_a_query_term_or_nothing() -> None:
    arn = "arn:aws:iot:eu-west-1:123456789012:thing/"
    assert target_thing(arn + "meter-1") == "meter-1"
    assert target_group(arn + "meter-1") is None
    assert target_thing("arn:aws:iot:eu-west-1:123456789012:thinggroup/meters") is None
    for bad in ("a b", "a)", "x" * 129, "", "a/b"):
        assert target_thing(arn + bad) is None, bad
    assert things_query(["meter-1", "m:2"]) == r"thingName:(meter\-1 OR m\:2)"


def test_thing_queries_stay_within_fleet_indexings_limits() -> None:
    from exporter.packages import MAX_QUERY_BYTES, THINGS_PER_QUERY, things_queries

    arn = "arn:aws:iot:eu-west-1:123456789012:thing/"
    # Operators are not names: `thingName:(OR OR b)` would not mean what it says.
    assert [target_thing(arn + n) for n in ("OR", "and", "Not")] == [None, None, None]
    assert target_group("arn:aws:iot:eu-west-1:123456789012:thinggroup/OR") is None
    # Names of 128 characters, every `-` escaped: four of them pass 1,000 bytes.
    long = [("x-" * 64)[:-2] + f"{i:02d}" for i in range(9)]
    version = version_query("edge-gateway-firmware-" + "a-" * 40, "2024-06-01-" + "r-" * 30)
    queries = things_queries(long, version)
    assert all(len(q.encode()) <= MAX_QUERY_BYTES for q in queries)
    assert all(q.count(" OR ") < THINGS_PER_QUERY for q in queries)
    named = [n for q in queries for n in q.split("(", 1)[1].split(")")[0].split(" OR ")]
    assert len(named) == len(long)  # every thing once
    assert things_queries(["a", "b", "c", "d", "e"], "v:1") == [
        "thingName:(a OR b OR c OR d) AND v:1",
        "thingName:(e) AND v:1",
    ]
