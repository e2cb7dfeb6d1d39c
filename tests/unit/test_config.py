"""Configuration: valid files load; every kind of bad input names file, path and expectation."""

from __future__ import annotations

import json
import re

import pytest

from exporter.config import ConfigError, Metrics, load_config, parse_config
from exporter.reader import parse_duration
from tests.support import ROOT

BASE_TARGET = """
  - name: a
    region: us-east-1
    jobs: {ids: [job-1]}
"""


def test_example_config_documents_every_key_and_loads() -> None:
    config = load_config(ROOT / "config" / "example.yaml")
    prod = config.targets[0]
    assert prod.name == "production-eu"
    assert prod.labels == (("environment", "production"), ("team", "firmware"))
    assert prod.jobs.ids == ("firmware-2026-11-rollout",)
    assert prod.jobs.discover is not None
    assert prod.jobs.discover.matches("firmware-x")
    assert not prod.jobs.discover.matches("firmware-x-test")
    assert not prod.jobs.discover.matches("config-x")
    assert config.collector.discovery_interval == 300
    assert config.collector.terminal_job_retention == 86400
    # Every key the loader accepts appears in the example.
    text = (ROOT / "config" / "example.yaml").read_text()
    for key in (
        "interval", "discovery_interval", "request_timeout", "concurrency",
        "terminal_job_retention", "max_attempts", "requests_per_second", "name", "region",
        "role_arn", "external_id", "session_name", "profile", "endpoint_url",
        "sts_endpoint_url", "labels", "ids", "discover", "status", "target_selection",
        "thing_group_name", "thing_group_id", "namespace_id", "include", "exclude",
        "executions", "stuck_in_progress_after", "stuck_queued_after", "max_executions_per_job",
        "stuck_list_size", "max_tracked_executions", "max_clock_skew",
    ):  # fmt: skip
        assert f"{key}:" in text, key


def test_defaults() -> None:
    config = parse_config("targets:" + BASE_TARGET)
    c = config.collector
    assert (c.interval, c.discovery_interval, c.terminal_job_retention) == (60, 300, 86400)
    assert config.targets[0].jobs.discover is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "config.yaml: targets: is required"),
        ("targets: []", "config.yaml: targets: expected a non-empty list of targets"),
        ("targetz: []", "config.yaml: targetz: unknown key; expected one of targets, collector"),
        (
            "targets:" + BASE_TARGET + "  - name: b\n    region: us-east-1\n"
            "    jobs: {discover: {status: RUNNING}}\n",
            "config.yaml: targets[1].jobs.discover.status: 'RUNNING' is not one of IN_PROGRESS, "
            "CANCELED, COMPLETED, DELETION_IN_PROGRESS, SCHEDULED",
        ),
        (
            "collector: {interval: 10 minutes}\ntargets:" + BASE_TARGET,
            "config.yaml: collector.interval: expected a duration like 30s, 5m or 24h, "
            "got '10 minutes'",
        ),
        (
            "collector: {interval: 0s}\ntargets:" + BASE_TARGET,
            "config.yaml: collector.interval: expected a duration",
        ),
        (
            "collector: {concurrency: many}\ntargets:" + BASE_TARGET,
            "config.yaml: collector.concurrency: expected an integer, got 'many'",
        ),
        (
            "collector: {executions: {requests_per_second: -1}}\ntargets:" + BASE_TARGET,
            "config.yaml: collector.executions.requests_per_second:",
        ),
        (
            "collector: {executions: {stuck_in_progress_after: soon}}\ntargets:" + BASE_TARGET,
            "config.yaml: collector.executions.stuck_in_progress_after: expected a duration",
        ),
        (
            "collector: {executions: {stuck_list_size: 1e9}}\ntargets:" + BASE_TARGET,
            "config.yaml: collector.executions.stuck_list_size: expected an integer",
        ),
        (
            # 50 jobs of 1,000 rows made a status page of tens of MB, rendered per request.
            "collector: {executions: {stuck_list_size: 1000}}\ntargets:" + BASE_TARGET,
            "config.yaml: collector.executions.stuck_list_size: expected an integer",
        ),
        (
            "collector: {executions: {max_clock_skew: often}}\ntargets:" + BASE_TARGET,
            "config.yaml: collector.executions.max_clock_skew: expected a duration",
        ),
        (
            "collector: {executions: {stuck_after: 1h}}\ntargets:" + BASE_TARGET,
            "config.yaml: collector.executions.stuck_after: unknown key",
        ),
        (
            "collector: {executions: [1, 2]}\ntargets:" + BASE_TARGET,
            "config.yaml: collector.executions: expected a mapping",
        ),
        (
            "targets:\n  - name: a\n    region: us-east-1\n    jobs: {discover: {include: ['(']}}",
            "config.yaml: targets[0].jobs.discover.include[0]: '(' is not a valid regular "
            "expression",
        ),
        (
            "targets:\n  - name: a\n    region: Ireland\n    jobs: {ids: [x]}",
            "config.yaml: targets[0].region: 'Ireland' is not an AWS region like us-east-1",
        ),
        (
            "targets:\n  - name: a\n    region: us-east-1\n    jobs: {}",
            "config.yaml: targets[0].jobs: expected ids, discover, or both",
        ),
        (
            "targets:\n  - name: a\n    region: us-east-1\n    jobs: {ids: [x]}\n    colour: red",
            "config.yaml: targets[0].colour: unknown key; expected one of name, region",
        ),
        (
            "targets:\n  - region: us-east-1\n    jobs: {ids: [x]}",
            "config.yaml: targets[0].name: is required",
        ),
        (
            "targets:\n  - name: a\n    region: us-east-1\n    jobs: {ids: [x, x]}",
            "config.yaml: targets[0].jobs.ids[1]: 'x' is listed twice",
        ),
        (
            "targets:\n  - name: a\n    region: us-east-1\n    jobs: {ids: ['bad id!']}",
            "config.yaml: targets[0].jobs.ids[0]: 'bad id!' is not a job id",
        ),
        (
            "targets:" + BASE_TARGET + BASE_TARGET,
            "config.yaml: targets[1].name: 'a' is used by another target",
        ),
        (
            "targets:\n  - name: a\n    region: us-east-1\n    jobs: {ids: [x]}\n"
            "    labels: {job: fleet}",
            "config.yaml: targets[0].labels.job: is a label name the exporter sets itself",
        ),
        (
            "targets:\n  - name: a\n    region: us-east-1\n    jobs: {ids: [x]}\n"
            "    labels: {'bad-name': x}",
            "config.yaml: targets[0].labels.bad-name: is not a valid Prometheus label name",
        ),
        (
            "targets:\n  - name: a\n    region: us-east-1\n    jobs: {ids: [x]}\n"
            "    role_arn: arn:aws:iam::1:role/r",
            "config.yaml: targets[0].role_arn: 'arn:aws:iam::1:role/r' is not an IAM role ARN",
        ),
        (
            "targets:\n  - name: a\n    region: us-east-1\n    jobs: {ids: [x]}\n"
            "    endpoint_url: localhost:4566",
            "config.yaml: targets[0].endpoint_url: 'localhost:4566' is not an http(s) URL",
        ),
        (
            "targets: [\n  {name: a",
            "config.yaml: line 2, column 11: invalid YAML",
        ),
        ("- just\n- a list", "config.yaml: expected a mapping, got a list"),
    ],
)
def test_bad_config_is_rejected_with_file_path_and_expectation(text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "config.yaml")
    assert str(info.value).startswith(expected), str(info.value)


def test_external_id_never_appears_in_errors_or_repr() -> None:
    secret = "s3cr3t-external-id"
    text = (
        "targets:\n  - name: a\n    region: us-east-1\n    jobs: {ids: [x]}\n"
        f"    external_id: {secret}\n"
    )
    with pytest.raises(ConfigError) as info:
        parse_config(text)
    assert "needs role_arn" in str(info.value)
    assert secret not in str(info.value)
    ok = parse_config(text + "    role_arn: arn:aws:iam::123456789012:role/r\n")
    assert ok.targets[0].external_id == secret
    assert secret not in repr(ok)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30), ("5m", 300), ("24h", 86400), ("1h30m", 5400), ("500ms", 0.5), ("2d", 172800)],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "5", "m", "5 m", "-5s", "5s5", "0s", "1y", 5, None])
def test_bad_durations(text: object) -> None:
    assert parse_duration(text) is None


# --- metrics.allow / metrics.deny ----------------------------------------------------------


def test_metric_selection_defaults_to_every_family_and_reads_lists() -> None:
    assert parse_config("targets:" + BASE_TARGET).metrics == Metrics()
    config = parse_config(
        "metrics: {allow: [aws_iot_job_status, aws_iot_job_executions]}\ntargets:" + BASE_TARGET
    )
    assert config.metrics == Metrics(allow=("aws_iot_job_status", "aws_iot_job_executions"))
    # One name as a plain string, as include/exclude take one regex; an empty list is unset.
    config = parse_config(
        "metrics: {deny: aws_iot_job_target_info, allow: []}\ntargets:" + BASE_TARGET
    )
    assert config.metrics == Metrics(deny=("aws_iot_job_target_info",))


def test_example_config_documents_the_metric_selection() -> None:
    text = (ROOT / "config" / "example.yaml").read_text()
    assert "\nmetrics:\n" in text
    assert "  allow:" in text and "  deny:" in text
    assert load_config(ROOT / "config" / "example.yaml").metrics == Metrics()
    # The commented examples are valid selections, so uncommenting one works.
    examples = re.findall(r"^  # ((?:allow|deny): \[.*\])$", text, re.MULTILINE)
    assert len(examples) == 2
    for line in examples:
        assert parse_config(f"metrics: {{{line}}}\ntargets:" + BASE_TARGET).metrics != Metrics()


@pytest.mark.parametrize(
    ("section", "expected"),
    [
        (
            "{deny: [aws_iot_job_target_infos]}",
            "config.yaml: metrics.deny[0]: 'aws_iot_job_target_infos' is not a job metric "
            "family; did you mean 'aws_iot_job_target_info'? expected one of aws_iot_job_info, "
            "aws_iot_job_target_info,",
        ),
        (
            "{allow: [aws_iot_job_status, bogus]}",
            "config.yaml: metrics.allow[1]: 'bogus' is not a job metric family; expected one of "
            "aws_iot_job_info,",
        ),
        (
            "{allow: [aws_iot_job_status], deny: [aws_iot_job_info]}",
            "config.yaml: metrics.deny: set either allow or deny, not both",
        ),
        (
            "{deny: [aws_iot_jobs_exporter_api_requests_total]}",
            "config.yaml: metrics.deny[0]: 'aws_iot_jobs_exporter_api_requests_total' is one of "
            "the exporter's own metrics, which are always exported",
        ),
        (
            "{deny: [process_open_fds]}",
            "config.yaml: metrics.deny[0]: 'process_open_fds' is one of the exporter's own",
        ),
        (
            "{deny: [aws_iot_job_info, aws_iot_job_info]}",
            "config.yaml: metrics.deny[1]: 'aws_iot_job_info' is listed twice",
        ),
        ("{deny: 5}", "config.yaml: metrics.deny: expected a list of metric family names, got an"),
        ("{deny: {a: b}}", "config.yaml: metrics.deny: expected a list of metric family names"),
        (
            "{deny: [null]}",
            "config.yaml: metrics.deny[0]: expected a non-empty string, got nothing",
        ),
        ("{deny: ['']}", "config.yaml: metrics.deny[0]: expected a non-empty string"),
        ("{deny: [[aws_iot_job_info]]}", "config.yaml: metrics.deny[0]: expected a non-empty"),
        ("{drop: [aws_iot_job_info]}", "config.yaml: metrics.drop: unknown key; expected one of"),
        ("[aws_iot_job_info]", "config.yaml: metrics: expected a mapping, got a list"),
        # Case matters in Prometheus names.
        (
            "{deny: [AWS_IOT_JOB_INFO]}",
            "config.yaml: metrics.deny[0]: 'AWS_IOT_JOB_INFO' is not a job metric family; did "
            "you mean 'aws_iot_job_info'?",
        ),
    ],
)
def test_bad_metric_selection_is_rejected(section: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(f"metrics: {section}\ntargets:" + BASE_TARGET, "config.yaml")
    assert str(info.value).startswith(expected), str(info.value)


def test_metric_name_with_the_worst_bytes_is_shown_escaped_and_cut() -> None:
    name = "aws_iot_job_info\n\x00\x1b[31m\u202e\r" + "x" * 100_000
    with pytest.raises(ConfigError) as info:
        parse_config(
            json.dumps(
                {
                    "metrics": {"deny": [name]},
                    "targets": [{"name": "a", "region": "us-east-1", "jobs": {"ids": ["j"]}}],
                }
            ),
            "config.yaml",
        )
    message = str(info.value)
    assert message.startswith(r"config.yaml: metrics.deny[0]: 'aws_iot_job_info\n\x00\x1b[31m")
    assert not any(c in message for c in "\n\r\x00\x1b\u202e")
    assert len(message) < 3000
