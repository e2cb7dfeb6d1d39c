"""check-config --probe: per target, the credentials, the identity and one call of each kind."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from typing import Any

from aiobotocore.session import AioSession
from botocore.config import Config as BotoConfig
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError, ProfileNotFound

from exporter.aws import classify, describe_exception
from exporter.config import CollectorSettings, Config, Target
from exporter.logs import escape_controls, sanitise

# What a failed step is reported as: the outcome classes of aws.py, with `network` split
# into a region botocore does not know and an endpoint that does not answer.
FAILURE_CLASSES = (
    "credentials",
    "denied",
    "throttled",
    "not_found",
    "region",
    "unreachable",
    "unavailable",
    "malformed",
    "error",
)


@dataclass(frozen=True, slots=True)
class ProbeResult:
    target: str
    region: str
    account: str | None = None
    identity: str | None = None
    failure: str | None = None
    step: str | None = None
    detail: str = ""
    # What the calls found, for the OK line; and the identity lookup's failure, which
    # does not fail a target whose IoT calls work (the exporter never calls STS itself
    # unless it assumes a role).
    listed: int | None = None
    described: str | None = None
    # Whether ListJobExecutionsForJob answered for the described job (sweeps are on).
    swept: bool = False
    # The event queue's URL when the target has `events:` and GetQueueAttributes answered.
    queue: str | None = None
    note: str = ""

    @property
    def ok(self) -> bool:
        return self.failure is None

    def line(self) -> str:
        """One line for a terminal. Job ids, identities and error texts come from the
        endpoint: escaped whole, none can clear the screen, retitle the window, reverse
        the line or start a line that reads like another target's result."""
        head = (
            f"{self.target}: region={self.region} account={self.account or '?'} "
            f"identity={self.identity or '?'}"
        )
        if self.failure is not None:
            return escape_controls(f"{head} FAILED {self.failure} at {self.step}: {self.detail}")
        found = []
        if self.listed is not None:
            found.append(f"ListJobs {'1 job' if self.listed else 'no job'}")
        found.append(f"DescribeJob {self.described}" if self.described else "no job to describe")
        if self.swept:
            found.append("ListJobExecutionsForJob")
        if self.queue is not None:
            found.append(f"queue {self.queue}")
        note = f"; {self.note}" if self.note else ""
        return escape_controls(f"{head} OK ({', '.join(found)}{note})")


# SQS's codes for a queue that does not exist (JSON and query protocols).
_NO_QUEUE = ("QueueDoesNotExist", "AWS.SimpleQueueService.NonExistentQueue")


class _Failed(Exception):
    def __init__(self, failure: str, step: str, detail: str) -> None:
        super().__init__(f"{step}: {failure}")
        self.failure = failure
        self.step = step
        self.detail = detail


async def _known_region(session: AioSession, region: str) -> bool:
    for partition in session.get_available_partitions():
        if region in await session.get_available_regions("iot", partition):
            return True
    return False


async def _failure(exc: BaseException, step: str, target: Target, session: AioSession) -> _Failed:
    if isinstance(exc, NoCredentialsError | ProfileNotFound):
        return _Failed("credentials", step, sanitise(describe_exception(exc)))
    outcome = classify(exc)
    detail = sanitise(describe_exception(exc))
    if outcome == "network":
        if target.endpoint_url is None and not await _known_region(session, target.region):
            return _Failed(
                "region",
                step,
                f"{target.region!r} is not a region botocore knows for AWS IoT, and its "
                f"endpoint does not answer ({detail})",
            )
        return _Failed("unreachable", step, detail)
    if outcome == "ok":
        outcome = "error"
    if isinstance(exc, ClientError) and exc.response.get("Error", {}).get("Code") in _NO_QUEUE:
        outcome = "not_found"
    return _Failed(outcome, step, detail)


async def probe_target(target: Target, settings: CollectorSettings) -> ProbeResult:
    """One target: its credentials and role, who they are, and one ListJobs, DescribeJob
    and (when sweeps are on) ListJobExecutionsForJob."""
    session = AioSession(profile=target.profile)
    boto_config = BotoConfig(
        region_name=target.region,
        connect_timeout=settings.request_timeout,
        read_timeout=settings.request_timeout,
        retries={"mode": "standard", "total_max_attempts": settings.max_attempts},
        user_agent_extra="aws-iot-jobs-exporter-probe",
    )
    account: str | None = None
    identity: str | None = None
    note = ""
    listed: int | None = None
    described: str | None = None
    swept = False
    queue: str | None = None
    step = "credentials"
    try:
        async with contextlib.AsyncExitStack() as stack:
            keys: dict[str, Any] = {}
            credentials = await session.get_credentials()
            if credentials is None:
                raise _Failed(
                    "credentials",
                    step,
                    "no credentials found (environment, shared files, container or instance role)",
                )
            if target.role_arn:
                step = "AssumeRole"
                sts = await stack.enter_async_context(
                    session.create_client(
                        "sts",
                        region_name=target.region,
                        endpoint_url=target.sts_endpoint_url,
                        config=boto_config,
                    )
                )
                extra = {"ExternalId": target.external_id} if target.external_id else {}
                assumed = await sts.assume_role(
                    RoleArn=target.role_arn, RoleSessionName=target.session_name, **extra
                )
                creds = assumed["Credentials"]
                keys = {
                    "aws_access_key_id": creds["AccessKeyId"],
                    "aws_secret_access_key": creds["SecretAccessKey"],
                    "aws_session_token": creds["SessionToken"],
                }
            step = "GetCallerIdentity"
            try:
                async with session.create_client(
                    "sts",
                    region_name=target.region,
                    endpoint_url=target.sts_endpoint_url,
                    config=boto_config,
                    **keys,
                ) as sts:
                    who = await sts.get_caller_identity()
                account, identity = who.get("Account"), who.get("Arn")
            except (ClientError, BotoCoreError, OSError, TimeoutError) as exc:
                failed = await _failure(exc, step, target, session)
                if failed.failure in ("credentials", "denied"):
                    raise failed from None
                note = f"identity unknown: GetCallerIdentity {failed.failure}: {failed.detail}"
            iot = await stack.enter_async_context(
                session.create_client(
                    "iot",
                    region_name=target.region,
                    endpoint_url=target.endpoint_url,
                    config=boto_config,
                    **keys,
                )
            )
            job_id = target.jobs.ids[0] if target.jobs.ids else None
            if target.jobs.discover is not None:
                step = "ListJobs"
                page = await iot.list_jobs(**target.jobs.discover.list_jobs_params(), maxResults=1)
                jobs = page.get("jobs") or []
                listed = len(jobs)
                if job_id is None and jobs:
                    job_id = jobs[0].get("jobId")
            if job_id:
                step = "DescribeJob"
                await iot.describe_job(jobId=job_id)
                described = job_id
                if settings.executions.requests_per_second > 0:
                    # What every execution sweep calls: a role allowed DescribeJob
                    # alone would see every sweep denied.
                    step = "ListJobExecutionsForJob"
                    await iot.list_job_executions_for_job(
                        jobId=job_id, status="IN_PROGRESS", maxResults=1
                    )
                    swept = True
            events = target.events
            if events is not None:
                # A call that consumes nothing: receiving would hide a message from the
                # running exporter for the visibility timeout.
                step = "GetQueueAttributes"
                sqs = await stack.enter_async_context(
                    session.create_client(
                        "sqs",
                        region_name=target.region,
                        endpoint_url=events.sqs_endpoint,
                        config=boto_config,
                        **keys,
                    )
                )
                try:
                    await sqs.get_queue_attributes(
                        QueueUrl=events.sqs_queue_url, AttributeNames=["QueueArn"]
                    )
                except Exception as exc:
                    failed = await _failure(exc, step, target, session)
                    raise _Failed(
                        failed.failure, step, f"queue {events.sqs_queue_url}: {failed.detail}"
                    ) from None
                queue = events.sqs_queue_url
    except Exception as exc:
        why = exc if isinstance(exc, _Failed) else await _failure(exc, step, target, session)
        return ProbeResult(
            target.name, target.region, account, identity, why.failure, why.step, why.detail
        )
    return ProbeResult(
        target.name,
        target.region,
        account,
        identity,
        listed=listed,
        described=described,
        swept=swept,
        queue=queue,
        note=note,
    )


async def probe(config: Config) -> list[ProbeResult]:
    """Every target at once, each bounded so that a hanging endpoint cannot stall the rest."""
    settings = config.collector
    deadline = settings.request_timeout * (settings.max_attempts + 1) * 4 + 30

    async def bounded(target: Target) -> ProbeResult:
        try:
            async with asyncio.timeout(deadline):
                return await probe_target(target, settings)
        except TimeoutError:
            return ProbeResult(
                target.name, target.region, failure="unreachable", step="probe",
                detail=f"no answer within {deadline:g} s",
            )  # fmt: skip

    async with asyncio.TaskGroup() as group:
        tasks = [group.create_task(bounded(t)) for t in config.targets]
    return [t.result() for t in tasks]
