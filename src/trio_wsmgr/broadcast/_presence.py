"""Presence: who is subscribed to a channel, on every node.

Each node keeps, per channel, how many of its subscribed sockets each user has
(and how many have no user id): plain synchronous counters updated on
subscribe and unsubscribe, never per message (:class:`LocalPresence`). A
*keeper* task writes a channel's counts to the backend's :class:`PresenceStore`
when they change, under the node's id, and refreshes the node's *lease* every
third of ``presence_ttl``. A reader takes every node's entry for the channel,
skips (and deletes) the entries of nodes whose lease has expired, and adds
them up: O(users in the channel) per call. A node that dies without cleaning
up stops refreshing its lease, so it drops out of every presence within
``presence_ttl``.

A node's own counts are read from its memory, so ``presence()`` right after a
local ``subscribe()`` sees it; other nodes' changes arrive as soon as their
keeper has written them (normally within a round trip to the backend).
"""

from __future__ import annotations

import abc
import json
import logging
import math
from collections import Counter
from collections.abc import Iterable, Mapping
from contextlib import suppress
from types import MappingProxyType
from typing import Final, Protocol

import attrs
import trio

from .._exceptions import BackendUnavailable


class PresenceHub(Protocol):
    """What :class:`MemoryPresence` uses of a :class:`~trio_wsmgr.backends.MemoryHub`."""

    @property
    def available(self) -> bool: ...

    @property
    def _presence(self) -> PresenceTable: ...


logger = logging.getLogger("trio_wsmgr.presence")

#: how long the keeper waits before retrying after the backend failed
_RETRY: Final = 1.0
#: how long a clean exit may spend removing the node's entries
_CLEANUP: Final = 2.0


@attrs.frozen
class Presence:
    """Who is in a channel, over every live node (``await broadcaster.presence(name)``)."""

    #: user id -> how many of that user's sockets are subscribed, all nodes together
    users: Mapping[str, int]
    #: subscribed sockets without a user id
    anonymous: int
    #: every subscribed socket: ``sum(users.values()) + anonymous``
    total: int

    @classmethod
    def merge(cls, entries: Iterable[Counts]) -> Presence:
        users: Counter[str] = Counter()
        anonymous = 0
        for entry in entries:
            users.update(entry.users)
            anonymous += entry.anonymous
        return cls(
            users=MappingProxyType(dict(users)),
            anonymous=anonymous,
            total=users.total() + anonymous,
        )


@attrs.frozen
class Counts:
    """One node's subscribed sockets in one channel."""

    users: Mapping[str, int]
    anonymous: int

    def encode(self) -> bytes:
        return json.dumps({"u": dict(self.users), "a": self.anonymous}).encode()

    @classmethod
    def decode(cls, data: bytes | str) -> Counts | None:
        """Parse a stored entry; None for anything malformed (it is then ignored)."""
        try:
            raw = json.loads(data)
            users = raw["u"]
            anonymous = raw["a"]
        except (ValueError, TypeError, KeyError):
            return None
        if not isinstance(users, dict) or not isinstance(anonymous, int):
            return None
        if not all(isinstance(k, str) and isinstance(v, int) for k, v in users.items()):
            return None
        return cls(users=users, anonymous=anonymous)


class PresenceStore(abc.ABC):
    """Where nodes keep their presence entries; a backend gives one (``presence_store()``).

    Every method raises :class:`~trio_wsmgr.BackendUnavailable` when the store
    cannot be reached.
    """

    @abc.abstractmethod
    async def refresh(self, node: str, ttl: float) -> bool:
        """Renew ``node``'s lease for ``ttl`` seconds; True if it had expired (or never was)."""

    @abc.abstractmethod
    async def write(self, node: str, changes: Mapping[str, Counts | None]) -> None:
        """Set (or, for None, delete) ``node``'s entry of each channel; keep them ``ttl`` alive."""

    @abc.abstractmethod
    async def read(self, channel: str) -> dict[str, Counts]:
        """The entries of ``channel`` of the nodes whose lease is alive, by node id."""

    @abc.abstractmethod
    async def remove(self, node: str, channels: Iterable[str]) -> None:
        """Delete ``node``'s entries and its lease (a clean exit)."""


# -- this node's counts (sync) --------------------------------------------------------


@attrs.define
class LocalPresence:
    """This node's subscribed sockets per channel and user; which channels changed."""

    _users: dict[str, Counter[str]] = attrs.field(factory=dict)
    _anonymous: Counter[str] = attrs.field(factory=Counter)
    dirty: set[str] = attrs.field(factory=set)

    def add(self, channel: str, user_id: str | None) -> None:
        if user_id is None:
            self._anonymous[channel] += 1
        else:
            self._users.setdefault(channel, Counter())[user_id] += 1
        self.dirty.add(channel)

    def remove(self, channel: str, user_id: str | None) -> None:
        if user_id is None:
            self._anonymous[channel] -= 1
            if self._anonymous[channel] <= 0:
                del self._anonymous[channel]
        else:
            users = self._users.get(channel)
            if users is not None:
                users[user_id] -= 1
                if users[user_id] <= 0:
                    del users[user_id]
                if not users:
                    del self._users[channel]
        self.dirty.add(channel)

    def counts(self, channel: str) -> Counts | None:
        """This node's entry for ``channel``; None when it has no subscriber there."""
        users = self._users.get(channel)
        anonymous = self._anonymous.get(channel, 0)
        if not users and not anonymous:
            return None
        return Counts(users=dict(users or {}), anonymous=anonymous)

    def channels(self) -> set[str]:
        return self._users.keys() | self._anonymous.keys()

    def clear(self) -> None:
        self._users.clear()
        self._anonymous.clear()
        self.dirty.clear()


# -- the keeper (the async shell) ------------------------------------------------------


@attrs.define(eq=False)
class PresenceKeeper:
    """Writes this node's changed entries and refreshes its lease, until cancelled."""

    store: PresenceStore
    node: str
    ttl: float
    local: LocalPresence
    _wake: trio.Event = attrs.field(init=False, factory=trio.Event)
    #: channels that have (or may have) an entry of this node in the store
    _written: set[str] = attrs.field(init=False, factory=set)
    #: rewrite every entry on the next refreshes (after a lost lease or a failure)
    _rewrites: int = attrs.field(init=False, default=1)

    _scope: trio.CancelScope = attrs.field(init=False, factory=trio.CancelScope)
    _stopped: trio.Event = attrs.field(init=False, factory=trio.Event)

    def changed(self) -> None:
        self._wake.set()

    async def stop(self) -> None:
        """Cancel :meth:`run` and wait until it removed this node's entries (bounded)."""
        self._scope.cancel()
        await self._stopped.wait()

    async def run(self) -> None:
        try:
            with self._scope:
                await self._loop()
        finally:
            with trio.CancelScope(shield=True) as cleanup:
                cleanup.deadline = trio.current_time() + _CLEANUP
                # If it cannot be reached, our lease expires: readers drop us within ttl.
                with suppress(BackendUnavailable):
                    await self.store.remove(self.node, self._written | self.local.channels())
            self._stopped.set()

    async def _loop(self) -> None:
        interval = self.ttl / 3
        refresh_at = -math.inf
        failing = False
        while True:
            now = trio.current_time()
            try:
                if refresh_at <= now:
                    if await self.store.refresh(self.node, self.ttl):
                        # A lost (or first) lease: readers may have deleted our entries,
                        # and one may still be deleting: write them all now and again
                        # at the next refresh.
                        self._rewrites = max(self._rewrites, 2)
                    refresh_at = now + interval
                    if self._rewrites:
                        self._rewrites -= 1
                        self.local.dirty |= self._written | self.local.channels()
                await self._write_dirty()
                if failing:
                    logger.debug("presence entries written again")
                failing = False
            except BackendUnavailable as exc:
                if not failing:  # the backend logs the outage itself, once
                    logger.debug("presence not written (%s); retrying", exc)
                failing = True
                self._rewrites = max(self._rewrites, 1)
                refresh_at = now + min(_RETRY, interval)  # refresh and rewrite then
            self._wake = trio.Event()
            if failing:
                await trio.sleep_until(refresh_at)  # changes wait for the retry
            elif not self.local.dirty:
                with trio.move_on_at(refresh_at):
                    await self._wake.wait()

    async def _write_dirty(self) -> None:
        dirty, self.local.dirty = self.local.dirty, set()
        if not dirty:
            return
        changes = {channel: self.local.counts(channel) for channel in sorted(dirty)}
        # an entry may exist as soon as its write is sent: a failed write is cleaned up too
        self._written.update(channel for channel, counts in changes.items() if counts is not None)
        try:
            await self.store.write(self.node, changes)
        except BaseException:
            self.local.dirty |= dirty  # not known to be written: again next time
            raise
        self._written.difference_update(
            channel for channel, counts in changes.items() if counts is None
        )


# -- this node's part (what the Broadcaster holds) ---------------------------------------


@attrs.define(eq=False)
class NodePresence:
    """This node's counts, the keeper that shares them, and reading every node's."""

    #: this node's id, as the store knows it
    node: str
    ttl: float
    local: LocalPresence = attrs.field(init=False, factory=LocalPresence)
    keeper: PresenceKeeper | None = attrs.field(init=False, default=None)

    def joined(self, channel: str, user_id: str | None) -> None:
        self.local.add(channel, user_id)
        if self.keeper is not None:
            self.keeper.changed()

    def left(self, channel: str, user_id: str | None) -> None:
        self.local.remove(channel, user_id)
        if self.keeper is not None:
            self.keeper.changed()

    def start(self, store: PresenceStore, nursery: trio.Nursery) -> None:
        """Share this node's counts through ``store`` (a keeper task in ``nursery``)."""
        self.keeper = PresenceKeeper(store, self.node, self.ttl, self.local)
        nursery.start_soon(self.keeper.run)

    async def stop(self) -> None:
        """Remove this node's entries from the store (shielded, bounded); if it was started."""
        if self.keeper is not None:
            with trio.CancelScope(shield=True):
                await self.keeper.stop()

    async def read(self, store: PresenceStore, channel: str) -> Presence:
        """Every node's part: the others' from ``store``, this node's from memory."""
        remote = await store.read(channel)
        remote.pop(self.node, None)  # this node's part comes from memory, not the store
        local = self.local.counts(channel)
        return Presence.merge([*remote.values(), *([local] if local is not None else [])])


# -- the in-process store (MemoryHub) ----------------------------------------------------


@attrs.define
class PresenceTable:
    """A :class:`~trio_wsmgr.backends.MemoryHub`'s presence: entries and leases, in memory."""

    entries: dict[str, dict[str, Counts]] = attrs.field(factory=dict)
    #: node id -> the trio time its lease ends
    leases: dict[str, float] = attrs.field(factory=dict)

    def live(self, channel: str, now: float) -> dict[str, Counts]:
        """The entries of ``channel`` whose node holds a lease; the others are deleted."""
        nodes = self.entries.get(channel, {})
        for node in [node for node in nodes if self.leases.get(node, -math.inf) <= now]:
            del nodes[node]  # clean up lazily, as the Redis store does
        return dict(nodes)


@attrs.define(eq=False)
class MemoryPresence(PresenceStore):
    """The :class:`PresenceStore` of a :class:`~trio_wsmgr.backends.MemoryBackend`."""

    hub: PresenceHub

    def _table(self) -> PresenceTable:
        if not self.hub.available:
            raise BackendUnavailable("the memory hub is unavailable", delivered=0)
        return self.hub._presence

    async def refresh(self, node: str, ttl: float) -> bool:
        await trio.lowlevel.checkpoint()
        table = self._table()
        now = trio.current_time()
        lost = table.leases.get(node, -math.inf) <= now
        table.leases[node] = now + ttl
        return lost

    async def write(self, node: str, changes: Mapping[str, Counts | None]) -> None:
        await trio.lowlevel.checkpoint()
        table = self._table()
        for channel, counts in changes.items():
            if counts is None:
                nodes = table.entries.get(channel, {})
                nodes.pop(node, None)
                if not nodes:
                    table.entries.pop(channel, None)
            else:
                table.entries.setdefault(channel, {})[node] = counts

    async def read(self, channel: str) -> dict[str, Counts]:
        await trio.lowlevel.checkpoint()
        return self._table().live(channel, trio.current_time())

    async def remove(self, node: str, channels: Iterable[str]) -> None:
        await self.write(node, dict.fromkeys(channels))
        self._table().leases.pop(node, None)
