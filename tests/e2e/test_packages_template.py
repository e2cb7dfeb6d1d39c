"""deploy/aws/package-versions.yaml: valid, and it allows every package call the exporter
makes, as botocore names them, and nothing that reads things or writes."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import botocore.session
import yaml

from exporter.packages import PACKAGE_OPERATIONS
from tests.support import ROOT

TEMPLATE = ROOT / "deploy" / "aws" / "package-versions.yaml"


def test_cfn_lint_passes() -> None:
    code = "import sys; from cfnlint.runner import main; sys.exit(main())"
    result = subprocess.run(
        [sys.executable, "-c", code, str(TEMPLATE)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_policy_allows_exactly_the_package_calls() -> None:
    data: dict[str, Any] = yaml.safe_load(TEMPLATE.read_text())
    policy = data["Resources"]["PackageVersionsPolicy"]["Properties"]["PolicyDocument"]
    allowed = {a for s in policy["Statement"] for a in s["Action"]}
    iot = botocore.session.get_session().get_service_model("iot")
    assert set(PACKAGE_OPERATIONS) <= set(iot.operation_names)
    assert allowed == {f"iot:{op}" for op in PACKAGE_OPERATIONS}
    docs = (ROOT / "docs" / "deployment.md").read_text()
    for action in allowed:
        assert f"`{action}`" in docs, action
    assert "deploy/aws/package-versions.yaml" in docs
