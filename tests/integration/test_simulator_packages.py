"""The simulator's package catalog and fleet indexing through real botocore clients.

The oracle is the simulator's own count (GET /_sim/packages): what the index answers must
add up to it, per version, per thing group and per job, and trail the shadows by exactly
the configured lag.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from botocore.exceptions import ClientError

from simulator import ScenarioError, Simulator, load_scenario, start_simulator
from tests.simulator_client import Admin, capture_raw, iot_client, shape_problems
from tests.support import SCENARIOS

PACKAGE = "meter-firmware"
FIELD = f"shadow.name.$package.reported.{PACKAGE}.version"
# AWS's query syntax escapes '-' in a field name; the simulator takes both spellings.
ESCAPED = FIELD.replace("meter-firmware", "meter\\-firmware")
GROUPS = ("meters-eu", "meters-us", "meters-apac", "lab")


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    s = await start_simulator(SCENARIOS / "packages.yaml", speed=0, no_quotas=True)
    try:
        yield s
    finally:
        await s.close()


async def _truth(admin: Admin) -> Any:
    return await admin.packages()


async def _indexing(admin: Admin, **body: Any) -> Any:
    return await admin.indexing(**body)


async def _buckets(client: Any, query: str = "*", most: int = 10000) -> dict[str, Any]:
    answer = await client.get_buckets_aggregation(
        queryString=query,
        aggregationField=FIELD,
        bucketsAggregationType={"termsAggregation": {"maxBuckets": most}},
    )
    return {"totalCount": answer["totalCount"], "buckets": answer["buckets"]}


async def _count(client: Any, query: str) -> int:
    return int((await client.get_statistics(queryString=query))["statistics"]["count"])


def _error(e: pytest.ExceptionInfo[ClientError]) -> tuple[int, str]:
    meta = e.value.response
    return meta["ResponseMetadata"]["HTTPStatusCode"], meta["Error"]["Code"]


async def test_versions_add_up_to_the_fleet_and_to_the_truth(sim: Simulator, admin: Admin) -> None:
    await admin.advance(12)
    truth = (await _truth(admin))["packages"][PACKAGE]
    async with iot_client(sim.url) as client:
        answer = await _buckets(client)
        reporting = await _count(client, f"{ESCAPED}:*")
        fleet = await _count(client, "*")
    buckets = {b["keyValue"]: b["count"] for b in answer["buckets"]}
    assert answer["totalCount"] == fleet == truth["things"] == 1000
    assert buckets == truth["indexed"]["versions"]
    assert sum(buckets.values()) == reporting
    assert reporting + truth["indexed"]["unreported"] == fleet
    # The rollout moved things: the new version is there, and so are the old ones.
    assert buckets["1.1.0"] > 100 and buckets["1.0.0"] > 100 and "0.9.0" in buckets
    # Ranked by count, largest first, as a terms aggregation ranks.
    counts = [b["count"] for b in answer["buckets"]]
    assert counts == sorted(counts, reverse=True)


async def test_per_group_statistics_match_the_truth(sim: Simulator, admin: Admin) -> None:
    await admin.advance(6)
    truth = (await _truth(admin))["packages"][PACKAGE]["indexed"]["groups"]
    async with iot_client(sim.url) as client:
        for group in GROUPS:
            assert await _count(client, f"thingGroupNames:{group}") == truth[group]["things"]
            by_version = await _buckets(client, f"thingGroupNames:{group}")
            assert {b["keyValue"]: b["count"] for b in by_version["buckets"]} == (
                truth[group]["versions"]
            )
            for version, n in truth[group]["versions"].items():
                query = f"thingGroupNames:{group} AND {ESCAPED}:{version}"
                assert await _count(client, query) == n, query
            distinct = await client.get_cardinality(
                queryString=f"thingGroupNames:{group}", aggregationField=FIELD
            )
            assert distinct["cardinality"] == len(truth[group]["versions"])


async def test_a_jobs_adoption_is_its_groups_on_the_version(sim: Simulator, admin: Admin) -> None:
    await admin.advance(10)
    body = await _truth(admin)
    job = body["jobs"]["meter-firmware-1-1-0"]
    (dest,) = job["destinations"]
    assert (dest["package"], dest["version"]) == (PACKAGE, "1.1.0")
    async with iot_client(sim.url) as client:
        per_group = {
            g: await _count(client, f"thingGroupNames:{g} AND {ESCAPED}:1.1.0")
            for g in ("meters-eu", "meters-us")
        }
    assert per_group == dest["indexed"]["groups"]
    assert sum(per_group.values()) == dest["indexed"]["on_version"]
    # Some succeed without the version reaching their shadow (unreported_probability).
    assert dest["succeeded_not_on_version"] > 0
    assert job["succeeded"] == dest["on_version"] + dest["succeeded_not_on_version"]
    # The lab reports the version without the job.
    assert body["packages"][PACKAGE]["groups"]["lab"]["versions"]["1.1.0"] == 20


async def test_the_index_trails_the_shadows_by_the_lag(sim: Simulator, admin: Admin) -> None:
    await admin.advance(3)
    await _indexing(admin, lag_seconds=600)
    async with iot_client(sim.url) as client:
        before = await _buckets(client)
        await admin.advance(5)
        shadows_then = (await _truth(admin))["packages"][PACKAGE]["versions"]
        assert await _buckets(client) == before, "nothing is 10 minutes old yet"
        assert shadows_then != {b["keyValue"]: b["count"] for b in before["buckets"]}
        await admin.advance(10)
        # Now the index shows the shadows as they were 10 minutes ago, to the thing.
        later = await _buckets(client)
    assert {b["keyValue"]: b["count"] for b in later["buckets"]} == shadows_then
    assert (await _truth(admin))["pending_index_updates"] > 0


async def test_max_buckets_keeps_the_largest(sim: Simulator, admin: Admin) -> None:
    await admin.advance(12)
    async with iot_client(sim.url) as client:
        every = await _buckets(client)
        top = await _buckets(client, most=1)
        default = await client.get_buckets_aggregation(
            queryString="*", aggregationField=FIELD, bucketsAggregationType={"termsAggregation": {}}
        )
    assert top["buckets"] == every["buckets"][:1]
    assert top["totalCount"] == every["totalCount"]
    assert default["buckets"] == every["buckets"][:10]


@pytest.mark.parametrize(
    ("change", "status", "code"),
    [
        ({"status": "BUILDING"}, 400, "IndexNotReadyException"),
        ({"status": "REBUILDING"}, 400, "IndexNotReadyException"),
        ({"status": "OFF"}, 404, "ResourceNotFoundException"),
        ({"package_shadow": False}, 400, "InvalidAggregationException"),
        ({"version_fields": False}, 400, "InvalidAggregationException"),
    ],
)
async def test_an_index_without_the_package_field_answers_as_aws(
    sim: Simulator, admin: Admin, change: dict[str, Any], status: int, code: str
) -> None:
    await _indexing(admin, **change)
    async with iot_client(sim.url) as client:
        with pytest.raises(ClientError) as e:
            await _buckets(client)
        assert _error(e) == (status, code)
        if "status" not in change:
            # The index itself still answers; a query on the field finds nothing only
            # when the shadow is not indexed at all.
            found = await _count(client, f"{ESCAPED}:1.0.0")
            assert (found == 0) == (change.get("package_shadow") is False)
        await _indexing(admin, status="ACTIVE", package_shadow=True, version_fields=True)
        assert (await _buckets(client))["totalCount"] == 1000


async def test_things_by_name_match_the_truth(sim: Simulator, admin: Admin) -> None:
    await admin.advance(10)
    truth = (await _truth(admin))["packages"][PACKAGE]["indexed"]["groups"]["lab"]["versions"]
    lab = [f"lab\\-{n:05d}" for n in range(100)]
    async with iot_client(sim.url) as client:
        on: dict[str, int] = {}
        for version in truth:
            on[version] = 0
            for start in range(0, 100, 4):
                names = " OR ".join(lab[start : start + 4])
                on[version] += await _count(client, f"thingName:({names}) AND {ESCAPED}:{version}")
        assert await _count(client, "thingName:(lab\\-00000 OR no\\-such\\-thing)") == 1
    # As the index has them: the same counts as through the lab's group.
    assert on == truth


@pytest.mark.parametrize(
    "query",
    [
        "attributes.model:meter",
        "thingGroupNames:lab OR thingGroupNames:meters-eu",
        " AND ".join(["thingGroupNames:lab"] * 6),
        "thingGroupNames:" + "x" * 1000,
        "NOT thingGroupNames:lab",
        f"{FIELD}>1.0.0",
        # Each name is a term: five names and a version are six.
        "thingName:(lab-00000 OR lab-00001 OR lab-00002 OR lab-00003 OR lab-00004)"
        f" AND {FIELD}:1.0.0",
        "thingName:(lab-00000 OR)",
        "thingName:(lab-00000 lab-00001)",
    ],
)
async def test_queries_outside_the_subset_are_invalid(sim: Simulator, query: str) -> None:
    async with iot_client(sim.url) as client:
        for call in ("get_statistics", "get_cardinality"):
            with pytest.raises(ClientError) as e:
                await getattr(client, call)(queryString=query, aggregationField=FIELD)
            assert _error(e) == (400, "InvalidQueryException")
        with pytest.raises(ClientError) as e:
            await _buckets(client, query)
        assert _error(e) == (400, "InvalidQueryException")


async def test_aggregating_another_field_is_invalid(sim: Simulator) -> None:
    async with iot_client(sim.url) as client:
        with pytest.raises(ClientError) as e:
            await client.get_buckets_aggregation(
                queryString="*",
                aggregationField="attributes.model",
                bucketsAggregationType={"termsAggregation": {"maxBuckets": 5}},
            )
        assert _error(e) == (400, "InvalidAggregationException")
        with pytest.raises(ClientError) as e:
            await client.get_statistics(queryString="*", indexName="AWS_ThingGroups")
        assert _error(e) == (404, "ResourceNotFoundException")


async def test_answers_match_botocore_shapes(sim: Simulator, admin: Admin) -> None:
    await admin.advance(8)
    async with iot_client(sim.url) as client:
        raw = capture_raw(client)
        model = client.meta.service_model
        calls: list[tuple[str, dict[str, Any]]] = [
            ("GetBucketsAggregation", {}),
            ("GetStatistics", {"queryString": "thingGroupNames:lab"}),
            ("GetStatistics", {"queryString": "*", "aggregationField": FIELD}),
            ("GetCardinality", {"queryString": "*", "aggregationField": FIELD}),
            ("ListPackages", {}),
            ("ListPackageVersions", {"packageName": PACKAGE}),
            ("GetPackageVersion", {"packageName": PACKAGE, "versionName": "1.1.0"}),
        ]
        for operation, params in calls:
            if operation == "GetBucketsAggregation":
                await _buckets(client)
            else:
                snake = "".join("_" + c.lower() if c.isupper() else c for c in operation)[1:]
                await getattr(client, snake)(**params)
            body = json.loads(raw[-1]["body"])
            shape = model.operation_model(operation).output_shape
            assert shape_problems(body, shape) == [], operation


async def test_catalog_pages_and_filters(sim: Simulator) -> None:
    async with iot_client(sim.url) as client:
        packages = []
        async for page in client.get_paginator("list_packages").paginate(
            PaginationConfig={"PageSize": 1}
        ):
            assert len(page["packageSummaries"]) == 1
            packages += [p["packageName"] for p in page["packageSummaries"]]
        assert packages == ["meter-firmware", "modem-driver"]
        versions = []
        async for page in client.get_paginator("list_package_versions").paginate(
            packageName=PACKAGE, PaginationConfig={"PageSize": 1}
        ):
            versions += [(v["versionName"], v["status"]) for v in page["packageVersionSummaries"]]
        assert versions == [
            ("0.9.0", "DEPRECATED"),
            ("1.0.0", "PUBLISHED"),
            ("1.1.0", "PUBLISHED"),
            ("1.2.0-rc1", "DRAFT"),
        ]
        published = await client.list_package_versions(packageName=PACKAGE, status="PUBLISHED")
        assert [v["versionName"] for v in published["packageVersionSummaries"]] == [
            "1.0.0",
            "1.1.0",
        ]
        unknown = await client.list_package_versions(packageName="no-such-package")
        assert unknown["packageVersionSummaries"] == []
        version = await client.get_package_version(packageName=PACKAGE, versionName="1.1.0")
        assert version["attributes"] == {"releaseChannel": "stable"}
        assert version["packageVersionArn"].endswith(":package/meter-firmware/version/1.1.0")
        with pytest.raises(ClientError) as e:
            await client.get_package_version(packageName=PACKAGE, versionName="9.9.9")
        assert _error(e) == (404, "ResourceNotFoundException")
        first = await client.list_package_versions(packageName=PACKAGE, maxResults=1)
        with pytest.raises(ClientError) as e:
            # A token of the unfiltered listing does not resume a filtered one.
            await client.list_package_versions(
                packageName=PACKAGE, status="DRAFT", nextToken=first["nextToken"]
            )
        assert _error(e) == (400, "ValidationException")
    async with iot_client(sim.url, validate=False) as client:
        with pytest.raises(ClientError) as e:
            await client.list_packages(maxResults=101)
        assert _error(e) == (400, "ValidationException")
        with pytest.raises(ClientError) as e:
            await client.get_buckets_aggregation(
                queryString="*",
                aggregationField=FIELD,
                bucketsAggregationType={"termsAggregation": {"maxBuckets": 10001}},
            )
        assert _error(e) == (400, "InvalidRequestException")


async def test_each_call_has_its_own_quota(admin: Admin) -> None:
    sim = await start_simulator(SCENARIOS / "packages.yaml", speed=0)
    try:
        async with aiohttp.ClientSession() as session:
            admin = Admin(session, sim.url)
            # One request, then nothing for 100 s: the second is throttled, the others not.
            quotas = {"GetBucketsAggregation": 0.01, "ListPackages": 0.01}
            await admin.faults({"quotas": quotas})
            async with iot_client(sim.url) as client:
                await _buckets(client)
                await client.list_packages()
                with pytest.raises(ClientError) as e:
                    await _buckets(client)
                assert e.value.response["Error"]["Code"] == "ThrottlingException"
                with pytest.raises(ClientError) as e:
                    await client.list_packages()
                assert e.value.response["Error"]["Code"] == "ThrottlingException"
                await _count(client, "*")
                await client.list_package_versions(packageName=PACKAGE)
            requests = (await admin.stats())["requests"]
            assert requests["GetBucketsAggregation"]["throttled"] == 1
            assert requests["ListPackages"]["throttled"] == 1
            assert requests["GetStatistics"]["throttled"] == 0
            assert requests["GetStatistics"]["ok"] == 1
    finally:
        await sim.close()


async def test_faults_reach_the_new_calls(sim: Simulator, admin: Admin) -> None:
    rules = {
        "not_ready": {"ratio": 1, "operations": ["GetStatistics"]},
        "unavailable": {"ratio": 1, "operations": ["ListPackages"]},
        "malformed": {"ratio": 1, "operations": ["GetCardinality"]},
    }
    await admin.faults({"faults": rules})
    async with iot_client(sim.url) as client:
        with pytest.raises(ClientError) as e:
            await _count(client, "*")
        assert _error(e) == (400, "IndexNotReadyException")
        with pytest.raises(ClientError) as e:
            await client.list_packages()
        assert _error(e) == (503, "ServiceUnavailableException")
        raw = capture_raw(client)
        await client.get_cardinality(queryString="*", aggregationField=FIELD)
        with pytest.raises(ValueError):
            json.loads(raw[-1]["body"])
        # The faults are scoped: the aggregation itself still answers.
        assert (await _buckets(client))["totalCount"] == 1000
    requests = (await admin.stats())["requests"]
    assert requests["GetStatistics"]["not_ready"] == 1
    assert requests["ListPackages"]["unavailable"] == 1
    assert requests["GetCardinality"]["malformed"] == 1


async def test_reports_without_a_job_move_the_truth(sim: Simulator, admin: Admin) -> None:
    answer = await admin.report_version(PACKAGE, "meters-apac", "1.1.0")
    assert len(answer["reported"]) == 1
    truth = (await _truth(admin))["packages"][PACKAGE]
    assert truth["groups"]["meters-apac"]["versions"]["1.1.0"] == 1
    # The index sees it once the lag has passed (30 s in this scenario).
    assert "1.1.0" not in truth["indexed"]["groups"]["meters-apac"]["versions"]
    await admin.advance(1)
    truth = (await _truth(admin))["packages"][PACKAGE]
    assert truth["indexed"]["groups"]["meters-apac"]["versions"]["1.1.0"] == 1
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            sim.url + f"/_sim/packages/{PACKAGE}/report",
            json={"group": "meters-apac", "version": "7.7.7"},
        ) as r,
    ):
        assert r.status == 404


async def test_hostile_index_answers_parse_in_botocore(sim: Simulator, admin: Admin) -> None:
    ops = ["GetBucketsAggregation", "GetStatistics", "GetCardinality"]
    await admin.faults({"faults": {"hostile_index": {"ratio": 1, "operations": ops}}})
    async with iot_client(sim.url) as client:
        answer = await _buckets(client)
        for _ in range(20):
            # A count that is negative, beyond 64 bits or a float parses; NaN, infinity
            # or a string make botocore's parser raise.
            try:
                stats = await client.get_statistics(queryString="*")
                assert stats["statistics"]["count"] in (-1, 2**63, 3, 0)
            except (ValueError, OverflowError):
                pass
        with contextlib.suppress(ValueError, OverflowError):
            await client.get_cardinality(queryString="*", aggregationField=FIELD)
    keys = [b["keyValue"] for b in answer["buckets"]]
    counts = [b["count"] for b in answer["buckets"]]
    assert len(keys) > 20_000 and answer["totalCount"] == -7
    assert "\x00" in "".join(keys) and "v" * 5000 in keys and "\ud800lone" in keys
    assert -1 in counts and 2**63 in counts
    requests = (await admin.stats())["requests"]
    assert [requests[op]["bad_fields"] for op in ops] == [1, 20, 1]


@pytest.mark.parametrize(
    ("yaml_text", "message"),
    [
        ("packages: [{name: 'bad name', versions: [{name: '1'}]}]", "packages[0].name: expected"),
        ("packages: [{name: p, versions: []}]", "packages[0].versions: expected at least one"),
        (
            "packages: [{name: p, versions: [{name: '1', status: LIVE}]}]",
            "packages[0].versions[0].status: 'LIVE' is not one of DRAFT, PUBLISHED, DEPRECATED",
        ),
        (
            "packages: [{name: p, default_version: '1', versions: [{name: '1', status: DRAFT}]}]",
            "packages[0].default_version: a DRAFT version cannot be the default",
        ),
        (
            "groups: [{name: g, things: 1}]\n"
            "packages: [{name: p, versions: [{name: '1'}], "
            "installed: [{group: g, versions: {'1': 0.7, '2': 0.1}}]}]",
            "packages[0].installed[0].versions.2: not one of the versions",
        ),
        (
            "groups: [{name: g, things: 1}]\n"
            "packages: [{name: p, versions: [{name: '1'}, {name: '2'}], "
            "installed: [{group: g, versions: {'1': 0.7, '2': 0.4}}]}]",
            "packages[0].installed[0].versions: the fractions add up to more than 1",
        ),
        (
            "groups: [{name: g, things: 1}]\n"
            "packages: [{name: p, versions: [{name: '1'}]}]\n"
            "timeline: [{at_minutes: 1, action: report_version, group: g, package: p, "
            "version: '9', count: 1}]",
            "timeline[0].version: p/9 is not a version in packages",
        ),
        ("fleet_indexing: {status: DOWN}", "fleet_indexing.status: 'DOWN' is not one of"),
        ("fleet_indexing: {lag_seconds: -1}", "fleet_indexing.lag_seconds: expected a number"),
        ("devices: {unreported_probability: 2}", "devices.unreported_probability: expected"),
    ],
)
def test_package_errors_name_the_field(tmp_path: Path, yaml_text: str, message: str) -> None:
    scenario = tmp_path / "bad.yaml"
    scenario.write_text(yaml_text)
    with pytest.raises(ScenarioError) as e:
        load_scenario(scenario)
    assert str(e.value).startswith(f"{scenario}: {message}"), str(e.value)


async def test_generated_packages_cover_the_generated_fleet(tmp_path: Path) -> None:
    scenario = tmp_path / "scale.yaml"
    scenario.write_text(
        "seed: 3\nspeed: 0\n"
        "generate: {jobs: 5, groups: 10, things_per_group: 100, packages: 12, "
        "versions_per_package: 4}\n"
    )
    sim = await start_simulator(scenario, no_quotas=True)
    try:
        async with iot_client(sim.url) as client:
            listed = await client.list_packages(maxResults=100)
            assert len(listed["packageSummaries"]) == 12
            field = "shadow.name.$package.reported.scale-package-0007.version"
            answer = await client.get_buckets_aggregation(
                queryString="thingGroupNames:scale-group-0003",
                aggregationField=field,
                bucketsAggregationType={"termsAggregation": {"maxBuckets": 10}},
            )
        assert answer["totalCount"] == 100
        assert {b["keyValue"] for b in answer["buckets"]} == {"1.0.0", "1.1.0", "1.2.0", "1.3.0"}
        # About 90% report a version.
        assert 75 <= sum(b["count"] for b in answer["buckets"]) <= 100
    finally:
        await sim.close()
