"""Soak test: many connections, heartbeats and a steady broadcast; then check nothing leaked.

The server (a WebSocketManager, heartbeats on) runs in this process; the clients
(the ``websockets`` asyncio client, which answers pings) run in a second process.
Every client counts the broadcast sequence numbers it receives. At the end:

* connections held during the run (every sample);
* messages delivered per healthy client vs. messages sent (must be equal: no gap,
  no duplicate, in order);
* the server's live memory blocks half way and at the end of the load, each read
  at a settled instant (must be flat; RSS is reported beside them);
* open file descriptors and trio tasks after everyone left (back to baseline).

Usage::

    python bench/soak.py --connections 5000 --duration 600 --rate 2
    python bench/soak.py --quick            # 300 connections, 20 s: what CI runs

Writes ``bench/results/soak.json`` (or ``--output``) and prints a summary.
``--trace-allocations FRAMES`` adds, per pair of judged points, the allocation
sites whose live blocks changed most (tracemalloc; slows the server down).
Traffic goes to 127.0.0.1 only; everything stops by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import itertools
import json
import math
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _provenance import provenance

RESULTS = Path(__file__).parent / "results"


# -- client process ----------------------------------------------------------------


async def _client_main(port: int, connections: int, expected_end: float) -> None:
    from websockets.asyncio.client import connect

    counts = [0] * connections
    errors = [0] * connections
    disordered = [0] * connections
    connected = 0
    all_connected = asyncio.Event()
    stop = asyncio.Event()

    async def one(index: int) -> None:
        nonlocal connected
        url = f"ws://127.0.0.1:{port}/soak"
        for attempt in range(50):
            try:
                ws = await connect(url, compression=None, ping_interval=None, open_timeout=30)
                break
            except OSError:
                await asyncio.sleep(0.05 * (attempt + 1))
        else:
            errors[index] += 1
            return
        connected += 1
        if connected == connections:
            all_connected.set()
        last = -1
        try:
            async for message in ws:
                if message == "end":
                    break
                seq = int(message.split(":", 1)[0])
                if seq != last + 1:
                    disordered[index] += 1
                last = seq
                counts[index] += 1
        except Exception:
            errors[index] += 1
        finally:
            await ws.close()

    tasks = [asyncio.create_task(one(i)) for i in range(connections)]
    await asyncio.wait_for(all_connected.wait(), timeout=120)
    print(json.dumps({"event": "connected", "connections": connected}), flush=True)
    try:
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=expected_end + 120)
    except TimeoutError:
        stop.set()
    print(
        json.dumps(
            {
                "event": "done",
                "counts": counts,
                "errors": sum(errors),
                "disordered": sum(disordered),
            }
        ),
        flush=True,
    )


def client(args: argparse.Namespace) -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (20000, 20000))
    asyncio.run(_client_main(args.port, args.connections, args.duration))


# -- server side (this process) --------------------------------------------------------


def _rss_kib() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _trio_tasks() -> int:
    """Tasks in this run, but for the write coalescer (one per run, started on first use).

    It starts with the first broadcast that gathers its frames, which a paced
    load only does when stalls make broadcasts come back to back (a loaded
    machine), and then lives as long as the run: not per connection, no leak.
    """
    import trio

    from trio_wsmgr.server._coalesce import TASK_NAME as COALESCER

    def count(task: Any) -> int:
        return int(task.name != COALESCER) + sum(
            count(t) for n in task.child_nurseries for t in n.child_tasks
        )

    return count(trio.lowlevel.current_root_task())


async def _drained(manager: Any, what: str) -> None:
    """Wait until no socket has bytes queued: the clients took everything sent so far.

    RSS is judged only at such points, so that a backlog a loaded machine builds
    up (bytes waiting for slow clients) is not taken for a leak. Bounded by
    progress: fails if the queued total stops shrinking for 30 s.
    """
    import trio

    best, progress_at = math.inf, trio.current_time()
    while queued := sum(sock.statistics().send_buffer_bytes for sock in manager.sockets()):
        now = trio.current_time()
        if queued < best:
            best, progress_at = queued, now
        elif now - progress_at > 30:
            raise RuntimeError(f"{what}: {queued} bytes still queued, no progress for 30 s")
        await trio.sleep(0.05)


async def _live_blocks(manager: Any, what: str) -> int:
    """The interpreter's live memory blocks at a settled instant (what "flat" is judged on).

    Settled: no socket has bytes queued (see :func:`_drained`), every task is
    blocked (:func:`trio.testing.wait_all_tasks_blocked`) and a collection just
    ran. Read at any other instant, the count also holds what the tasks woken
    in the same scheduler batch carry until they run: a reader whose heartbeat
    deadline has just expired holds its pending ``Cancelled`` (with traceback,
    outcome and closure, about ten blocks) until its turn. On a loaded machine
    one batch gathers many of them, so a count taken inside it was hundreds of
    blocks above one taken a moment later, which made "flat" a coin toss.
    Fails if the tasks do not all block within 30 s.
    """
    import trio
    import trio.testing

    while True:
        await _drained(manager, what)
        with trio.move_on_after(30) as waited:
            await trio.testing.wait_all_tasks_blocked()
        if waited.cancelled_caught:
            raise RuntimeError(f"{what}: the tasks never all blocked within 30 s")
        if not sum(sock.statistics().send_buffer_bytes for sock in manager.sockets()):
            break
    gc.collect()
    return sys.getallocatedblocks()


async def _settled(baseline: dict[str, int]) -> None:
    """Wait until fds and tasks are back to ``baseline``, or stop changing for 30 s.

    A leak never comes back; a loaded machine only finishes its closes later. The
    counts are judged after this, as before.
    """
    import trio

    last, changed_at = None, trio.current_time()
    while True:
        await trio.testing.wait_all_tasks_blocked(cushion=0.05)
        gc.collect()
        now_counts = (_open_fds(), _trio_tasks())
        if now_counts == (baseline["fds"], baseline["tasks"]):
            return
        now = trio.current_time()
        if now_counts != last:
            last, changed_at = now_counts, now
        elif now - changed_at > 30:
            return
        await trio.sleep(0.05)


async def _server_main(args: argparse.Namespace) -> dict[str, Any]:
    import trio
    import trio.testing

    from trio_wsmgr import WebSocketManager

    manager = WebSocketManager(
        heartbeat_interval=args.heartbeat,
        heartbeat_timeout=args.heartbeat,
        compression=None,
        max_connections=args.connections + 100,
    )

    async def handler(sock: Any) -> None:
        async for _ in sock:
            pass

    report: dict[str, Any] = {
        "connections": args.connections,
        "duration_s": args.duration,
        "rate_per_s": args.rate,
        "heartbeat_s": args.heartbeat,
    }
    traced = _Traced(args.trace_allocations)
    async with trio.open_nursery() as nursery:
        server = await nursery.start(manager.serve, handler, "127.0.0.1", 0)
        gc.collect()
        report["baseline"] = {
            "fds": _open_fds(),
            "tasks": _trio_tasks(),
            "rss_kib": _rss_kib(),
            "blocks": sys.getallocatedblocks(),
        }
        proc = await trio.lowlevel.open_process(
            [
                sys.executable,
                __file__,
                "client",
                "--port",
                str(server.port),
                "--connections",
                str(args.connections),
                "--duration",
                str(args.duration),
            ],
            stdout=subprocess.PIPE,
        )
        assert proc.stdout is not None
        lines = _lines(proc.stdout)
        first = json.loads(await lines.__anext__())
        assert first["event"] == "connected", first
        with trio.fail_after(60):
            while manager.get_active_connections() < args.connections:
                await trio.sleep(0.05)
        blocks = await _live_blocks(manager, "after connect")
        report["after_connect"] = {
            "rss_kib": _rss_kib(),
            "tasks": _trio_tasks(),
            "blocks": blocks,
        }
        traced.snapshot("after_connect")
        samples: list[int] = []
        rss_samples: list[tuple[float, int]] = []
        next_rss = 0.0
        sent = 0
        interval = 1 / args.rate
        start = trio.current_time()
        next_sample = start
        while trio.current_time() - start < args.duration:
            await manager.broadcast(f"{sent}:{'x' * 48}")
            sent += 1
            now = trio.current_time()
            if now >= next_sample:
                samples.append(manager.get_active_connections())
                next_sample += 1
            if now - start >= next_rss:
                rss_samples.append((round(now - start, 1), _rss_kib()))
                next_rss += args.duration / 20
            if "halfway" not in report and now - start >= args.duration / 2:
                blocks = await _live_blocks(manager, "halfway")  # judged like the end
                report["halfway"] = {
                    "rss_kib": _rss_kib(),
                    "blocks": blocks,
                    "t_s": round(now - start, 1),
                }
                traced.snapshot("halfway")
            await trio.sleep_until(start + sent * interval)
        blocks = await _live_blocks(manager, "end of load")
        report["end_of_load"] = {"rss_kib": _rss_kib(), "blocks": blocks}
        traced.snapshot("end_of_load")
        if traced.enabled:
            report["allocations"] = traced.compare()
        report["rss_samples_kib"] = rss_samples
        await manager.broadcast("end")
        done = json.loads(await lines.__anext__())
        await proc.wait()
        await proc.stdout.aclose()
        with trio.fail_after(30):
            while manager.get_active_connections():
                await trio.sleep(0.05)
        await _settled(report["baseline"])
        stats = manager.statistics()
        report["after_disconnect"] = {"fds": _open_fds(), "tasks": _trio_tasks()}
        counts = done["counts"]
        report.update(
            sent=sent,
            held_min=min(samples) if samples else 0,
            held_max=max(samples) if samples else 0,
            delivered_min=min(counts),
            delivered_max=max(counts),
            clients_with_every_message=sum(1 for c in counts if c == sent),
            client_errors=done["errors"],
            out_of_order=done["disordered"],
            heartbeat_timeouts=stats.heartbeat_timeouts,
            slow_consumer_closes=stats.slow_consumer_closes,
        )
        nursery.cancel_scope.cancel()
    rss_growth = report["end_of_load"]["rss_kib"] - report["after_connect"]["rss_kib"]
    report["rss_growth_kib"] = rss_growth
    # "Flat": over the second half of the run (after warm-up) what is alive grows by less
    # than 2% of what the connections cost. Judged on the interpreter's live memory
    # blocks (sys.getallocatedblocks), both ends measured after a collection with every
    # send buffer empty (_drained): RSS keeps the high-water mark of any burst (the
    # allocator seldom gives arenas back), so on a loaded machine, where stalls make
    # bursts, it grows without a leak. RSS is reported beside it.
    footprint = report["after_connect"]["rss_kib"] - report["baseline"]["rss_kib"]
    report["rss_growth_second_half_kib"] = (
        report["end_of_load"]["rss_kib"] - report["halfway"]["rss_kib"]
    )
    block_footprint = report["after_connect"]["blocks"] - report["baseline"]["blocks"]
    late_blocks = report["end_of_load"]["blocks"] - report["halfway"]["blocks"]
    report["blocks_growth_second_half"] = late_blocks
    report["blocks_per_connection"] = round(block_footprint / args.connections, 1)
    report["per_connection_kib"] = round(footprint / args.connections, 1)
    report["ok"] = bool(
        report["clients_with_every_message"] == args.connections
        and report["held_min"] == args.connections
        and report["client_errors"] == 0
        and report["out_of_order"] == 0
        and report["after_disconnect"]["fds"] == report["baseline"]["fds"]
        and report["after_disconnect"]["tasks"] == report["baseline"]["tasks"]
        and late_blocks <= 0.02 * block_footprint
    )
    return report


class _Traced:
    """``--trace-allocations N``: where the live blocks of the judged points come from.

    tracemalloc runs from the start (tracebacks of N frames). At each judged
    point, right after its block count was read, a snapshot is written to a
    temporary file and dropped, so no snapshot is alive when the next count is
    read. At the end the report gets, for each pair of points, the allocation
    sites whose live block count changed most.
    """

    def __init__(self, frames: int) -> None:
        self.enabled = frames > 0
        self.files: dict[str, Path] = {}
        if self.enabled:
            import tempfile
            import tracemalloc

            self.directory = Path(tempfile.mkdtemp(prefix="soak-trace-"))
            tracemalloc.start(frames)

    def snapshot(self, name: str) -> None:
        if self.enabled:
            import tracemalloc

            path = self.directory / f"{name}.snapshot"
            tracemalloc.take_snapshot().dump(str(path))
            self.files[name] = path

    def compare(self, top: int = 25) -> dict[str, list[dict[str, Any]]]:
        import shutil
        import tracemalloc

        own = [tracemalloc.Filter(False, tracemalloc.__file__)]
        names = list(self.files)
        out: dict[str, list[dict[str, Any]]] = {}
        for before, after in itertools.pairwise(names):
            old, new = (
                tracemalloc.Snapshot.load(str(self.files[n])).filter_traces(own)
                for n in (before, after)
            )
            stats = new.compare_to(old, "traceback")
            stats.sort(key=lambda stat: abs(stat.count_diff), reverse=True)
            out[f"{before}->{after}"] = [
                {
                    "blocks": stat.count_diff,
                    "bytes": stat.size_diff,
                    "traceback": stat.traceback.format(most_recent_first=True),
                }
                for stat in stats[:top]
                if stat.count_diff
            ]
        shutil.rmtree(self.directory)
        return out


async def _lines_impl(stream: Any) -> Any:
    buffer = b""
    while True:
        chunk = await stream.receive_some(1 << 20)
        if not chunk:
            return
        buffer += chunk
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            yield line.decode()


def _lines(stream: Any) -> Any:
    return _lines_impl(stream)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("role", nargs="?", default="server", choices=["server", "client"])
    parser.add_argument("--connections", type=int, default=5000)
    parser.add_argument("--duration", type=float, default=600)
    parser.add_argument("--rate", type=float, default=2.0, help="broadcasts per second")
    parser.add_argument("--heartbeat", type=float, default=5.0)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="300 connections for 20 s")
    parser.add_argument("--output", type=Path, default=RESULTS / "soak.json")
    parser.add_argument(
        "--trace-allocations",
        type=int,
        default=0,
        metavar="FRAMES",
        help="compare tracemalloc snapshots (tracebacks of FRAMES frames) across the run",
    )
    args = parser.parse_args(argv)
    if args.role == "client":
        client(args)
        return 0
    if args.quick:
        args.connections, args.duration, args.rate, args.heartbeat = 300, 20, 5, 2
    resource.setrlimit(resource.RLIMIT_NOFILE, (20000, 20000))
    import trio
    import trio.testing

    started = time.time()
    report = trio.run(_server_main, args)
    report["wall_s"] = round(time.time() - started, 1)
    report["provenance"] = provenance()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
