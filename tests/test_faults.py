"""Faults under load: a backend or Redis killed and restarted while work goes on.

Everything recovers by itself, the counts stay exact, and no task is left over.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any

import trio
import trio_websocket
from websockets.trio.client import connect

from redis_server import RedisServer, free_port
from redis_server import redis_server_fixture as redis_server_fixture
from trio_wsmgr import (
    BackendUnavailable,
    Backoff,
    Broadcaster,
    ConnectionClosed,
    ManagedSocket,
    PoolTimeout,
    RedisBackend,
    WebSocketManager,
    WebSocketPool,
)
from trio_wsmgr.server._coalesce import TASK_NAME as COALESCER


def task_count() -> int:
    """Tasks in this run, but for the write coalescer: one per run, started on first use."""

    def count(task: Any) -> int:
        return int(task.name != COALESCER) + sum(
            count(t) for n in task.child_nurseries for t in n.child_tasks
        )

    return count(trio.lowlevel.current_root_task())


async def test_redis_killed_and_restarted_under_steady_broadcast_load(
    redis_server: RedisServer,
) -> None:
    baseline = task_count()
    nodes = []
    for _ in range(2):
        manager = WebSocketManager(heartbeat_interval=math.inf)
        broadcaster = Broadcaster(backend=RedisBackend(redis_server.url))
        nodes.append((manager, broadcaster))
    (ma, ba), (mb, bb) = nodes
    received: dict[str, list[int]] = {"a": [], "b": []}
    failed: list[int] = []
    delivered_locally: list[int] = []
    sent = 0

    def subscriber(broadcaster: Broadcaster) -> Any:
        async def handler(sock: ManagedSocket) -> None:
            await broadcaster.subscribe(sock, "feed")
            async for _ in sock:
                pass

        return handler

    progress = trio.Event()  # set (and replaced) whenever a list above grows

    def note() -> None:
        nonlocal progress
        progress.set()
        progress = trio.Event()

    async def until(condition: Any, timeout: float) -> None:
        with trio.fail_after(timeout):
            while not condition():
                await progress.wait()

    async def reader(ws: Any, name: str) -> None:
        with contextlib.suppress(Exception):
            async for message in ws:
                received[name].append(int(message))
                note()

    async with ba, bb, trio.open_nursery() as nursery:
        sa = await nursery.start(ma.serve, subscriber(ba), "127.0.0.1", 0)
        sb = await nursery.start(mb.serve, subscriber(bb), "127.0.0.1", 0)
        async with (
            connect(f"ws://127.0.0.1:{sa.port}/") as ca,
            connect(f"ws://127.0.0.1:{sb.port}/") as cb,
        ):
            with trio.fail_after(10):
                while not (
                    ba.create_channel("feed").subscriber_count
                    == 1
                    == bb.create_channel("feed").subscriber_count
                ):
                    await trio.sleep(0.01)
            nursery.start_soon(reader, ca, "a")
            nursery.start_soon(reader, cb, "b")
            stop = trio.Event()
            stopped = trio.Event()

            async def producer() -> None:
                # Paced by the local subscriber: the next message once it has the last.
                nonlocal sent
                while not stop.is_set():
                    try:
                        await ba.broadcast("feed", str(sent))
                    except BackendUnavailable as exc:
                        failed.append(sent)
                        delivered_locally.append(exc.delivered)
                    sent += 1
                    note()
                    await until(lambda: len(received["a"]) >= sent, 10)  # noqa: B023
                stopped.set()

            nursery.start_soon(producer)
            await until(lambda: received["b"], 10)  # cross-node delivery is up before the fault
            redis_server.kill()
            await until(lambda: failed, 10)  # the publisher noticed the outage
            await redis_server.astart()
            # ...and it comes back by itself: a message published after the last failure
            # reached the other node.
            await until(lambda: received["b"] and received["b"][-1] > failed[-1], 20)
            stop.set()
            await stopped.wait()
            await until(lambda: received["b"][-1] == sent - 1, 10)  # the last one arrives
        await ma.close()
        await mb.close()
        nursery.cancel_scope.cancel()
    assert failed, "the outage was noticed by the publisher"
    assert set(delivered_locally) == {1}, "the local subscriber got every one even so"
    assert received["a"] == list(range(sent)), "local delivery never stopped nor reordered"
    b = received["b"]
    assert b == sorted(set(b)), "the other node got no duplicate and no reordering"
    assert b[-1] == sent - 1, "and it gets everything again after the restart"
    assert task_count() == baseline


async def test_backend_killed_under_a_pool_with_many_waiting_acquirers() -> None:
    baseline = task_count()
    port = free_port()
    cap = 4

    async def echo(request: trio_websocket.WebSocketRequest) -> None:
        conn = await request.accept()
        with contextlib.suppress(trio_websocket.ConnectionClosed):
            while True:
                await conn.send_message(await conn.get_message())

    async def backend(*, task_status: trio.TaskStatus[trio.CancelScope]) -> None:
        with trio.CancelScope() as scope:
            task_status.started(scope)
            await trio_websocket.serve_websocket(echo, "127.0.0.1", port, None)

    pool = WebSocketPool(
        f"ws://127.0.0.1:{port}/",
        max_connections=cap,
        min_connections=2,
        acquire_timeout=0.5,
        connect_timeout=1,
        validate_on_checkout=False,
        backoff=Backoff(initial=0.05, maximum=0.2),
    )
    served = {"ok": 0, "failed": 0}
    over_cap: list[int] = []
    async with trio.open_nursery() as nursery:
        backend_scope = await nursery.start(backend)
        async with pool:
            stop = trio.Event()

            async def worker(i: int) -> None:
                while not stop.is_set():
                    try:
                        async with pool.acquire() as conn:
                            await conn.send_message(str(i))
                            assert await conn.get_message() == str(i)
                        served["ok"] += 1
                    except (PoolTimeout, ConnectionClosed):
                        served["failed"] += 1
                        await trio.sleep(0.01)

            async def sampler() -> None:
                while not stop.is_set():
                    in_use = pool.get_active_count() + pool.get_idle_count()
                    if in_use > cap:
                        over_cap.append(in_use)
                    await trio.sleep(0.002)

            async with trio.open_nursery() as workers:
                workers.start_soon(sampler)
                for i in range(60):  # 60 tasks for 4 connections: most are waiting
                    workers.start_soon(worker, i)
                with trio.fail_after(10):
                    while served["ok"] < 200:
                        await trio.sleep(0.01)
                backend_scope.cancel()  # the backend dies, connections and all
                with trio.fail_after(10):
                    while pool.get_health_status().healthy:
                        await trio.sleep(0.01)
                before_restart = served["ok"]
                backend_scope = await nursery.start(backend)
                with trio.fail_after(15):  # recovers by itself
                    while (
                        not pool.get_health_status().healthy or served["ok"] < before_restart + 200
                    ):
                        await trio.sleep(0.01)
                stop.set()
        assert pool.get_active_count() == 0
        assert pool.get_idle_count() == 0
        backend_scope.cancel()
    assert served["failed"] > 0, "the outage was felt"
    assert over_cap == [], "the cap held at every moment"
    assert task_count() == baseline
