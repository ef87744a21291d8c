"""Broadcaster and backends.

The contract tests run every case against the in-process MemoryBackend (nodes
share a MemoryHub) and against a real redis-server process (nodes share it). A
"node" is a WebSocketManager serving on its own port plus a Broadcaster, all in
one trio run; the peers are real ``websockets`` clients. Network tests use the
real clock and short bounded waits.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import parse_qs, urlsplit

import attrs
import pytest
import trio
import trio.testing
from websockets.exceptions import ConnectionClosed as ClientClosed
from websockets.trio.client import ClientConnection, connect

from redis_cluster import RedisCluster
from redis_server import RedisServer, redis_server_fixture  # noqa: F401
from trio_wsmgr import (
    BackendUnavailable,
    InvalidChannelName,
    ManagedSocket,
    MessageEncodingError,
    WebSocketManager,
)
from trio_wsmgr._backoff import Backoff
from trio_wsmgr.backends import (
    Backend,
    MemoryBackend,
    MemoryHub,
    Receiver,
    RedisBackend,
)
from trio_wsmgr.broadcast._broadcaster import Broadcaster
from trio_wsmgr.broadcast._wire import (
    MAX_CHANNEL_NAME_LENGTH,
    check_channel_name,
    decode_wire,
    encode_wire,
)
from trio_wsmgr.protocol._message import Outgoing

WAIT = 5.0  # the longest any single network wait may take
PREFIX = "trio_wsmgr:"


# -- the two engines behind one interface ---------------------------------------------


class Engine:
    """What the contract tests need from "the shared server" of the nodes."""

    kind: str

    def backend(self) -> Backend:
        raise NotImplementedError

    def topics(self) -> set[str]:
        """Topics some node is subscribed to (Redis: PUBSUB CHANNELS)."""
        raise NotImplementedError

    def publish_calls(self) -> int:
        raise NotImplementedError

    async def go_down(self) -> None:
        raise NotImplementedError

    async def come_back(self) -> None:
        raise NotImplementedError


class MemoryEngine(Engine):
    kind = "memory"

    def __init__(self) -> None:
        self.hub = MemoryHub()

    def backend(self) -> Backend:
        return MemoryBackend(hub=self.hub)

    def topics(self) -> set[str]:
        return set(self.hub.topics())

    def publish_calls(self) -> int:
        return self.hub.published

    async def go_down(self) -> None:
        self.hub.available = False

    async def come_back(self) -> None:
        self.hub.available = True


class RedisEngine(Engine):
    kind = "redis"

    def __init__(self, server: RedisServer | RedisCluster) -> None:
        self.server = server

    def backend(self) -> Backend:
        return RedisBackend(
            self.server.url,
            cluster=self.server.cluster,
            connect_timeout=2.0,
            command_timeout=2.0,
            backoff=Backoff(initial=0.05, maximum=0.3),
        )

    def topics(self) -> set[str]:
        return self.server.channels(PREFIX) if self.server.running else set()

    def publish_calls(self) -> int:
        return self.server.publish_calls()

    async def go_down(self) -> None:
        self.server.kill()

    async def come_back(self) -> None:
        await self.server.astart()


@pytest.fixture(params=["memory", "redis"])
def engine(request: pytest.FixtureRequest) -> Engine:
    if request.param == "memory":
        return MemoryEngine()
    return RedisEngine(request.getfixturevalue("redis_server"))


# -- nodes and clients ------------------------------------------------------------------


@attrs.define(eq=False)
class Node:
    """One "process": a manager serving on its own port and a broadcaster."""

    manager: WebSocketManager
    broadcaster: Broadcaster
    port: int = 0
    sockets: dict[str, ManagedSocket] = attrs.field(factory=dict)

    def url(self, name: str, *channels: str, user: str = "anon") -> str:
        query = f"name={name}&user={user}" + "".join(f"&ch={ch}" for ch in channels)
        return f"ws://127.0.0.1:{self.port}/?{query}"

    async def handler(self, sock: ManagedSocket) -> None:
        query = parse_qs(urlsplit(sock.path).query)
        self.sockets[query["name"][0]] = sock
        for channel in query.get("ch", []):
            await self.broadcaster.subscribe(sock, channel)
        await sock.send("ready")
        async for message in sock:  # "sub:<channel>" / "unsub:<channel>" from the test
            verb, _, channel = str(message).partition(":")
            if verb == "sub":
                await self.broadcaster.subscribe(sock, channel)
            else:
                await self.broadcaster.unsubscribe(sock, channel)
            await sock.send("ok")


def _authenticate(info: Any) -> str:
    return str(info.query.get("user", "anon"))


@asynccontextmanager
async def running_node(backend: Backend, **options: Any) -> AsyncIterator[Node]:
    manager = WebSocketManager(authentication=_authenticate, close_timeout=1.0, **options)
    node = Node(manager, Broadcaster(backend=backend))
    node.broadcaster.attach(manager)
    async with node.broadcaster, trio.open_nursery() as nursery:
        server = await nursery.start(manager.serve, node.handler, "127.0.0.1", 0)
        node.port = server.port
        try:
            yield node
        finally:
            with trio.CancelScope(shield=True):
                await manager.close()
            nursery.cancel_scope.cancel()


@asynccontextmanager
async def two_nodes(engine: Engine, **options: Any) -> AsyncIterator[tuple[Node, Node]]:
    async with (
        running_node(engine.backend(), **options) as a,
        running_node(engine.backend(), **options) as b,
    ):
        yield a, b


@asynccontextmanager
async def client(
    node: Node, name: str, *channels: str, user: str = "anon", **options: Any
) -> AsyncIterator[Any]:
    """A real websockets client, connected and subscribed (the handler said "ready")."""
    url = node.url(name, *channels, user=user)
    async with connect(url, open_timeout=WAIT, **options) as ws:
        assert await recv(ws) == "ready"
        yield ws


async def recv(ws: ClientConnection) -> str | bytes:
    with trio.fail_after(WAIT):
        return await ws.recv()


async def drain(ws: ClientConnection) -> None:
    """Read until the connection ends."""
    with trio.fail_after(WAIT):
        try:
            while True:
                await ws.recv()
        except ClientClosed:
            return


async def assert_silent(node: Node, name: str, ws: ClientConnection) -> None:
    """Nothing was delivered to ``ws``: a marker sent now on its socket is the next message.

    Call it once a message that was delivered together with the one that must not
    have been (same node, same delivery) has arrived elsewhere: anything wrongly
    delivered to ``ws`` is then already queued ahead of the marker.
    """
    marker = f"-- marker for {name} --"
    await node.sockets[name].send(marker)
    message = await recv(ws)
    assert message == marker, f"unexpected message {message!r}"


async def eventually(check: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    with trio.move_on_after(timeout):
        while not check():
            await trio.sleep(0.01)
        return
    raise AssertionError(f"timed out waiting until {what}")


# -- plain synchronous parts --------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["lobby", "room:42", "a/b/c", "user@example.com", "x" * MAX_CHANNEL_NAME_LENGTH]
)
def test_valid_channel_names_are_accepted(name: str) -> None:
    assert check_channel_name(name) == name
    assert Broadcaster().create_channel(name).name == name


@pytest.mark.parametrize(
    "name",
    ["", "x" * (MAX_CHANNEL_NAME_LENGTH + 1), "has space", "new\nline", "!user:0", "é", "a*b"],
)
def test_invalid_channel_names_are_refused(name: str) -> None:
    with pytest.raises(InvalidChannelName):
        check_channel_name(name)
    with pytest.raises(InvalidChannelName):
        Broadcaster().create_channel(name)


def test_channel_name_must_be_a_string() -> None:
    with pytest.raises(TypeError, match="str"):
        check_channel_name(42)


def test_create_channel_is_idempotent() -> None:
    broadcaster = Broadcaster()
    channel = broadcaster.create_channel("lobby")
    assert broadcaster.create_channel("lobby") is channel
    assert channel.subscriber_count == 0
    assert broadcaster.channels() == ["lobby"]


@pytest.mark.parametrize(
    ("options", "error", "option"),
    [
        ({"inbox_size": 0}, ValueError, "inbox_size"),
        ({"inbox_size": 1.5}, TypeError, "inbox_size"),
        ({"user_shards": 0}, ValueError, "user_shards"),
        ({"backend": "redis://x"}, TypeError, "backend"),
    ],
)
def test_broadcaster_options_are_validated(
    options: dict[str, Any], error: type[Exception], option: str
) -> None:
    with pytest.raises(error, match=option):
        Broadcaster(**options)


@pytest.mark.parametrize(
    ("args", "options", "error", "option"),
    [
        (("http://127.0.0.1",), {}, ValueError, "url"),
        ((6379,), {}, TypeError, "url"),
        (("redis://127.0.0.1",), {"connect_timeout": 0}, ValueError, "connect_timeout"),
        (("redis://127.0.0.1",), {"command_timeout": -1}, ValueError, "command_timeout"),
        (("redis://127.0.0.1",), {"cluster": "yes"}, TypeError, "cluster"),
        (("redis://127.0.0.1",), {"prefix": "a b"}, ValueError, "prefix"),
        (("redis://127.0.0.1",), {"backoff": 1.0}, TypeError, "backoff"),
        (("redis://a:7000",), {"seeds": ["redis://b:7000"]}, ValueError, "seeds"),
        (("redis://a:7000",), {"cluster": True, "seeds": "redis://b:7000"}, TypeError, "seeds"),
        (("redis://a:7000",), {"cluster": True, "seeds": 7000}, TypeError, "seeds"),
        (("redis://a:7000",), {"cluster": True, "seeds": ["http://b"]}, ValueError, "seeds"),
        (("redis://a:7000",), {"cluster": True, "seeds": ["redis://"]}, ValueError, "seeds"),
        (("redis://a:7000",), {"cluster": True, "seeds": ["rediss://b"]}, ValueError, "seeds"),
        (("redis://a:7000",), {"cluster": True, "refresh_interval": 0}, ValueError, "refresh"),
    ],
)
def test_redis_backend_options_are_validated(
    args: tuple[Any, ...], options: dict[str, Any], error: type[Exception], option: str
) -> None:
    with pytest.raises(error, match=option):
        RedisBackend(*args, **options)


def test_memory_backend_hub_is_validated() -> None:
    with pytest.raises(TypeError, match="hub"):
        MemoryBackend(hub="shared")  # type: ignore[arg-type]


def test_redis_backend_repr_hides_the_password() -> None:
    backend = RedisBackend("redis://user:s3cret@127.0.0.1:6379/0")
    assert "s3cret" not in repr(backend)
    assert "***" in repr(backend)


@pytest.mark.parametrize("message", ["héllo", b"\x00\xff", {"a": [1, 2]}])
@pytest.mark.parametrize("user_id", [None, "bob"])
@pytest.mark.parametrize("on_full", ["wait", "drop", "close"])
def test_wire_format_round_trips(message: Any, user_id: str | None, on_full: Any) -> None:
    outgoing = Outgoing(message)
    data = encode_wire(b"node0001", outgoing, on_full, user_id)
    assert len(data) == 10 + (2 + len(user_id) if user_id else 0) + len(outgoing.payload)
    wire = decode_wire(data)
    assert wire is not None
    assert (wire.node, wire.user_id, wire.on_full) == (b"node0001", user_id, on_full)
    again = wire.outgoing()
    assert (again.opcode, again.payload) == (outgoing.opcode, outgoing.payload)


@pytest.mark.parametrize(
    "data", [b"", b"\x01\x00short", b"\x02\x00node0001payload", b"\x01\x08node0001\x00\x09bob"]
)
def test_malformed_wire_data_is_refused(data: bytes) -> None:
    assert decode_wire(data) is None


async def test_broadcaster_must_be_running() -> None:
    broadcaster = Broadcaster()
    with pytest.raises(RuntimeError, match="async with"):
        await broadcaster.broadcast("lobby", "hi")
    async with broadcaster:
        assert await broadcaster.broadcast("lobby", "hi") == 0
    with pytest.raises(RuntimeError, match="closed"):
        await broadcaster.broadcast("lobby", "hi")
    with pytest.raises(RuntimeError, match="once"):
        await broadcaster.__aenter__()


async def test_unencodable_message_raises_before_anything_is_sent() -> None:
    hub = MemoryHub()
    async with Broadcaster(backend=MemoryBackend(hub=hub)) as broadcaster:
        with pytest.raises(MessageEncodingError):
            await broadcaster.broadcast("lobby", object())
        with pytest.raises(MessageEncodingError):
            await broadcaster.send_to_user("bob", {1, 2})
        with pytest.raises(InvalidChannelName):
            await broadcaster.broadcast("bad name", "hi")
    assert hub.published == 0


async def test_filter_needs_local_only() -> None:
    async with Broadcaster() as broadcaster:
        with pytest.raises(ValueError, match="local_only"):
            await broadcaster.broadcast("lobby", "hi", filter=lambda sock: True)
        assert await broadcaster.broadcast("lobby", "hi", filter=bool, local_only=True) == 0


# -- a hand-written backend: the interface is enough for another engine -----------------


@attrs.define(eq=False)
class LoopbackBackend(Backend):
    """The smallest engine: keeps the receiver so the test can feed it directly."""

    receive: Receiver | None = None
    topics: set[str] = attrs.field(factory=set)
    sent: list[tuple[str, bytes]] = attrs.field(factory=list)
    crash: BaseException | None = None
    gate: trio.Event | None = None  # when set: channel (not user) topics wait for it

    async def _pass(self, topics: Any) -> None:
        if self.gate is not None and any(not topic.startswith("!") for topic in topics):
            await self.gate.wait()
        await trio.lowlevel.checkpoint()

    async def run(
        self, receive: Receiver, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        self.receive = receive
        task_status.started()
        if self.crash is not None:
            await trio.sleep(0.01)
            raise self.crash
        await trio.sleep_forever()

    async def publish(self, topic: str, data: bytes) -> None:
        await self._pass([topic])
        self.sent.append((topic, data))

    async def subscribe(self, topics: Any) -> None:
        await self._pass(topics)
        self.topics.update(topics)

    async def unsubscribe(self, topics: Any) -> None:
        self.topics.difference_update(topics)
        await trio.lowlevel.checkpoint()


async def test_full_inbox_drops_and_counts_and_bad_data_is_ignored() -> None:
    backend = LoopbackBackend()
    async with Broadcaster(backend=backend, inbox_size=2) as broadcaster:
        assert backend.receive is not None
        wire = encode_wire(b"othernod", Outgoing("hi"), "wait", None)
        await trio.testing.wait_all_tasks_blocked()  # the inbox task waits for work
        for _ in range(5):  # synchronously: the inbox task cannot run in between
            backend.receive("lobby", wire)
        backend.receive("lobby", b"not ours")
        backend.receive(
            "lobby", encode_wire(bytes.fromhex(broadcaster.node_id), Outgoing(1), "wait", None)
        )
        stats = broadcaster.statistics()
        # one handed to the waiting inbox task, two buffered, two dropped
        assert (stats.received, stats.inbox, stats.inbox_dropped) == (5, 2, 2)
        assert (stats.malformed, stats.echoes) == (1, 1)
        assert stats.backend is None  # the interface's default statistics(): unknown
        await eventually(lambda: broadcaster.statistics().inbox == 0, "the inbox drains")


async def test_a_backend_crash_comes_out_unwrapped() -> None:
    with pytest.raises(OSError, match="engine exploded"):
        async with Broadcaster(backend=LoopbackBackend(crash=OSError("engine exploded"))):
            await trio.sleep_forever()


async def test_the_body_error_comes_out_unwrapped() -> None:
    with pytest.raises(KeyError):
        async with Broadcaster():
            raise KeyError("mine")


async def test_a_broadcast_cancelled_while_publishing_completes_and_counts() -> None:
    backend = LoopbackBackend(gate=trio.Event())
    async with running_node(backend) as a, client(a, "x") as x:
        backend.gate.set()
        await a.broadcaster.subscribe(a.sockets["x"], "lobby")
        backend.gate = trio.Event()  # publications hang until the gate opens
        results: list[int] = []
        async with trio.open_nursery() as nursery:
            scope = trio.CancelScope()

            async def broadcast() -> None:
                with scope:
                    results.append(await a.broadcaster.broadcast("lobby", "all or nothing"))

            nursery.start_soon(broadcast)
            await trio.testing.wait_all_tasks_blocked()  # the publication is in flight
            scope.cancel()
            await trio.testing.wait_all_tasks_blocked()
            assert results == []  # still publishing: a cancel does not cut it in half
            backend.gate.set()
        assert results == [1]  # it happened, so it returned (with its count)
        assert [topic for topic, _ in backend.sent] == ["lobby"]
        assert await recv(x) == "all or nothing"
        assert a.broadcaster.statistics().local_deliveries == 1


async def test_a_broadcast_cancelled_before_it_starts_sends_nothing() -> None:
    hub = MemoryHub()
    async with running_node(MemoryBackend(hub=hub)) as a, client(a, "x", "lobby") as x:
        with trio.CancelScope() as scope:
            scope.cancel()
            await a.broadcaster.broadcast("lobby", "never")
        assert scope.cancelled_caught
        stats = a.broadcaster.statistics()
        assert (hub.published, stats.local_deliveries, stats.published) == (0, 0, 0)
        assert await a.broadcaster.broadcast("lobby", "next") == 1
        assert await recv(x) == "next"  # "never" was not queued before it


async def test_memory_backend_calls_are_cancel_atomic() -> None:
    hub = MemoryHub()
    backend = MemoryBackend(hub=hub)
    async with trio.open_nursery() as nursery:
        await nursery.start(backend.run, lambda topic, data: None)
        with trio.CancelScope() as scope:
            scope.cancel()
            await backend.subscribe(["lobby"])
        assert scope.cancelled_caught
        assert hub.topics() == []  # a Cancelled subscribe did not subscribe
        with trio.CancelScope() as scope:
            scope.cancel()
            await backend.publish("lobby", b"never")
        assert scope.cancelled_caught
        assert (hub.published, backend.statistics().published) == (0, 0)
        await backend.subscribe(["lobby"])
        with trio.CancelScope() as scope:
            scope.cancel()
            await backend.unsubscribe(["lobby"])
        assert hub.topics() == ["lobby"]  # nor did a Cancelled unsubscribe unsubscribe
        nursery.cancel_scope.cancel()


async def test_a_channel_object_is_accepted_wherever_a_name_is() -> None:
    async with running_node(MemoryBackend()) as a, client(a, "x") as x:
        lobby = a.broadcaster.create_channel("lobby")
        sock = a.sockets["x"]
        await a.broadcaster.subscribe(sock, lobby)
        assert sock in lobby
        assert await a.broadcaster.broadcast(lobby, "by channel") == 1
        assert await recv(x) == "by channel"
        await a.broadcaster.unsubscribe(sock, lobby)
        assert lobby.subscriber_count == 0


# -- contract: the same cases on both engines ---------------------------------------------


async def test_broadcast_reaches_every_node_once(engine: Engine) -> None:
    async with (
        two_nodes(engine) as (a, b),
        client(a, "a1", "lobby") as a1,
        client(b, "b1", "lobby") as b1,
        client(b, "b2", "other") as b2,
    ):
        assert await a.broadcaster.broadcast("lobby", "hello") == 1
        assert await recv(a1) == "hello"
        assert await recv(b1) == "hello"
        assert await b.broadcaster.broadcast("lobby", "end") == 1
        assert await recv(a1) == "end"  # nothing in between: no echo delivered twice
        assert await recv(b1) == "end"
        await assert_silent(b, "b2", b2)
        stats = a.broadcaster.statistics()
        assert (stats.published, stats.local_deliveries, stats.received) == (1, 1, 1)
        assert stats.echoes >= 1


async def test_messages_keep_their_type_across_nodes(engine: Engine) -> None:
    async with two_nodes(engine) as (a, b), client(b, "b1", "feed") as b1:
        await a.broadcaster.broadcast("feed", b"\x00\x01binary")
        await a.broadcaster.broadcast("feed", {"type": "chat", "text": "héllo"})
        await a.broadcaster.broadcast("feed", "plain")
        assert await recv(b1) == b"\x00\x01binary"
        assert json.loads(await recv(b1)) == {"type": "chat", "text": "héllo"}
        assert await recv(b1) == "plain"


async def test_exclude_skips_the_sender(engine: Engine) -> None:
    async with (
        two_nodes(engine) as (a, b),
        client(a, "alice", "lobby") as alice,
        client(a, "carol", "lobby") as carol,
        client(b, "bob", "lobby") as bob,
    ):
        sender = a.sockets["alice"]
        assert await a.broadcaster.broadcast("lobby", "hi", exclude=sender) == 1
        assert await recv(carol) == "hi"
        assert await recv(bob) == "hi"
        await assert_silent(a, "alice", alice)


async def test_one_publisher_order_is_kept_on_every_node(engine: Engine) -> None:
    count = 300
    async with (
        two_nodes(engine) as (a, b),
        client(a, "a1", "seq") as a1,
        client(b, "b1", "seq") as b1,
    ):
        for number in range(count):
            await a.broadcaster.broadcast("seq", str(number))
        for ws in (a1, b1):
            assert [int(await recv(ws)) for _ in range(count)] == list(range(count))


async def test_one_publish_per_broadcast_whatever_the_subscriber_count(engine: Engine) -> None:
    async with (
        two_nodes(engine) as (a, b),
        client(a, "a1", "lobby") as a1,
        client(a, "a2", "lobby") as a2,
        client(a, "a3", "lobby") as a3,
        client(b, "b1", "lobby") as b1,
    ):
        before = engine.publish_calls()
        for number in range(5):
            assert await a.broadcaster.broadcast("lobby", number) == 3
        assert engine.publish_calls() - before == 5
        for ws in (a1, a2, a3, b1):
            assert [await recv(ws) for _ in range(5)] == ["0", "1", "2", "3", "4"]


async def test_node_is_subscribed_only_while_it_has_local_subscribers(engine: Engine) -> None:
    async with running_node(engine.backend()) as a:
        assert "room" not in engine.topics()
        async with client(a, "a1", "room") as a1, client(a, "a2", "room") as a2:
            assert "room" in engine.topics()
            assert a.broadcaster.create_channel("room").subscriber_count == 2
            assert a.broadcaster.subscriber_counts() == {"room": 2}
            await a1.send("unsub:room")
            assert await recv(a1) == "ok"
            assert "room" in engine.topics()  # a2 is still there
            await a2.send("unsub:room")
            assert await recv(a2) == "ok"
            assert "room" not in engine.topics()
            assert a.broadcaster.create_channel("room").subscriber_count == 0
            assert a.broadcaster.subscriber_counts() == {}


async def test_closed_sockets_leave_their_channels(engine: Engine) -> None:
    async with two_nodes(engine) as (a, b):
        channel = b.broadcaster.create_channel("room")
        async with client(b, "b1", "room", "side") as b1:
            await b1.send("sub:third")
            assert await recv(b1) == "ok"
            assert channel.subscriber_count == 1
            assert b.broadcaster.channels_of(b.sockets["b1"]) == ["room", "side", "third"]
        await eventually(lambda: channel.subscriber_count == 0, "the closed socket left")
        await eventually(lambda: not {"room", "side", "third"} & engine.topics(), "unsubscribed")
        assert b.broadcaster.statistics().subscriptions == 0
        assert await a.broadcaster.broadcast("room", "anyone?") == 0


async def test_send_to_user_reaches_all_their_sockets_on_all_nodes(engine: Engine) -> None:
    async with (
        two_nodes(engine) as (a, b),
        client(a, "bob1", user="bob") as bob1,
        client(a, "bob2", user="bob") as bob2,
        client(b, "bob3", user="bob") as bob3,
        client(b, "eve", user="eve") as eve,
    ):
        assert await a.broadcaster.send_to_user("bob", {"dm": "hi"}) == 2
        for ws in (bob1, bob2, bob3):
            assert json.loads(await recv(ws)) == {"dm": "hi"}
        await assert_silent(b, "eve", eve)
        excluded = a.sockets["bob1"]
        assert await a.broadcaster.send_to_user("bob", "again", exclude=excluded) == 1
        assert await recv(bob2) == "again"
        assert await recv(bob3) == "again"
        await assert_silent(a, "bob1", bob1)


async def broadcast_until_received(node: Node, channel: str, ws: ClientConnection) -> None:
    """Broadcast until ``ws`` (on another node) gets it: cross-node delivery is back."""
    with trio.fail_after(10):
        while True:
            with trio.move_on_after(0.2):
                try:
                    await node.broadcaster.broadcast(channel, "back?")
                except BackendUnavailable:
                    await trio.sleep(0.05)
                    continue
                assert await ws.recv() == "back?"
                return


async def test_outage_keeps_local_delivery_then_resumes_by_itself(engine: Engine) -> None:
    async with (
        two_nodes(engine) as (a, b),
        client(a, "a1", "lobby") as a1,
        client(b, "b1", "lobby") as b1,
    ):
        await engine.go_down()
        # Local subscribers are still served; the caller learns the rest was not.
        with pytest.raises(BackendUnavailable) as caught:
            await a.broadcaster.broadcast("lobby", "during")
        assert caught.value.delivered == 1
        assert await recv(a1) == "during"
        # Subscribing during the outage works locally and is restored later.
        async with client(b, "b2", "news") as b2:
            assert b.broadcaster.create_channel("news").subscriber_count == 1
            await engine.come_back()
            await broadcast_until_received(a, "news", b2)  # nobody reconnects by hand
            assert {"lobby", "news"} <= engine.topics()
            assert await a.broadcaster.broadcast("lobby", "after") == 1
            assert await recv(a1) == "after"
            assert await recv(b1) == "after"  # "during" never reached b1
    assert a.broadcaster.statistics().publish_failures >= 1


async def test_on_full_close_applies_on_other_nodes_too(engine: Engine) -> None:
    big = os.urandom(1 << 20)  # incompressible
    options = {"send_buffer_size": 64 * 1024, "max_message_size": 4 << 20}
    async with (
        two_nodes(engine, **options) as (a, b),
        client(b, "stuck", "firehose", max_queue=1, max_size=None) as stuck,
    ):
        # The client never reads: the kernel buffers fill, then the send buffer.
        for _ in range(40):
            await a.broadcaster.broadcast("firehose", big, on_full="close")
            if b.sockets["stuck"].closed:
                break
        await eventually(lambda: b.sockets["stuck"].closed, "the slow consumer closed")
        assert b.sockets["stuck"].close_code == 1008
        assert b.sockets["stuck"].close_reason == "slow consumer"
        await drain(stuck)  # the client sees the end of the connection once it reads again
    assert b.manager.statistics().slow_consumer_closes == 1


# -- Redis specifics ------------------------------------------------------------------------


async def test_redis_backend_starts_while_redis_is_down_and_connects_later(
    redis_server: RedisServer,
) -> None:
    redis_server.kill()
    engine = RedisEngine(redis_server)
    backend = engine.backend()
    async with running_node(backend) as a, client(a, "a1", "lobby") as a1:
        assert not backend.statistics().connected
        with pytest.raises(BackendUnavailable) as caught:
            await a.broadcaster.broadcast("lobby", "local only")
        assert caught.value.delivered == 1
        assert await recv(a1) == "local only"
        await redis_server.astart()
        await eventually(lambda: backend.statistics().connected, "the backend connected")
        assert engine.topics() == {"lobby", "!user:0"}
        assert await a.broadcaster.broadcast("lobby", "now shared") == 1
        assert await recv(a1) == "now shared"
    stats = backend.statistics()
    assert (stats.published, stats.publish_failures) == (1, 1)
    assert stats.connection_failures >= 1


async def test_an_unconfirmed_subscription_restarts_the_session(
    redis_server: RedisServer,
) -> None:
    backend = RedisBackend(
        redis_server.url, command_timeout=0.3, backoff=Backoff(initial=0.05, maximum=0.2)
    )
    async with running_node(backend) as a:
        redis_server.command("CLIENT", "PAUSE", "800", "ALL")  # Redis answers nobody for 0.8 s
        async with client(a, "a1", "late") as a1:  # subscribe() gave up waiting after 0.3 s
            await eventually(lambda: backend.statistics().reconnects == 1, "a new session")
            assert backend.statistics().connected
            assert "late" in redis_server.channels(PREFIX)
            assert await a.broadcaster.broadcast("late", "made it") == 1
            assert await recv(a1) == "made it"


@pytest.mark.redis_cluster
async def test_redis_cluster_uses_sharded_pubsub(redis_cluster: RedisCluster) -> None:
    engine = RedisEngine(redis_cluster)
    owner = redis_cluster.owner(PREFIX + "lobby")
    async with (
        two_nodes(engine) as (a, b),
        client(a, "a1", "lobby") as a1,
        client(b, "b1", "lobby") as b1,
    ):
        assert PREFIX + "lobby" in owner.command("PUBSUB", "SHARDCHANNELS")
        assert all(node.command("PUBSUB", "CHANNELS") == [] for node in redis_cluster.masters())
        before = owner.publish_calls()
        assert await a.broadcaster.broadcast("lobby", "sharded") == 1
        assert await recv(a1) == "sharded"
        assert await recv(b1) == "sharded"
        assert owner.publish_calls() == before + 1, "one SPUBLISH, on the shard of the channel"
        for node in redis_cluster.masters():
            assert "cmdstat_publish:" not in str(node.command("INFO", "commandstats"))
