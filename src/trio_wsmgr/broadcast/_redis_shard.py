"""One master of a Redis Cluster and this node's connection to it (sharded pub/sub).

A :class:`Shard` is one RESP3 connection that carries the node's SSUBSCRIBEs for
the channels of its master's slots *and* its SPUBLISHes to them, so one node's
publications on a channel leave in call order. While the connection is up every
channel the node wants in those slots is subscribed (:func:`._redis_topology.plan`
decides, the shard does the I/O); when it fails, the shard reconnects with the
backoff. Commands are queued synchronously and their replies matched in order;
pushes are messages (handed to ``deliver``) or (un)subscription confirmations.

What a shard uses of the cluster that runs it is :class:`ShardHost` (the
:class:`._redis_cluster.ClusterPubSub` is one): the options, the shared layout
and wanted channels, and two ways to ask for the layout to be read again.
"""

from __future__ import annotations

import logging
import random
from collections import deque
from collections.abc import Callable, Collection
from typing import Protocol

import attrs
import trio

from .._backoff import Backoff
from .._exceptions import BackendUnavailable
from ._redis_history import parse_run_id
from ._redis_resp import Connection, Credentials, Push, ServerError
from ._redis_topology import Address, Topology, address_name, plan

logger = logging.getLogger("trio_wsmgr.backends.redis")

#: commands waiting for a reply on one shard connection (beyond: fail fast)
_MAX_PENDING = 10_000


class ShardHost(Protocol):
    """What a :class:`Shard` uses of the cluster it belongs to."""

    @property
    def credentials(self) -> Credentials: ...
    @property
    def deliver(self) -> Callable[[bytes, bytes], None]: ...
    @property
    def counts(self) -> dict[str, int]: ...
    @property
    def connect_timeout(self) -> float: ...
    @property
    def command_timeout(self) -> float: ...
    @property
    def health_check_interval(self) -> float: ...
    @property
    def backoff(self) -> Backoff: ...
    @property
    def rng(self) -> random.Random: ...
    @property
    def topology(self) -> Topology: ...
    @property
    def wanted(self) -> dict[bytes, int]:
        """channel -> slot, for every channel the node wants"""

    def request_refresh(self) -> None:
        """Read the layout again soon."""

    def misrouted(self, error: ServerError) -> None:
        """A reply said the slot lives elsewhere (``MOVED``, ``CLUSTERDOWN``...)."""


@attrs.define(eq=False, slots=True)
class Pending:
    """A command waiting for Redis: one reply, or one push per channel for (un)subscribes."""

    kind: bytes  # b"" for a plain reply, else b"ssubscribe" / b"sunsubscribe"
    channels: set[bytes] = attrs.field(factory=set)
    done: trio.Event = attrs.field(factory=trio.Event)
    value: object = None

    def resolve(self, value: object) -> None:
        self.value = value
        self.done.set()


@attrs.define(eq=False)
class Shard:
    """One master and this node's connection to it."""

    address: Address
    host: ShardHost = attrs.field(repr=False)
    scope: trio.CancelScope = attrs.field(factory=trio.CancelScope)
    connection: Connection | None = None
    up: bool = False  # connected and every channel of its slots subscribed
    tried: trio.Event = attrs.field(factory=trio.Event)  # the first attempt is over
    subscribed: set[bytes] = attrs.field(factory=set)
    pending: deque[Pending] = attrs.field(factory=deque)
    wake_writer: trio.Event = attrs.field(factory=trio.Event)
    dirty: trio.Event = attrs.field(factory=trio.Event)
    lock: trio.Lock = attrs.field(factory=trio.Lock)
    last_read: float = 0.0
    outage_logged: bool = False
    #: the run_id of the server process behind ``connection`` (learned when it opened)
    run_id: bytes = b""

    def send(
        self, kind: bytes, *args: bytes | str | int, channels: Collection[bytes] = ()
    ) -> Pending:
        """Queue a command (synchronously: commands leave in call order)."""
        assert self.connection is not None
        if len(self.pending) >= _MAX_PENDING:
            raise BackendUnavailable(
                f"{_MAX_PENDING} commands in flight to {address_name(self.address)}", delivered=0
            )
        pending = Pending(kind, set(channels))
        self.connection.send(*args)
        self.pending.append(pending)
        self.wake_writer.set()
        return pending

    def fail_pending(self) -> None:
        while self.pending:
            self.pending.popleft().resolve(ConnectionResetError("connection lost"))

    # -- life ---------------------------------------------------------------------------

    async def run(self) -> None:
        """Sessions, one after the other, with the backoff between them; until cancelled."""
        host = self.host
        failures = 0
        with self.scope:
            while True:
                try:
                    await self._session()
                except Exception as exc:
                    failures += 1
                    host.counts["connection_failures"] += 1
                    if not self.outage_logged:
                        self.outage_logged = True
                        logger.warning(
                            "Redis Cluster node %s unavailable (%r); its %d slots wait for it",
                            address_name(self.address),
                            exc,
                            host.topology.slots_of(self.address),
                        )
                    logger.debug("shard session ended", exc_info=exc)
                finally:
                    self.up = False
                    self.subscribed.clear()
                    self.fail_pending()
                    connection, self.connection = self.connection, None
                    if connection is not None:
                        await connection.aclose()
                    self.tried.set()
                host.request_refresh()
                await trio.sleep(host.backoff.delay(max(failures, 1), host.rng))

    async def _session(self) -> None:
        host = self.host
        with trio.fail_after(host.connect_timeout):
            self.connection = await Connection.open(*self.address, host.credentials)
            info = await self.connection.request(b"INFO", b"server")  # nobody reads yet
            self.run_id = parse_run_id(info)
        self.last_read = trio.current_time()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._write)
            nursery.start_soon(self._read)
            async with self.lock:
                with trio.fail_after(host.connect_timeout):
                    await self._sync()
                self.up = True
            if self.outage_logged:
                self.outage_logged = False
                logger.info("Redis Cluster node %s reachable again", address_name(self.address))
            host.counts["reconnects"] += self.tried.is_set()
            self.tried.set()
            nursery.start_soon(self._keep_alive)
            while True:  # re-plan when the layout or a slot changes
                await self.dirty.wait()
                self.dirty = trio.Event()
                async with self.lock:
                    with trio.fail_after(host.command_timeout):
                        await self._sync()

    # -- subscriptions ------------------------------------------------------------------

    async def _sync(self) -> None:
        """(Un)subscribe until the connection holds exactly the channels of its slots."""
        host = self.host
        subscribe, unsubscribe = plan(host.wanted, host.topology, self.address, self.subscribed)
        if subscribe or unsubscribe:
            logger.debug(
                "%s: subscribing %d channels, unsubscribing %d",
                address_name(self.address),
                len(subscribe),
                len(unsubscribe),
            )
        await self.change(subscribe, unsubscribe)

    async def change(self, subscribe: list[bytes], unsubscribe: list[bytes]) -> None:
        """(Un)subscribe these channels and wait for every confirmation.

        The caller holds ``lock``. A refused subscription (the slot moved) asks
        the host to re-read the layout; a lost connection raises.
        """
        waiting = [self.send(b"ssubscribe", b"SSUBSCRIBE", c, channels=[c]) for c in subscribe]
        waiting += [
            self.send(b"sunsubscribe", b"SUNSUBSCRIBE", c, channels=[c]) for c in unsubscribe
        ]
        for pending in waiting:
            await pending.done.wait()
        self.subscribed.difference_update(unsubscribe)
        for channel, pending in zip(subscribe, waiting, strict=False):
            if isinstance(pending.value, ServerError):
                self.host.misrouted(pending.value)  # MOVED, CLUSTERDOWN...: re-read, re-plan
            elif isinstance(pending.value, Exception):
                raise pending.value
            else:
                self.subscribed.add(channel)

    # -- the connection's tasks ---------------------------------------------------------

    async def _write(self) -> None:
        connection = self.connection
        assert connection is not None
        while True:
            await self.wake_writer.wait()
            self.wake_writer = trio.Event()
            await connection.flush()

    async def _read(self) -> None:
        connection = self.connection
        assert connection is not None
        deliver, counts = self.host.deliver, self.host.counts
        while True:
            value = await connection.receive()
            self.last_read = trio.current_time()
            if isinstance(value, Push):
                fields = value.fields
                if value.kind == b"smessage" and len(fields) == 2:
                    channel, data = fields
                    if isinstance(channel, bytes) and isinstance(data, bytes):
                        counts["received"] += 1
                        deliver(channel, data)
                elif value.kind in (b"ssubscribe", b"sunsubscribe") and fields:
                    self._confirmation(value.kind, fields[0])
                continue
            if not self.pending or self.pending[0].kind:
                if self.pending and isinstance(value, ServerError):
                    self.pending.popleft().resolve(value)  # a refused (un)subscription
                    continue
                raise ConnectionError(f"unexpected reply from Redis: {value!r}")
            self.pending.popleft().resolve(value)

    def _confirmation(self, kind: bytes, channel: object) -> None:
        head = self.pending[0] if self.pending else None
        if head is not None and head.kind == kind and channel in head.channels:
            head.channels.discard(channel)
            if not head.channels:
                self.pending.popleft().resolve(kind)
            return
        if kind == b"sunsubscribe" and isinstance(channel, bytes):
            # Not asked for: the slot left this node (resharding, failover). Re-plan.
            self.subscribed.discard(channel)
            if channel in self.host.wanted:
                self.host.request_refresh()

    async def _keep_alive(self) -> None:
        """PING after ``health_check_interval`` of silence; no answer in time ends the session."""
        host = self.host
        while True:
            idle = trio.current_time() - self.last_read
            if idle < host.health_check_interval:
                await trio.sleep(host.health_check_interval - idle)
                continue
            pending = self.send(b"", b"PING")
            with trio.fail_after(host.command_timeout):
                await pending.done.wait()
            if isinstance(pending.value, Exception):
                raise pending.value
