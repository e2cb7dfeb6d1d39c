"""The integration tier: moto, the simulator, hostile endpoints, the exporter's own HTTP
server and process, over real HTTP and botocore."""

from __future__ import annotations

from pathlib import Path

import pytest

HERE = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # A hook of a conftest sees the whole session's items: mark only this folder's.
    for item in items:
        if HERE in item.path.parents:
            item.add_marker(pytest.mark.integration)
