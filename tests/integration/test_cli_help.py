"""What `check-config --help` says the probe does is what docs/operations.md lists."""

from __future__ import annotations

import re

import pytest

from exporter.cli import main
from tests.support import ROOT


def probe_steps() -> list[str]:
    """The AWS calls named in the numbered steps of docs/operations.md's probe section."""
    text = (ROOT / "docs" / "operations.md").read_text()
    start = text.index("## Pre-flight probe")
    steps = re.findall(r"^\d+\. (.*(?:\n   .*)*)", text[start : text.index("```", start)], re.M)
    assert len(steps) >= 5, "operations.md: the probe's steps changed shape"
    calls = re.findall(r"`([A-Z][A-Za-z]+)`", " ".join(steps))
    return list(dict.fromkeys(calls))


def test_check_config_help_names_every_call_of_the_probe(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["check-config", "--help"])
    assert exited.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    steps = probe_steps()
    assert {"GetCallerIdentity", "ListJobs", "DescribeJob", "GetQueueAttributes"} <= set(steps)
    missing = [call for call in steps if call not in text]
    assert missing == [], f"check-config --help does not name {missing}"
