"""The short soak run: connections held, every message delivered, nothing leaked.

The full run (5,000 connections for 10 minutes) is ``python bench/soak.py``; its
report is in docs/topics/soak.rst. This is the same program, smaller.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parent.parent


def test_short_soak_delivers_everything_and_leaks_nothing(tmp_path: Path) -> None:
    output = tmp_path / "soak.json"
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "soak.py"), "--quick", "--output", str(output)],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert output.exists(), result.stderr[-2000:]
    report = json.loads(output.read_text())
    assert report["clients_with_every_message"] == report["connections"], report
    assert report["held_min"] == report["connections"]
    assert report["out_of_order"] == 0
    assert report["client_errors"] == 0
    assert report["after_disconnect"]["fds"] == report["baseline"]["fds"]
    assert report["after_disconnect"]["tasks"] == report["baseline"]["tasks"]
    judged = {key: report.get(key) for key in ("blocks_growth_second_half", "after_connect")}
    assert report["ok"], (judged, report)
    assert result.returncode == 0
