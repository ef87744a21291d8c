"""Redis Cluster, tested as it fails in production: a real six-process cluster.

Two nodes (a WebSocketManager and a Broadcaster on ``RedisBackend(..., cluster=True)``
each), one real ``websockets`` client per node subscribed to ~30 channels spread over
the three shards, and exact per-channel delivery checks: what arrives arrives once
and in order, and after each fault every channel delivers again.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import parse_qs, urlsplit

import attrs
import pytest
import trio
from websockets.trio.client import ClientConnection, connect

from redis_cluster import RedisCluster
from redis_cluster import fresh_redis_cluster_fixture as fresh_redis_cluster_fixture
from redis_server import RedisServer
from redis_server import redis_server_fixture as redis_server_fixture
from trio_wsmgr import (
    BackendUnavailable,
    Broadcaster,
    ManagedSocket,
    RedisBackend,
    WebSocketManager,
)
from trio_wsmgr._backoff import Backoff

pytestmark = pytest.mark.redis_cluster

PREFIX = "trio_wsmgr:"
WAIT = 10.0
CHANNELS = [f"room:{i}" for i in range(30)]


def cluster_backend(cluster: RedisCluster, url: str | None = None, **options: Any) -> RedisBackend:
    options.setdefault("connect_timeout", 2.0)
    options.setdefault("command_timeout", 1.0)
    options.setdefault("backoff", Backoff(initial=0.05, maximum=0.5))
    return RedisBackend(url or cluster.url, cluster=True, **options)


@attrs.define(eq=False)
class Node:
    name: str
    manager: WebSocketManager
    broadcaster: Broadcaster
    backend: RedisBackend
    port: int = 0

    async def handler(self, sock: ManagedSocket) -> None:
        for channel in parse_qs(urlsplit(sock.path).query).get("ch", []):
            await self.broadcaster.subscribe(sock, channel)
        await sock.send("ready")
        async for _ in sock:
            pass


@asynccontextmanager
async def running_node(name: str, backend: RedisBackend) -> AsyncIterator[Node]:
    manager = WebSocketManager(close_timeout=1.0, heartbeat_interval=math.inf)
    node = Node(name, manager, Broadcaster(backend=backend), backend)
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
async def subscriber(node: Node, channels: list[str]) -> AsyncIterator[ClientConnection]:
    query = "&".join(f"ch={channel}" for channel in channels)
    async with connect(f"ws://127.0.0.1:{node.port}/?{query}", open_timeout=WAIT) as ws:
        with trio.fail_after(WAIT):
            assert await ws.recv() == "ready"
        yield ws


@attrs.define(eq=False)
class Traffic:
    """Every node publishes message ``seq`` on every channel, round after round; every
    node's client records what arrives, and when.

    A message is ``"<publisher>|<channel>|<seq>"``. ``sent`` holds the sequence numbers
    whose ``broadcast`` returned (published), ``failed`` those that raised
    ``BackendUnavailable`` (served locally only).
    """

    nodes: list[Node]
    channels: list[str]
    interval: float = 0.1
    seq: int = 0
    sent: dict[tuple[str, str], list[int]] = attrs.field(factory=lambda: defaultdict(list))
    failed: dict[tuple[str, str], list[int]] = attrs.field(factory=lambda: defaultdict(list))
    #: receiver -> (publisher, channel) -> [(seq, arrival time)]
    got: dict[str, dict[tuple[str, str], list[tuple[int, float]]]] = attrs.field(
        factory=lambda: defaultdict(lambda: defaultdict(list))
    )
    running: bool = True
    stopped: trio.Event = attrs.field(factory=trio.Event)

    async def read(self, receiver: str, ws: ClientConnection) -> None:
        async for message in ws:
            publisher, channel, number = str(message).split("|")
            self.got[receiver][publisher, channel].append((int(number), trio.current_time()))

    async def produce(self) -> None:
        """One round per ``interval``: each node publishes once on each channel."""
        try:
            await self._rounds()
        finally:
            self.stopped.set()

    async def _rounds(self) -> None:
        while self.running:
            seq, self.seq = self.seq, self.seq + 1
            for node in self.nodes:
                for channel in self.channels:
                    key = (node.name, channel)
                    try:
                        await node.broadcaster.broadcast(channel, f"{node.name}|{channel}|{seq}")
                    except BackendUnavailable:
                        self.failed[key].append(seq)
                    else:
                        self.sent[key].append(seq)
            await trio.sleep(self.interval)

    def cross(self) -> list[tuple[str, str, str]]:
        """(receiver, publisher, channel) for every cross-node path."""
        return [
            (r.name, p.name, c)
            for r in self.nodes
            for p in self.nodes
            if r is not p
            for c in self.channels
        ]

    def flowing_since(self, since: float, channels: list[str] | None = None) -> bool:
        """Every cross-node path (of ``channels``) delivered a message after ``since``."""
        for receiver, publisher, channel in self.cross():
            if channels is not None and channel not in channels:
                continue
            got = self.got[receiver][publisher, channel]
            if not got or got[-1][1] < since:
                return False
        return True

    async def wait_flowing(self, since: float, timeout: float = WAIT) -> float:
        """Wait until every cross-node path delivers again; return when that happened."""
        with trio.fail_after(timeout):
            while not self.flowing_since(since):
                await trio.sleep(0.01)
        return trio.current_time()

    def first_arrival_after(self, since: float, channels: list[str]) -> float:
        """When the slowest path of ``channels`` delivered its first message after ``since``."""
        latest = since
        for receiver, publisher, channel in self.cross():
            if channel in channels:
                times = [t for _, t in self.got[receiver][publisher, channel] if t >= since]
                latest = max(latest, min(times))
        return latest

    async def stop_and_drain(self, timeout: float = WAIT) -> None:
        """Stop publishing, then wait until the last message of every path has arrived."""
        self.running = False
        with trio.fail_after(timeout):
            await self.stopped.wait()  # the round under way is complete
            while not all(
                self.got[r][p, c] and self.got[r][p, c][-1][0] == self.sent[p, c][-1]
                for r, p, c in self.cross()
            ):
                await trio.sleep(0.01)

    def lost(self) -> dict[tuple[str, str, str], list[int]]:
        """Published (broadcast returned) but never received, per cross-node path."""
        lost = {}
        for receiver, publisher, channel in self.cross():
            received = {seq for seq, _ in self.got[receiver][publisher, channel]}
            missing = sorted(set(self.sent[publisher, channel]) - received)
            if missing:
                lost[receiver, publisher, channel] = missing
        return lost

    def check_exact(self, *, lost_only_within: tuple[int, int] | None = None) -> None:
        """At most once and in order everywhere; local delivery complete; cross-node loss
        only inside the fault window of sequence numbers (none without a fault)."""
        for receiver in self.nodes:
            for publisher in self.nodes:
                for channel in self.channels:
                    key = (publisher.name, channel)
                    numbers = [seq for seq, _ in self.got[receiver.name][key]]
                    assert numbers == sorted(set(numbers)), (
                        f"duplicate/reordered {receiver.name} {key}"
                    )
                    attempted = sorted(self.sent[key] + self.failed[key])
                    if receiver is publisher:
                        assert numbers == attempted, f"local delivery incomplete on {key}"
                    else:
                        assert set(numbers) <= set(attempted), f"phantom messages on {key}"
        for path, missing in self.lost().items():
            assert lost_only_within is not None, f"{path} lost {missing} without a fault"
            low, high = lost_only_within
            assert low <= missing[0], f"{path} lost {missing}, before the fault"
            assert missing[-1] <= high, f"{path} lost {missing}, after the recovery"


@asynccontextmanager
async def traffic_between(
    cluster: RedisCluster, channels: list[str] = CHANNELS, **options: Any
) -> AsyncIterator[Traffic]:
    """Two nodes, a client on each subscribed to ``channels``, traffic flowing both ways."""
    async with (
        running_node("a", cluster_backend(cluster, **options)) as a,
        running_node("b", cluster_backend(cluster, **options)) as b,
        subscriber(a, channels) as wa,
        subscriber(b, channels) as wb,
        trio.open_nursery() as nursery,
    ):
        traffic = Traffic([a, b], channels)
        nursery.start_soon(traffic.read, "a", wa)
        nursery.start_soon(traffic.read, "b", wb)
        nursery.start_soon(traffic.produce)
        yield traffic
        nursery.cancel_scope.cancel()


def shards_of(cluster: RedisCluster, channels: list[str]) -> dict[int, list[str]]:
    """master port -> the channels it owns."""
    owners: dict[int, list[str]] = defaultdict(list)
    for channel in channels:
        owners[cluster.owner(PREFIX + channel).port].append(channel)
    return owners


# -- the fixture itself -------------------------------------------------------------------


def test_the_cluster_fixture_is_three_healthy_shards_over_all_the_channels(
    redis_cluster: RedisCluster,
) -> None:
    assert redis_cluster.healthy()
    assert len(redis_cluster.masters()) == 3
    owners = shards_of(redis_cluster, CHANNELS)
    assert len(owners) == 3, "the test channels cover every shard"
    assert all(len(channels) >= 5 for channels in owners.values())


async def test_cluster_mode_against_a_plain_server_says_why_once_and_serves_locally(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    backend = RedisBackend(
        redis_server.url, cluster=True, backoff=Backoff(initial=0.01, maximum=0.05)
    )
    async with running_node("a", backend) as a, subscriber(a, ["lobby"]) as ws:
        stats = backend.statistics()
        assert (stats.connected, stats.degraded, stats.shards) == (False, False, ())
        for _ in range(20):
            with pytest.raises(BackendUnavailable) as caught:
                await a.broadcaster.broadcast("lobby", "a|lobby|0")
            assert caught.value.delivered == 1
            with trio.fail_after(WAIT):
                assert await ws.recv() == "a|lobby|0", "served locally all the same"
            await trio.sleep(0.01)  # several layout reads fail meanwhile
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1, warnings
    assert "cluster support disabled" in warnings[0]


# -- delivery on a healthy cluster -----------------------------------------------------------


async def test_every_channel_of_every_shard_delivers_across_nodes_exactly_once(
    redis_cluster: RedisCluster,
) -> None:
    async with traffic_between(redis_cluster) as traffic:
        await traffic.wait_flowing(since=trio.current_time())
        await traffic.stop_and_drain()
    traffic.check_exact()
    assert not any(traffic.failed.values()), "nothing failed on a healthy cluster"


# -- faults ----------------------------------------------------------------------------------
#
# Each scenario gets a cluster of its own (it kills or reshards it). The figures it
# measures are printed (``pytest -s``) and reported in docs/howto/redis.rst.


def report(scenario: str, **figures: object) -> None:
    print(f"\n[cluster] {scenario}: " + ", ".join(f"{k}={v}" for k, v in figures.items()))


async def eventually(check: Any, what: str, timeout: float = WAIT) -> None:
    with trio.move_on_after(timeout):
        while not check():
            await trio.sleep(0.01)
        return
    raise AssertionError(f"timed out waiting until {what}")


def channel_on(cluster: RedisCluster, node: Any, stem: str) -> str:
    """A channel name (``stem:N``) whose slot ``node`` owns."""
    for i in range(10_000):
        if cluster.owner(f"{PREFIX}{stem}:{i}").port == node.port:
            return f"{stem}:{i}"
    raise LookupError("no such channel")


async def check_a_new_subscription_works(
    cluster: RedisCluster, traffic: Traffic, owner: Any
) -> None:
    """A channel first subscribed now, on a slot of ``owner``, delivers across nodes."""
    a, b = traffic.nodes
    late = channel_on(cluster, owner, "late")
    async with subscriber(b, [late]) as ws:
        assert await a.broadcaster.broadcast(late, "a|late|0") == 0
        with trio.fail_after(WAIT):
            assert await ws.recv() == "a|late|0"


async def test_a_killed_master_fails_over_and_every_channel_delivers_again(
    fresh_redis_cluster: RedisCluster, caplog: pytest.LogCaptureFixture
) -> None:
    cluster = fresh_redis_cluster
    seed = cluster.node(int(cluster.url.rsplit(":", 1)[1]))
    victim = next(m for m in cluster.masters() if m.port != seed.port)
    lost_channels = shards_of(cluster, CHANNELS)[victim.port]
    async with traffic_between(cluster) as traffic:
        a, b = traffic.nodes
        await traffic.wait_flowing(since=trio.current_time())
        seq_at_kill, killed_at = traffic.seq, trio.current_time()
        cluster.kill(victim)
        await eventually(lambda: b.backend.statistics().degraded, "the backend says degraded")
        stats = b.backend.statistics()
        assert not stats.connected
        assert [s.connected for s in stats.shards if s.address.endswith(f":{victim.port}")] == [
            False
        ]
        promoted = await cluster.wait_promoted(victim)
        promoted_at = trio.current_time()
        # The bar: every channel delivers again within 5 s of the promotion.
        resumed_at = await traffic.wait_flowing(since=promoted_at, timeout=5.0)
        seq_resumed = traffic.seq
        await eventually(lambda: a.backend.connected and b.backend.connected, "connected again")
        assert not b.backend.statistics().degraded
        restored = promoted.channels(PREFIX)
        assert set(lost_channels) <= restored, "subscriptions restored on the new owner"
        await check_a_new_subscription_works(cluster, traffic, promoted)
        await traffic.stop_and_drain()
    traffic.check_exact(lost_only_within=(seq_at_kill - 1, seq_resumed))
    assert {channel for (_, channel), seqs in traffic.failed.items() if seqs} <= set(lost_channels)
    warnings = [
        r for r in caplog.records if r.levelname == "WARNING" and str(victim.port) in r.getMessage()
    ]
    assert len(warnings) == 2, "the outage is logged once per node, not once per message"
    assert {channel for _, _, channel in traffic.lost()} <= set(lost_channels), "others unhurt"
    report(
        "master killed",
        promotion=f"{promoted_at - killed_at:.2f}s",
        gap=f"{traffic.first_arrival_after(killed_at, lost_channels) - killed_at:.2f}s",
        after_promotion=f"{resumed_at - promoted_at:.2f}s",
        lost=sum(len(v) for v in traffic.lost().values()),
        failed=sum(len(v) for v in traffic.failed.values()),
        rounds=traffic.seq,
    )


async def test_the_master_named_in_the_url_killed_the_other_seeds_take_over(
    fresh_redis_cluster: RedisCluster,
) -> None:
    cluster = fresh_redis_cluster
    victim = cluster.masters()[0]
    others = [node.url for node in cluster.nodes if node is not victim]
    lost_channels = shards_of(cluster, CHANNELS)[victim.port]
    async with traffic_between(cluster, url=victim.url, seeds=others[:2]) as traffic:
        a, _ = traffic.nodes
        await traffic.wait_flowing(since=trio.current_time())
        seq_at_kill, killed_at = traffic.seq, trio.current_time()
        cluster.kill(victim)
        promoted = await cluster.wait_promoted(victim)
        promoted_at = trio.current_time()
        resumed_at = await traffic.wait_flowing(since=promoted_at, timeout=5.0)
        seq_resumed = traffic.seq
        # A node that starts now, its URL naming the dead node, finds the cluster by its seeds.
        fresh = channel_on(cluster, promoted, "fresh")
        backend = cluster_backend(cluster, url=victim.url, seeds=others)
        async with running_node("c", backend) as c, subscriber(c, [fresh]) as ws:
            assert backend.statistics().connected
            await a.broadcaster.broadcast(fresh, "a|fresh|0")
            with trio.fail_after(WAIT):
                assert await ws.recv() == "a|fresh|0"
        await traffic.stop_and_drain()
    traffic.check_exact(lost_only_within=(seq_at_kill - 1, seq_resumed))
    assert {channel for _, _, channel in traffic.lost()} <= set(lost_channels)
    report(
        "seed master killed",
        promotion=f"{promoted_at - killed_at:.2f}s",
        gap=f"{traffic.first_arrival_after(killed_at, lost_channels) - killed_at:.2f}s",
        after_promotion=f"{resumed_at - promoted_at:.2f}s",
        lost=sum(len(v) for v in traffic.lost().values()),
        failed=sum(len(v) for v in traffic.failed.values()),
    )


async def test_slots_migrated_while_broadcasting_keep_delivering_on_their_new_owner(
    fresh_redis_cluster: RedisCluster,
) -> None:
    cluster = fresh_redis_cluster
    owners = shards_of(cluster, CHANNELS)
    first, second, third = sorted(owners)
    moves = [(channel, cluster.node(third)) for channel in owners[first][:3]]
    moves += [(channel, cluster.node(first)) for channel in owners[second][:3]]
    async with traffic_between(cluster) as traffic:
        await traffic.wait_flowing(since=trio.current_time())
        seq_before, moved_at = traffic.seq, trio.current_time()
        for channel, target in moves:
            cluster.migrate_slot(cluster.slot_of(PREFIX + channel), target)
            await trio.sleep(0.05)  # traffic goes on between the moves
        done_at = trio.current_time()
        resumed_at = await traffic.wait_flowing(since=done_at)
        seq_after = traffic.seq
        await eventually(
            lambda: all(channel in target.channels(PREFIX) for channel, target in moves),
            "the moved channels subscribed on their new owners",
        )
        await traffic.stop_and_drain()
    sources = {cluster.node(port) for port in (first, second)}
    for channel, _ in moves:
        assert all(channel not in node.channels(PREFIX) for node in sources)
    traffic.check_exact(lost_only_within=(seq_before - 1, seq_after))
    assert {channel for _, _, channel in traffic.lost()} <= {c for c, _ in moves}
    report(
        "6 slots migrated",
        moves=f"{done_at - moved_at:.2f}s",
        all_flowing_after=f"{resumed_at - done_at:.2f}s",
        lost=sum(len(v) for v in traffic.lost().values()),
        failed=sum(len(v) for v in traffic.failed.values()),
    )


async def test_the_whole_cluster_restarted_delivery_resumes_by_itself(
    fresh_redis_cluster: RedisCluster,
) -> None:
    cluster = fresh_redis_cluster
    async with traffic_between(cluster) as traffic:
        a, b = traffic.nodes
        await traffic.wait_flowing(since=trio.current_time())
        seq_at_kill, killed_at = traffic.seq, trio.current_time()
        for node in cluster.nodes:
            cluster.kill(node)
        await eventually(
            lambda: not any(s.connected for s in b.backend.statistics().shards), "all shards down"
        )
        stats = b.backend.statistics()
        assert not stats.connected
        assert not stats.degraded
        for node in cluster.nodes:
            await cluster.restart(node)
        await cluster.wait_healthy()
        healthy_at = trio.current_time()
        resumed_at = await traffic.wait_flowing(since=healthy_at)
        seq_resumed = traffic.seq
        await eventually(lambda: a.backend.connected and b.backend.connected, "connected again")
        await traffic.stop_and_drain()
    traffic.check_exact(lost_only_within=(seq_at_kill - 1, seq_resumed))
    report(
        "whole cluster restarted",
        down_and_up=f"{healthy_at - killed_at:.2f}s",
        flowing_after_healthy=f"{resumed_at - healthy_at:.2f}s",
        lost=sum(len(v) for v in traffic.lost().values()),
        failed=sum(len(v) for v in traffic.failed.values()),
    )


async def test_a_history_channel_keeps_publishing_while_its_slot_migrates(
    fresh_redis_cluster: RedisCluster,
) -> None:
    cluster = fresh_redis_cluster
    async with running_node("a", cluster_backend(cluster)) as a:
        a.broadcaster.create_channel("news", history_size=100)
        await a.broadcaster.broadcast("news", "m0")  # its stream now lives on the slot's owner
        slot = cluster.slot_of(PREFIX + "news")
        target = next(m for m in cluster.masters() if m.port != cluster.owner_of_slot(slot).port)
        source = cluster.begin_migration(slot, target)
        assert int(source.command("CLUSTER", "COUNTKEYSINSLOT", slot)) == 0, "keys moved"
        await a.broadcaster.broadcast("news", "m1")  # the source answers ASK: follow it
        cluster.finish_migration(slot, target)
        await a.broadcaster.broadcast("news", "m2")  # the source answers MOVED: follow it
        history = await a.broadcaster.history("news")
        assert [p.data for p in history] == ["m0", "m1", "m2"]
        assert [p.position.offset for p in history] == [1, 2, 3]
        assert a.backend.statistics().publish_failures == 0
