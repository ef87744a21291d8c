"""Sharded pub/sub over a Redis Cluster, on connections of our own: one per shard.

coredis' cluster pub/sub maps channels to shards once, when it starts: after a
failover or a resharding it keeps listening where nothing arrives any more. This
module owns the whole loop instead:

* a :class:`Topology` (plain synchronous data: slot -> master, every known node),
  read with ``CLUSTER SLOTS`` from any node that answers (seeds included), again
  every ``refresh_interval``, at once on a ``MOVED`` reply, on an unasked
  ``sunsubscribe`` push (Redis sends one per channel when its slot leaves a node)
  and on any lost connection, and every ``backoff`` step (at most a second)
  while a shard is down;
* a :class:`_Shard` per master: one RESP3 connection that carries the node's
  SSUBSCRIBEs for the channels of that master's slots *and* its SPUBLISHes to
  them (so one node's publications on a channel leave in call order). When the
  connection is up every channel the node wants in those slots is subscribed;
  when it fails, the shard reconnects with the backoff, and a master that is no
  longer one is dropped while the new owner of its slots gets its channels.

Decisions are synchronous (:func:`plan`); the tasks only do the I/O. Delivery
stays at most once: a message is published to one shard only, and a publish
whose fate is unknown (timeout, lost connection) is reported, never retried.
"""

from __future__ import annotations

import logging
import random
from collections import deque
from collections.abc import Callable, Collection, Iterable

import attrs
import trio

from .._backoff import Backoff
from .._exceptions import BackendUnavailable
from ._backend import ShardStatistics
from ._redis_history import parse_run_id
from ._redis_resp import Connection, Credentials, Push, ServerError, key_slot, slot_ranges

logger = logging.getLogger("trio_wsmgr.backends.redis")

Address = tuple[str, int]
SLOTS = 16384
#: the longest wait between two reads of the layout while a shard is down
_DEGRADED_REFRESH = 1.0
#: commands waiting for a reply on one shard connection (beyond: fail fast)
_MAX_PENDING = 10_000


def _name(address: Address) -> str:
    return f"{address[0]}:{address[1]}"


@attrs.define(eq=False)
class Topology:
    """Who owns which slot, and every node we know of (seeds first)."""

    seeds: list[Address]
    owners: list[Address | None] = attrs.field(factory=lambda: [None] * SLOTS)
    known: dict[Address, None] = attrs.field(factory=dict)
    loaded: bool = False

    def __attrs_post_init__(self) -> None:
        self.known.update(dict.fromkeys(self.seeds))

    @property
    def masters(self) -> set[Address]:
        return {owner for owner in self.owners if owner is not None}

    def candidates(self, healthy: Iterable[Address]) -> list[Address]:
        """Whom to ask for the layout: connected masters first, then everyone we know."""
        return list(dict.fromkeys([*healthy, *self.known]))

    def load(self, reply: object) -> bool:
        """Apply a ``CLUSTER SLOTS`` reply; ``False`` if it covers no slot."""
        ranges = slot_ranges(reply)
        if not ranges:
            return False
        owners: list[Address | None] = [None] * SLOTS
        known = dict.fromkeys(self.seeds)
        for first, last, master, nodes in ranges:
            owners[first : last + 1] = [master] * (last + 1 - first)
            known.update(dict.fromkeys(nodes))
        self.owners, self.known = owners, known
        self.loaded = True
        return True

    def moved(self, slot: int, address: Address) -> None:
        """A ``MOVED`` reply: ``slot`` is ``address``'s now (until the next full read)."""
        self.owners[slot] = address
        self.known.setdefault(address, None)

    def slots_of(self, address: Address) -> int:
        return sum(1 for owner in self.owners if owner == address)


def plan(
    wanted: dict[bytes, int], topology: Topology, address: Address, subscribed: set[bytes]
) -> tuple[list[bytes], list[bytes]]:
    """What a shard's connection must (un)subscribe so it holds exactly its channels."""
    owners = topology.owners
    desired = {channel for channel, slot in wanted.items() if owners[slot] == address}
    return sorted(desired - subscribed), sorted(subscribed - desired)


@attrs.define(eq=False, slots=True)
class _Pending:
    """A command waiting for Redis: one reply, or one push per channel for (un)subscribes."""

    kind: bytes  # b"" for a plain reply, else b"ssubscribe" / b"sunsubscribe"
    channels: set[bytes] = attrs.field(factory=set)
    done: trio.Event = attrs.field(factory=trio.Event)
    value: object = None

    def resolve(self, value: object) -> None:
        self.value = value
        self.done.set()


@attrs.define(eq=False)
class _Shard:
    """One master and this node's connection to it."""

    address: Address
    scope: trio.CancelScope = attrs.field(factory=trio.CancelScope)
    connection: Connection | None = None
    up: bool = False  # connected and every channel of its slots subscribed
    tried: trio.Event = attrs.field(factory=trio.Event)  # the first attempt is over
    subscribed: set[bytes] = attrs.field(factory=set)
    pending: deque[_Pending] = attrs.field(factory=deque)
    wake_writer: trio.Event = attrs.field(factory=trio.Event)
    dirty: trio.Event = attrs.field(factory=trio.Event)
    lock: trio.Lock = attrs.field(factory=trio.Lock)
    last_read: float = 0.0
    outage_logged: bool = False
    #: the run_id of the server process behind ``connection`` (learned when it opened)
    run_id: bytes = b""

    def send(
        self, kind: bytes, *args: bytes | str | int, channels: Collection[bytes] = ()
    ) -> _Pending:
        """Queue a command (synchronously: commands leave in call order)."""
        assert self.connection is not None
        if len(self.pending) >= _MAX_PENDING:
            raise BackendUnavailable(
                f"{_MAX_PENDING} commands in flight to {_name(self.address)}", delivered=0
            )
        pending = _Pending(kind, set(channels))
        self.connection.send(*args)
        self.pending.append(pending)
        self.wake_writer.set()
        return pending

    def fail_pending(self) -> None:
        while self.pending:
            self.pending.popleft().resolve(ConnectionResetError("connection lost"))


@attrs.define(eq=False)
class ClusterPubSub:
    """The cluster side of :class:`~trio_wsmgr.RedisBackend` (``cluster=True``)."""

    seeds: list[Address]
    credentials: Credentials
    deliver: Callable[[bytes, bytes], None]
    counts: dict[str, int]
    connect_timeout: float
    command_timeout: float
    health_check_interval: float
    refresh_interval: float
    backoff: Backoff

    topology: Topology = attrs.field(init=False)
    wanted: dict[bytes, int] = attrs.field(init=False, factory=dict)  # channel -> slot
    shards: dict[Address, _Shard] = attrs.field(init=False, factory=dict)
    _nursery: trio.Nursery | None = attrs.field(init=False, default=None)
    _refresh_wanted: trio.Event = attrs.field(init=False, factory=trio.Event)
    _rng: random.Random = attrs.field(init=False, factory=random.Random)
    _outage_logged: bool = attrs.field(init=False, default=False)

    def __attrs_post_init__(self) -> None:
        self.topology = Topology(list(self.seeds))

    # -- state ----------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """The layout is known and every master's connection is up."""
        return (
            self.topology.loaded
            and bool(self.shards)
            and all(shard.up for shard in self.shards.values())
        )

    @property
    def degraded(self) -> bool:
        """Some masters are reachable, not all: channels in the others' slots are cut off."""
        return not self.connected and any(shard.up for shard in self.shards.values())

    def shard_statistics(self) -> tuple[ShardStatistics, ...]:
        return tuple(
            ShardStatistics(
                address=_name(address),
                connected=shard.up,
                slots=self.topology.slots_of(address),
                topics=len(shard.subscribed),
            )
            for address, shard in sorted(self.shards.items())
        )

    def request_refresh(self) -> None:
        self._refresh_wanted.set()

    # -- life -----------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            try:
                await self._refresh()
                for shard in list(self.shards.values()):
                    await shard.tried.wait()
                task_status.started()
                await self._refresh_forever()
            finally:
                self._nursery = None
                for shard in self.shards.values():
                    shard.up = False
                    shard.fail_pending()

    async def _refresh_forever(self) -> None:
        failures = 0
        while True:
            healthy = self.connected
            failures = 0 if healthy else failures + 1
            if healthy:
                delay = self.refresh_interval
            else:
                delay = min(self.backoff.delay(failures, self._rng), _DEGRADED_REFRESH)
            with trio.move_on_after(delay):
                await self._refresh_wanted.wait()
            self._refresh_wanted = trio.Event()
            await self._refresh()
            await trio.sleep(0.01)  # however many ask at once: not more than 100 reads/s

    async def _refresh(self) -> bool:
        """Read the layout from the first node that answers; start and stop shards to match."""
        healthy = [address for address, shard in self.shards.items() if shard.up]
        errors: dict[Address, object] = {}
        for address in self.topology.candidates(healthy):
            try:
                with trio.fail_after(self.connect_timeout):
                    connection = await Connection.open(*address, self.credentials)
                    try:
                        reply = await connection.request(b"CLUSTER", b"SLOTS")
                    finally:
                        await connection.aclose()
            except (OSError, trio.TooSlowError, ServerError) as exc:
                errors[address] = exc
                continue
            if isinstance(reply, ServerError) or not self.topology.load(reply):
                errors[address] = reply if isinstance(reply, ServerError) else "no slots"
                continue
            if self._outage_logged:
                logger.info("Redis Cluster layout read again from %s", _name(address))
                self._outage_logged = False
            self._apply()
            return True
        tried = "; ".join(f"{_name(address)}: {error!r}" for address, error in errors.items())
        if not self._outage_logged:
            self._outage_logged = True
            logger.warning(
                "no Redis Cluster node gave its layout (%s); retrying with backoff", tried
            )
        else:
            logger.debug("no Redis Cluster node gave its layout (%s)", tried)
        return False

    def _apply(self) -> None:
        """Start a shard for each new master, stop those that are masters no more."""
        masters = self.topology.masters
        for address in list(self.shards):
            if address not in masters:
                shard = self.shards.pop(address)
                shard.up = False
                shard.scope.cancel()
        assert self._nursery is not None
        for address in sorted(masters):
            known = self.shards.get(address)
            if known is None:
                fresh = self.shards[address] = _Shard(address)
                self._nursery.start_soon(self._run_shard, fresh)
            else:
                known.dirty.set()  # its channels may have changed: re-plan

    # -- one shard --------------------------------------------------------------------------

    async def _run_shard(self, shard: _Shard) -> None:
        failures = 0
        with shard.scope:
            while True:
                try:
                    await self._shard_session(shard)
                except Exception as exc:
                    failures += 1
                    self.counts["connection_failures"] += 1
                    if not shard.outage_logged:
                        shard.outage_logged = True
                        logger.warning(
                            "Redis Cluster node %s unavailable (%r); its %d slots wait for it",
                            _name(shard.address),
                            exc,
                            self.topology.slots_of(shard.address),
                        )
                    logger.debug("shard session ended", exc_info=exc)
                finally:
                    shard.up = False
                    shard.subscribed.clear()
                    shard.fail_pending()
                    connection, shard.connection = shard.connection, None
                    if connection is not None:
                        await connection.aclose()
                    shard.tried.set()
                self.request_refresh()
                await trio.sleep(self.backoff.delay(max(failures, 1), self._rng))

    async def _shard_session(self, shard: _Shard) -> None:
        with trio.fail_after(self.connect_timeout):
            shard.connection = await Connection.open(*shard.address, self.credentials)
            info = await shard.connection.request(b"INFO", b"server")  # nobody reads yet
            shard.run_id = parse_run_id(info)
        shard.last_read = trio.current_time()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._write, shard)
            nursery.start_soon(self._read, shard)
            async with shard.lock:
                with trio.fail_after(self.connect_timeout):
                    await self._sync(shard)
                shard.up = True
            if shard.outage_logged:
                shard.outage_logged = False
                logger.info("Redis Cluster node %s reachable again", _name(shard.address))
            self.counts["reconnects"] += shard.tried.is_set()
            shard.tried.set()
            nursery.start_soon(self._keep_alive, shard)
            while True:  # re-plan when the layout or a slot changes
                await shard.dirty.wait()
                shard.dirty = trio.Event()
                async with shard.lock:
                    with trio.fail_after(self.command_timeout):
                        await self._sync(shard)

    async def _sync(self, shard: _Shard) -> None:
        """(Un)subscribe until the connection holds exactly the channels of its slots."""
        subscribe, unsubscribe = plan(self.wanted, self.topology, shard.address, shard.subscribed)
        if subscribe or unsubscribe:
            logger.debug(
                "%s: subscribing %d channels, unsubscribing %d",
                _name(shard.address),
                len(subscribe),
                len(unsubscribe),
            )
        await self._change(shard, subscribe, unsubscribe)

    async def _change(
        self, shard: _Shard, subscribe: list[bytes], unsubscribe: list[bytes]
    ) -> None:
        waiting = [shard.send(b"ssubscribe", b"SSUBSCRIBE", c, channels=[c]) for c in subscribe]
        waiting += [
            shard.send(b"sunsubscribe", b"SUNSUBSCRIBE", c, channels=[c]) for c in unsubscribe
        ]
        for pending in waiting:
            await pending.done.wait()
        shard.subscribed.difference_update(unsubscribe)
        for channel, pending in zip(subscribe, waiting, strict=False):
            if isinstance(pending.value, ServerError):
                self._misrouted(pending.value)  # MOVED, CLUSTERDOWN...: re-read, re-plan
            elif isinstance(pending.value, Exception):
                raise pending.value
            else:
                shard.subscribed.add(channel)

    def _misrouted(self, error: ServerError) -> None:
        redirect = error.redirect()
        if redirect is not None and error.code == "MOVED":
            host, port, slot = redirect
            self.topology.moved(slot, (host, port))
        logger.debug("Redis Cluster replied %s; reading the layout again", error)
        self.request_refresh()

    async def _write(self, shard: _Shard) -> None:
        connection = shard.connection
        assert connection is not None
        while True:
            await shard.wake_writer.wait()
            shard.wake_writer = trio.Event()
            await connection.flush()

    async def _read(self, shard: _Shard) -> None:
        connection = shard.connection
        assert connection is not None
        deliver, counts = self.deliver, self.counts
        while True:
            value = await connection.receive()
            shard.last_read = trio.current_time()
            if isinstance(value, Push):
                fields = value.fields
                if value.kind == b"smessage" and len(fields) == 2:
                    channel, data = fields
                    if isinstance(channel, bytes) and isinstance(data, bytes):
                        counts["received"] += 1
                        deliver(channel, data)
                elif value.kind in (b"ssubscribe", b"sunsubscribe") and fields:
                    self._confirmation(shard, value.kind, fields[0])
                continue
            if not shard.pending or shard.pending[0].kind:
                if shard.pending and isinstance(value, ServerError):
                    shard.pending.popleft().resolve(value)  # a refused (un)subscription
                    continue
                raise ConnectionError(f"unexpected reply from Redis: {value!r}")
            shard.pending.popleft().resolve(value)

    def _confirmation(self, shard: _Shard, kind: bytes, channel: object) -> None:
        head = shard.pending[0] if shard.pending else None
        if head is not None and head.kind == kind and channel in head.channels:
            head.channels.discard(channel)
            if not head.channels:
                shard.pending.popleft().resolve(kind)
            return
        if kind == b"sunsubscribe" and isinstance(channel, bytes):
            # Not asked for: the slot left this node (resharding, failover). Re-plan.
            shard.subscribed.discard(channel)
            if channel in self.wanted:
                self.request_refresh()

    async def _keep_alive(self, shard: _Shard) -> None:
        """PING after ``health_check_interval`` of silence; no answer in time ends the session."""
        while True:
            idle = trio.current_time() - shard.last_read
            if idle < self.health_check_interval:
                await trio.sleep(self.health_check_interval - idle)
                continue
            pending = shard.send(b"", b"PING")
            with trio.fail_after(self.command_timeout):
                await pending.done.wait()
            if isinstance(pending.value, Exception):
                raise pending.value

    # -- the backend's calls ------------------------------------------------------------------

    async def publish(self, channel: bytes, data: bytes) -> None:
        await self.execute(key_slot(channel), b"SPUBLISH", channel, data)

    async def execute(
        self, slot: int, *args: bytes | str | int, with_run_id: bool = False
    ) -> object:
        """Run one command on the master of ``slot`` (following ``MOVED`` and ``ASK``); its reply.

        ``with_run_id``: append the ``run_id`` of the node it runs on (the history's
        scripts take it: who writes).

        For the backend's siblings too (presence, history): commands on a shard's
        connection leave in call order with this node's publications. Raises
        :class:`~trio_wsmgr.BackendUnavailable` when the shard is down, does not answer
        within ``command_timeout`` or replies with an error (chained). Cancel-atomic:
        ``Cancelled`` means the command was not sent; once queued its reply is awaited
        (shielded, at most ``command_timeout``).
        """
        asked: _Shard | None = None  # an ASK redirection: once, to that node
        for _ in range(3):  # the owner, then at most two redirections
            address = asked.address if asked else self.topology.owners[slot]
            shard = self.shards.get(address) if address is not None else None
            if shard is None or not shard.up:
                self.request_refresh()
                await trio.lowlevel.checkpoint()
                where = _name(address) if address else "no node"
                raise BackendUnavailable(f"the shard of slot {slot} ({where}) is down", delivered=0)
            await trio.lowlevel.checkpoint_if_cancelled()
            if asked is not None:  # the slot is being imported there: this command only
                shard.send(b"", b"ASKING")
            pending = shard.send(b"", *args, *((shard.run_id,) if with_run_id else ()))
            with trio.CancelScope(shield=True), trio.move_on_after(self.command_timeout):
                await pending.done.wait()
            reply = pending.value
            if not pending.done.is_set():
                raise BackendUnavailable(
                    f"{_name(shard.address)} did not answer within command_timeout", delivered=0
                )
            if isinstance(reply, ServerError) and reply.code == "MOVED" and asked is None:
                self._misrouted(reply)  # not executed: try the new owner
                continue
            if isinstance(reply, ServerError) and reply.code == "ASK" and asked is None:
                # The slot is migrating and the command's keys are gone: not executed here.
                # The importing node runs it after ASKING (keep the owner otherwise).
                redirect = reply.redirect()
                target = self.shards.get(redirect[:2]) if redirect else None
                if target is None:
                    self.request_refresh()
                    raise BackendUnavailable(
                        f"the node importing slot {slot} is unknown ({reply})", delivered=0
                    ) from reply
                asked = target
                continue
            if isinstance(reply, Exception):
                if isinstance(reply, ServerError):
                    self.request_refresh()
                raise BackendUnavailable(
                    f"{_name(shard.address)} replied {reply!r}", delivered=0
                ) from reply
            return reply
        raise BackendUnavailable("the cluster kept redirecting the command", delivered=0)

    async def subscribe(self, channels: Collection[bytes]) -> None:
        for channel in channels:
            self.wanted[channel] = key_slot(channel)
        await self._change_where_up(channels, subscribe=True)

    async def unsubscribe(self, channels: Collection[bytes]) -> None:
        for channel in channels:
            self.wanted.pop(channel, None)
        await self._change_where_up(channels, subscribe=False)

    async def _change_where_up(self, channels: Collection[bytes], *, subscribe: bool) -> None:
        """Apply a change on the connections that are up (the others restore on connect)."""
        by_shard: dict[Address, list[bytes]] = {}
        for channel in channels:
            if subscribe:
                owner = self.topology.owners[key_slot(channel)]
                if owner is not None:
                    by_shard.setdefault(owner, []).append(channel)
            else:
                for address, shard in self.shards.items():
                    if channel in shard.subscribed:
                        by_shard.setdefault(address, []).append(channel)
        await trio.lowlevel.checkpoint()
        for address, some in by_shard.items():
            found = self.shards.get(address)
            if found is None or not found.up:
                continue
            shard = found
            async with shard.lock:
                if not shard.up:
                    continue
                try:
                    with trio.fail_after(self.command_timeout):
                        if subscribe:
                            fresh = [c for c in some if c not in shard.subscribed]
                            await self._change(shard, fresh, [])
                        else:
                            await self._change(shard, [], some)
                except (Exception, trio.TooSlowError) as exc:
                    logger.warning(
                        "Redis Cluster node %s did not confirm a subscription change (%r); "
                        "reconnecting",
                        _name(shard.address),
                        exc,
                    )
                    shard.up = False
                    shard.scope.cancel()
                    self.shards.pop(address, None)
                    self.request_refresh()  # a fresh shard restores everything
