"""A real multi-shard Redis Cluster for tests: six ``redis-server`` processes, faults on demand.

Three masters and three replicas on free ports of 127.0.0.1 (bus ports free too), no
persistence, created with ``redis-cli --cluster create ... --cluster-replicas 1`` and a
short node timeout, so a killed master's replica is promoted in about a second.

* ``redis_cluster`` (tests/conftest.py): one cluster for the whole session, for tests that
  leave it as they found it;
* ``fresh_redis_cluster`` (here; import it into the test module): a cluster of one test's
  own, for tests that kill, restart or reshard.

Both skip loudly (fail under ``TRIO_WSMGR_REQUIRE_EXTERNAL=1``) without ``redis-server``
>= 7 and ``redis-cli``. Tests using them are marked ``redis_cluster``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from conftest import require
from redis_server import MISSING, RedisServer, find_redis_server, free_cluster_port, server_version


def find_redis_cli(server: str | None) -> str | None:
    """``redis-cli`` from PATH, else next to ``server``."""
    found = shutil.which("redis-cli")
    if found:
        return found
    if server:
        beside = Path(server).with_name("redis-cli")
        if beside.is_file() and os.access(beside, os.X_OK):
            return str(beside)
    return None


def _info(text: object) -> dict[str, str]:
    lines = str(text).splitlines()
    return dict(line.split(":", 1) for line in lines if ":" in line and not line.startswith("#"))


class RedisCluster:
    """Six (by default) ``redis-server --cluster-enabled yes`` processes: 3 masters, 3 replicas.

    Created with ``redis-cli --cluster create ... --cluster-replicas 1``; the node
    timeout is short (``node_timeout`` ms) so a killed master's replica is promoted in
    about that long. Helpers kill and restart nodes, find the owner of a channel's
    slot, migrate slots and wait (on conditions, bounded) until the cluster is healthy.
    """

    cluster = True  # what the broadcaster tests' RedisEngine asks of its "server"

    def __init__(
        self,
        server: str,
        cli: str,
        *,
        masters: int = 3,
        replicas: int = 1,
        node_timeout: int = 1000,
    ) -> None:
        self.cli = cli
        self.masters_wanted = masters
        args = (
            "--cluster-node-timeout",
            str(node_timeout),
            "--cluster-require-full-coverage",
            "no",
            # A replica that never synced refuses to fail over: start the transfer at
            # once (the default waits 5 s for more replicas).
            "--repl-diskless-sync-delay",
            "0",
        )
        self.nodes = [
            RedisServer(server, cluster=True, own_all_slots=False, extra_args=args)
            for _ in range(masters * (1 + replicas))
        ]
        self.replicas = replicas

    # -- life -------------------------------------------------------------------------

    def create(self, timeout: float = 30.0) -> None:
        """Start every node, join them with redis-cli, wait until the cluster is healthy."""
        for node in self.nodes:
            for attempt in range(5):  # another process may take a free port (or bus port) first
                try:
                    node.start()
                    break
                except RuntimeError:
                    if attempt == 4:
                        raise
                    node.port = free_cluster_port()
        addresses = [f"127.0.0.1:{node.port}" for node in self.nodes]
        argv = [self.cli, "--cluster", "create", *addresses]
        argv += ["--cluster-replicas", str(self.replicas), "--cluster-yes"]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed: {done.stdout}{done.stderr}")
        deadline = time.monotonic() + timeout
        while not self.healthy():
            if time.monotonic() > deadline:
                raise RuntimeError(f"the cluster did not become healthy: {self.describe()}")
            time.sleep(0.05)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def healthy(self) -> bool:
        """Every node runs, says ``cluster_state:ok``, sees all slots, all agree on the
        owners, and every replica is in sync with its master (so it can fail over)."""
        views = set()
        for node in self.nodes:
            if not node.running:
                return False
            try:
                info = _info(node.command("CLUSTER", "INFO"))
                if info.get("cluster_state") != "ok" or info.get("cluster_slots_ok") != "16384":
                    return False
                if info.get("cluster_known_nodes") != str(len(self.nodes)):
                    return False
                replication = _info(node.command("INFO", "replication"))
                if (
                    replication.get("role") == "slave"
                    and replication.get("master_link_status") != "up"
                ):
                    return False
                views.add(tuple(sorted(self._slot_owners(node).items())))
            except (OSError, RuntimeError):
                return False
        return len(views) == 1 and len(dict(next(iter(views)))) == self.masters_wanted

    async def wait_healthy(self, timeout: float = 30.0) -> None:
        with trio.fail_after(timeout):
            while not self.healthy():
                await trio.sleep(0.05)

    def describe(self) -> str:
        live = self.live()
        return str(live.command("CLUSTER", "NODES")) if live else "no node running"

    # -- topology -----------------------------------------------------------------------

    def live(self) -> RedisServer | None:
        """A running node that answers."""
        for node in self.nodes:
            if node.running:
                with contextlib.suppress(OSError, RuntimeError):
                    node.command("PING")
                    return node
        return None

    def node(self, port: int) -> RedisServer:
        return next(node for node in self.nodes if node.port == port)

    @staticmethod
    def _slot_owners(node: RedisServer) -> dict[tuple[int, int], int]:
        """``(first slot, last slot) -> master port``, as ``node`` sees it (CLUSTER SLOTS)."""
        return {(int(r[0]), int(r[1])): int(r[2][1]) for r in node.command("CLUSTER", "SLOTS")}

    def masters(self) -> list[RedisServer]:
        """The running nodes that own slots now."""
        found = []
        for node in self.nodes:
            if node.running:
                with contextlib.suppress(OSError, RuntimeError):
                    if "role:master" in str(node.command("INFO", "replication")):
                        found.append(node)
        return found

    def slot_of(self, channel: str) -> int:
        live = self.live()
        assert live is not None
        return int(live.command("CLUSTER", "KEYSLOT", channel))

    def owner(self, channel: str, *, asked: RedisServer | None = None) -> RedisServer:
        """The master that owns ``channel``'s hash slot (as ``asked`` sees it)."""
        slot = self.slot_of(channel)
        asked = asked or self.live()
        assert asked is not None
        for (first, last), port in self._slot_owners(asked).items():
            if first <= slot <= last:
                return self.node(port)
        raise LookupError(f"no node owns slot {slot}")

    def node_id(self, node: RedisServer) -> str:
        return str(node.command("CLUSTER", "MYID"))

    # -- faults -------------------------------------------------------------------------

    def kill(self, node: RedisServer) -> None:
        node.kill()

    async def restart(self, node: RedisServer) -> None:
        """Start a killed node again with its nodes.conf: it rejoins (a master comes back
        as a replica of whoever was promoted meanwhile)."""
        await node.astart()

    async def wait_promoted(self, killed: RedisServer, timeout: float = 30.0) -> RedisServer:
        """Wait until every running node agrees that one other node owns all the slots
        ``killed`` owned (its replica, promoted by Redis); return that node."""
        ranges = [
            r for r, port in self._slot_owners(self._any_live()).items() if port == killed.port
        ]
        with trio.fail_after(timeout):
            while True:
                owners: set[int] = set()
                for node in self.nodes:
                    if node.running:
                        with contextlib.suppress(OSError, RuntimeError):
                            seen = self._slot_owners(node)
                            owners |= {seen.get(r, -1) for r in ranges}
                            continue
                        owners.add(-1)
                if len(owners) == 1 and (port := owners.pop()) not in (killed.port, -1):
                    return self.node(port)
                await trio.sleep(0.02)

    def _any_live(self) -> RedisServer:
        live = self.live()
        if live is None:
            raise RuntimeError("no node of the cluster is running")
        return live

    def migrate_slot(self, slot: int, target: RedisServer) -> None:
        """Move ``slot`` (keys included) to ``target``, as ``redis-cli --cluster reshard`` does."""
        self.begin_migration(slot, target)
        self.finish_migration(slot, target)

    def begin_migration(self, slot: int, target: RedisServer) -> RedisServer:
        """Mark ``slot`` migrating to ``target`` and move its keys there; return the source.

        Until :meth:`finish_migration`, the source answers ``ASK`` for the slot's keys."""
        source = self.owner_of_slot(slot)
        if source.port == target.port:
            return source
        source_id, target_id = self.node_id(source), self.node_id(target)
        target.command("CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
        source.command("CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)
        while keys := source.command("CLUSTER", "GETKEYSINSLOT", slot, 100):
            source.command("MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "KEYS", *keys)
        return source

    def finish_migration(self, slot: int, target: RedisServer) -> None:
        """Give ``slot`` to ``target`` (CLUSTER SETSLOT ... NODE on every master)."""
        target_id = self.node_id(target)
        for node in (target, *self.masters()):
            node.command("CLUSTER", "SETSLOT", slot, "NODE", target_id)

    def owner_of_slot(self, slot: int) -> RedisServer:
        live = self.live()
        assert live is not None
        for (first, last), port in self._slot_owners(live).items():
            if first <= slot <= last:
                return self.node(port)
        raise LookupError(f"no node owns slot {slot}")

    # -- what the broadcaster tests ask of "the server" ---------------------------------

    @property
    def url(self) -> str:
        return self.seed_urls()[0]

    def seed_urls(self) -> list[str]:
        return [node.url for node in self.nodes if node.running]

    @property
    def running(self) -> bool:
        return all(node.running for node in self.nodes)

    def channels(self, prefix: str = "") -> set[str]:
        """Sharded channels with subscribers on any master, minus ``prefix``."""
        found: set[str] = set()
        for node in self.masters():
            found |= node.channels(prefix)
        return found

    def publish_calls(self) -> int:
        """PUBLISH/SPUBLISH commands executed by the masters (replicas get them propagated)."""
        return sum(node.publish_calls() for node in self.masters())


def _cluster_binaries() -> tuple[str, str]:
    binary = find_redis_server()
    require(binary, MISSING)
    assert binary is not None
    require(
        server_version(binary) >= (7, 0, 0),
        f"sharded pub/sub needs redis-server >= 7, {binary} is {server_version(binary)}",
    )
    cli = find_redis_cli(binary)
    require(cli, "no redis-cli binary (apt install redis-server ships it)")
    assert cli is not None
    return binary, cli


@contextlib.contextmanager
def running_cluster(**options: Any) -> Iterator[RedisCluster]:
    """A fresh 3-master, 3-replica cluster for the duration of the block."""
    cluster = RedisCluster(*_cluster_binaries(), **options)
    try:
        cluster.create()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(name="fresh_redis_cluster")
def fresh_redis_cluster_fixture() -> Iterator[RedisCluster]:
    """A cluster of its own for one test that kills, restarts or reshards it."""
    with running_cluster() as cluster:
        yield cluster
