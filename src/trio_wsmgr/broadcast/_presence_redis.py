"""Presence in Redis (7.0 is enough: no per-field expiry needed).

Keys, under the backend's ``prefix``:

``presence:{<channel>}``
    a hash per channel: field = node id, value = that node's counts for the
    channel (JSON: ``{"u": {user: sockets}, "a": anonymous}``). The braces are
    a hash tag, so on a cluster every key of one channel shares a slot. The
    hash expires ``ttl`` after the last live node refreshed it.
``presence-node:<node id>``
    the node's lease, a plain key with a TTL of ``ttl`` that the node renews
    every ``ttl / 3``.

A reader runs HGETALL on the channel's hash, checks the leases of the nodes
found there (one MGET on a single server; one GET per node on a cluster,
where leases live in different slots), deletes the fields of nodes without a
lease (lazily: a dead node leaves them behind) and returns the rest. Commands
go through one hook, :meth:`RedisBackend._command`: on a single server over
the backend's pub/sub connection (RESP3 allows commands there), on a cluster
to the master that owns the key's slot.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Protocol, TypeVar

import attrs
import trio

from .._exceptions import BackendUnavailable
from ._presence import Counts, PresenceStore


class PresenceCommands(Protocol):
    """What :class:`RedisPresence` uses of a :class:`~trio_wsmgr.backends.RedisBackend`."""

    @property
    def prefix(self) -> str: ...

    @property
    def command_timeout(self) -> float: ...

    @property
    def cluster(self) -> bool: ...

    async def _command(self, key: str, *args: bytes | str | int) -> object: ...


T = TypeVar("T")


@attrs.define(eq=False)
class RedisPresence(PresenceStore):
    """The :class:`PresenceStore` of a :class:`~trio_wsmgr.backends.RedisBackend`."""

    backend: PresenceCommands
    #: milliseconds a lease (and a channel hash) lives; None for never
    _ttl_ms: int | None = attrs.field(init=False, default=None)
    #: channels this node keeps an entry in (their hashes' TTLs are renewed with the lease)
    _mine: set[str] = attrs.field(init=False, factory=set)

    def _channel_key(self, channel: str) -> str:
        return f"{self.backend.prefix}presence:{{{channel}}}"

    def _lease_key(self, node: str) -> str:
        return f"{self.backend.prefix}presence-node:{node}"

    async def _run(self, what: str, commands: Callable[[], Awaitable[T]]) -> T:
        """``await commands()`` within ``command_timeout``; failures: BackendUnavailable.

        Shielded (up to ``command_timeout``): these commands are short, and a
        command cut off half-way leaves the connection in doubt. A cancelled
        caller gets its Cancelled at its next checkpoint.
        """
        timeout = self.backend.command_timeout
        try:
            with trio.CancelScope(shield=True) as scope:
                scope.deadline = trio.current_time() + timeout
                result = await commands()
        except BackendUnavailable:
            raise
        except Exception as exc:
            raise BackendUnavailable(f"presence {what} failed: {exc!r}", delivered=0) from exc
        if scope.cancelled_caught:
            raise BackendUnavailable(
                f"presence {what}: no answer from Redis within {timeout} s", delivered=0
            )
        return result

    async def _command(self, key: str, *args: bytes | str | int) -> object:
        return await self.backend._command(key, *args)

    async def refresh(self, node: str, ttl: float) -> bool:
        self._ttl_ms = ttl_ms = None if math.isinf(ttl) else max(1, int(ttl * 1000))
        mine = sorted(self._mine)

        async def commands() -> bool:
            key = self._lease_key(node)
            if ttl_ms is None:
                old = await self._command(key, b"SET", key, b"1", b"GET")
            else:
                old = await self._command(key, b"SET", key, b"1", b"PX", ttl_ms, b"GET")
                for channel in mine:
                    hash_key = self._channel_key(channel)
                    await self._command(hash_key, b"PEXPIRE", hash_key, ttl_ms)
            return old is None

        return await self._run("refresh", commands)

    async def write(self, node: str, changes: Mapping[str, Counts | None]) -> None:
        items = sorted(changes.items())
        ttl_ms = self._ttl_ms

        async def commands() -> None:
            for channel, counts in items:
                key = self._channel_key(channel)
                if counts is None:
                    await self._command(key, b"HDEL", key, node)
                else:
                    await self._command(key, b"HSET", key, node, counts.encode())
                    if ttl_ms is not None:
                        await self._command(key, b"PEXPIRE", key, ttl_ms)

        await self._run("write", commands)
        for channel, counts in changes.items():
            if counts is None:
                self._mine.discard(channel)
            else:
                self._mine.add(channel)

    async def read(self, channel: str) -> dict[str, Counts]:
        key = self._channel_key(channel)
        cluster = self.backend.cluster

        async def commands() -> dict[str, Counts]:
            raw = await self._command(key, b"HGETALL", key)
            if not isinstance(raw, dict) or not raw:
                return {}
            entries = {
                _text(field): value for field, value in raw.items() if isinstance(value, bytes)
            }
            nodes = list(entries)
            leases = [self._lease_key(node) for node in nodes]
            if cluster:  # leases live in different slots
                alive = [await self._command(lease, b"GET", lease) for lease in leases]
            else:
                reply = await self._command(leases[0], b"MGET", *leases)
                alive = list(reply) if isinstance(reply, list) else [None] * len(leases)
            dead = [node for node, lease in zip(nodes, alive, strict=True) if lease is None]
            if dead:
                await self._command(key, b"HDEL", key, *dead)
            found: dict[str, Counts] = {}
            for node, lease in zip(nodes, alive, strict=True):
                counts = Counts.decode(entries[node]) if lease is not None else None
                if counts is not None:
                    found[node] = counts
            return found

        return await self._run("read", commands)

    async def remove(self, node: str, channels: Iterable[str]) -> None:
        await self.write(node, dict.fromkeys(channels))

        async def commands() -> None:
            key = self._lease_key(node)
            await self._command(key, b"DEL", key)

        await self._run("remove", commands)


def _text(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)
