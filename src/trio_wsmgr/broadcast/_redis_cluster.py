"""Sharded pub/sub over a Redis Cluster, on connections of our own: one per shard.

coredis' cluster pub/sub maps channels to shards once, when it starts: after a
failover or a resharding it keeps listening where nothing arrives any more. This
module owns the whole loop instead. :class:`ClusterPubSub` keeps

* the layout, a :class:`._redis_topology.Topology` (slot -> master, every known
  node), read with ``CLUSTER SLOTS`` from any node that answers (seeds
  included), again every ``refresh_interval``, at once on a ``MOVED`` reply, on
  an unasked ``sunsubscribe`` push (Redis sends one per channel when its slot
  leaves a node) and on any lost connection, and every ``backoff`` step (at most
  a second) while a shard is down;
* a :class:`._redis_shard.Shard` per master (one RESP3 connection for the
  node's SSUBSCRIBEs and SPUBLISHes there): it starts one for each new master,
  drops a master that is no longer one, and the new owner of its slots gets its
  channels;
* the backend's calls: a command goes to the master of its slot (following
  ``MOVED`` and ``ASK``), a subscription change to the shards that are up.

Decisions are synchronous (:func:`._redis_topology.plan`); the tasks only do the
I/O. Delivery stays at most once: a message is published to one shard only, and
a publish whose fate is unknown (timeout, lost connection) is reported, never
retried.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Collection

import attrs
import trio

from .._backoff import Backoff
from .._exceptions import BackendUnavailable
from ._backend import ShardStatistics
from ._redis_resp import Connection, Credentials, ServerError, key_slot
from ._redis_shard import Shard
from ._redis_topology import Address, Topology, address_name

logger = logging.getLogger("trio_wsmgr.backends.redis")

#: the longest wait between two reads of the layout while a shard is down
_DEGRADED_REFRESH = 1.0


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
    shards: dict[Address, Shard] = attrs.field(init=False, factory=dict)
    _nursery: trio.Nursery | None = attrs.field(init=False, default=None)
    _refresh_wanted: trio.Event = attrs.field(init=False, factory=trio.Event)
    rng: random.Random = attrs.field(init=False, factory=random.Random)
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
                address=address_name(address),
                connected=shard.up,
                slots=self.topology.slots_of(address),
                topics=len(shard.subscribed),
            )
            for address, shard in sorted(self.shards.items())
        )

    def request_refresh(self) -> None:
        self._refresh_wanted.set()

    def misrouted(self, error: ServerError) -> None:
        """A reply said the slot lives elsewhere: note a ``MOVED``, read the layout again."""
        redirect = error.redirect()
        if redirect is not None and error.code == "MOVED":
            host, port, slot = redirect
            self.topology.moved(slot, (host, port))
        logger.debug("Redis Cluster replied %s; reading the layout again", error)
        self.request_refresh()

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
                delay = min(self.backoff.delay(failures, self.rng), _DEGRADED_REFRESH)
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
                logger.info("Redis Cluster layout read again from %s", address_name(address))
                self._outage_logged = False
            self._apply()
            return True
        tried = "; ".join(
            f"{address_name(address)}: {error!r}" for address, error in errors.items()
        )
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
                fresh = self.shards[address] = Shard(address, self)
                self._nursery.start_soon(fresh.run)
            else:
                known.dirty.set()  # its channels may have changed: re-plan

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
        asked: Shard | None = None  # an ASK redirection: once, to that node
        for _ in range(3):  # the owner, then at most two redirections
            address = asked.address if asked else self.topology.owners[slot]
            shard = self.shards.get(address) if address is not None else None
            if shard is None or not shard.up:
                self.request_refresh()
                await trio.lowlevel.checkpoint()
                where = address_name(address) if address else "no node"
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
                    f"{address_name(shard.address)} did not answer within command_timeout",
                    delivered=0,
                )
            if isinstance(reply, ServerError) and reply.code == "MOVED" and asked is None:
                self.misrouted(reply)  # not executed: try the new owner
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
                    f"{address_name(shard.address)} replied {reply!r}", delivered=0
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
                            await shard.change(fresh, [])
                        else:
                            await shard.change([], some)
                except (Exception, trio.TooSlowError) as exc:
                    logger.warning(
                        "Redis Cluster node %s did not confirm a subscription change (%r); "
                        "reconnecting",
                        address_name(shard.address),
                        exc,
                    )
                    shard.up = False
                    shard.scope.cancel()
                    self.shards.pop(address, None)
                    self.request_refresh()  # a fresh shard restores everything
