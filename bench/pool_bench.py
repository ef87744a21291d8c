"""WebSocketPool: acquire/release cycles per second for an idle hit, with and without validation.

An idle hit is the pool's fast path: a connection is idle, ``acquire()`` hands it out and
``release()`` puts it back, with no connect. With ``validate_on_checkout=True`` every acquire
also pings the connection and waits for the pong, so the difference between the two is one
WebSocket ping round trip through an in-process trio-websocket server on 127.0.0.1 (both ends
in the same Trio run, so the loopback hop and both event loops' work are all in the figure).

    python bench/pool_bench.py [--seconds 1.0] [--rounds 5]

Prints a table and writes ``bench/results/pool.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import trio
import trio_websocket
from _provenance import provenance

from trio_wsmgr import WebSocketPool

RESULTS = Path(__file__).parent / "results" / "pool.json"


async def backend(request: trio_websocket.WebSocketRequest) -> None:
    ws = await request.accept()
    try:
        while True:
            await ws.get_message()
    except trio_websocket.ConnectionClosed:
        pass


async def explicit_cycles(pool: WebSocketPool, seconds: float) -> float:
    """``conn = await pool.acquire()`` / ``await pool.release(conn)``, per second."""
    count, start = 0, time.perf_counter()
    deadline = start + seconds
    while True:
        for _ in range(200):
            conn = await pool.acquire()
            await pool.release(conn)
        count += 200
        now = time.perf_counter()
        if now >= deadline:
            return count / (now - start)


async def async_with_cycles(pool: WebSocketPool, seconds: float) -> float:
    """``async with pool.acquire() as conn: pass``, per second."""
    count, start = 0, time.perf_counter()
    deadline = start + seconds
    while True:
        for _ in range(200):
            async with pool.acquire():
                pass
        count += 200
        now = time.perf_counter()
        if now >= deadline:
            return count / (now - start)


async def raw_pings(url: str, seconds: float) -> float:
    """Reference: bare trio-websocket ``await conn.ping()`` round trips per second, no pool."""
    async with trio_websocket.open_websocket_url(url) as conn:
        count, start = 0, time.perf_counter()
        deadline = start + seconds
        while True:
            for _ in range(200):
                await conn.ping()
            count += 200
            now = time.perf_counter()
            if now >= deadline:
                return count / (now - start)


CASES = {
    "idle_hit": (False, explicit_cycles),
    "idle_hit_async_with": (False, async_with_cycles),
    "idle_hit_validate_on_checkout": (True, explicit_cycles),
}


async def measure(seconds: float, rounds: int) -> dict[str, list[float]]:
    runs: dict[str, list[float]] = {name: [] for name in [*CASES, "reference_raw_ping"]}
    async with trio.open_nursery() as nursery:
        server = await nursery.start(trio_websocket.serve_websocket, backend, "127.0.0.1", 0, None)
        url = f"ws://127.0.0.1:{server.port}/bench"
        for _ in range(rounds):  # interleave the cases so drift hits them all alike
            for name, (validate, cycles) in CASES.items():
                pool = WebSocketPool(
                    url, max_connections=1, min_connections=1, validate_on_checkout=validate
                )
                async with pool:
                    await cycles(pool, seconds / 10)  # warm up
                    runs[name].append(await cycles(pool, seconds))
                    assert pool.statistics().opened == 1  # every cycle was an idle hit
            await raw_pings(url, seconds / 10)
            runs["reference_raw_ping"].append(await raw_pings(url, seconds))
        nursery.cancel_scope.cancel()
    return runs


def summarize(runs: dict[str, list[float]], seconds: float) -> dict[str, Any]:
    results = {
        name: {
            "cycles_per_second_median": round(statistics.median(values)),
            "cycles_per_second_best": round(max(values)),
            "microseconds_per_cycle_median": round(1e6 / statistics.median(values), 2),
            "rounds": [round(v) for v in values],
        }
        for name, values in runs.items()
    }
    plain = statistics.median(runs["idle_hit"])
    validated = statistics.median(runs["idle_hit_validate_on_checkout"])
    ping = statistics.median(runs["reference_raw_ping"])
    return {
        "benchmark": "WebSocketPool acquire/release cycles per second, idle hit",
        "seconds_per_round": seconds,
        "environment": {
            "python": sys.version.split()[0],
            "implementation": platform.python_implementation(),
            "platform": platform.platform(),
            "machine": platform.machine(),
            "cpu_count": os.cpu_count(),
            "trio": version("trio"),
            "trio-websocket": version("trio-websocket"),
            "wsproto": version("wsproto"),
        },
        "provenance": provenance(),
        "results": results,
        "validate_on_checkout": {
            "overhead_microseconds_per_acquire": round(1e6 / validated - 1e6 / plain, 2),
            "of_which_raw_ping_round_trip_microseconds": round(1e6 / ping, 2),
            "slowdown_factor": round(plain / validated, 1),
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.0, help="measured time per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    report = summarize(trio.run(measure, args.seconds, args.rounds), args.seconds)
    print(f"{'case':34} {'cycles/s (median)':>18} {'best':>10} {'us/cycle':>9}")
    for name, row in report["results"].items():
        print(
            f"{name:34} {row['cycles_per_second_median']:>18,} "
            f"{row['cycles_per_second_best']:>10,} {row['microseconds_per_cycle_median']:>9}"
        )
    overhead = report["validate_on_checkout"]
    print(
        f"validate_on_checkout costs {overhead['overhead_microseconds_per_acquire']} us"
        f" per acquire ({overhead['slowdown_factor']}x slower), of which a bare ping round"
        f" trip is {overhead['of_which_raw_ping_round_trip_microseconds']} us"
    )
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
