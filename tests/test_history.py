"""Channel history and recovery: positions, envelopes, replay without gap or duplicate.

The same cases run on the in-process MemoryBackend (nodes share a MemoryHub) and
on a real redis-server (nodes share it). Subscribers are real ``websockets``
clients; a test node subscribes a client ``since`` the position it passes in
the query and answers with the :class:`SubscribeResult` before the envelopes.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import random
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import parse_qs, urlsplit

import attrs
import pytest
import trio
import trio.lowlevel
import trio.testing
from websockets.exceptions import ConnectionClosed as ClientClosed
from websockets.trio.client import ClientConnection, connect

from redis_cluster import RedisCluster
from redis_cluster import fresh_redis_cluster_fixture as fresh_redis_cluster_fixture
from redis_server import RedisServer, _read_reply, redis_server_fixture  # noqa: F401
from test_broadcaster import Engine, LoopbackBackend, MemoryEngine, RedisEngine
from trio_wsmgr import (
    BackendUnavailable,
    Broadcaster,
    ManagedSocket,
    MemoryBackend,
    MemoryHub,
    Publication,
    StreamPosition,
    SubscribeResult,
    WebSocketManager,
)
from trio_wsmgr.broadcast._history import (
    ChannelStream,
    Cursor,
    HistoryOptions,
    Ring,
    encode_inner,
    encode_positioned,
    split_positioned,
)
from trio_wsmgr.broadcast._redis_resp import encode

WAIT = 10.0
NEWS = {"history_size": 1000}


@pytest.fixture(params=["memory", "redis"])
def engine(request: pytest.FixtureRequest) -> Engine:
    if request.param == "memory":
        return MemoryEngine()
    return RedisEngine(request.getfixturevalue("redis_server"))


# -- plain synchronous parts ----------------------------------------------------------------


def test_a_positioned_message_round_trips() -> None:
    inner = encode_inner(b"node0001", "drop", [7, 9], b'{"a":1}')
    data = encode_positioned("ab12", 17, inner)
    assert split_positioned(data) == (StreamPosition("ab12", 17), inner)


@pytest.mark.parametrize(
    "data", [b"\x02", b"\x02ab 17", b"\x02ab x y", b"\x02 17 x", b"\x02ab 0 x"]
)
def test_a_malformed_positioned_message_is_refused(data: bytes) -> None:
    assert split_positioned(data) is None


def test_the_ring_keeps_history_size_entries_and_says_where_it_starts() -> None:
    ring = Ring()
    for n in range(1, 8):
        assert ring.append(b"%d" % n, size=3, ttl=math.inf, now=0.0) == n
    page = ring.read(None, 2)
    assert (page.top, page.first, page.entries) == (7, 5, [(6, b"6"), (7, b"7")])
    assert ring.read(4, 10).entries == [(5, b"5"), (6, b"6"), (7, b"7")]
    assert ring.read(6, 10).entries == [(7, b"7")]
    assert ring.read(7, 10).entries == []
    assert ring.read(5, 0).entries == []


def test_a_replaying_socket_is_held_back_then_skips_what_the_replay_sent() -> None:
    stream = ChannelStream("news", HistoryOptions(10, math.inf, None))
    members = [(1, "live"), (2, "catching-up")]
    stream.cursors[2] = cursor = Cursor()
    assert stream.route(members, StreamPosition("e", 5)) == ["live"]
    assert cursor.seen == StreamPosition("e", 5)
    cursor.epoch, cursor.offset, cursor.replaying = "e", 6, False  # the replay sent up to 6
    assert stream.route(members, StreamPosition("e", 6)) == ["live"]
    assert stream.route(members, StreamPosition("e", 7)) == ["live", "catching-up"]
    assert stream.cursors == {}


@pytest.mark.parametrize(
    ("options", "error", "option"),
    [
        ({"history_size": 0}, ValueError, "history_size"),
        ({"history_size": 1.5}, TypeError, "history_size"),
        ({"history_size": 10, "history_ttl": 0}, ValueError, "history_ttl"),
        ({"history_size": 10, "history_ttl": "1"}, TypeError, "history_ttl"),
        ({"history_size": 10, "envelope": "json"}, TypeError, "envelope"),
        ({"history_ttl": 5.0}, ValueError, "history_size"),
    ],
)
def test_history_options_are_validated(
    options: dict[str, Any], error: type[Exception], option: str
) -> None:
    with pytest.raises(error, match=option):
        Broadcaster().create_channel("news", **options)


def test_a_backend_without_history_is_refused_at_create_channel() -> None:
    with pytest.raises(ValueError, match=r"history_size.*LoopbackBackend"):
        Broadcaster(backend=LoopbackBackend()).create_channel("news", history_size=10)


def test_stream_positions_are_validated() -> None:
    with pytest.raises(TypeError, match="epoch"):
        StreamPosition(1, 2)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="offset"):
        StreamPosition("e", -1)


# -- nodes and clients ------------------------------------------------------------------------


@attrs.define(eq=False)
class Node:
    manager: WebSocketManager
    broadcaster: Broadcaster
    port: int = 0
    sockets: dict[str, ManagedSocket] = attrs.field(factory=dict)

    async def handler(self, sock: ManagedSocket) -> None:
        query = {key: values[0] for key, values in parse_qs(urlsplit(sock.path).query).items()}
        self.sockets[query["name"]] = sock
        since = None
        if "epoch" in query:
            since = StreamPosition(query["epoch"], int(query["offset"]))
        result = await self.broadcaster.subscribe(sock, query["ch"], since=since)
        position = result.position
        await sock.send(
            {
                "type": "subscribed",
                "recovered": result.recovered,
                "epoch": None if position is None else position.epoch,
                "offset": None if position is None else position.offset,
            }
        )
        async for message in sock:  # "say:<text>": broadcast from this socket, excluding it
            await self.broadcaster.broadcast(query["ch"], str(message)[4:], exclude=sock)


@asynccontextmanager
async def history_node(backend: Any, **channels: dict[str, Any]) -> AsyncIterator[Node]:
    manager = WebSocketManager(close_timeout=1.0)
    node = Node(manager, Broadcaster(backend=backend))
    for name, options in channels.items():
        node.broadcaster.create_channel(name, **options)
    async with node.broadcaster, trio.open_nursery() as nursery:
        server = await nursery.start(manager.serve, node.handler, "127.0.0.1", 0)
        node.port = server.port
        try:
            yield node
        finally:
            with trio.CancelScope(shield=True):
                await manager.close()
            nursery.cancel_scope.cancel()


@attrs.define
class Reader:
    """A client's view: what subscribe answered, then the envelopes."""

    ws: ClientConnection
    result: dict[str, Any]
    #: the replay: envelopes that came before the result
    early: list[dict[str, Any]]

    async def envelope(self) -> dict[str, Any]:
        if self.early:
            return self.early.pop(0)
        with trio.fail_after(WAIT):
            message = json.loads(await self.ws.recv())
        assert set(message) == {"channel", "epoch", "offset", "data"}, message
        return message

    async def envelopes(self, count: int) -> list[dict[str, Any]]:
        return [await self.envelope() for _ in range(count)]


@asynccontextmanager
async def reader(
    node: Node, name: str, channel: str = "news", since: StreamPosition | None = None
) -> AsyncIterator[Reader]:
    url = f"ws://127.0.0.1:{node.port}/?name={name}&ch={channel}"
    if since is not None:
        url += f"&epoch={since.epoch}&offset={since.offset}"
    async with connect(url, open_timeout=WAIT) as ws:
        early = []
        with trio.fail_after(WAIT):
            while (message := json.loads(await ws.recv())).get("type") != "subscribed":
                early.append(message)
        yield Reader(ws, message, early)


@asynccontextmanager
async def two_history_nodes(engine: Engine, **channels: Any) -> AsyncIterator[tuple[Node, Node]]:
    channels = channels or {"news": NEWS}
    async with (
        history_node(engine.backend(), **channels) as a,
        history_node(engine.backend(), **channels) as b,
    ):
        yield a, b


# -- the contract on both engines -------------------------------------------------------------


async def test_publications_get_consecutive_positions_in_the_default_envelope(
    engine: Engine,
) -> None:
    async with two_history_nodes(engine) as (a, b), reader(a, "x") as x:
        assert x.result == {
            "type": "subscribed",
            "recovered": False,
            "epoch": x.result["epoch"],
            "offset": 0,
        }
        epoch = x.result["epoch"]
        for n in range(3):
            await b.broadcaster.broadcast("news", {"n": n})
        got = await x.envelopes(3)
        assert got == [
            {"channel": "news", "epoch": epoch, "offset": n + 1, "data": {"n": n}} for n in range(3)
        ]
        assert await a.broadcaster.position("news") == StreamPosition(epoch, 3)
        assert await b.broadcaster.history("news") == [
            Publication(StreamPosition(epoch, n + 1), {"n": n}) for n in range(3)
        ]
        since = StreamPosition(epoch, 1)
        assert [p.data for p in await a.broadcaster.history("news", since=since, limit=1)] == [
            {"n": 1}
        ]


async def test_a_subscriber_that_reconnects_gets_what_it_missed_in_order_once(
    engine: Engine,
) -> None:
    async with two_history_nodes(engine) as (a, b):
        async with reader(a, "x") as x:
            await b.broadcaster.broadcast("news", "before")
            last = await x.envelope()
        for n in range(5):  # x is away
            await b.broadcaster.broadcast("news", f"missed {n}")
        since = StreamPosition(last["epoch"], last["offset"])
        async with reader(a, "x", since=since) as x:
            assert x.result["recovered"] is True
            assert x.result["offset"] == 6
            await b.broadcaster.broadcast("news", "live")
            got = await x.envelopes(6)
            assert [m["data"] for m in got] == [f"missed {n}" for n in range(5)] + ["live"]
            assert [m["offset"] for m in got] == list(range(2, 8))


async def test_a_position_older_than_the_history_is_not_recovered(engine: Engine) -> None:
    async with two_history_nodes(engine, news={"history_size": 3}) as (a, b):
        for n in range(6):
            await b.broadcaster.broadcast("news", n)
        position = await a.broadcaster.position("news")
        assert [p.data for p in await a.broadcaster.history("news")] == [3, 4, 5]
        too_old = StreamPosition(position.epoch, 1)  # 2 is gone: a gap, not a recovery
        async with reader(a, "x", since=too_old) as x:
            assert (x.result["recovered"], x.result["offset"]) == (False, 6)
            await b.broadcaster.broadcast("news", "next")
            assert (await x.envelope())["offset"] == 7  # nothing replayed, live from here
        just_in = StreamPosition(position.epoch, 4)  # 5, 6 and 7 are kept
        async with reader(a, "y", since=just_in) as y:
            assert y.result["recovered"] is True
            assert [m["data"] for m in await y.envelopes(3)] == [4, 5, "next"]
        other_epoch = StreamPosition("not-this-one", 6)
        async with reader(a, "z", since=other_epoch) as z:
            assert z.result["recovered"] is False


async def test_the_sender_excluded_on_a_channel_with_history(engine: Engine) -> None:
    async with two_history_nodes(engine) as (a, _), reader(a, "x") as x, reader(a, "y") as y:
        await x.ws.send("say:from x")
        assert (await y.envelope())["data"] == "from x"
        await y.ws.send("say:from y")
        assert (await x.envelope())["data"] == "from y"  # x never got its own


async def test_a_channel_without_history_is_unchanged(engine: Engine) -> None:
    async with two_history_nodes(engine) as (a, b), reader(a, "x", channel="plain") as x:
        assert x.result == {"type": "subscribed", "recovered": False, "epoch": None, "offset": None}
        await b.broadcaster.broadcast("plain", {"raw": True})
        with trio.fail_after(WAIT):
            assert json.loads(await x.ws.recv()) == {"raw": True}  # no envelope
        with pytest.raises(ValueError, match="no history"):
            await a.broadcaster.history("plain")


async def test_a_custom_envelope_shapes_the_message() -> None:
    def envelope(channel: str, position: StreamPosition, message: Any) -> Any:
        return f"{channel}#{position.offset}:{message}"

    options = {"history_size": 5, "envelope": envelope}
    async with history_node(MemoryBackend(), news=options) as a, reader(a, "x") as x:
        await a.broadcaster.broadcast("news", "hi")
        with trio.fail_after(WAIT):
            assert await x.ws.recv() == "news#1:hi"


async def test_a_lost_history_starts_a_new_epoch_and_is_not_recovered(engine: Engine) -> None:
    async with two_history_nodes(engine) as (a, b):
        await b.broadcaster.broadcast("news", "old")
        before = await a.broadcaster.position("news")
        if isinstance(engine, MemoryEngine):
            engine.hub.forget_history()
        else:
            assert isinstance(engine, RedisEngine)
            await engine.go_down()  # no persistence: the history dies with it
            await engine.come_back()
        with trio.fail_after(WAIT):  # the nodes reconnect by themselves
            while True:
                try:
                    after = await a.broadcaster.position("news")
                    break
                except Exception:  # BackendUnavailable while reconnecting
                    await trio.sleep(0.05)
        assert after.epoch != before.epoch
        assert after.offset == 0
        async with reader(a, "x", since=before) as x:
            assert (x.result["recovered"], x.result["epoch"]) == (False, after.epoch)
            await b.broadcaster.broadcast("news", "new")
            message = await x.envelope()
            assert (message["epoch"], message["offset"], message["data"]) == (after.epoch, 1, "new")


async def test_history_with_an_infinite_limit_returns_all_that_is_kept() -> None:
    async with Broadcaster() as broadcaster:
        broadcaster.create_channel("news", history_size=5)
        for n in range(8):
            await broadcaster.broadcast("news", n)
        everything = await broadcaster.history("news", limit=math.inf)
        assert [p.data for p in everything] == [3, 4, 5, 6, 7]
        since = everything[1].position
        assert [p.data for p in await broadcaster.history("news", since=since, limit=math.inf)] == [
            5,
            6,
            7,
        ]
        for bad in (1.5, -1, -math.inf, "all"):
            with pytest.raises(ValueError, match="limit"):
                await broadcaster.history("news", limit=bad)  # type: ignore[arg-type]


async def test_history_since_a_lost_epoch_returns_the_new_epochs_publications() -> None:
    hub = MemoryHub()
    async with Broadcaster(backend=MemoryBackend(hub=hub)) as broadcaster:
        broadcaster.create_channel("news", history_size=5)
        await broadcaster.broadcast("news", "old")
        old = await broadcaster.position("news")
        hub.forget_history()
        await broadcaster.broadcast("news", "new")
        found = await broadcaster.history("news", since=old)
        assert [p.data for p in found] == ["new"]
        assert found[0].position.epoch != old.epoch  # the client sees it must refetch


async def test_the_history_expires_ttl_after_the_last_publication(autojump_clock: Any) -> None:
    async with Broadcaster() as broadcaster:
        broadcaster.create_channel("news", history_size=5, history_ttl=60.0)
        await broadcaster.broadcast("news", 1)
        first = await broadcaster.position("news")
        await trio.sleep(59)
        await broadcaster.broadcast("news", 2)
        await trio.sleep(59)
        assert await broadcaster.position("news") == StreamPosition(first.epoch, 2)
        await trio.sleep(2)
        later = await broadcaster.position("news")
        assert later.epoch != first.epoch
        assert later.offset == 0
        assert await broadcaster.history("news") == []


# -- exact delivery under concurrency ------------------------------------------------------------


async def _exact_delivery_run(engine: Engine, seed: int, *, size: int) -> int:
    """Two nodes publish; subscribers reconnect at random points with ``since``.

    Every subscriber's sequence must be gap-free and duplicate-free across its
    reconnects, except right after a subscribe that said ``recovered=False``.
    """
    rng = random.Random(seed)
    per_node = 60
    total = 2 * per_node
    gaps: list[str] = []
    finished: list[str] = []
    async with two_history_nodes(engine, news={"history_size": size}) as nodes:

        async def publish(node: Node, tag: str) -> None:
            for n in range(per_node):
                await node.broadcaster.broadcast("news", f"{tag}{n}")
                if rng.random() < 0.3:
                    await trio.lowlevel.checkpoint()  # let others interleave

        async def subscriber(name: str) -> None:
            last: StreamPosition | None = None
            recovered = True

            def take(message: dict[str, Any]) -> None:
                nonlocal last
                assert last is not None
                same = message["epoch"] == last.epoch
                assert not (same and message["offset"] <= last.offset), ("duplicate", name)
                if not same or message["offset"] != last.offset + 1:
                    assert not recovered, ("a gap after recovered=True", name, last, message)
                    gaps.append(name)
                last = StreamPosition(message["epoch"], message["offset"])

            rounds = rng.randint(2, 4)
            for round in range(rounds):
                final = round == rounds - 1
                wanted = total if final else rng.randint(1, 25)
                node = rng.choice(nodes)
                async with reader(node, name, since=last) as r:
                    recovered = r.result["recovered"]
                    answer = StreamPosition(r.result["epoch"], r.result["offset"])
                    early, r.early = r.early, []
                    if last is None:  # a first subscribe: from where its envelopes start
                        start = early[0]["offset"] - 1 if early else answer.offset
                        last = StreamPosition(answer.epoch, start)
                    replayed = [
                        m
                        for m in early
                        if m["epoch"] == answer.epoch and m["offset"] <= answer.offset
                    ]
                    for message in replayed:
                        take(message)
                    if not recovered and (
                        last.epoch != answer.epoch or answer.offset > last.offset
                    ):
                        gaps.append(name)  # announced: the client refetches its state
                        last = answer
                    for message in early[len(replayed) :]:
                        take(message)
                    for _ in range(wanted):
                        if last.offset == total:
                            break
                        take(await r.envelope())
            finished.append(name)

        async with trio.open_nursery() as nursery:
            for index, node in enumerate(nodes):
                nursery.start_soon(publish, node, "ab"[index])
            for n in range(4):
                nursery.start_soon(subscriber, f"s{n}")
    assert len(finished) == 4
    return len(gaps)


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_reconnecting_subscribers_see_no_gap_and_no_duplicate(
    engine: Engine, seed: int
) -> None:
    assert await _exact_delivery_run(engine, seed, size=1000) == 0  # all recovered


async def test_reconnecting_with_a_short_history_announces_each_gap(engine: Engine) -> None:
    gaps = await _exact_delivery_run(engine, 4, size=5)  # gaps allowed, each one announced
    assert gaps > 0  # else this run proved nothing about announcing them


@pytest.mark.redis_cluster
async def test_history_on_a_redis_cluster(redis_cluster: RedisCluster) -> None:
    cluster = RedisEngine(redis_cluster)
    channel = f"news-{random.randrange(1 << 30)}"  # the cluster is shared by the session
    async with two_history_nodes(cluster, **{channel: NEWS}) as (a, b):
        async with reader(a, "x", channel) as x:
            await b.broadcaster.broadcast(channel, "one")
            first = await x.envelope()
        await b.broadcaster.broadcast(channel, "two")
        since = StreamPosition(first["epoch"], first["offset"])
        async with reader(a, "x", channel, since=since) as x:
            assert x.result["recovered"] is True
            assert (await x.envelope())["data"] == "two"


async def test_a_socket_that_closes_during_its_subscribe_is_not_an_error() -> None:
    async with history_node(MemoryBackend(), news=NEWS) as a:
        async with connect(f"ws://127.0.0.1:{a.port}/?name=x&ch=plain", open_timeout=WAIT) as ws:
            with trio.fail_after(WAIT):
                await ws.recv()  # subscribed to "plain"
            sock = a.sockets["x"]
        await sock.wait_closed()
        result = await a.broadcaster.subscribe(sock, "news")  # closed: left at once
        assert result == SubscribeResult(recovered=False, position=None)
        assert a.broadcaster.create_channel("news").subscriber_count == 0
        assert a.broadcaster.create_channel("news", **NEWS).subscriber_count == 0


async def test_a_node_that_misses_publications_live_fills_them_from_the_history() -> None:
    hub = MemoryHub()
    backend = MemoryBackend(hub=hub)
    manager = WebSocketManager(close_timeout=1.0)
    node = Node(manager, Broadcaster(backend=backend, inbox_size=2))
    node.broadcaster.create_channel("news", **NEWS)
    async with node.broadcaster, trio.open_nursery() as nursery:
        server = await nursery.start(manager.serve, node.handler, "127.0.0.1", 0)
        node.port = server.port
        async with reader(node, "x") as x:
            await trio.testing.wait_all_tasks_blocked()  # the inbox task waits for work
            for n in range(1, 11):  # synchronously: the inbox overflows
                inner = encode_inner(b"othernod", "wait", [], json.dumps(n).encode())
                hub._publish_history("news", inner, 1000, math.inf)
            stats = node.broadcaster.statistics()
            assert stats.inbox_dropped == 7  # one taken, two buffered
            got = await x.envelopes(10)
            assert [m["offset"] for m in got] == list(range(1, 11))
            assert [m["data"] for m in got] == list(range(1, 11))
            assert node.broadcaster.statistics().gap_fills == 7
        await manager.close()
        nursery.cancel_scope.cancel()


async def test_a_replay_too_big_for_a_client_that_does_not_read_closes_it_as_slow() -> None:
    manager = WebSocketManager(
        close_timeout=0.5, send_buffer_size=64 * 1024, slow_consumer_timeout=0.2
    )
    node = Node(manager, Broadcaster())
    node.broadcaster.create_channel("news", history_size=100)
    async with node.broadcaster, trio.open_nursery() as nursery:
        server = await nursery.start(manager.serve, node.handler, "127.0.0.1", 0)
        node.port = server.port
        for _ in range(100):  # 12.5 MiB: far more than the socket and TCP can hold
            await node.broadcaster.broadcast("news", "x" * 131072)
        epoch = (await node.broadcaster.position("news")).epoch
        url = f"ws://127.0.0.1:{node.port}/?name=x&ch=news&epoch={epoch}&offset=0"
        options: dict[str, Any] = {"max_queue": 1, "max_size": None, "close_timeout": 0.5}
        options["compression"] = None  # else the repeated text shrinks to nothing
        async with connect(url, open_timeout=WAIT, **options) as ws:  # and never reads
            with trio.fail_after(WAIT):
                while "x" not in node.sockets:
                    await trio.sleep(0.01)
                sock = node.sockets["x"]
                await sock.wait_closed()  # the replay could not go on
            assert sock.close_code == 1008
            assert manager.statistics().slow_consumer_closes == 1
            with trio.fail_after(WAIT), contextlib.suppress(ClientClosed):
                async for _ in ws:  # now read what the kernel still holds, to the end
                    pass
        assert node.broadcaster.create_channel("news").subscriber_count == 0
        await manager.close()
        nursery.cancel_scope.cancel()


@pytest.mark.redis
async def test_a_redis_history_expires_ttl_after_its_last_publication(
    redis_server: RedisServer,
) -> None:
    async with Broadcaster(backend=RedisEngine(redis_server).backend()) as broadcaster:
        broadcaster.create_channel("news", history_size=5, history_ttl=0.3)
        await broadcaster.broadcast("news", 1)
        first = await broadcaster.position("news")
        assert first.offset == 1
        assert redis_server.command("PTTL", "{trio_wsmgr:news}:s") > 0
        with trio.fail_after(WAIT):  # Redis expires both keys 0.3 s after the publication
            while redis_server.command("EXISTS", "{trio_wsmgr:news}:s"):
                await trio.sleep(0.05)
        later = await broadcaster.position("news")
        assert later.epoch != first.epoch
        assert later.offset == 0
        assert await broadcaster.history("news") == []


@attrs.define(eq=False)
class GatedBackend(MemoryBackend):
    """Reads of the history wait for ``gate`` (when set): a slow history store."""

    gate: trio.Event | None = None

    async def read_history(self, topic: str, **options: Any) -> Any:
        if self.gate is not None:
            await self.gate.wait()
        return await super().read_history(topic, **options)


async def test_a_socket_unsubscribed_during_its_replay_gets_no_replay() -> None:
    backend = GatedBackend()
    async with history_node(backend, news=NEWS) as a:
        for n in range(3):
            await a.broadcaster.broadcast("news", n)
        epoch = (await a.broadcaster.position("news")).epoch
        backend.gate = trio.Event()  # the replay's read hangs
        async with trio.open_nursery() as nursery:
            readers: list[Reader] = []

            async def subscribe() -> None:
                async with reader(a, "x", since=StreamPosition(epoch, 0)) as r:
                    readers.append(r)

            nursery.start_soon(subscribe)
            with trio.fail_after(WAIT):
                while "x" not in a.sockets:
                    await trio.sleep(0.01)
            await trio.testing.wait_all_tasks_blocked()
            await a.broadcaster.unsubscribe(a.sockets["x"], "news")
            backend.gate.set()
        (r,) = readers
        assert r.early == []  # nothing replayed to a socket that left


async def test_a_live_subscriber_sees_the_new_epoch_when_the_history_is_lost(
    engine: Engine,
) -> None:
    async with two_history_nodes(engine) as (a, b), reader(a, "x") as x:
        await b.broadcaster.broadcast("news", "old")
        old = await x.envelope()
        if isinstance(engine, MemoryEngine):
            engine.hub.forget_history()
        else:
            assert isinstance(engine, RedisEngine)
            await engine.go_down()
            await engine.come_back()
        with trio.fail_after(WAIT):  # both nodes reconnect (and resubscribe) by themselves
            for node in (a, b):
                while not getattr(node.broadcaster.statistics().backend, "connected", True):
                    await trio.sleep(0.05)
            while True:
                try:
                    await b.broadcaster.broadcast("news", "new")
                    break
                except BackendUnavailable:
                    await trio.sleep(0.05)
        new = await x.envelope()  # a resubscribed by itself; the envelope tells the story
        assert (new["data"], new["offset"]) == ("new", 1)
        assert new["epoch"] != old["epoch"]


# -- a history that comes back shorter: the lost offsets are never given again --------------


async def _connected(*nodes: Node) -> None:
    with trio.fail_after(WAIT):  # the nodes reconnect (and resubscribe) by themselves
        for node in nodes:
            while not getattr(node.broadcaster.statistics().backend, "connected", True):
                await trio.sleep(0.05)


async def _broadcast_when_up(node: Node, channel: str, message: object) -> None:
    with trio.fail_after(3 * WAIT):
        while True:
            try:
                await node.broadcaster.broadcast(channel, message)
                return
            except BackendUnavailable:
                await trio.sleep(0.05)


@pytest.mark.redis
async def test_a_redis_restarted_from_a_snapshot_without_its_last_writes_starts_a_new_epoch(
    redis_server: RedisServer,
) -> None:
    engine = RedisEngine(redis_server)
    async with two_history_nodes(engine) as (a, b), reader(a, "x") as x:
        for n in range(3):
            await b.broadcaster.broadcast("news", n)
        redis_server.command("SAVE")  # the snapshot it will come back from
        for n in range(3, 5):  # acknowledged, in no snapshot
            await b.broadcaster.broadcast("news", n)
        seen = await x.envelopes(5)
        epoch = seen[-1]["epoch"]
        assert [m["offset"] for m in seen] == [1, 2, 3, 4, 5]
        redis_server.kill()  # as a crash between two saves
        await redis_server.astart()
        assert redis_server.command("HGET", "{trio_wsmgr:news}:m", "t") == "3", "shorter"
        await _connected(a, b)
        await _broadcast_when_up(b, "news", "new")
        new = await x.envelope()  # x saw offsets 4 and 5 of the lost story: told, not skipped
        assert new["data"] == "new"
        assert new["epoch"] != epoch
        assert new["offset"] == 4
        assert await a.broadcaster.position("news") == StreamPosition(new["epoch"], 4)
        kept = await a.broadcaster.history("news")
        assert [(p.position.offset, p.data) for p in kept] == [(1, 0), (2, 1), (3, 2), (4, "new")]
        for name, since in (("y", StreamPosition(epoch, 5)), ("z", StreamPosition(epoch, 2))):
            async with reader(a, name, since=since) as r:  # the old epoch: never recovered
                assert (r.result["recovered"], r.result["epoch"]) == (False, new["epoch"])
                assert r.early == []


def _info(node: RedisServer) -> dict[str, str]:
    lines = str(node.command("INFO", "replication")).splitlines()
    return dict(line.split(":", 1) for line in lines if ":" in line)


def _cut_replication(master: RedisServer) -> None:
    """From now on ``master``'s replica gets nothing: its link is cut and it cannot
    reconnect (a password it does not know). ``master``'s clients stay logged in."""
    commands = [("CONFIG", "SET", "requirepass", "cut"), ("CLIENT", "KILL", "TYPE", "replica")]
    with socket.create_connection(("127.0.0.1", master.port), timeout=2) as conn:
        conn.sendall(b"".join(encode(*command) for command in commands))
        reader = conn.makefile("rb")
        assert [_read_reply(reader) for _ in commands] == ["OK", 1]


@pytest.mark.redis_cluster
async def test_a_cluster_failover_that_loses_publications_starts_a_new_epoch(
    fresh_redis_cluster: RedisCluster,
) -> None:
    cluster = fresh_redis_cluster
    seed = int(cluster.url.rsplit(":", 1)[1])
    victim = next(m for m in cluster.masters() if m.port != seed)
    channel = next(
        f"news-{i}" for i in range(10_000) if cluster.owner(f"trio_wsmgr:news-{i}") is victim
    )
    (replica,) = [n for n in cluster.nodes if _info(n).get("master_port") == str(victim.port)]
    async with (
        two_history_nodes(RedisEngine(cluster), **{channel: NEWS}) as (a, b),
        reader(a, "x", channel) as x,
    ):
        for n in range(3):
            await b.broadcaster.broadcast(channel, n)
        with trio.fail_after(WAIT):  # the replica has those three
            while _info(replica).get("master_repl_offset") != _info(victim)["master_repl_offset"]:
                await trio.sleep(0.02)
        _cut_replication(victim)
        for n in range(3, 6):  # acknowledged by the master, never replicated
            await b.broadcaster.broadcast(channel, n)
        seen = await x.envelopes(6)
        epoch = seen[-1]["epoch"]
        assert [m["offset"] for m in seen] == [1, 2, 3, 4, 5, 6]
        cluster.kill(victim)
        promoted = await cluster.wait_promoted(victim)
        assert promoted is replica
        assert promoted.command("HGET", f"{{trio_wsmgr:{channel}}}:m", "t") == "3", "shorter"
        await _connected(a, b)  # both subscribed on the promoted replica: nothing lost in between
        await _broadcast_when_up(b, channel, "after")
        new = await x.envelope()  # x (live through the failover) is told, not skipped
        assert (new["data"], new["offset"]) == ("after", 4)
        assert new["epoch"] != epoch
        for name, since in (("y", StreamPosition(epoch, 6)), ("z", StreamPosition(epoch, 2))):
            async with reader(b, name, channel, since=since) as r:
                assert (r.result["recovered"], r.result["epoch"]) == (False, new["epoch"])
                assert r.early == []
        async with reader(b, "w", channel, since=StreamPosition(new["epoch"], 3)) as w:
            assert w.result["recovered"] is True  # within the new epoch: as always
            assert [m["data"] for m in await w.envelopes(1)] == ["after"]


@pytest.mark.redis_cluster
async def test_a_master_killed_while_publishing_with_history_leaves_no_silent_skip(
    fresh_redis_cluster: RedisCluster,
) -> None:
    cluster = fresh_redis_cluster
    seed = int(cluster.url.rsplit(":", 1)[1])
    victim = next(m for m in cluster.masters() if m.port != seed)
    channel = next(
        f"news-{i}" for i in range(10_000) if cluster.owner(f"trio_wsmgr:news-{i}") is victim
    )
    got: list[dict[str, Any]] = []
    sent_after_promotion: list[str] = []
    promoted, stopped = trio.Event(), trio.Event()
    done = False
    async with (
        two_history_nodes(RedisEngine(cluster), **{channel: NEWS}) as (a, b),
        reader(a, "x", channel) as x,
    ):

        async def publish() -> None:
            for n in range(3000):  # bounded; about every 10 ms until enough
                try:
                    await b.broadcaster.broadcast(channel, f"m{n}")
                except BackendUnavailable:
                    pass  # the shard is down: told, and not stored
                else:
                    if promoted.is_set():
                        sent_after_promotion.append(f"m{n}")
                if done:
                    break
                await trio.sleep(0.01)
            stopped.set()

        async def read() -> None:
            while True:
                got.append(await x.envelope())

        async with trio.open_nursery() as nursery:
            nursery.start_soon(publish)
            nursery.start_soon(read)
            with trio.fail_after(WAIT):
                while len(got) < 10:
                    await trio.sleep(0.01)
            before = StreamPosition(got[-1]["epoch"], got[-1]["offset"])
            cluster.kill(victim)  # while b publishes
            await cluster.wait_promoted(victim)
            promoted.set()
            with trio.fail_after(3 * WAIT):
                while sum(m["epoch"] != before.epoch for m in got) < 5:
                    await trio.sleep(0.01)
                done = True
                await stopped.wait()
                while got[-1]["data"] != sent_after_promotion[-1]:  # the last one arrived
                    await trio.sleep(0.01)
            nursery.cancel_scope.cancel()
        kept = {p.position: p.data for p in await a.broadcaster.history(channel, limit=1000)}
    final = got[-1]["epoch"]
    assert final != before.epoch, "the promoted replica writes a new epoch"
    for prev, message in itertools.pairwise(got):
        if message["epoch"] == prev["epoch"]:  # within an epoch: never twice, never backwards
            assert message["offset"] > prev["offset"], (prev, message)
    # A position names one publication: what x got in the new epoch is what the history says.
    news = [m for m in got if m["epoch"] == final]
    for message in news:
        assert kept[StreamPosition(final, message["offset"])] == message["data"]
    # Once x saw the new epoch (announced: it refetches), nothing more is missing...
    assert [m["offset"] for m in news] == list(range(news[0]["offset"], news[-1]["offset"] + 1))
    # ... and what it did not get since the promotion came before that announcement.
    where = {data: position.offset for position, data in kept.items()}
    missed = [where[data] for data in sent_after_promotion if data not in {m["data"] for m in got}]
    assert all(offset < news[0]["offset"] for offset in missed), (missed, news[0])
    async with (
        history_node(RedisEngine(cluster).backend(), **{channel: NEWS}) as c,
        reader(c, "y", channel, since=before) as y,
    ):
        # resuming from before the kill, in the old epoch: told to refetch, nothing replayed
        assert (y.result["recovered"], y.result["epoch"]) == (False, got[-1]["epoch"])
        assert y.early == []
