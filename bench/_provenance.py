"""What produced a results file: the git commit, Python, and the libraries' versions.

Every file under ``bench/results/`` carries this under ``"provenance"`` so that
a figure can be traced to the code and the interpreter that measured it.
"""

from __future__ import annotations

import os
import platform
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

LIBRARIES = ("trio-wsmgr", "trio", "trio-websocket", "wsproto", "websockets", "coredis", "attrs")


def _git(*argv: str) -> str:
    try:
        done = subprocess.run(
            ["git", *argv],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return ""
    return done.stdout.strip()


def _version(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def provenance() -> dict[str, Any]:
    """The commit (and whether the work tree had uncommitted changes), Python, libraries."""
    return {
        "git_commit": _git("rev-parse", "HEAD") or "unknown",
        "git_dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
        "python": platform.python_version(),
        "python_build": " ".join(
            [platform.python_implementation(), *platform.python_build(), platform.python_compiler()]
        ),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "versions": {name: v for name in LIBRARIES if (v := _version(name)) is not None},
    }
