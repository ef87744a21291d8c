"""Shared fixtures.

Tests that need an outside program (redis-server, Chromium) call :func:`require`:
it skips with a loud reason where the program is missing, and fails instead when
``TRIO_WSMGR_REQUIRE_EXTERNAL=1`` is set (CI sets it), so CI never passes by skipping.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

REQUIRE_EXTERNAL = os.environ.get("TRIO_WSMGR_REQUIRE_EXTERNAL") == "1"


def require(condition: object, reason: str) -> None:
    """Skip (or, under CI, fail) the calling test unless ``condition`` holds."""
    if condition:
        return
    if REQUIRE_EXTERNAL:
        pytest.fail(f"REQUIRED BUT MISSING (TRIO_WSMGR_REQUIRE_EXTERNAL=1): {reason}")
    pytest.skip(f"SKIPPED, MISSING DEPENDENCY: {reason}")


@pytest.fixture(scope="session", name="redis_cluster")
def redis_cluster_fixture() -> Iterator[Any]:
    """A real Redis Cluster (3 masters, 3 replicas) shared by the session's tests.

    Tests that use it must leave it as they found it (no kills, no resharding); those
    use ``fresh_redis_cluster`` (tests/redis_cluster.py), a cluster of their own.
    """
    from redis_cluster import running_cluster

    with running_cluster() as cluster:
        yield cluster
