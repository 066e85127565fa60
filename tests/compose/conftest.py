"""The compose stack test runs only when asked: it needs root, a Docker engine and CI's
images (``.ci/compose/run.sh`` sets ``SWCI_COMPOSE_STACK=1`` and runs it after ``make test``).
``make test`` and a plain ``pytest`` do not collect it, so they still need no root and no
Docker; once asked, a missing engine or image is a failure, never a skip."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

HERE = Path(__file__).parent


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """Leave this folder's tests out unless ``SWCI_COMPOSE_STACK=1``."""
    if collection_path.parent == HERE and os.environ.get("SWCI_COMPOSE_STACK") != "1":
        return True
    return None


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    """Note a failed test on the session, so the stack's teardown shows the services' logs."""
    report = yield
    if report.failed:
        item.session.stash[FAILED] = True
    return report


FAILED = pytest.StashKey[bool]()
