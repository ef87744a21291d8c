"""Shared fixtures.

Tests that need an outside program (redis-server, Chromium) call :func:`require`:
it skips with a loud reason where the program is missing, and fails instead when
``TRIO_WSMGR_REQUIRE_EXTERNAL=1`` is set (CI sets it), so CI never passes by skipping.
"""

from __future__ import annotations

import os

import pytest

REQUIRE_EXTERNAL = os.environ.get("TRIO_WSMGR_REQUIRE_EXTERNAL") == "1"


def require(condition: object, reason: str) -> None:
    """Skip (or, under CI, fail) the calling test unless ``condition`` holds."""
    if condition:
        return
    if REQUIRE_EXTERNAL:
        pytest.fail(f"REQUIRED BUT MISSING (TRIO_WSMGR_REQUIRE_EXTERNAL=1): {reason}")
    pytest.skip(f"SKIPPED, MISSING DEPENDENCY: {reason}")
