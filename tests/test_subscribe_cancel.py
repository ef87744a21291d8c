"""Cancel atomicity of Broadcaster.subscribe / unsubscribe.

Trio's convention: an await that raises ``Cancelled`` did not happen (the socket
is not subscribed, the node holds no backend subscription for it, the counts are
unchanged), one that returns did. Each case cancels the call at successive
points (after 0, 1, 2, ... checkpoints of the canceller) on the memory backend
and on a real redis-server, and with a gated backend at the wait for the
backend's confirmation.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import attrs
import pytest
import trio
import trio.lowlevel
import trio.testing
from websockets.trio.client import connect

from redis_server import redis_server_fixture  # noqa: F401
from test_broadcaster import (
    Engine,
    LoopbackBackend,
    MemoryEngine,
    RedisEngine,
    client,
    recv,
    running_node,
)
from test_history import NEWS, history_node
from trio_wsmgr import ManagedSocket, MemoryBackend, StreamPosition
from trio_wsmgr.broadcast._history import PAGE

WAIT = 10.0


@pytest.fixture(params=["memory", "redis"])
def engine(request: pytest.FixtureRequest) -> Engine:
    if request.param == "memory":
        return MemoryEngine()
    return RedisEngine(request.getfixturevalue("redis_server"))


ATTEMPTS = 25  # cancellation points tried per case (bounded)


@attrs.define(eq=False)
class SecondReadGated(MemoryBackend):
    """Once armed, the second read of a history waits for ``gate``."""

    gate: trio.Event = attrs.field(factory=trio.Event)
    armed: bool = False
    reads: int = 0

    async def read_history(self, topic: str, **options: Any) -> Any:
        if self.armed:
            self.reads += 1
            if self.reads == 2:
                await self.gate.wait()
        return await super().read_history(topic, **options)


async def cancel_after(checkpoints: int, call: Callable[[], Awaitable[object]]) -> bool:
    """Run ``call``, cancelling it after the canceller's ``checkpoints``: did it return?"""
    scope = trio.CancelScope()
    returned: list[bool] = []

    async def run() -> None:
        with scope:
            await call()
            returned.append(True)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run)
        for _ in range(checkpoints):
            await trio.lowlevel.checkpoint()
        scope.cancel()
    return bool(returned)


async def test_a_subscribe_cancelled_at_any_point_did_not_happen(engine: Engine) -> None:
    async with running_node(engine.backend()) as a, client(a, "x", "home") as x:
        sock, broadcaster = a.sockets["x"], a.broadcaster
        before = broadcaster.statistics().subscriptions
        outcomes = []
        for k in range(ATTEMPTS):
            channel = f"c{k}"
            returned = await cancel_after(
                k, lambda channel=channel: broadcaster.subscribe(sock, channel)
            )
            outcomes.append(returned)
            await broadcaster.unsubscribe(sock, "unrelated")  # every change reached the backend
            if returned:
                assert broadcaster.channels_of(sock) == sorted(["home", channel])
                assert channel in engine.topics()
                await broadcaster.unsubscribe(sock, channel)
                continue
            assert sock not in broadcaster.create_channel(channel)
            assert broadcaster.channels_of(sock) == ["home"]
            assert broadcaster.statistics().subscriptions == before
            assert channel not in engine.topics()  # no backend subscription left for it
            assert await broadcaster.broadcast(channel, "lost") == 0
        assert not outcomes[0]  # cancelled before its first checkpoint
        assert not all(outcomes[:3])  # some cancellation came while it waited
        await broadcaster.subscribe(sock, "last")
        assert await broadcaster.broadcast("last", "hi") == 1
        assert await recv(x) == "hi"  # nothing from the cancelled ones came before


async def test_a_subscribe_cancelled_while_the_backend_confirms_did_not_happen() -> None:
    backend = LoopbackBackend(gate=trio.Event())
    async with running_node(backend) as a, client(a, "x") as x:
        sock = a.sockets["x"]
        with trio.move_on_after(WAIT) as waiting:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(a.broadcaster.subscribe, sock, "gated")
                await trio.testing.wait_all_tasks_blocked()  # the backend does not confirm
                nursery.cancel_scope.cancel()
        assert not waiting.cancelled_caught
        assert sock not in a.broadcaster.create_channel("gated")
        assert a.broadcaster.statistics().subscriptions == 0
        backend.gate.set()
        await a.broadcaster.unsubscribe(sock, "unrelated")  # every change reached the backend
        assert "gated" not in backend.topics  # subscribed, then dropped: nobody needs it
        assert await a.broadcaster.broadcast("gated", "lost") == 0
        await a.broadcaster.subscribe(sock, "gated")
        assert await a.broadcaster.broadcast("gated", "hi") == 1
        assert await recv(x) == "hi"


async def test_of_two_subscribes_in_flight_the_one_that_returns_keeps_the_socket() -> None:
    backend = LoopbackBackend(gate=trio.Event())
    async with running_node(backend) as a, client(a, "x"):
        sock = a.sockets["x"]
        returned: list[bool] = []
        cancelled = trio.CancelScope()

        async def first() -> None:
            with cancelled:
                await a.broadcaster.subscribe(sock, "gated")

        async def second() -> None:
            await a.broadcaster.subscribe(sock, "gated")
            returned.append(True)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(first)
            nursery.start_soon(second)
            await trio.testing.wait_all_tasks_blocked()
            cancelled.cancel()  # the one that added the socket gives up
            await trio.testing.wait_all_tasks_blocked()
            assert sock in a.broadcaster.create_channel("gated")  # the other still waits
            backend.gate.set()
        assert returned == [True]
        assert sock in a.broadcaster.create_channel("gated")
        assert "gated" in backend.topics


async def test_an_unsubscribe_returns_or_changes_nothing() -> None:
    backend = LoopbackBackend(gate=trio.Event())
    async with running_node(backend) as a, client(a, "x"):
        sock, broadcaster = a.sockets["x"], a.broadcaster
        backend.gate.set()
        await broadcaster.subscribe(sock, "lobby")
        with trio.CancelScope() as scope:
            scope.cancel()
            await broadcaster.unsubscribe(sock, "lobby")
        assert scope.cancelled_caught
        assert sock in broadcaster.create_channel("lobby")  # Cancelled: it did not happen
        backend.gate = trio.Event()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(broadcaster.subscribe, sock, "gated")  # the sync task hangs
            await trio.testing.wait_all_tasks_blocked()
            returned: list[bool] = []
            scope = trio.CancelScope()

            async def unsubscribe() -> None:
                with scope:
                    await broadcaster.unsubscribe(sock, "lobby")
                    returned.append(True)

            nursery.start_soon(unsubscribe)
            await trio.testing.wait_all_tasks_blocked()
            assert sock not in broadcaster.create_channel("lobby")  # past its checkpoint
            scope.cancel()
            await trio.testing.wait_all_tasks_blocked()
            backend.gate.set()
        assert returned == [True]  # it happened, so it returned
        assert "lobby" not in backend.topics


async def test_a_history_subscribe_cancelled_before_its_replay_did_not_happen(
    engine: Engine,
) -> None:
    async with history_node(engine.backend(), news=NEWS) as a:
        url = f"ws://127.0.0.1:{a.port}/?name=x&ch=plain"
        async with connect(url, open_timeout=WAIT) as ws:
            with trio.fail_after(WAIT):
                await ws.recv()  # subscribed to "plain"
            sock: ManagedSocket = a.sockets["x"]
            broadcaster = a.broadcaster
            await broadcaster.broadcast("news", "before")
            since = StreamPosition((await broadcaster.position("news")).epoch, 1)
            news = broadcaster.create_channel("news")
            for k in range(ATTEMPTS):
                returned = await cancel_after(
                    k, lambda: broadcaster.subscribe(sock, "news", since=since)
                )
                if returned:
                    break
                assert sock not in news
                assert broadcaster.channels_of(sock) == ["plain"]
                await broadcaster.unsubscribe(sock, "unrelated")  # changes reached the backend
                assert "news" not in engine.topics()
            else:
                await broadcaster.subscribe(sock, "news", since=since)
            assert sock in news
            await broadcaster.broadcast("news", "live")
            with trio.fail_after(WAIT):
                message = await ws.recv()
            assert '"live"' in str(message)  # not held back by a cancelled replay


async def test_a_history_subscribe_cancelled_during_its_replay_finishes_it() -> None:
    backend = SecondReadGated()
    async with history_node(backend, news=NEWS) as a:
        url = f"ws://127.0.0.1:{a.port}/?name=x&ch=plain"
        async with connect(url, open_timeout=WAIT, max_queue=None) as ws:
            with trio.fail_after(WAIT):
                await ws.recv()
            sock: ManagedSocket = a.sockets["x"]
            broadcaster = a.broadcaster
            total = PAGE + 5  # two pages of replay
            for n in range(total):
                await broadcaster.broadcast("news", n)
            since = StreamPosition((await broadcaster.position("news")).epoch, 0)
            backend.armed = True  # the second page hangs: the first one was replayed
            results = []
            scope = trio.CancelScope()

            async def subscribe() -> None:
                with scope:
                    results.append(await broadcaster.subscribe(sock, "news", since=since))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(subscribe)
                with trio.fail_after(WAIT):
                    while backend.reads < 2:
                        await trio.sleep(0.01)
                await trio.testing.wait_all_tasks_blocked()
                scope.cancel()  # after the client got the first page
                await trio.testing.wait_all_tasks_blocked()
                assert results == []
                backend.gate.set()
            (result,) = results  # it happened, so it returned
            assert result.recovered
            assert sock in broadcaster.create_channel("news")
            await broadcaster.broadcast("news", "live")
            got = []
            with trio.fail_after(WAIT):
                while len(got) < total + 1:
                    got.append(await ws.recv())
            assert [str(m).count('"offset"') for m in got] == [1] * (total + 1)
            assert '"live"' in str(got[-1])  # every publication once, then the live one
