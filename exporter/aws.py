"""One aiobotocore IoT client per target: ListJobs, DescribeJob, retries, API budget, errors."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Callable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, TypeVar

import aiohttp
from aiobotocore.config import AioConfig
from aiobotocore.credentials import (
    AioAssumeRoleCredentialFetcher,
    AioDeferredRefreshableCredentials,
)
from aiobotocore.httpsession import AIOHTTPSession
from aiobotocore.session import AioSession
from botocore.exceptions import (
    ClientError,
    HTTPClientError,
    NoCredentialsError,
    PartialCredentialsError,
    ReadTimeoutError,
)
from botocore.exceptions import (
    ConnectionError as BotoConnectionError,
)
from botocore.parsers import DEFAULT_TIMESTAMP_PARSER, ResponseParserError

from exporter.budget import DISCOVERY, SWEEP, WORK, Budgets, FairBucket
from exporter.config import CollectorSettings, Target
from exporter.events import Message, QueueError, message_from_sqs
from exporter.executions import (
    PAGE_SIZE,
    ExecutionSummary,
    MalformedPage,
    parse_page,
    server_time,
)
from exporter.logs import redact, summarise
from exporter.model import JOB_ID, JobSnapshot, MalformedJob, parse_describe_job, to_timestamp
from exporter.packages import (
    CATALOG_PAGE_SIZE,
    MAX_BUCKETS,
    PACKAGE_OPERATIONS,
    MalformedAnswer,
    VersionCounts,
    read_buckets,
    read_count,
    read_packages,
    version_field,
    version_query,
)
from exporter.telemetry import SourceTelemetry
from exporter.tracing import NOOP_TRACING, Tracing

log = logging.getLogger(__name__)
T = TypeVar("T")

# Per call (a task's context): whether botocore's hook counted the last attempt.
_ATTEMPT_COUNTED: ContextVar[list[bool] | None] = ContextVar("attempt_counted", default=None)

LIST_JOBS_PAGE_SIZE = 250  # the largest page AWS accepts: fewest calls per discovery
LIST_EXECUTIONS = "ListJobExecutionsForJob"
IOT_OPERATIONS = ("DescribeJob", "ListJobs", LIST_EXECUTIONS)
# The key of the client the package and fleet indexing calls share (JobSource.client).
PACKAGES_CLIENT = "packages"
# The largest IoT or STS answer read: a DescribeJob is a few KiB, a ListJobs page of 250
# jobs about 100 KiB. A larger one is refused unread (counted malformed): aiobotocore reads
# bodies whole, and botocore parses them on the event loop.
MAX_ANSWER_BYTES = 8 * 1024 * 1024

_THROTTLED = {
    "ThrottlingException",
    "Throttling",
    "TooManyRequestsException",
    "RequestLimitExceeded",
    "LimitExceededException",
}
_DENIED = {
    "AccessDeniedException",
    "AccessDenied",
    "UnauthorizedException",
    "UnrecognizedClientException",
    "InvalidClientTokenId",
    "ExpiredTokenException",
    "ExpiredToken",
    "SignatureDoesNotMatch",
    "InvalidSignatureException",
    "AuthFailure",
    "MissingAuthenticationTokenException",
}
# AWS refused the request itself: a job id DescribeJob cannot take, for one.
_INVALID = {
    "InvalidRequestException",
    "ValidationException",
    "InvalidParameterValue",
    "InvalidParameterException",
}
_UNAVAILABLE = {
    "ServiceUnavailableException",
    "ServiceUnavailable",
    "InternalFailure",
    "InternalException",
    "InternalServerError",
    "InternalServerException",
}


class ApiError(Exception):
    """An AWS call that failed, with its outcome class (one of telemetry.OUTCOMES)."""

    def __init__(self, outcome: str, operation: str, detail: str) -> None:
        super().__init__(f"{operation} failed ({outcome}): {detail}")
        self.outcome = outcome
        self.operation = operation
        self.detail = detail


def classify_error(code: str | None, status: int | None) -> str:
    if code in _THROTTLED or status == 429:
        return "throttled"
    if code == "ResourceNotFoundException" or status == 404:
        return "not_found"
    if code in _DENIED or status in (401, 403):
        return "denied"
    if code in _UNAVAILABLE or (status is not None and status >= 500):
        return "unavailable"
    if code in _INVALID:
        return "invalid"
    return "error"


# What botocore's parsers raise on a body they cannot read: `[]` where an object belongs,
# "x" where an integer belongs, 1e309 as a date (RuntimeError), 100,000 nested `[`
# (RecursionError), a count of 1e309 (OverflowError), bytes that are not UTF-8.
_UNREADABLE = (
    ResponseParserError,
    ValueError,
    TypeError,
    AttributeError,
    KeyError,
    IndexError,
    ArithmeticError,
    RecursionError,
    RuntimeError,
)


def classify(exc: BaseException) -> str:
    """The outcome class of any exception raised by a botocore call."""
    if isinstance(exc, ApiError):
        return exc.outcome
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return classify_error(error.get("Code"), status)
    if isinstance(exc, NoCredentialsError | PartialCredentialsError):
        return "denied"
    if _too_large(exc):
        return "malformed"
    if isinstance(
        exc, BotoConnectionError | HTTPClientError | aiohttp.ClientError | OSError | TimeoutError
    ):
        return "network"
    if isinstance(exc, _UNREADABLE):
        return "malformed"
    return "error"


def describe_exception(exc: BaseException) -> str:
    """A log-safe one-line description: the error code and message, never a body.

    Library messages can quote what the server sent (botocore's parser errors quote the
    whole body, credentials included), so every message is redacted to one short line.
    """
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code, message = str(error.get("Code", "Unknown")), str(error.get("Message", ""))
        return redact(f"{code}: {message}".strip())
    return summarise(exc)


def _lenient_timestamp(value: Any) -> Any:
    """Epoch numbers as they are, and strings botocore cannot read as they are too.

    botocore's own parser raises RuntimeError or OverflowError on 1e309 or 10**40 and a
    bare ValueError on "yesterday"; passed through, model.py reads them and names the field.
    """
    if isinstance(value, int | float) and not isinstance(value, bool):
        return value
    try:
        return DEFAULT_TIMESTAMP_PARSER(value)
    except Exception:
        return value


def _raw_execution_summaries(
    response_dict: Any = None, customized_response_dict: Any = None, **kwargs: Any
) -> None:
    """A ListJobExecutionsForJob answer's summaries as the JSON has them, past botocore.

    botocore converts every field of every entry, and one it cannot read (a 401-digit
    queuedAt, a retryAttempt of "x" or []) fails the whole page: executions.parse_page
    reads the entries instead, where a bad one costs itself only. At most PAGE_SIZE of
    them, what the call asks for: a page of 30,000 is not walked entry by entry. A body
    that is not such an object is left to botocore, which fails it as before.
    """
    if not isinstance(response_dict, dict) or not isinstance(customized_response_dict, dict):
        return
    if response_dict.get("status_code", 200) >= 300:
        return
    body = response_dict.get("body")
    try:
        page = json.loads(body) if isinstance(body, bytes | str) else None
    except (ValueError, RecursionError):
        return
    if not isinstance(page, dict) or not isinstance(page.get("executionSummaries"), list):
        return
    customized_response_dict["executionSummaries"] = page.pop("executionSummaries")[:PAGE_SIZE]
    response_dict["body"] = json.dumps(page).encode()


class _DeadlineSession(AIOHTTPSession):  # type: ignore[misc]
    """aiobotocore's HTTP session with a total deadline per attempt: connect and whole body.

    botocore's read timeout bounds each read, so a body dripping a byte a second never
    trips it. Past the deadline the attempt fails as a read timeout, which botocore retries
    and we count as `network`, like any other.
    """

    attempt_timeout = 30.0

    async def send(self, request: Any) -> Any:
        try:
            async with asyncio.timeout(self.attempt_timeout):
                return await super().send(request)
        except TimeoutError as exc:
            # The session turns its own timeouts into botocore errors: this one is ours.
            raise ReadTimeoutError(endpoint_url=request.url, error=exc) from None


_ROLE_ACCOUNT = re.compile(r"^arn:aws[a-z-]*:iam::(\d{12}):role/")


@dataclass(frozen=True, slots=True)
class JobSummary:
    job_id: str
    status: str | None
    ended_at: float | None


class JobSource:
    """The AWS IoT control plane of one target, as the collector sees it."""

    def __init__(
        self,
        target: Target,
        settings: CollectorSettings,
        telemetry: SourceTelemetry,
        tracing: Tracing = NOOP_TRACING,
        budgets: Budgets | None = None,
    ) -> None:
        self.target = target
        self.tracing = tracing
        self.settings = settings
        self.telemetry = telemetry
        self.budgets = budgets if budgets is not None else Budgets()
        self.account_key = ""
        self._buckets: dict[str, FairBucket] = {}
        self._stack = contextlib.AsyncExitStack()
        self._client: Any = None
        self._clients: dict[str, Any] = {}
        self._session: AioSession | None = None

    async def __aenter__(self) -> JobSource:
        session = AioSession(profile=self.target.profile)
        self._session = session
        # Per session, so per target: this client's parser and the STS client's.
        session.get_component("response_parser_factory").set_parser_defaults(
            timestamp_parser=_lenient_timestamp
        )
        if self.target.role_arn:
            await self._assume_role(session)
        self.account_key = await self._account_key(session)
        rates = {
            "DescribeJob": self.settings.requests_per_second,
            "ListJobs": self.settings.requests_per_second,
            # Its own quota at AWS, so a budget of its own (0: sweeps are off).
            LIST_EXECUTIONS: self.settings.executions.requests_per_second,
        }
        self._buckets = {
            op: self.budgets.bucket(self.account_key, self.target.region, op, rate)
            for op, rate in rates.items()
            if rate > 0
        }
        boto_config = AioConfig(
            region_name=self.target.region,
            connect_timeout=self.settings.request_timeout,
            read_timeout=self.settings.request_timeout,
            http_session_cls=self._http_session_cls(),
            # Adaptive mode is botocore's own AIMD: after a ThrottlingException it meters
            # the client's send rate down (CUBIC) and lets it recover. Our token buckets stay
            # the ceiling: AWS's published quota, which adaptive mode does not know.
            retries={"mode": "adaptive", "total_max_attempts": self.settings.max_attempts},
            max_pool_connections=self.settings.concurrency,
            user_agent_extra="aws-iot-jobs-exporter",
        )
        # A client per operation: AWS gives each its own quota, and adaptive mode's rate
        # limiter covers every operation of its client, so throttled sweeps sharing a
        # client with DescribeJob would slow every describe down with them.
        self._clients = {}
        # The package calls (PackageSource) share one client of their own: a budget of
        # their own, and a retry limiter that throttled index calls cannot share either.
        for operation in (*IOT_OPERATIONS, PACKAGES_CLIENT):
            client = await self._stack.enter_async_context(
                session.create_client(
                    "iot",
                    region_name=self.target.region,
                    endpoint_url=self.target.endpoint_url,
                    config=boto_config,
                )
            )
            self._clients[operation] = client
            events = client.meta.events
            if operation in self._buckets:
                events.register(
                    f"before-send.iot.{operation}",
                    functools.partial(self._before_send, operation),
                )
            events.register("needs-retry.iot", self._count_failed_attempt)
        self._clients[LIST_EXECUTIONS].meta.events.register(
            f"before-parse.iot.{LIST_EXECUTIONS}", _raw_execution_summaries
        )
        # DescribeJob's, for what reads one client (its credentials, its signer).
        self._client = self._clients["DescribeJob"]
        return self

    def client(self, operation: str) -> Any:
        """The botocore client that sends `operation` (each has its own retry limiter)."""
        return self._clients[operation]

    async def __aexit__(self, *exc_info: object) -> None:
        await self._stack.aclose()
        self._client = None
        self._clients = {}
        self._session = None

    async def _account_key(self, session: AioSession) -> str:
        """What identifies the target's quota: its account, resolved once.

        The role's ARN names the account; otherwise STS GetCallerIdentity does. A target on
        an endpoint of its own (a simulator, a proxy) and no STS endpoint is keyed by that
        endpoint; one whose account cannot be resolved keeps a budget of its own.
        """
        target = self.target
        match = _ROLE_ACCOUNT.match(target.role_arn or "")
        if match:
            return match.group(1)
        if target.endpoint_url and not target.sts_endpoint_url:
            return f"endpoint {target.endpoint_url}"
        try:
            async with session.create_client(
                "sts",
                region_name=target.region,
                endpoint_url=target.sts_endpoint_url,
                config=AioConfig(
                    connect_timeout=self.settings.request_timeout,
                    read_timeout=self.settings.request_timeout,
                    retries={"mode": "standard", "total_max_attempts": 2},
                    http_session_cls=self._http_session_cls(),
                ),
            ) as sts:
                identity = await sts.get_caller_identity()
            account = identity.get("Account") if isinstance(identity, dict) else None
            if isinstance(account, str) and re.fullmatch(r"\d{12}", account):
                return account
        except Exception as exc:
            log.warning(
                "cannot resolve the account; the target keeps a budget of its own "
                "target=%s error=%r",
                target.name,
                f"{type(exc).__name__}",
            )
        return f"target {target.name}"

    async def event_queue(self) -> EventQueue | None:
        """The target's SQS event queue, on the same credentials; None without `events`."""
        events = self.target.events
        if events is None or self._session is None:
            return None
        # A long poll holds the request for up to WAIT_SECONDS before answering.
        long_poll = EventQueue.WAIT_SECONDS + self.settings.request_timeout
        boto_config = AioConfig(
            region_name=self.target.region,
            connect_timeout=self.settings.request_timeout,
            read_timeout=long_poll,
            retries={"mode": "standard", "total_max_attempts": self.settings.max_attempts},
            http_session_cls=self._http_session_cls(
                max(long_poll, self.settings.attempt_timeout), events.max_receive_bytes
            ),
            user_agent_extra="aws-iot-jobs-exporter",
        )
        client = await self._stack.enter_async_context(
            self._session.create_client(
                "sqs",
                region_name=self.target.region,
                endpoint_url=events.sqs_endpoint,
                config=boto_config,
            )
        )
        client.meta.events.register("needs-retry.sqs", self._count_failed_attempt)
        return EventQueue(self, client, events.sqs_queue_url)

    def _http_session_cls(
        self, attempt_timeout: float | None = None, max_body_bytes: int = MAX_ANSWER_BYTES
    ) -> type[AIOHTTPSession]:
        timeout = self.settings.attempt_timeout if attempt_timeout is None else attempt_timeout
        return type(
            "CappedSession",
            (_CappedSession,),
            {"attempt_timeout": timeout, "max_body_bytes": max_body_bytes},
        )

    async def _assume_role(self, session: AioSession) -> None:
        """Swap the session's credentials for the role's, refreshed by botocore before expiry."""
        source = await session.get_credentials()
        if source is None:
            # Calls then fail as NoCredentialsError, counted as denied for this target only.
            log.error("no source credentials to assume role target=%s", self.target.name)
            return
        extra: dict[str, str] = {"RoleSessionName": self.target.session_name}
        if self.target.external_id:
            extra["ExternalId"] = self.target.external_id
        client_creator = functools.partial(
            session.create_client,
            region_name=self.target.region,
            endpoint_url=self.target.sts_endpoint_url,
            config=AioConfig(
                connect_timeout=self.settings.request_timeout,
                read_timeout=self.settings.request_timeout,
                http_session_cls=self._http_session_cls(),
            ),
        )
        fetcher = AioAssumeRoleCredentialFetcher(
            client_creator=client_creator,
            source_credentials=source,
            role_arn=self.target.role_arn,
            extra_args=extra,
        )
        # botocore has no public setter for refreshable credentials; _credentials is what
        # its own AssumeRoleProvider ends up populating.
        session._credentials = AioDeferredRefreshableCredentials(
            refresh_using=fetcher.fetch_credentials, method="assume-role"
        )

    async def _before_send(self, operation: str, **kwargs: Any) -> None:
        flag = _ATTEMPT_COUNTED.get()
        if flag is not None:
            flag[0] = False  # a new attempt: not counted yet
        # Every attempt, retries included, spends from the budget: that is what AWS counts.
        kind = WORK.get() if operation == "DescribeJob" else DISCOVERY
        if operation == LIST_EXECUTIONS:
            kind = SWEEP
        await self._buckets[operation].acquire(self.target.name, kind)

    def _count_failed_attempt(
        self,
        response: Any = None,
        caught_exception: Any = None,
        operation: Any = None,
        **kwargs: Any,
    ) -> None:
        """Counts each failed attempt botocore sees; successes are counted once parsed."""
        name = getattr(operation, "name", "unknown")
        if caught_exception is not None:
            outcome = classify(caught_exception)
        elif response is not None and getattr(response[0], "status_code", 200) >= 300:
            http, parsed = response
            code = parsed.get("Error", {}).get("Code") if isinstance(parsed, dict) else None
            outcome = classify_error(code, http.status_code)
        else:
            return
        self.telemetry.api_call(self.target.name, name, outcome)
        flag = _ATTEMPT_COUNTED.get()
        if flag is not None:
            flag[0] = True

    @contextlib.asynccontextmanager
    async def _call(self, operation: str, job_id: str | None = None) -> AsyncIterator[None]:
        """Times a call and turns its failure into an ApiError; the body counts success."""
        # The span takes its outcome from the ApiError raised inside it.
        with self.tracing.api_span(self.target.name, operation, job_id):
            started = time.monotonic()
            # Each attempt has its deadline; this bounds the whole call, backoff included.
            deadline = self.settings.attempt_timeout * (self.settings.max_attempts + 1) + 30
            # Whether the last attempt was counted by _count_failed_attempt. It was not when
            # the call failed before sending (credentials, AssumeRole), on a body botocore
            # could not parse, or at our deadline: then it is counted here.
            flag = [False]
            token = _ATTEMPT_COUNTED.set(flag)
            try:
                async with asyncio.timeout(deadline):
                    yield
            except ApiError:
                raise
            except Exception as exc:
                # Whatever a call raises concerns this call only: classified, counted once,
                # and described in one redacted line (never a body, never a traceback).
                outcome = classify(exc)
                if not flag[0]:
                    self._count(operation, outcome)
                raise ApiError(outcome, operation, describe_exception(exc)) from None
            finally:
                _ATTEMPT_COUNTED.reset(token)
                self.telemetry.api_latency(self.target.name, operation, time.monotonic() - started)

    def _count(self, operation: str, outcome: str) -> None:
        self.telemetry.api_call(self.target.name, operation, outcome)

    async def describe_job(self, job_id: str) -> JobSnapshot:
        """The job as DescribeJob reports it now; ApiError when that fails or is unreadable."""
        async with self._call("DescribeJob", job_id):
            response = await self._clients["DescribeJob"].describe_job(jobId=job_id)
            try:
                # The sweeps' tolerance of AWS's Date holds for the describe's too.
                snapshot = parse_describe_job(
                    response, time.time(), self.settings.executions.max_clock_skew
                )
            except MalformedJob as exc:
                self._count("DescribeJob", "malformed")
                raise ApiError("malformed", "DescribeJob", summarise(exc)) from None
            self._count("DescribeJob", "ok")
        return snapshot

    async def list_executions(
        self, job_id: str, status: str, token: str | None = None
    ) -> tuple[list[ExecutionSummary], str | None, float | None]:
        """One page of the job's executions in `status`, the next page's token, and the
        answer's Date (None when absent or unreadable)."""
        kwargs: dict[str, Any] = {"jobId": job_id, "status": status, "maxResults": PAGE_SIZE}
        if token:
            kwargs["nextToken"] = token
        async with self._call(LIST_EXECUTIONS, job_id):
            if LIST_EXECUTIONS not in self._buckets:
                raise ApiError("error", LIST_EXECUTIONS, "execution sweeps are turned off")
            page = await self._clients[LIST_EXECUTIONS].list_job_executions_for_job(**kwargs)
            try:
                summaries, next_token = parse_page(page)
                date = server_time(page)
            except MalformedPage as exc:
                self._count(LIST_EXECUTIONS, "malformed")
                raise ApiError("malformed", LIST_EXECUTIONS, str(exc)) from None
            self._count(LIST_EXECUTIONS, "ok")
        return summaries, next_token, date

    async def list_jobs(self, params: dict[str, str]) -> list[JobSummary]:
        """Every job ListJobs returns for the filters, paged at the largest page size.

        A listing is all or nothing: an unreadable page, a paginator that never ends, or
        more jobs than `discovery_max_jobs` fail it as `malformed`, so the caller keeps
        what it knew instead of taking a partial or empty listing for the account's jobs.
        """
        summaries: list[JobSummary] = []
        token: str | None = None
        seen_tokens: set[str] = set()
        max_pages, max_jobs = self.settings.discovery_max_pages, self.settings.discovery_max_jobs
        for _ in range(max_pages):
            kwargs: dict[str, Any] = dict(params, maxResults=LIST_JOBS_PAGE_SIZE)
            if token:
                kwargs["nextToken"] = token
            async with self._call("ListJobs"):
                page = await self._clients["ListJobs"].list_jobs(**kwargs)
                problem, jobs, token = _read_page(page)
                if problem is None and len(summaries) + len(jobs) > max_jobs:
                    problem = f"response.jobs: more than discovery_max_jobs ({max_jobs}) jobs"
                if problem is not None:
                    self._count("ListJobs", "malformed")
                    raise ApiError("malformed", "ListJobs", problem)
                self._count("ListJobs", "ok")
            for item in jobs:
                job_id = item.get("jobId") if isinstance(item, dict) else None
                if not isinstance(job_id, str) or not JOB_ID.fullmatch(job_id):
                    # Not an id CreateJob allows (a NUL, a lone surrogate, 10,000 bytes):
                    # no job to describe, and no label value of ours may carry it.
                    continue
                status = item.get("status")
                ended = to_timestamp(item.get("completedAt") or item.get("lastUpdatedAt"))
                summaries.append(
                    JobSummary(job_id, status if isinstance(status, str) else None, ended)
                )
            if not token:
                return summaries
            if token in seen_tokens:
                # A token that comes back would page forever.
                self._count("ListJobs", "malformed")
                raise ApiError("malformed", "ListJobs", "response.nextToken: repeats a page")
            seen_tokens.add(token)
        # Like a repeated token: the pages were fine, the listing is not; counted so the
        # failure shows on the same series.
        self._count("ListJobs", "malformed")
        raise ApiError(
            "malformed",
            "ListJobs",
            f"response.nextToken: still set after discovery_max_pages ({max_pages}) pages",
        )


def _read_page(page: Any) -> tuple[str | None, list[Any], str | None]:
    """A ListJobs page's problem (or None), its jobs and its next token.

    botocore turns a body that is not JSON into `{"message": <body>}`: a page without a
    `jobs` list is unreadable, never an empty listing.
    """
    if not isinstance(page, dict):
        return "response: expected an object", [], None
    jobs, token = page.get("jobs"), page.get("nextToken")
    if not isinstance(jobs, list):
        return "response.jobs: expected a list", [], None
    if not isinstance(token, str | None):
        return "response.nextToken: expected a string", [], None
    return None, jobs, token


class ResponseTooLarge(ValueError):
    """An answer larger than the session's max_body_bytes: refused unread."""


class _CappedResponse(aiohttp.ClientResponse):
    """aiohttp's response, reading at most `max_body_bytes` of a body (None: no cap).

    aiobotocore reads every body whole before botocore parses it; an endpoint that answers
    40 MB to each long poll would otherwise hold 40 MB per receiver, and more as parsed.
    """

    max_body_bytes: int | None = None

    async def read(self) -> bytes:
        cap = self.max_body_bytes
        if cap is not None and self._body is None:
            length = self.content_length
            if length is not None and length > cap:
                self.close()
                raise ResponseTooLarge(f"response of {length} bytes is larger than {cap}")
            chunks: list[bytes] = []
            size = 0
            try:
                async for chunk in self.content.iter_any():
                    size += len(chunk)
                    if size > cap:
                        raise ResponseTooLarge(f"response larger than {cap} bytes")
                    chunks.append(chunk)
            except BaseException:
                # As aiohttp's own read does: a read cut short (the cap, a deadline, a
                # cancellation) must give its pooled connection back, not wait for the GC.
                self.close()
                raise
            self._body = b"".join(chunks)
        return await super().read()


class _CappedSession(_DeadlineSession):
    """The deadline session, reading at most `max_body_bytes` of each answer."""

    max_body_bytes: int | None = None

    async def _get_session(self, proxy_url: Any) -> Any:
        if not (session := self._sessions.get(proxy_url)):
            cls = type(
                "CappedResponse", (_CappedResponse,), {"max_body_bytes": self.max_body_bytes}
            )
            connector = self._create_connector(proxy_url)
            session = await self._exit_stack.enter_async_context(
                aiohttp.ClientSession(
                    connector=connector,
                    timeout=self._timeout,
                    skip_auto_headers={"CONTENT-TYPE"},
                    auto_decompress=False,
                    response_class=cls,
                )
            )
            self._sessions[proxy_url] = session
        return session


def _too_large(exc: BaseException) -> bool:
    """Whether a botocore error is our ResponseTooLarge, which aiobotocore wraps."""
    return isinstance(exc, ResponseTooLarge) or (
        isinstance(exc, HTTPClientError) and isinstance(exc.kwargs.get("error"), ResponseTooLarge)
    )


class EventQueue:
    """A target's SQS queue of job events: long polls and batch deletes.

    SQS quotas are separate from IoT's, so these calls spend nothing of the IoT budget;
    they are counted with the other calls in api_requests_total.
    """

    WAIT_SECONDS = 20
    BATCH = 10

    def __init__(self, source: JobSource, client: Any, queue_url: str) -> None:
        self._source = source
        self._client = client
        self._queue_url = queue_url
        self.wait_seconds = float(self.WAIT_SECONDS)
        # Messages asked for per receive: one after an answer too large to read, so that a
        # huge message (an SQS message can be 1 MiB) comes alone, is read and deleted.
        self._batch = self.BATCH

    async def receive(self, wait: bool = True) -> list[Message]:
        """Up to BATCH messages; a long poll of WAIT_SECONDS when `wait`."""
        batch = self._batch
        try:
            async with self._source._call("ReceiveMessage"):
                try:
                    page = await self._client.receive_message(
                        QueueUrl=self._queue_url,
                        MaxNumberOfMessages=batch,
                        WaitTimeSeconds=self.WAIT_SECONDS if wait else 0,
                    )
                except Exception as exc:
                    if _too_large(exc):
                        self._batch = 1
                    raise
                items = page.get("Messages", []) if isinstance(page, dict) else None
                if not isinstance(items, list):
                    self._source._count("ReceiveMessage", "malformed")
                    raise ApiError(
                        "malformed", "ReceiveMessage", "response.Messages: expected a list"
                    )
                self._source._count("ReceiveMessage", "ok")
        except ApiError as exc:
            raise QueueError(exc.outcome, exc.detail) from None
        if batch == 1:
            self._batch = self.BATCH
        # SQS never answers more than it was asked for; a longer list is not read past that.
        return [m for m in map(message_from_sqs, items[:batch]) if m is not None]

    async def delete(self, receipt_handles: list[str]) -> list[str]:
        """Deletes in batches; returns the reasons SQS gave for entries it did not delete."""
        failed: list[str] = []
        for start in range(0, len(receipt_handles), self.BATCH):
            entries = [
                {"Id": str(i), "ReceiptHandle": handle}
                for i, handle in enumerate(receipt_handles[start : start + self.BATCH])
            ]
            try:
                async with self._source._call("DeleteMessageBatch"):
                    answer = await self._client.delete_message_batch(
                        QueueUrl=self._queue_url, Entries=entries
                    )
                    self._source._count("DeleteMessageBatch", "ok")
            except ApiError as exc:
                raise QueueError(exc.outcome, exc.detail) from None
            failed.extend(_failed_entries(answer, len(entries)))
        return failed


def _failed_entries(answer: Any, sent: int) -> list[str]:
    """What a DeleteMessageBatch answer says of the entries it did not delete.

    A 200 can fail every entry (`Failed`: Id, Code, SenderFault, Message); an answer that
    lists neither success nor failure for an entry is taken as not deleted too.
    """
    if not isinstance(answer, dict):
        return ["response: expected an object"] * sent
    failed = answer.get("Failed") or []
    succeeded = answer.get("Successful") or []
    if not isinstance(failed, list) or not isinstance(succeeded, list):
        return ["response: expected lists of entries"] * sent
    reasons = []
    for entry in failed[:sent]:
        code = entry.get("Code") if isinstance(entry, dict) else None
        reasons.append(redact(str(code))[:80] if code else "failed")
    missing = sent - len(reasons) - len(succeeded[:sent])
    reasons.extend(["not acknowledged"] * max(0, missing))
    return reasons


# --- Software Package Catalog and fleet indexing: devices per package version ------------
# Calls of their own, under budgets of their own (PackageSettings.requests_per_second per
# operation, per account and region); answers read by packages.py, scheduled by collect/versions.py.

AGGREGATION = "GetBucketsAggregation"
STATISTICS = "GetStatistics"
LIST_PACKAGES = "ListPackages"
# The kind of work these calls are in the fair buckets (budget.py's default weight).
PACKAGE_WORK = "packages"
# Errors that say the index or the catalog cannot answer at all: fleet indexing off or
# rebuilding, the `$package` version not a custom field, the catalog unused. The family
# says so once and backs off; retrying each interval would change nothing.
_NOT_AVAILABLE = {
    "IndexNotReadyException",
    "ResourceNotFoundException",
    "InvalidAggregationException",
    "InvalidQueryException",
}


class NotAvailable(ApiError):
    """The index or the catalog answered that it cannot serve this family (`code` says how)."""

    def __init__(self, outcome: str, operation: str, detail: str, code: str) -> None:
        super().__init__(outcome, operation, detail)
        self.code = code


class PackageSource:
    """The fleet index and the package catalog of one target, on its JobSource's package
    client."""

    def __init__(self, source: JobSource, rate: float) -> None:
        self._source = source
        self.target = source.target
        self.account_key = source.account_key
        self._buckets: dict[str, FairBucket] = {}
        self._client = source._clients.get(PACKAGES_CLIENT)
        if rate > 0 and self._client is not None:
            self._buckets = {
                op: source.budgets.bucket(source.account_key, source.target.region, op, rate)
                for op in PACKAGE_OPERATIONS
            }
            events = self._client.meta.events
            for operation in self._buckets:
                events.register(
                    f"before-send.iot.{operation}",
                    functools.partial(self._before_send, operation),
                )

    async def _before_send(self, operation: str, **kwargs: Any) -> None:
        flag = _ATTEMPT_COUNTED.get()
        if flag is not None:
            flag[0] = False
        await self._buckets[operation].acquire(self.target.name, PACKAGE_WORK)

    async def _send(self, operation: str, method: str, read: Callable[[Any], T], **kw: Any) -> T:
        """One call's answer as `read` reads it; NotAvailable or ApiError when it fails."""
        async with self._source._call(operation):
            if operation not in self._buckets:
                raise ApiError("error", operation, "package metrics are turned off")
            try:
                answer = await getattr(self._client, method)(**kw)
            except ClientError as exc:
                code = exc.response.get("Error", {}).get("Code")
                if code in _NOT_AVAILABLE:
                    detail = describe_exception(exc)
                    raise NotAvailable(classify(exc), operation, detail, code) from None
                raise
            try:
                value = read(answer)
            except MalformedAnswer as exc:
                self._source._count(operation, "malformed")
                raise ApiError("malformed", operation, summarise(exc)) from None
            self._source._count(operation, "ok")
        return value

    async def count(self, query: str) -> int:
        """GetStatistics: the things matching a fleet indexing query."""
        return await self._send(STATISTICS, "get_statistics", read_count, queryString=query)

    async def versions(self, package: str, max_versions: int) -> VersionCounts:
        """GetBucketsAggregation: the package's things per reported version."""
        field = version_field(package)
        return await self._send(
            AGGREGATION,
            "get_buckets_aggregation",
            functools.partial(read_buckets, package=package, max_versions=max_versions),
            queryString=version_query(package, "*"),
            aggregationField=field,
            bucketsAggregationType={"termsAggregation": {"maxBuckets": MAX_BUCKETS}},
        )

    async def list_packages(self, token: str | None = None) -> tuple[list[str], str | None]:
        """One ListPackages page: package names and the next token."""
        kwargs: dict[str, Any] = {"maxResults": CATALOG_PAGE_SIZE}
        if token:
            kwargs["nextToken"] = token
        return await self._send(LIST_PACKAGES, "list_packages", read_packages, **kwargs)
