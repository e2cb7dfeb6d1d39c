"""deploy/aws/job-events.yaml, the queue and rules of docs/events.md: valid, and what the
exporter needs: both event topics, raw JSON bodies, and the SQS calls the consumer makes."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import botocore.session
import yaml

from tests.support import ROOT

TEMPLATE = ROOT / "deploy" / "aws" / "job-events.yaml"
DOC = (ROOT / "docs" / "events.md").read_text()


def template() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(TEMPLATE.read_text())
    return data


def test_cfn_lint_passes() -> None:
    # cfn-lint's own command line (it has no `python -m` entry point).
    code = "import sys; from cfnlint.runner import main; sys.exit(main())"
    result = subprocess.run(
        [sys.executable, "-c", code, str(TEMPLATE)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_rules_send_both_event_topics_as_raw_json() -> None:
    rules = [r for r in template()["Resources"].values() if r["Type"] == "AWS::IoT::TopicRule"]
    sql = {r["Properties"]["TopicRulePayload"]["Sql"] for r in rules}
    assert sql == {
        "SELECT * FROM '$aws/events/job/#'",
        "SELECT * FROM '$aws/events/jobExecution/#'",
    }
    for rule in rules:
        (action,) = rule["Properties"]["TopicRulePayload"]["Actions"]
        assert action["Sqs"]["UseBase64"] is False


def test_policy_allows_every_call_the_exporter_makes() -> None:
    policy = template()["Resources"]["ExporterPolicy"]["Properties"]["PolicyDocument"]
    allowed = {a for s in policy["Statement"] for a in s["Action"]}
    # The operations the source and the consumer call, as botocore names them.
    sqs = botocore.session.get_session().get_service_model("sqs")
    for operation in ("ReceiveMessage", "DeleteMessageBatch"):
        assert operation in sqs.operation_names
    # DeleteMessageBatch is authorised as DeleteMessage (SQS's IAM reference).
    assert {"sqs:ReceiveMessage", "sqs:DeleteMessage", "iot:ListJobs", "iot:DescribeJob"} <= allowed


def test_docs_show_the_template_and_the_switch_that_turns_events_on() -> None:
    assert "deploy/aws/job-events.yaml" in DOC
    assert "update-event-configurations" in DOC
    assert '"JOB_EXECUTION":{"Enabled":true}' in DOC
