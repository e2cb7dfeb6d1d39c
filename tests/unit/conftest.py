"""The unit tier: no subprocess and no socket. Pure functions, the scheduler on a fake
clock, the budget; seconds in all."""

from __future__ import annotations

from pathlib import Path

import pytest

HERE = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # A hook of a conftest sees the whole session's items: mark only this folder's.
    for item in items:
        if HERE in item.path.parents:
            item.add_marker(pytest.mark.unit)


class _NotInTheUnitTier(AssertionError):
    pass


@pytest.fixture(autouse=True)
def _no_network_no_processes(monkeypatch: pytest.MonkeyPatch) -> None:
    """The tier's promise, kept: a unit test that connects, listens or spawns fails."""
    import socket
    import subprocess

    def refuse(*args: object, **kwargs: object) -> None:
        raise _NotInTheUnitTier("a unit test may not open a connection or start a process")

    for name in ("connect", "connect_ex", "bind", "listen"):
        monkeypatch.setattr(socket.socket, name, refuse)
    monkeypatch.setattr(subprocess.Popen, "__init__", refuse)
