"""Presence: who is in a channel across nodes, on the memory backend and on real Redis.

Real-clock tests use real sockets and websockets clients, a short
``presence_ttl`` and bounded polling on conditions. The lease tests on the
memory backend run on ``autojump_clock`` over in-memory streams (no real I/O).
A node killed without cleanup on Redis is a real process killed with SIGKILL.
"""

from __future__ import annotations

import math
import re
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing

from redis_server import RedisServer, redis_server_fixture  # noqa: F401
from test_broadcaster import WAIT, Engine, MemoryEngine, RedisEngine, client, running_node
from trio_wsmgr import BackendUnavailable, Broadcaster, ManagedSocket, Presence, WebSocketManager
from trio_wsmgr.backends import Backend, MemoryBackend, MemoryHub, Receiver, RedisBackend
from trio_wsmgr.testing import open_peer

CHANNEL = "room:lobby"


@pytest.fixture(
    params=[
        "memory",
        pytest.param("redis_server", marks=pytest.mark.redis),
        pytest.param("redis_cluster", marks=pytest.mark.redis_cluster),
    ]
)
def engine(request: pytest.FixtureRequest) -> Engine:
    if request.param == "memory":
        return MemoryEngine()
    return RedisEngine(request.getfixturevalue(request.param))


async def presence_when(
    broadcaster: Broadcaster, check: Callable[[Presence], bool], channel: str = CHANNEL
) -> Presence:
    """Poll ``presence(channel)`` until ``check`` holds (bounded)."""
    with trio.fail_after(WAIT):
        while True:
            presence = await broadcaster.presence(channel)
            if check(presence):
                return presence
            await trio.sleep(0.01)


def is_(users: dict[str, int], anonymous: int = 0) -> Callable[[Presence], bool]:
    return lambda p: dict(p.users) == users and p.anonymous == anonymous


# -- every backend, real sockets ------------------------------------------------------------


async def test_presence_counts_each_users_sockets_over_every_node(engine: Engine) -> None:
    async with (
        running_node(engine.backend()) as a,
        running_node(engine.backend()) as b,
        client(a, "a1", CHANNEL, user="alice"),
        client(b, "a2", CHANNEL, user="alice"),
        client(b, "b1", CHANNEL, user="bob"),
        client(b, "elsewhere", "room:other", user="carol"),
    ):
        for node in (a, b):
            seen = await presence_when(node.broadcaster, is_({"alice": 2, "bob": 1}))
            assert seen.total == 3
            assert seen.anonymous == 0
        other = await presence_when(a.broadcaster, is_({"carol": 1}), "room:other")
        assert other.total == 1
        assert await a.broadcaster.presence("room:empty") == Presence(
            users={}, anonymous=0, total=0
        )


async def test_presence_follows_unsubscribes_and_closes_on_other_nodes(engine: Engine) -> None:
    async with running_node(engine.backend()) as a, running_node(engine.backend()) as b:
        async with client(b, "b1", CHANNEL, user="bob") as bob, client(b, "b2", CHANNEL):
            await presence_when(a.broadcaster, is_({"bob": 1, "anon": 1}))
            await bob.send(f"unsub:{CHANNEL}")
            await presence_when(a.broadcaster, is_({"anon": 1}))
        await presence_when(a.broadcaster, is_({}))


async def test_sockets_without_a_user_id_are_counted_as_anonymous() -> None:
    manager = WebSocketManager(heartbeat_interval=math.inf)
    async with Broadcaster() as broadcaster:

        async def handler(sock: ManagedSocket) -> None:
            await broadcaster.subscribe(sock, CHANNEL)
            async for _ in sock:
                pass

        async with open_peer(manager, handler), open_peer(manager, handler):
            presence = await presence_when(broadcaster, lambda p: p.total == 2)
            assert presence.anonymous == 2
            assert presence.users == {}
        await manager.close()


async def test_presence_accepts_a_channel_as_well_as_its_name() -> None:
    manager = WebSocketManager(heartbeat_interval=math.inf)
    async with Broadcaster() as broadcaster:
        lobby = broadcaster.create_channel(CHANNEL)

        async def handler(sock: ManagedSocket) -> None:
            await broadcaster.subscribe(sock, lobby)
            async for _ in sock:
                pass

        async with open_peer(manager, handler):
            by_name = await presence_when(broadcaster, lambda p: p.total == 1)
            assert await broadcaster.presence(lobby) == by_name
        await manager.close()


@pytest.mark.redis
async def test_presence_is_not_written_per_message(redis_server: RedisServer) -> None:
    engine = RedisEngine(redis_server)
    async with (
        running_node(engine.backend()) as a,
        running_node(engine.backend()) as b,
        client(b, "b1", CHANNEL, user="bob") as bob,
    ):
        await presence_when(a.broadcaster, is_({"bob": 1}))
        before = _calls(redis_server)
        for n in range(50):
            await a.broadcaster.broadcast(CHANNEL, f"m{n}")
        for n in range(50):
            with trio.fail_after(WAIT):
                assert await bob.recv() == f"m{n}"
        after = _calls(redis_server)
        # 50 PUBLISH, no presence write (a lease refresh every ttl/3 = 10 s could add
        # one SET per node; nothing that grows with the messages)
        assert after.get("hset", 0) == before.get("hset", 0)
        assert after.get("set", 0) - before.get("set", 0) <= 2


def _calls(server: RedisServer) -> dict[str, int]:
    stats = str(server.command("INFO", "commandstats"))
    return {name: int(n) for name, n in re.findall(r"cmdstat_(\w+):calls=(\d+)", stats)}


@pytest.mark.redis
async def test_a_clean_exit_removes_the_nodes_entries_and_lease(redis_server: RedisServer) -> None:
    engine = RedisEngine(redis_server)
    async with running_node(engine.backend()) as a:
        async with running_node(engine.backend()) as b, client(b, "b1", CHANNEL, user="bob"):
            await presence_when(a.broadcaster, is_({"bob": 1}))
            node = b.broadcaster.node_id
            assert redis_server.command("EXISTS", f"trio_wsmgr:presence-node:{node}") == 1
        # b left (its client closed first, then its broadcaster): nothing of it stays
        assert redis_server.command("EXISTS", f"trio_wsmgr:presence-node:{node}") == 0
        assert redis_server.command("HGETALL", "trio_wsmgr:presence:{room:lobby}") == []
        assert (await a.broadcaster.presence(CHANNEL)).total == 0


# -- a node that dies without cleaning up ----------------------------------------------------

NODE_SCRIPT = """
import sys, trio
from trio_wsmgr import Broadcaster, WebSocketManager
from trio_wsmgr.backends import RedisBackend
from trio_wsmgr.testing import open_peer

async def main(url):
    manager = WebSocketManager(authentication=lambda info: "ghost")
    async with Broadcaster(backend=RedisBackend(url), presence_ttl=1.0) as broadcaster:
        async def handler(sock):
            await broadcaster.subscribe(sock, "room:lobby")
            print("subscribed", broadcaster.node_id, flush=True)
            await trio.sleep_forever()
        async with open_peer(manager, handler):
            await trio.sleep_forever()

trio.run(main, sys.argv[1])
"""


@pytest.mark.redis
async def test_a_killed_node_leaves_every_presence_within_the_ttl(
    redis_server: RedisServer,
) -> None:
    process = await trio.lowlevel.open_process(
        [sys.executable, "-c", NODE_SCRIPT, redis_server.url], stdout=subprocess.PIPE
    )
    try:
        assert process.stdout is not None
        line = b""
        with trio.fail_after(WAIT):
            while not line.endswith(b"\n"):
                chunk = await process.stdout.receive_some(1)
                assert chunk, "the node exited before subscribing"
                line += chunk
        assert line.startswith(b"subscribed"), line
        ghost_node = line.split()[1].decode()
        async with running_node(RedisEngine(redis_server).backend()) as a:
            await presence_when(a.broadcaster, is_({"ghost": 1}))
            process.kill()  # SIGKILL: no clean-up of any kind
            await process.wait()
            # its lease (1 s) runs out; the next reader skips it and deletes its entry
            await presence_when(a.broadcaster, is_({}))
            entries = redis_server.command("HGETALL", "trio_wsmgr:presence:{room:lobby}")
            assert ghost_node not in (entries or [])
    finally:
        with trio.CancelScope(shield=True):
            process.kill()
            await process.wait()
            if process.stdout is not None:
                await process.stdout.aclose()


# -- leases on the memory backend (autojump clock, in-memory streams) ----------------------


def _user_from_path(info: Any) -> str | None:
    user = info.query.get("user")
    return str(user) if user else None


@asynccontextmanager
async def memory_node(hub: MemoryHub, ttl: float) -> AsyncIterator[tuple[WebSocketManager, Any]]:
    """A manager and a Broadcaster on ``hub``; ``join(user)`` opens a subscribed peer."""
    manager = WebSocketManager(authentication=_user_from_path, heartbeat_interval=math.inf)
    async with Broadcaster(backend=MemoryBackend(hub=hub), presence_ttl=ttl) as broadcaster:

        async def handler(sock: ManagedSocket) -> None:
            await broadcaster.subscribe(sock, CHANNEL)
            async for _ in sock:
                pass

        def join(user: str) -> Any:
            return open_peer(manager, handler, path=f"/?user={user}")

        yield broadcaster, join
        await manager.close()


async def test_a_node_that_dies_unreachable_drops_out_after_the_ttl(autojump_clock: Any) -> None:
    hub = MemoryHub()
    async with memory_node(hub, ttl=30.0) as (watcher, _):
        async with memory_node(hub, ttl=30.0) as (_, join), join("ghost"):
            await presence_when(watcher, is_({"ghost": 1}))
            hub.available = False  # it dies while it cannot reach the hub: no clean-up
        hub.available = True
        assert dict((await watcher.presence(CHANNEL)).users) == {"ghost": 1}
        await trio.sleep(30.0)  # its last lease renewal was at most this long ago
        assert (await watcher.presence(CHANNEL)).total == 0


async def test_a_node_whose_lease_ran_out_writes_its_entries_again(autojump_clock: Any) -> None:
    hub = MemoryHub()
    async with (
        memory_node(hub, ttl=3.0) as (watcher, _),
        memory_node(hub, ttl=3.0) as (_, join),
        join("alice"),
    ):
        await presence_when(watcher, is_({"alice": 1}))
        hub.available = False
        await trio.sleep(10.0)  # far longer than the ttl: the lease expires
        hub.available = True
        # a reader finds the lapsed lease and deletes alice's entry (the sync part of a
        # read, run here before alice's node gets a chance to renew)
        assert hub._presence.live(CHANNEL, trio.current_time()) == {}
        # alice's node renews its lease, sees it had lapsed, and writes everything again
        await presence_when(watcher, is_({"alice": 1}))


# -- options and backends ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "error"), [(0, ValueError), (-1.0, ValueError), ("30", TypeError)]
)
def test_presence_ttl_is_checked_at_construction(value: object, error: type[Exception]) -> None:
    with pytest.raises(error, match="presence_ttl"):
        Broadcaster(presence_ttl=value)  # type: ignore[arg-type]


class Silent(Backend):
    """A backend without presence (the Backend default)."""

    async def run(
        self, receive: Receiver, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        task_status.started()
        await trio.sleep_forever()

    async def publish(self, topic: str, data: bytes) -> None:
        await trio.lowlevel.checkpoint()

    async def subscribe(self, topics: Any) -> None:
        await trio.lowlevel.checkpoint()

    async def unsubscribe(self, topics: Any) -> None:
        await trio.lowlevel.checkpoint()


async def test_a_backend_without_presence_says_so() -> None:
    async with Broadcaster(backend=Silent()) as broadcaster:
        with pytest.raises(NotImplementedError, match="does not share presence"):
            await broadcaster.presence(CHANNEL)


async def test_presence_while_the_backend_is_down_raises_backend_unavailable() -> None:
    hub = MemoryHub()
    async with Broadcaster(backend=MemoryBackend(hub=hub)) as broadcaster:
        hub.available = False
        with pytest.raises(BackendUnavailable):
            await broadcaster.presence(CHANNEL)


def test_redis_presence_keys_of_one_channel_share_a_hash_slot() -> None:
    store = RedisBackend("redis://127.0.0.1:1/0").presence_store()
    key = store._channel_key(CHANNEL)  # type: ignore[attr-defined]
    assert key == "trio_wsmgr:presence:{room:lobby}"
