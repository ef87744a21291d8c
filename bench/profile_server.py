"""Where an idle connection's memory and a handshake's time go, in the trio_wsmgr server.

    python bench/profile_server.py [--connections 2000] [--handshakes 4000]
        [--fanout-clients 1000] [--fanout-seconds 4] [--only memory,handshakes,fanout]

Runs ``manager.serve`` (library defaults, an idle handler) in this process and the
raw load client (``loadclient.py``) in another, then writes:

``bench/results/profile-memory.txt``
    ``tracemalloc`` of the server: bytes per idle connection, in all and by the
    source line that allocated them (the top lines), after a full collection.
``bench/results/profile-handshakes.txt``
    ``cProfile`` of the server during ``--handshakes`` opening handshakes (100 in
    flight): the functions with the most own time, and the most cumulative time;
    before it, a run without the profiler that times every garbage collection,
    to give the collector's share of the server's CPU per handshake.
``bench/results/profile-fanout.txt``
    ``cProfile`` of the server while it broadcasts 64-byte messages flat out
    for ``--fanout-seconds`` to ``--fanout-clients`` sockets (as ``run.py``'s
    fan-out does): own time and cumulative time.

All start with the commit, Python and library versions that produced them.
"""

from __future__ import annotations

import argparse
import collections
import cProfile
import gc
import io
import json
import pstats
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import trio
from _harness import BENCH, Proc
from _provenance import provenance
from servers._common import payload

from trio_wsmgr import ManagedSocket, WebSocketManager

RESULTS = BENCH / "results"


async def idle(sock: ManagedSocket) -> None:
    async for _ in sock:
        pass


def _load(port: int, clients: int, mode: str, *extra: str) -> Proc:
    argv = [str(BENCH / "loadclient.py"), "--port", str(port), "--clients", str(clients)]
    return Proc([*argv, "--mode", mode, *extra])


def _header(title: str, source: dict[str, object]) -> str:
    return f"{title}\nprovenance: {json.dumps(source)}\n\n"


async def memory(port: int, manager: WebSocketManager, connections: int, compression: bool) -> str:
    gc.collect()
    tracemalloc.start(1)
    before = tracemalloc.take_snapshot()
    extra = ["--compression"] if compression else []
    client = _load(port, connections, "idle", *extra)
    try:
        connected = await trio.to_thread.run_sync(client.read, 300)
        await trio.sleep(1.0)
        gc.collect()
        after = tracemalloc.take_snapshot()
        opened = manager.get_active_connections()
    finally:
        await trio.to_thread.run_sync(client.stop)
    tracemalloc.stop()
    diff = after.compare_to(before, "lineno")
    total = sum(stat.size_diff for stat in diff)
    lines = [
        f"compression {'negotiated' if compression else 'off'}: {opened} idle connections "
        f"(client saw {connected.get('open')}); traced {total / max(opened, 1):,.0f} bytes each",
        f"{'bytes/conn':>10}  {'blocks/conn':>11}  where",
    ]
    for stat in diff[:25]:
        frame = stat.traceback[0]
        where = f"{Path(frame.filename).name}:{frame.lineno}"
        per = stat.size_diff / max(opened, 1)
        lines.append(f"{per:10.1f}  {stat.count_diff / max(opened, 1):11.2f}  {where}")
    return "\n".join(lines) + "\n\n"


async def handshakes(port: int, total: int) -> tuple[str, dict[str, Any]]:
    profile = cProfile.Profile()
    client = _load(port, total, "handshake", "--inflight", "100")
    profile.enable()
    try:
        result = await trio.to_thread.run_sync(client.read, 300)
    finally:
        profile.disable()
        await trio.to_thread.run_sync(client.stop)
    out = io.StringIO()
    stats = pstats.Stats(profile, stream=out)
    stats.sort_stats("tottime").print_stats(30)
    stats.sort_stats("cumulative").print_stats(30)
    return out.getvalue(), result


async def fanout(
    port: int, manager: WebSocketManager, clients: int, seconds: float
) -> tuple[str, dict[str, Any]]:
    client = _load(port, clients, "fanout")
    try:
        connected = await trio.to_thread.run_sync(client.read, 300)
        with trio.move_on_after(30):
            while manager.get_active_connections() < connected["open"]:
                await trio.sleep(0.05)
        profile = cProfile.Profile()
        sent = 0
        end = time.monotonic() + seconds
        profile.enable()
        try:
            while time.monotonic() < end:
                await manager.broadcast(payload(sent, time.monotonic()))
                sent += 1
        finally:
            profile.disable()
        result = await trio.to_thread.run_sync(client.ask, f"expect {sent}", 600)
    finally:
        await trio.to_thread.run_sync(client.stop)
    result["sent"] = sent
    out = io.StringIO()
    stats = pstats.Stats(profile, stream=out)
    stats.sort_stats("tottime").print_stats(30)
    stats.sort_stats("cumulative").print_stats(30)
    return out.getvalue(), result


async def collector_share(port: int, total: int) -> str:
    """Handshakes without the profiler: the share of the server's CPU the collector takes."""
    spent: collections.Counter[int] = collections.Counter()
    runs: collections.Counter[int] = collections.Counter()
    started = [0.0]

    def timing(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
        else:
            spent[info["generation"]] += time.perf_counter() - started[0]
            runs[info["generation"]] += 1

    gc.collect()
    gc.callbacks.append(timing)
    cpu = time.process_time()
    client = _load(port, total, "handshake", "--inflight", "100")
    try:
        result = await trio.to_thread.run_sync(client.read, 300)
        cpu = time.process_time() - cpu
    finally:
        gc.callbacks.remove(timing)
        await trio.to_thread.run_sync(client.stop)
    collector = sum(spent.values())
    lines = [
        f"Without the profiler: {result.get('handshakes_per_s', 0):,.0f} handshakes/s, server "
        f"CPU {cpu / total * 1e6:.1f} us per handshake, of which the garbage collector "
        f"{collector / total * 1e6:.1f} us ({collector / cpu:.0%}; Python's default thresholds):",
    ]
    for generation in sorted(runs):
        lines.append(
            f"  generation {generation}: {runs[generation]} collections,"
            f" {spent[generation] / total * 1e6:.1f} us per handshake"
        )
    return "\n".join(lines) + "\n\n"


async def _drained(manager: WebSocketManager) -> None:
    with trio.move_on_after(30):
        while manager.get_active_connections():
            await trio.sleep(0.1)


async def main(args: argparse.Namespace) -> None:
    only = set(args.only.split(","))
    # Taken once, before any profile is written: the files this run writes are tracked, so
    # asking git after the first one would call every later one "dirty".
    source = provenance()
    manager = WebSocketManager()
    async with trio.open_nursery() as nursery:
        server = await nursery.start(manager.serve, idle, "127.0.0.1", 0)
        if "memory" in only:
            text = _header(
                "Idle memory per connection, trio_wsmgr (tracemalloc, server side)", source
            )
            for compression in (False, True):
                text += await memory(server.port, manager, args.connections, compression)
                await _drained(manager)
            (RESULTS / "profile-memory.txt").write_text(text)
            print(text)
        if "handshakes" in only:
            share = await collector_share(server.port, args.handshakes)
            await _drained(manager)
            report, result = await handshakes(server.port, args.handshakes)
            head = _header(
                f"Opening handshakes, trio_wsmgr under cProfile: {args.handshakes} connections, "
                f"100 in flight ({result.get('handshakes_per_s', 0):,.0f}/s while profiled)",
                source,
            )
            (RESULTS / "profile-handshakes.txt").write_text(head + share + report)
            print(head + share + report[:3000])
            await _drained(manager)
        if "fanout" in only:
            report, result = await fanout(
                server.port, manager, args.fanout_clients, args.fanout_seconds
            )
            head = _header(
                f"Fan-out, trio_wsmgr under cProfile: manager.broadcast of 64-byte messages to "
                f"{args.fanout_clients} clients for {args.fanout_seconds:g} s "
                f"({result['sent']} messages, {result.get('deliveries', 0):,} deliveries)",
                source,
            )
            (RESULTS / "profile-fanout.txt").write_text(head + report)
            print(head + report[:3000])
        await manager.close()
        nursery.cancel_scope.cancel()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=2000)
    parser.add_argument("--handshakes", type=int, default=4000)
    parser.add_argument("--fanout-clients", type=int, default=1000)
    parser.add_argument("--fanout-seconds", type=float, default=4.0)
    parser.add_argument("--only", default="memory,handshakes,fanout")
    ns = parser.parse_args()
    trio.run(main, ns)
