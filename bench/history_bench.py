"""Channel history: fan-out deliveries/s with history vs without, side by side in one run.

The same fan-out twice per setup, alternating round by round: a plain channel, and a
channel created with ``history_size`` (every publication appended to the history, given a
position and wrapped in the default JSON envelope; the publisher's own subscribers get it
back through the node's ordered delivery). Setups: one node and two nodes (publisher on
A, subscribers on B), each over the in-process backend and over a real redis-server (one
Lua script per publication instead of one PUBLISH). Every node, client and the Redis
client share one Trio run on one core; the subscribers are real trio-websocket clients on
127.0.0.1. At most ``WINDOW`` messages are in flight, so the bounded inbox never drops.

    python bench/history_bench.py [--messages 2000] [--subscribers 10] [--rounds 3]

Redis comes from REDIS_URL, else redis-server from PATH is started on a free port without
persistence. Prints a table and writes ``bench/results/history.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import trio
import trio_websocket

from trio_wsmgr import Broadcaster, ManagedSocket, WebSocketManager
from trio_wsmgr.backends import Backend, MemoryBackend, MemoryHub, RedisBackend

sys.path.insert(0, str(Path(__file__).parent))
from _provenance import provenance
from redis_bench import start_redis

RESULTS = Path(__file__).parent / "results" / "history.json"
WINDOW = 256
HISTORY = 1000


class Node:
    def __init__(self, backend: Backend, history: bool) -> None:
        self.manager = WebSocketManager()
        self.broadcaster = Broadcaster(backend=backend)
        if history:
            self.broadcaster.create_channel("bench", history_size=HISTORY)
        self.port = 0

    async def handler(self, sock: ManagedSocket) -> None:
        await self.broadcaster.subscribe(sock, "bench")
        await sock.send("ready")
        async for _ in sock:
            pass


@asynccontextmanager
async def open_node(backend: Backend, history: bool) -> AsyncIterator[Node]:
    node = Node(backend, history)
    async with node.broadcaster, trio.open_nursery() as nursery:
        server = await nursery.start(node.manager.serve, node.handler, "127.0.0.1", 0)
        node.port = server.port
        yield node
        await node.manager.close()


class Subscribers:
    def __init__(self, count: int) -> None:
        self.received = [0] * count
        self.progress = trio.lowlevel.ParkingLot()

    async def run(self, port: int, index: int, task_status: trio.TaskStatus[None]) -> None:
        async with trio_websocket.open_websocket_url(f"ws://127.0.0.1:{port}/") as ws:
            assert await ws.get_message() == "ready"
            task_status.started()
            while True:
                await ws.get_message()
                self.received[index] += 1
                self.progress.unpark_all()

    async def wait_all(self, count: int) -> None:
        while min(self.received) < count:
            await self.progress.park()


async def measure(backends: list[Backend], history: bool, subscribers: int, messages: int) -> int:
    """Deliveries per second: publisher on the first node, subscribers on the last."""
    async with AsyncExitStack() as stack:
        nodes = [await stack.enter_async_context(open_node(b, history)) for b in backends]
        nursery = await stack.enter_async_context(trio.open_nursery())
        publisher, target = nodes[0].broadcaster, nodes[-1]
        clients = Subscribers(subscribers)
        for index in range(subscribers):
            await nursery.start(clients.run, target.port, index)
        payload = {"text": "x" * 64}
        start = time.perf_counter()
        for seq in range(messages):
            if seq >= WINDOW:
                await clients.wait_all(seq - WINDOW)
            await publisher.broadcast("bench", payload)
        await clients.wait_all(messages)
        elapsed = time.perf_counter() - start
        assert target.broadcaster.statistics().inbox_dropped == 0
        nursery.cancel_scope.cancel()
    return round(messages * subscribers / elapsed)


def make_backends(name: str, nodes: int, url: str, tag: str) -> list[Backend]:
    if name == "memory":
        hub = MemoryHub()
        return [MemoryBackend(hub=hub) for _ in range(nodes)]
    return [RedisBackend(url, prefix=f"hbench{tag}:") for _ in range(nodes)]


async def main(args: argparse.Namespace, url: str) -> dict[str, Any]:
    results: dict[str, Any] = {}
    print(f"{'setup':18} {'plain':>12} {'history':>12} {'ratio':>6}")
    for nodes in (1, 2):
        for name in ("memory", "redis"):
            plain, kept = [], []
            for round_ in range(args.rounds):  # alternate, so drifts hit both alike
                for history, into in ((False, plain), (True, kept)):
                    tag = f"{nodes}{name}{round_}{int(history)}"
                    backends = make_backends(name, nodes, url, tag)
                    into.append(await measure(backends, history, args.subscribers, args.messages))
            row = {
                "plain_deliveries_per_second": statistics.median(plain),
                "history_deliveries_per_second": statistics.median(kept),
                "plain_rounds": plain,
                "history_rounds": kept,
            }
            row["ratio"] = round(
                row["history_deliveries_per_second"] / row["plain_deliveries_per_second"], 2
            )
            label = f"{nodes}_node{'s' if nodes > 1 else ''}_{name}"
            results[label] = row
            print(
                f"{label:18} {row['plain_deliveries_per_second']:>12} "
                f"{row['history_deliveries_per_second']:>12} {row['ratio']:>6}"
            )
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--subscribers", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    url, process, _ = start_redis()
    try:
        results = trio.run(main, args, url)
    finally:
        if process is not None:
            process.kill()
            process.wait()
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {"provenance": provenance(), "arguments": vars(args), "results": results}, indent=2
        )
        + "\n"
    )
    print(f"wrote {RESULTS}")
