"""The simulator's HTTP side: AWS IoT REST-JSON operations, fault injection and the admin API."""

from __future__ import annotations

import asyncio
import base64
import binascii
import bisect
import contextlib
import email.utils
import html
import json
import logging
import os
import re
import socket
import struct
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from simulator import sqs
from simulator.faults import (
    FaultPicker,
    Stats,
    TokenBucket,
    faults_json,
    hostile_index,
    quotas_json,
)
from simulator.fleet import JOB_SCHEDULED, Fleet, FleetError, Job, package_truth
from simulator.indexing import FleetIndex, QueryError
from simulator.render import (
    describe_job,
    execution_summary,
    job_summary,
    package_summary,
    package_version,
    package_version_summary,
)
from simulator.scenario import (
    INDEX_OPERATIONS,
    OPERATIONS,
    PACKAGE_NAME,
    PACKAGE_VERSION_STATUSES,
    VERSION_NAME,
    Faults,
    Scenario,
    ScenarioError,
    faults_from_json,
    indexing_from_json,
    job_from_json,
    load_scenario,
    quotas_from_json,
    reason_from_json,
)
from simulator.service import execution_statuses, job_statuses

log = logging.getLogger("simulator")

_CREDENTIAL_SCOPE = re.compile(r"Credential=[^/,\s]+/\d{8}/([a-z0-9-]+)/")
_JOB_ID = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
# AWS does not document its default page sizes; clients that care pass maxResults.
_DEFAULT_PAGE = 50
_TICK_SECONDS = 0.05
_JSON = "application/json"
# A page token of ours is under 200 characters: a longer one is refused before decoding.
_TOKEN_MAX = 1024
# aiohttp refuses request lines over 8 KiB with a plain 400 of its own; a longer limit
# lets an overlong nextToken reach the handler and get AWS's error body instead.
_MAX_LINE = 64 * 1024
_INTEGER = re.compile(r"-?[0-9]{1,12}")
_JOB_OPS = frozenset({"DescribeJob", "ListJobs", "ListJobExecutionsForJob"})


class AwsError(Exception):
    """An error answer in AWS REST-JSON form."""

    def __init__(self, status: int, code: str, message: str, outcome: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.outcome = outcome


def _invalid(message: str) -> AwsError:
    return AwsError(400, "InvalidRequestException", message, "invalid")


def _not_found(job_id: str) -> AwsError:
    return AwsError(404, "ResourceNotFoundException", f"Job {job_id} cannot be found.", "not_found")


class SimClock:
    """Simulated epoch seconds: `speed` simulated minutes pass per real second."""

    def __init__(self, start: float, speed: float) -> None:
        self._base_sim = start
        self._base_real = time.monotonic()
        self.speed = speed

    def now(self) -> float:
        return self._base_sim + (time.monotonic() - self._base_real) * self.speed * 60.0

    def set_speed(self, speed: float) -> None:
        self._base_sim = self.now()
        self._base_real = time.monotonic()
        self.speed = speed

    def advance(self, seconds: float) -> None:
        self._base_sim += seconds


def _encode_token(value: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode()


def _decode_token(token: str) -> Any:
    """A token's JSON value; any other bytes are the client's error, never a 500."""
    if len(token) > _TOKEN_MAX:
        raise _invalid("The nextToken is invalid.")
    try:
        return json.loads(base64.urlsafe_b64decode(token.encode()))
    except (binascii.Error, ValueError, UnicodeError, RecursionError):
        raise _invalid("The nextToken is invalid.") from None


def _validation(message: str) -> AwsError:
    # The package catalog's operations declare ValidationException, not InvalidRequest.
    return AwsError(400, "ValidationException", message, "invalid")


def _catalog_max_results(request: web.Request) -> int:
    raw = request.query.get("maxResults")
    if raw is None:
        return _DEFAULT_PAGE
    if not _INTEGER.fullmatch(raw) or not 1 <= int(raw) <= 100:
        raise _validation(
            f"1 validation error detected: Value '{raw[:40]}' at 'maxResults' failed to "
            "satisfy constraint: Member must have value between 1 and 100"
        )
    return int(raw)


def _max_results(request: web.Request) -> int:
    raw = request.query.get("maxResults")
    if raw is None:
        return _DEFAULT_PAGE
    # ASCII digits only: int() also takes "1_0", " 5" and other scripts' digits.
    if not _INTEGER.fullmatch(raw):
        raise _invalid(f"maxResults {raw[:40]!r} is not a number.")
    value = int(raw)
    if not 1 <= value <= 250:
        # AWS's own wording of a constraint violation, which botocore surfaces as is.
        raise _invalid(
            f"1 validation error detected: Value '{value}' at 'maxResults' failed to satisfy "
            "constraint: Member must have value between 1 and 250"
        )
    return value


class Simulator:
    """A running simulator: the live fleet, its clock, faults and HTTP listener."""

    def __init__(
        self, scenario: Scenario, fleet: Fleet, *, host: str, port: int, start: float
    ) -> None:
        self.scenario = scenario
        self.fleet = fleet
        self.clock = SimClock(start, scenario.speed)
        self.faults = scenario.faults
        self.quotas = scenario.quotas
        self.indexing = scenario.fleet_indexing
        self.index = FleetIndex(fleet.groups, fleet.thing_groups, fleet.packages)
        self.stats = Stats()
        self.host = host
        self.port = port
        self._picker = FaultPicker(scenario.seed)
        self._buckets = self._new_buckets()
        self._runner: web.AppRunner | None = None
        self._ticker: asyncio.Task[None] | None = None
        # The fleet's job events, as an IoT rule with an SQS action would queue them.
        self.events = sqs.EventQueue(fleet.account_id, scenario.seed)
        fleet.listeners.append(self.events.publish)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def queue_url(self) -> str:
        """The events queue's URL, for a target's `events.sqs_queue_url`."""
        return self.url + self.events.path()

    def _new_buckets(self) -> dict[str, TokenBucket]:
        now = time.monotonic()
        return {op: TokenBucket(self.quotas.rate(op), now) for op in OPERATIONS}

    # --- life cycle ---------------------------------------------------------------------

    async def start(self) -> None:
        await self.start_http()
        self._ticker = asyncio.create_task(self._tick(), name="simulator-clock")

    async def start_http(self) -> None:
        """Listen (again) on the simulator's port; the fleet carries on either way."""
        if self._runner is not None:
            return
        self.events.reopen()
        runner = web.AppRunner(
            self._app(), access_log=None, handle_signals=False, max_line_size=_MAX_LINE
        )
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        if self.port == 0:
            self.port = int(runner.addresses[0][1])
        log.info("simulator listening url=%s scenario=%s", self.url, self.scenario.file)

    async def stop_http(self) -> None:
        """Stop answering (connections refused) without stopping simulated time."""
        runner, self._runner = self._runner, None
        self.events.close()
        if runner is not None:
            await runner.cleanup()

    async def close(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
            self._ticker = None
        await self.stop_http()

    async def _tick(self) -> None:
        # Advancing in the background keeps request latency flat at high speed-ups; the
        # handlers advance too, so an answer always reflects the current simulated time.
        while True:
            try:
                self.fleet.advance(self.clock.now())
            except Exception:
                log.exception("simulator event failed")
            await asyncio.sleep(_TICK_SECONDS)

    def _app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/jobs", self._list_jobs)
        app.router.add_get("/jobs/{jobId}", self._describe_job)
        app.router.add_get("/jobs/{jobId}/things", self._list_executions)
        app.router.add_post("/indices/buckets", self._index_call("GetBucketsAggregation"))
        app.router.add_post("/indices/statistics", self._index_call("GetStatistics"))
        app.router.add_post("/indices/cardinality", self._index_call("GetCardinality"))
        app.router.add_get("/packages", self._list_packages)
        app.router.add_get("/packages/{packageName}/versions", self._list_package_versions)
        app.router.add_get(
            "/packages/{packageName}/versions/{versionName}", self._get_package_version
        )
        app.router.add_get("/_sim/indexing", self._admin_indexing_get)
        app.router.add_post("/_sim/indexing", self._admin_indexing_post)
        app.router.add_get("/_sim/packages", self._admin_packages)
        app.router.add_post("/_sim/packages/{package}/report", self._admin_report)
        app.router.add_get("/_sim/stats", self._admin_stats)
        app.router.add_get("/_sim/faults", self._admin_faults_get)
        app.router.add_post("/_sim/faults", self._admin_faults_post)
        app.router.add_get("/_sim/clock", self._admin_clock_get)
        app.router.add_post("/_sim/clock", self._admin_clock_post)
        app.router.add_post("/_sim/jobs", self._admin_create_job)
        app.router.add_get("/_sim/jobs/{jobId}/rollout", self._admin_rollout)
        app.router.add_post("/_sim/jobs/{jobId}/cancel", self._admin_cancel)
        app.router.add_post("/_sim/jobs/{jobId}/delete", self._admin_delete)
        app.router.add_delete("/_sim/jobs/{jobId}", self._admin_delete)
        app.router.add_post("/_sim/groups/{group}/add", self._admin_group_add)
        app.router.add_post("/_sim/groups/{group}/remove", self._admin_group_remove)
        app.router.add_get("/", self._root)
        # POST / is SQS's endpoint (the JSON protocol's X-Amz-Target); GET / says what is here.
        app.router.add_post("/", self._sqs)
        app.router.add_get("/_sim/events", self._admin_events_get)
        app.router.add_post("/_sim/events", self._admin_events_post)
        return app

    async def _root(self, request: web.Request) -> web.Response:
        self.fleet.advance(self.clock.now())
        return web.Response(text=_root_page(self), content_type="text/html", charset="utf-8")

    async def _sqs(self, request: web.Request) -> web.Response:
        self.fleet.advance(self.clock.now())
        return await sqs.handle(self.events, request)

    async def _admin_events_get(self, request: web.Request) -> web.Response:
        self.fleet.advance(self.clock.now())
        return web.json_response(self.events.to_json())

    async def _admin_events_post(self, request: web.Request) -> web.Response:
        data = await _json_body(request)
        try:
            self.events.faults = sqs.faults_from_json(data, self.events.faults)
        except ValueError as e:
            return _admin_error(400, str(e))
        log.info("event faults changed faults=%s", json.dumps(self.events.faults.to_json()))
        return web.json_response(self.events.to_json())

    # --- AWS operations -----------------------------------------------------------------

    async def _describe_job(self, request: web.Request) -> web.StreamResponse:
        job_id = request.match_info["jobId"]

        def produce(region: str) -> dict[str, Any]:
            return describe_job(self.fleet, self._job(job_id), region)

        return await self._aws(request, "DescribeJob", job_id, produce)

    async def _list_jobs(self, request: web.Request) -> web.StreamResponse:
        def produce(region: str) -> dict[str, Any]:
            return self._list_jobs_body(request, region)

        return await self._aws(request, "ListJobs", None, produce)

    async def _list_executions(self, request: web.Request) -> web.StreamResponse:
        job_id = request.match_info["jobId"]

        def produce(region: str) -> dict[str, Any]:
            return self._list_executions_body(request, job_id, region)

        return await self._aws(request, "ListJobExecutionsForJob", job_id, produce)

    def _index_call(self, operation: str) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def handle(request: web.Request) -> web.StreamResponse:
            raw = await request.read()

            def produce(region: str) -> dict[str, Any]:
                return self._index_body(operation, raw)

            return await self._aws(request, operation, None, produce)

        return handle

    def _index_body(self, operation: str, raw: bytes) -> dict[str, Any]:
        try:
            data = json.loads(raw or b"{}")
        except ValueError:
            raise _invalid("The request body is not JSON.") from None
        if not isinstance(data, dict):
            raise _invalid("The request body is not a JSON object.")
        query = data.get("queryString")
        field = data.get("aggregationField")
        index = data.get("indexName")
        if not isinstance(query, str) or not query:
            raise _invalid("queryString is required.")
        if field is not None and (not isinstance(field, str) or not field):
            raise _invalid("aggregationField must be a non-empty string.")
        if index is not None and not isinstance(index, str):
            raise _invalid("indexName must be a string.")
        try:
            self.index.check(self.indexing, index)
            self.fleet.packages.sync(self.fleet.now, self.indexing.lag_seconds)
            if operation == "GetStatistics":
                return self.index.statistics(self.indexing, query, field)
            if operation == "GetCardinality":
                return self.index.cardinality(self.indexing, query, field)
            if field is None:
                raise _invalid("aggregationField is required.")
            kind = data.get("bucketsAggregationType")
            terms = kind.get("termsAggregation") if isinstance(kind, dict) else None
            if not isinstance(terms, dict):
                raise QueryError(
                    400,
                    "InvalidAggregationException",
                    "Only termsAggregation is supported.",
                    "invalid_aggregation",
                )
            # AWS's default, per TermsAggregation's documentation.
            most = terms.get("maxBuckets", 10)
            if isinstance(most, bool) or not isinstance(most, int) or not 1 <= most <= 10000:
                raise _invalid(
                    f"1 validation error detected: Value '{str(most)[:40]}' at "
                    "'bucketsAggregationType.termsAggregation.maxBuckets' failed to satisfy "
                    "constraint: Member must have value between 1 and 10000"
                )
            return self.index.buckets(self.indexing, query, field, most)
        except QueryError as e:
            raise AwsError(e.status, e.code, e.message, e.outcome) from None

    async def _list_packages(self, request: web.Request) -> web.StreamResponse:
        def produce(region: str) -> dict[str, Any]:
            limit = _catalog_max_results(request)
            names = sorted(self.fleet.packages.specs)
            after = self._catalog_token(request, {"list": "packages"})
            if after is not None:
                names = [n for n in names if n > after]
            page = names[:limit]
            body: dict[str, Any] = {
                "packageSummaries": [
                    package_summary(self.fleet, self.fleet.packages.specs[n]) for n in page
                ]
            }
            if len(names) > limit:
                body["nextToken"] = _encode_token({"list": "packages", "after": page[-1]})
            return body

        return await self._aws(request, "ListPackages", None, produce)

    async def _list_package_versions(self, request: web.Request) -> web.StreamResponse:
        package = request.match_info["packageName"]

        def produce(region: str) -> dict[str, Any]:
            if not PACKAGE_NAME.match(package):
                raise _validation(f"Invalid packageName {package[:40]!r}.")
            limit = _catalog_max_results(request)
            status = request.query.get("status")
            if status is not None and status not in PACKAGE_VERSION_STATUSES:
                raise _validation(f"Invalid status {status[:40]!r}.")
            # AWS lists no versions for a package it does not have (no error is declared).
            versions = self.fleet.packages.versions.get(package, {})
            names = sorted(n for n, v in versions.items() if status is None or v.status == status)
            key = {"list": "versions", "package": package, "status": status}
            after = self._catalog_token(request, key)
            if after is not None:
                names = [n for n in names if n > after]
            page = names[:limit]
            body: dict[str, Any] = {
                "packageVersionSummaries": [
                    package_version_summary(self.fleet, package, versions[n]) for n in page
                ]
            }
            if len(names) > limit:
                body["nextToken"] = _encode_token({**key, "after": page[-1]})
            return body

        return await self._aws(request, "ListPackageVersions", None, produce)

    async def _get_package_version(self, request: web.Request) -> web.StreamResponse:
        package = request.match_info["packageName"]
        version = request.match_info["versionName"]

        def produce(region: str) -> dict[str, Any]:
            if not PACKAGE_NAME.match(package) or not VERSION_NAME.match(version):
                raise _validation("Invalid packageName or versionName.")
            spec = self.fleet.packages.versions.get(package, {}).get(version)
            if spec is None:
                raise AwsError(
                    404,
                    "ResourceNotFoundException",
                    f"Package version {package}/{version} not found.",
                    "not_found",
                )
            return package_version(self.fleet, package, spec, region)

        return await self._aws(request, "GetPackageVersion", None, produce)

    def _catalog_token(self, request: web.Request, key: dict[str, Any]) -> str | None:
        """The name a catalog listing resumes after, checked against this very listing."""
        token = request.query.get("nextToken")
        if not token:
            return None
        try:
            value = _decode_token(token)
        except AwsError:
            raise _validation("The nextToken is invalid.") from None
        if (
            not isinstance(value, dict)
            or not isinstance(value.get("after"), str)
            or {k: v for k, v in value.items() if k != "after"} != key
        ):
            raise _validation("The nextToken is invalid.")
        return str(value["after"])

    def _job(self, job_id: str) -> Job:
        if not _JOB_ID.match(job_id):
            raise _invalid(f"Job id {job_id!r} does not match [a-zA-Z0-9_-]{{1,64}}.")
        job = self.fleet.jobs.get(job_id)
        if job is None:
            raise _not_found(job_id)
        return job

    def _list_jobs_body(self, request: web.Request, region: str) -> dict[str, Any]:
        q = request.query
        limit = _max_results(request)
        status = q.get("status")
        if status is not None and status not in job_statuses():
            raise _invalid(f"Invalid job status {status!r}.")
        selection = q.get("targetSelection")
        if selection is not None and selection not in ("CONTINUOUS", "SNAPSHOT"):
            raise _invalid(f"Invalid targetSelection {selection!r}.")
        group = q.get("thingGroupName")
        group_id = q.get("thingGroupId")
        if group_id is not None:
            by_id = {v: k for k, v in self.fleet.group_ids.items()}
            group = by_id.get(group_id, "\0unknown")
        namespace = q.get("namespaceId")
        jobs = self.fleet.ordered_jobs()
        start = 0
        token = q.get("nextToken")
        if token:
            key = _decode_token(token)
            if not (
                isinstance(key, list)
                and len(key) == 2
                and isinstance(key[0], int | float)
                and not isinstance(key[0], bool)
                and isinstance(key[1], str)
            ):
                raise _invalid("The nextToken is invalid.")
            try:
                created, last_id = float(key[0]), key[1]
            except OverflowError:
                raise _invalid("The nextToken is invalid.") from None
            # Keyset pagination: stable while jobs are created or purged between pages.
            start = bisect.bisect_right(
                jobs, (-created, last_id), key=lambda j: (-j.created_at, j.job_id)
            )
        out: list[dict[str, Any]] = []
        i = start
        while i < len(jobs) and len(out) < limit:
            job = jobs[i]
            i += 1
            if status is not None and job.status != status:
                continue
            if selection is not None and job.spec.target_selection != selection:
                continue
            if namespace is not None and job.spec.namespace_id != namespace:
                continue
            if group is not None:
                # AWS leaves SCHEDULED jobs out of a by-group listing (aws-cli issue #8924).
                if job.status == JOB_SCHEDULED:
                    continue
                if not any(t.kind == "thinggroup" and t.name == group for t in job.spec.targets):
                    continue
            out.append(job_summary(self.fleet, job, region))
        body: dict[str, Any] = {"jobs": out}
        if len(out) == limit and i < len(jobs):
            last = jobs[i - 1]
            body["nextToken"] = _encode_token([last.created_at, last.job_id])
        return body

    def _list_executions_body(
        self, request: web.Request, job_id: str, region: str
    ) -> dict[str, Any]:
        job = self._job(job_id)
        limit = _max_results(request)
        status = request.query.get("status")
        if status is not None and status not in execution_statuses():
            raise _invalid(f"Invalid job execution status {status[:40]!r}.")
        after = -1
        token = request.query.get("nextToken")
        if token:
            after = _execution_token(_decode_token(token), job_id, status)
        page, more = self.fleet.page(job, status, after, limit)
        body: dict[str, Any] = {
            "executionSummaries": [execution_summary(self.fleet, e, region) for e in page]
        }
        if more:
            # Keyset pagination by the thing's place in the job: executions that change
            # state between pages shift nothing, so no unchanged one is repeated or missed.
            body["nextToken"] = _encode_token(
                {"job": job_id, "status": status, "after": page[-1].position}
            )
        return body

    async def _aws(
        self,
        request: web.Request,
        operation: str,
        job_id: str | None,
        produce: Callable[[str], dict[str, Any]],
    ) -> web.StreamResponse:
        self.stats.count(operation, "total")
        faults, picker = self.faults, self._picker
        match = _CREDENTIAL_SCOPE.search(request.headers.get("Authorization", ""))
        region = match.group(1) if match else self.scenario.region
        if picker.hits(faults.latency, operation, job_id):
            self.stats.count(operation, "delayed")
            await asyncio.sleep(picker.delay_seconds(faults.latency))
        try:
            if picker.hits(faults.denied, operation, job_id):
                kind = "job" if job_id is not None or operation in _JOB_OPS else "index"
                resource = f"arn:aws:iot:{region}:{self.fleet.account_id}:{kind}/{job_id or '*'}"
                raise AwsError(
                    403,
                    "AccessDeniedException",
                    f"User: arn:aws:iam::{self.fleet.account_id}:user/simulator is not "
                    f"authorized to perform: iot:{operation} on resource: {resource}",
                    "denied",
                )
            if self.quotas.enabled and not self._buckets[operation].take(time.monotonic()):
                raise AwsError(
                    self.quotas.throttle_status, "ThrottlingException", "Rate exceeded", "throttled"
                )
            if picker.hits(faults.reset, operation, job_id):
                self.stats.count(operation, "reset")
                return _reset(request)
            if picker.hits(faults.unavailable, operation, job_id):
                status = faults.unavailable_status
                code = (
                    "ServiceUnavailableException" if status == 503 else "InternalFailureException"
                )
                raise AwsError(
                    status, code, "Service is unavailable, try again later.", "unavailable"
                )
            if job_id is not None and picker.hits(faults.not_found, operation, job_id):
                raise _not_found(job_id)
            if operation in INDEX_OPERATIONS and picker.hits(faults.not_ready, operation, job_id):
                raise AwsError(
                    400, "IndexNotReadyException", "The index is not ready.", "not_ready"
                )
            self.fleet.advance(self.clock.now())
            body = produce(region)
        except AwsError as e:
            self.stats.count(operation, e.outcome)
            return _error_response(e)
        outcome = "ok"
        if operation == "DescribeJob":
            for name, corrupt in (
                ("missing_field", picker.drop_field),
                ("wrong_type", picker.wrong_type),
                ("unknown_enum", picker.unknown_enum),
            ):
                if picker.hits(getattr(faults, name), operation, job_id):
                    corrupt(body)
                    outcome = "bad_fields"
        if operation in INDEX_OPERATIONS and picker.hits(faults.hostile_index, operation, job_id):
            hostile_index(picker.rng, operation, body)
            outcome = "bad_fields"
        data = json.dumps(body, separators=(",", ":")).encode()
        if picker.hits(faults.malformed, operation, job_id):
            self.stats.count(operation, "malformed")
            # Cut mid-document with a matching Content-Length: the HTTP exchange is fine,
            # the JSON is not.
            return web.Response(body=data[: max(1, len(data) // 2)], headers=_headers())
        if picker.hits(faults.truncated, operation, job_id):
            self.stats.count(operation, "truncated")
            return await _truncate(request, data)
        self.stats.count(operation, outcome)
        # Date in simulated time, as AWS's is in its own: the exporter measures the ages of
        # executions against the server's clock, so they hold at any speed.
        date = email.utils.formatdate(self.clock.now(), usegmt=True)
        return web.Response(body=data, headers={**_headers(), "Date": date})

    # --- admin API ----------------------------------------------------------------------

    async def _admin_stats(self, request: web.Request) -> web.Response:
        self.fleet.advance(self.clock.now())
        body: dict[str, Any] = {
            "now": self.fleet.now,
            "now_iso": datetime.fromtimestamp(self.fleet.now, UTC).isoformat(),
            "speed": self.clock.speed,
            "account_id": self.fleet.account_id,
            "requests": self.stats.requests,
            "pending_events": self.fleet.pending_events(),
            "deleted": sorted(self.fleet.deleted),
        }
        if request.query.get("jobs", "1") != "0":
            body["jobs"] = self.fleet.truth()
        return web.json_response(body)

    def _faults_body(self) -> dict[str, Any]:
        return {"faults": faults_json(self.faults), "quotas": quotas_json(self.quotas)}

    async def _admin_faults_get(self, request: web.Request) -> web.Response:
        return web.json_response(self._faults_body())

    async def _admin_faults_post(self, request: web.Request) -> web.Response:
        data = await _json_body(request)
        unknown = set(data) - {"faults", "quotas", "clear"}
        if unknown:
            return _admin_error(
                400, f"unknown keys {sorted(unknown)}; expected faults, quotas, clear"
            )
        try:
            faults = Faults() if data.get("clear") else self.faults
            faults = faults_from_json(data.get("faults"), faults)
            quotas = quotas_from_json(data.get("quotas"), self.quotas)
        except ScenarioError as e:
            return _admin_error(400, f"{e.path}: {e.message}")
        self.faults = faults
        if quotas != self.quotas:
            self.quotas = quotas
            self._buckets = self._new_buckets()
        log.info("faults changed faults=%s", json.dumps(self._faults_body(), separators=(",", ":")))
        return web.json_response(self._faults_body())

    async def _admin_clock_get(self, request: web.Request) -> web.Response:
        self.fleet.advance(self.clock.now())
        return web.json_response({"now": self.fleet.now, "speed": self.clock.speed})

    async def _admin_clock_post(self, request: web.Request) -> web.Response:
        data = await _json_body(request)
        speed = data.get("speed")
        minutes = data.get("advance_minutes", 0)
        if speed is not None and (
            not isinstance(speed, int | float) or isinstance(speed, bool) or speed < 0
        ):
            return _admin_error(400, "speed: expected a number ≥ 0")
        if not isinstance(minutes, int | float) or isinstance(minutes, bool) or minutes < 0:
            return _admin_error(400, "advance_minutes: expected a number ≥ 0")
        if speed is not None:
            self.clock.set_speed(float(speed))
        if minutes:
            self.clock.advance(float(minutes) * 60.0)
            # Jumping ahead is a CPU burst; run it off the loop's request path in one go.
            self.fleet.advance(self.clock.now())
        return web.json_response({"now": self.fleet.now, "speed": self.clock.speed})

    async def _admin_create_job(self, request: web.Request) -> web.Response:
        data = await _json_body(request)
        self.fleet.advance(self.clock.now())
        try:
            spec = job_from_json(data, self.scenario.devices, set(self.fleet.groups))
            job = self.fleet.create_job(spec)
        except ScenarioError as e:
            return _admin_error(400, f"{e.path}: {e.message}")
        except FleetError as e:
            return _admin_error(409, e.message)
        return web.json_response(describe_job(self.fleet, job, self.scenario.region), status=201)

    async def _admin_rollout(self, request: web.Request) -> web.Response:
        self.fleet.advance(self.clock.now())
        job_id = request.match_info["jobId"]
        job = self.fleet.jobs.get(job_id)
        if job is None:
            return _admin_error(404, f"job {job_id} not found")
        body = describe_job(self.fleet, job, self.scenario.region)["job"]
        return web.json_response(
            {
                "jobId": job_id,
                "jobExecutionsRolloutConfig": body.get("jobExecutionsRolloutConfig"),
                "rateLimitPerMinute": self.fleet.rate_limit(job),
                "notifications": [
                    {"at": e.at, "rateLimitPerMinute": e.rate_limit_per_minute, "thing": e.thing}
                    for e in job.rollout_log
                ],
            }
        )

    async def _admin_cancel(self, request: web.Request) -> web.Response:
        data = await _json_body(request)
        self.fleet.advance(self.clock.now())
        force = data.get("force", False)
        if not isinstance(force, bool):
            return _admin_error(400, "force: expected true or false")
        try:
            reason = reason_from_json(data.get("reason_code"), "reason_code")
            comment = data.get("comment")
            job = self.fleet.cancel_job(
                request.match_info["jobId"],
                force=force,
                reason_code=reason,
                comment=str(comment) if comment is not None else None,
            )
        except ScenarioError as e:
            return _admin_error(400, f"{e.path}: {e.message}")
        except FleetError as e:
            return _admin_error(404 if e.code == "ResourceNotFoundException" else 409, e.message)
        return web.json_response(describe_job(self.fleet, job, self.scenario.region))

    async def _admin_delete(self, request: web.Request) -> web.Response:
        self.fleet.advance(self.clock.now())
        try:
            job = self.fleet.delete_job(request.match_info["jobId"])
        except FleetError as e:
            return _admin_error(404 if e.code == "ResourceNotFoundException" else 409, e.message)
        return web.json_response(describe_job(self.fleet, job, self.scenario.region))

    def _indexing_body(self) -> dict[str, Any]:
        cfg = self.indexing
        return {
            "status": cfg.status,
            "package_shadow": cfg.package_shadow,
            "version_fields": cfg.version_fields,
            "lag_seconds": cfg.lag_seconds,
            "pending_index_updates": self.fleet.packages.pending(),
        }

    async def _admin_indexing_get(self, request: web.Request) -> web.Response:
        return web.json_response(self._indexing_body())

    async def _admin_indexing_post(self, request: web.Request) -> web.Response:
        data = await _json_body(request)
        self.fleet.advance(self.clock.now())
        try:
            new = indexing_from_json(data, self.indexing)
        except ScenarioError as e:
            return _admin_error(400, f"{e.path}: {e.message}")
        if new.status == "ACTIVE" and self.indexing.status != "ACTIVE":
            # A rebuilt index has every shadow as it is now.
            self.fleet.packages.reindex()
        self.indexing = new
        log.info("fleet indexing changed indexing=%s", json.dumps(self._indexing_body()))
        return web.json_response(self._indexing_body())

    async def _admin_packages(self, request: web.Request) -> web.Response:
        self.fleet.advance(self.clock.now())
        self.fleet.packages.sync(self.fleet.now, self.indexing.lag_seconds)
        body = {"now": self.fleet.now, **package_truth(self.fleet)}
        return web.json_response(body)

    async def _admin_report(self, request: web.Request) -> web.Response:
        data = await _json_body(request)
        self.fleet.advance(self.clock.now())
        package = request.match_info["package"]
        version, group, count = data.get("version"), data.get("group"), data.get("count", 1)
        if not isinstance(version, str) or not isinstance(group, str):
            return _admin_error(400, "version, group: expected strings")
        if not isinstance(count, int) or isinstance(count, bool) or count < 1:
            return _admin_error(400, "count: expected an integer ≥ 1")
        if group not in self.fleet.groups:
            return _admin_error(404, f"thing group {group} not found")
        try:
            things = self.fleet.report_version(group, package, version, count)
        except FleetError as e:
            return _admin_error(404, e.message)
        return web.json_response({"package": package, "version": version, "reported": things})

    async def _group_change(self, request: web.Request, add: bool) -> web.Response:
        data = await _json_body(request)
        self.fleet.advance(self.clock.now())
        group = request.match_info["group"]
        things = data.get("things", [])
        count = data.get("count", 0)
        if not isinstance(things, list) or not all(isinstance(t, str) and t for t in things):
            return _admin_error(400, "things: expected a list of thing names")
        if not isinstance(count, int) or isinstance(count, bool) or count < 0:
            return _admin_error(400, "count: expected an integer ≥ 0")
        try:
            if add:
                changed = self.fleet.add_things(group, things, count)
            else:
                changed = self.fleet.remove_things(group, things, count)
        except FleetError as e:
            return _admin_error(404, e.message)
        return web.json_response(
            {
                "group": group,
                "added" if add else "removed": changed,
                "members": len(self.fleet.groups.get(group, {})),
            }
        )

    async def _admin_group_add(self, request: web.Request) -> web.Response:
        return await self._group_change(request, add=True)

    async def _admin_group_remove(self, request: web.Request) -> web.Response:
        return await self._group_change(request, add=False)


# GET / in a browser: what the simulator serves, and the admin endpoints to look at it.
_ROOT_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>AWS IoT Jobs simulator</title></head>
<body>
<h1>AWS IoT Jobs simulator</h1>
<p>Scenario <code>{scenario}</code>, account {account}, simulated time {now}
({speed:g} simulated minutes per real second), {jobs} jobs.</p>
<h2>AWS endpoints</h2>
<p>Any signature is accepted: a dummy key pair works
(<code>AWS_ACCESS_KEY_ID=x AWS_SECRET_ACCESS_KEY=x</code>), and no real credential
should ever be sent here. The region is the request's credential scope.</p>
<ul>
<li>AWS IoT Jobs (<code>endpoint_url: {url}</code>): ListJobs <code>GET /jobs</code>,
DescribeJob <code>GET /jobs/{{jobId}}</code>, ListJobExecutionsForJob
<code>GET /jobs/{{jobId}}/things</code>; fleet indexing GetBucketsAggregation
<code>POST /indices/buckets</code>, GetStatistics <code>POST /indices/statistics</code>,
GetCardinality <code>POST /indices/cardinality</code>; the package catalog ListPackages
<code>GET /packages</code>, ListPackageVersions
<code>GET /packages/{{packageName}}/versions</code>, GetPackageVersion
<code>GET /packages/{{packageName}}/versions/{{versionName}}</code>.</li>
<li>SQS, the fleet's job events (<code>events: sqs_queue_url: {queue}</code>):
ReceiveMessage, DeleteMessage, DeleteMessageBatch and GetQueueAttributes as
<code>POST /</code>.</li>
</ul>
<h2>Admin API</h2>
<ul>
<li><a href="_sim/stats">GET /_sim/stats</a>: simulated time, requests per operation and
outcome, every job's true state (<a href="_sim/stats?jobs=0">without jobs</a>).</li>
<li><a href="_sim/faults">GET /_sim/faults</a>, POST: AWS faults and quotas.</li>
<li><a href="_sim/events">GET /_sim/events</a>, POST: the event queue's counts and faults.</li>
<li><a href="_sim/clock">GET /_sim/clock</a>, POST: the speed; advance the clock.</li>
<li><a href="_sim/packages">GET /_sim/packages</a>: things per package version, per group
and per job, in the shadows and in the index. POST /_sim/packages/{{package}}/report.</li>
<li><a href="_sim/indexing">GET /_sim/indexing</a>, POST: fleet indexing's status and lag.</li>
<li>POST /_sim/jobs: create a job. GET /_sim/jobs/{{jobId}}/rollout.
POST /_sim/jobs/{{jobId}}/cancel, /_sim/jobs/{{jobId}}/delete.
POST /_sim/groups/{{group}}/add, /_sim/groups/{{group}}/remove.</li>
</ul>
</body></html>
"""


def _root_page(sim: Simulator) -> str:
    now = datetime.fromtimestamp(sim.fleet.now, UTC).isoformat(timespec="seconds")
    return _ROOT_PAGE.format(
        scenario=html.escape(sim.scenario.file),
        account=html.escape(sim.fleet.account_id),
        now=now,
        speed=sim.clock.speed,
        jobs=len(sim.fleet.jobs),
        url=html.escape(sim.url),
        queue=html.escape(sim.queue_url),
    )


def _headers() -> dict[str, str]:
    return {"Content-Type": _JSON, "x-amzn-RequestId": str(uuid.uuid4())}


def _execution_token(key: Any, job_id: str, status: str | None) -> int:
    """The position a ListJobExecutionsForJob token resumes after, for this very listing."""
    if not (
        isinstance(key, dict)
        and set(key) == {"job", "status", "after"}
        and isinstance(key["after"], int)
        and not isinstance(key["after"], bool)
        and key["after"] >= 0
    ):
        raise _invalid("The nextToken is invalid.")
    if key["job"] != job_id or key["status"] != status:
        # A token of another job or status filter would resume at a meaningless place.
        raise _invalid("The nextToken does not belong to this request.")
    return int(key["after"])


def _error_response(e: AwsError) -> web.Response:
    # botocore's rest-json parser takes the code from x-amzn-ErrorType (the part before
    # any ':') and the message from the body's "message".
    headers = {**_headers(), "x-amzn-ErrorType": f"{e.code}:"}
    return web.Response(
        status=e.status, body=json.dumps({"message": e.message}).encode(), headers=headers
    )


def _reset(request: web.Request) -> web.Response:
    transport = request.transport
    if transport is not None:
        sock = transport.get_extra_info("socket")
        if sock is not None:
            # Linger 0 makes close() send an RST: the client sees "connection reset by peer".
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()
    return web.Response(status=500)


async def _truncate(request: web.Request, data: bytes) -> web.StreamResponse:
    response = web.StreamResponse(headers=_headers())
    response.content_length = len(data)
    await response.prepare(request)
    await response.write(data[: len(data) // 2])
    transport = request.transport
    if transport is not None:
        transport.abort()
    return response


async def _json_body(request: web.Request) -> dict[str, Any]:
    if not request.can_read_body:
        return {}
    try:
        data = await request.json()
    except ValueError:
        raise web.HTTPBadRequest(
            text=json.dumps({"error": "body is not JSON"}), content_type=_JSON
        ) from None
    if not isinstance(data, dict):
        raise web.HTTPBadRequest(
            text=json.dumps({"error": "expected a JSON object"}), content_type=_JSON
        )
    return data


def _admin_error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def _wall_start(scenario: Scenario) -> float:
    if scenario.start_time is not None:
        return scenario.start_time.timestamp()
    # Whole minutes, so that schedulingConfig's minute-resolution times line up exactly.
    return float(int(time.time()) // 60 * 60)


async def start_simulator(
    scenario: str | os.PathLike[str],
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    jobs: int | None = None,
    no_quotas: bool = False,
    seed: int | None = None,
    speed: float | None = None,
) -> Simulator:
    """Start a simulator in the running event loop; `close()` it when done."""
    loaded = load_scenario(scenario, jobs=jobs, no_quotas=no_quotas, seed=seed, speed=speed)
    start = _wall_start(loaded)
    # Building a large fleet is CPU work; keep it off the loop.
    fleet = await asyncio.to_thread(Fleet, loaded, start)
    sim = Simulator(loaded, fleet, host=host, port=port, start=start)
    await sim.start()
    return sim
