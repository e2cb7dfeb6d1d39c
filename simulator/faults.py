"""Simulator fault injection: quotas as token buckets, ratio-based faults, body corruption."""

from __future__ import annotations

import random
from typing import Any

from simulator.scenario import (
    FAULT_RULES,
    OPERATIONS,
    FaultRule,
    Faults,
    Latency,
    Quotas,
)

OUTCOMES = (
    "ok",
    "throttled",
    "unavailable",
    "malformed",
    "truncated",
    "reset",
    "denied",
    "not_found",
    "invalid",
    "bad_fields",
    "not_ready",
    "invalid_query",
    "invalid_aggregation",
)


class TokenBucket:
    """AWS-style request quota: `rate` tokens per second, bursts up to one second's worth."""

    def __init__(self, rate: float, now: float) -> None:
        self.rate = rate
        self.capacity = max(1.0, rate)
        self.tokens = self.capacity
        self.updated = now

    def take(self, now: float) -> bool:
        self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


class Stats:
    """Per-operation request counts by outcome, plus how many requests were delayed."""

    def __init__(self) -> None:
        self.requests: dict[str, dict[str, int]] = {
            op: {"total": 0, "delayed": 0, **dict.fromkeys(OUTCOMES, 0)} for op in OPERATIONS
        }

    def count(self, operation: str, key: str) -> None:
        self.requests[operation][key] += 1


class FaultPicker:
    """Decides, with its own seeded generator, which requests a fault hits."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(f"{seed}/faults")

    def hits(self, rule: FaultRule | Latency, operation: str, job_id: str | None) -> bool:
        if rule.operations and operation not in rule.operations:
            return False
        if rule.job_ids and job_id not in rule.job_ids:
            return False
        if isinstance(rule, Latency):
            return rule.fixed_ms > 0 or rule.jitter_ms > 0
        return rule.ratio > 0 and self.rng.random() < rule.ratio

    def delay_seconds(self, latency: Latency) -> float:
        return (latency.fixed_ms + self.rng.uniform(0.0, latency.jitter_ms)) / 1000.0

    # The three DescribeJob body corruptions a tolerant reader has to survive.

    def drop_field(self, body: dict[str, Any]) -> str:
        """Remove a member: a shape-required one when the job has one, else a key field."""
        job = body["job"]
        required: list[tuple[dict[str, Any], str, str]] = []
        for i, c in enumerate(job.get("abortConfig", {}).get("criteriaList", [])):
            required.append(
                (c, "thresholdPercentage", f"job.abortConfig.criteriaList[{i}].thresholdPercentage")
            )
        for i, c in enumerate(job.get("jobExecutionsRetryConfig", {}).get("criteriaList", [])):
            required.append(
                (
                    c,
                    "numberOfRetries",
                    f"job.jobExecutionsRetryConfig.criteriaList[{i}].numberOfRetries",
                )
            )
        exp = job.get("jobExecutionsRolloutConfig", {}).get("exponentialRate")
        if exp is not None:
            required.append(
                (
                    exp,
                    "baseRatePerMinute",
                    "job.jobExecutionsRolloutConfig.exponentialRate.baseRatePerMinute",
                )
            )
        for i, w in enumerate(job.get("schedulingConfig", {}).get("maintenanceWindows", [])):
            required.append(
                (
                    w,
                    "durationInMinutes",
                    f"job.schedulingConfig.maintenanceWindows[{i}].durationInMinutes",
                )
            )
        if not required:
            required = [
                (job, key, f"job.{key}")
                for key in ("status", "jobProcessDetails", "createdAt", "targetSelection")
                if key in job
            ]
        parent, key, path = required[self.rng.randrange(len(required))]
        del parent[key]
        return path

    def wrong_type(self, body: dict[str, Any]) -> str:
        job = body["job"]
        choices: list[tuple[dict[str, Any], str, Any, str]] = [
            (job, "createdAt", "yesterday", "job.createdAt"),
            (job, "isConcurrent", "maybe", "job.isConcurrent"),
            (job, "targets", job.get("targets", [""])[0], "job.targets"),
        ]
        details = job.get("jobProcessDetails")
        if details is not None:
            choices.append(
                (
                    details,
                    "numberOfSucceededThings",
                    "many",
                    "job.jobProcessDetails.numberOfSucceededThings",
                )
            )
        parent, key, value, path = choices[self.rng.randrange(len(choices))]
        parent[key] = value
        return path

    def unknown_enum(self, body: dict[str, Any]) -> str:
        job = body["job"]
        choices: list[tuple[dict[str, Any], str, str, str]] = [
            (job, "status", "PAUSED", "job.status"),
            (job, "targetSelection", "ADAPTIVE", "job.targetSelection"),
        ]
        for i, c in enumerate(job.get("abortConfig", {}).get("criteriaList", [])):
            choices.append(
                (c, "failureType", "THROTTLED", f"job.abortConfig.criteriaList[{i}].failureType")
            )
        parent, key, value, path = choices[self.rng.randrange(len(choices))]
        parent[key] = value
        return path


# Versions a reader must survive: every control byte, the exposition format's and
# PromQL's special characters, a lone surrogate, right-to-left marks, 5,000 characters.
HOSTILE_VERSIONS = (
    *(f"v{chr(c)}x" for c in (*range(0x00, 0x20), 0x7F)),
    'q"uote',
    "back\\slash",
    "new\nline",
    "{brace}",
    "a=b,c",
    "\u2028sep",
    "\ud800lone",
    "\u202eevil",
    "",
    " ",
    "v" * 5000,
)
# Counts botocore parses (it int()s an integer member): negative, beyond 64 bits, a float.
HOSTILE_COUNTS: tuple[Any, ...] = (-1, 2**63, 3.5, 0)
# Counts it cannot parse: int() of these raises ValueError (or OverflowError) in botocore.
UNPARSEABLE_COUNTS: tuple[Any, ...] = (float("nan"), float("inf"), "many")


def hostile_index(rng: random.Random, operation: str, body: dict[str, Any]) -> None:
    """Make an index answer hostile in place (JSON allows NaN as botocore parses it)."""
    if operation == "GetBucketsAggregation":
        buckets = list(body.get("buckets", []))
        for i, version in enumerate(HOSTILE_VERSIONS):
            buckets.append({"keyValue": version, "count": i + 1})
        for count in HOSTILE_COUNTS:
            buckets.append({"keyValue": f"count-{count!s}", "count": count})
        buckets += [{"keyValue": f"flood-{i:05d}", "count": 1} for i in range(20_000)]
        rng.shuffle(buckets)
        body["buckets"] = buckets
        body["totalCount"] = -7
    elif operation == "GetStatistics":
        count = rng.choice(HOSTILE_COUNTS + UNPARSEABLE_COUNTS)
        body["statistics"] = {"count": count, "average": float("nan")}
    else:
        body["cardinality"] = rng.choice(HOSTILE_COUNTS + UNPARSEABLE_COUNTS)


def faults_json(faults: Faults) -> dict[str, Any]:
    def scope(rule: FaultRule | Latency) -> dict[str, Any]:
        return {"operations": sorted(rule.operations), "job_ids": sorted(rule.job_ids)}

    out: dict[str, Any] = {
        "latency": {
            "fixed_ms": faults.latency.fixed_ms,
            "jitter_ms": faults.latency.jitter_ms,
            **scope(faults.latency),
        },
        "unavailable_status": faults.unavailable_status,
    }
    for name in FAULT_RULES:
        rule: FaultRule = getattr(faults, name)
        out[name] = {"ratio": rule.ratio, **scope(rule)}
    return out


def quotas_json(quotas: Quotas) -> dict[str, Any]:
    return {
        **dict(quotas.rates),
        "enabled": quotas.enabled,
        "throttle_status": quotas.throttle_status,
    }
