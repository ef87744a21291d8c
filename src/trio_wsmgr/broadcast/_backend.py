"""The Backend interface: how a Broadcaster reaches the Broadcasters of other nodes.

A backend moves opaque ``bytes`` on named *topics* between nodes. It knows
nothing about sockets, channels or the wire format; the
:class:`~trio_wsmgr.Broadcaster` owns all of that. Four methods make a backend
(``statistics()`` is optional):

``run(receive, task_status=...)``
    The backend's life: connect, listen, reconnect. It calls
    ``receive(topic, data)`` synchronously (no awaits, must not block) for every
    message on a subscribed topic, *including the node's own publications* (the
    Broadcaster recognises and skips those). It signals ``task_status.started()``
    once the first connection attempt has succeeded or failed, and does not
    return or raise for outages: it retries. Cancelling it is the only way it
    ends.
``publish(topic, data)``
    Hand one message to the engine, once (never once per subscriber). Raise
    :class:`~trio_wsmgr.BackendUnavailable` (``delivered=0``) when the engine
    cannot be reached; the Broadcaster adds the local count. It must end in
    bounded time (a command timeout): the Broadcaster shields it from
    cancellation, so that a broadcast either happens or does not.
``subscribe(topics)`` / ``unsubscribe(topics)``
    Start / stop receiving these topics. The backend remembers the set and
    restores it after every reconnect. While connected, return once the engine
    has confirmed; while disconnected, record and return at once. Never raise
    for an outage.

Channel history (optional; ``supports_history = True`` says a backend has it):

``publish_history(topic, inner, size=, ttl=)``
    Append ``inner`` to the topic's history (at most ``size`` entries; the whole
    history expires ``ttl`` seconds after its last append) and send it to the
    subscribed nodes as a *positioned* message (see :mod:`._history`), in ONE
    atomic step, so every node sees the publications in position order. Return
    the :class:`~trio_wsmgr.StreamPosition` it got; offsets go up by one; a
    lost history (restart, expiry) starts a new random epoch at offset 1.
``read_history(topic, after=, limit=, size=, ttl=)``
    A :class:`HistoryPage`: the epoch, the newest and the oldest kept offset,
    and up to ``limit`` entries after offset ``after`` (``None``: the newest
    ones), oldest first.

The Broadcaster calls ``subscribe``/``unsubscribe`` from one task only, never
concurrently with each other, and only with topics whose state changes (a
topic is subscribed while the node has at least one local subscriber to it).
``publish`` may run concurrently with everything.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Collection
from typing import TYPE_CHECKING, ClassVar, TypeAlias

import attrs
import trio

from ._history import HistoryPage, StreamPosition

if TYPE_CHECKING:
    from ._presence import PresenceStore

#: ``receive(topic, data)``: what :meth:`Backend.run` calls for each incoming message.
Receiver: TypeAlias = Callable[[str, bytes], None]


@attrs.frozen
class ShardStatistics:
    """One part of a partitioned engine (a Redis Cluster master), as a backend sees it."""

    #: where it is (``host:port``)
    address: str
    #: whether the backend's connection to it is up, with its subscriptions restored
    connected: bool
    #: hash slots it owns, as last read from the cluster
    slots: int
    #: topics this node is subscribed to there
    topics: int


@attrs.frozen
class BackendStatistics:
    """A snapshot of a backend's state (``backend.statistics()``)."""

    #: whether the backend is connected to its engine now
    connected: bool
    #: topics the node is subscribed to (restored after every reconnect)
    topics: int
    #: messages handed to the engine
    published: int
    #: publications that failed (the engine was unreachable or too slow)
    publish_failures: int
    #: messages received from the engine (own publications included)
    received: int
    #: successful connections after the first one
    reconnects: int
    #: connection attempts that failed, or connections that were lost
    connection_failures: int
    #: part of the engine is reachable, part is not (a cluster shard is down):
    #: topics on the reachable part work, the others neither send nor receive.
    #: ``connected`` is False meanwhile; both False means nothing is reachable.
    degraded: bool = False
    #: per-shard state, for an engine made of shards (Redis Cluster); else empty
    shards: tuple[ShardStatistics, ...] = ()


class Backend(abc.ABC):
    """What the :class:`~trio_wsmgr.Broadcaster` needs from a message engine.

    One backend instance serves one Broadcaster. See the module documentation
    for the contract of each method; :class:`~trio_wsmgr.backends.MemoryBackend`
    is the smallest complete implementation.
    """

    @abc.abstractmethod
    async def run(
        self,
        receive: Receiver,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Connect, listen and reconnect until cancelled; feed ``receive``."""

    @abc.abstractmethod
    async def publish(self, topic: str, data: bytes) -> None:
        """Send ``data`` to every node subscribed to ``topic`` (this one included)."""

    @abc.abstractmethod
    async def subscribe(self, topics: Collection[str]) -> None:
        """Start receiving ``topics``; kept across reconnects."""

    @abc.abstractmethod
    async def unsubscribe(self, topics: Collection[str]) -> None:
        """Stop receiving ``topics``."""

    #: whether :meth:`publish_history` and :meth:`read_history` are implemented
    supports_history: ClassVar[bool] = False

    async def publish_history(
        self, topic: str, inner: bytes, *, size: int, ttl: float
    ) -> StreamPosition:
        """Append to ``topic``'s history and publish, positioned, atomically."""
        raise NotImplementedError(f"{type(self).__name__} keeps no channel history")

    async def read_history(
        self, topic: str, *, after: int | None, limit: int, size: int, ttl: float
    ) -> HistoryPage:
        """Read ``topic``'s history: up to ``limit`` entries after offset ``after``."""
        raise NotImplementedError(f"{type(self).__name__} keeps no channel history")

    def presence_store(self) -> PresenceStore | None:
        """Where the Broadcaster keeps presence entries; None (the default): no presence.

        A backend that shares presence between nodes returns a
        ``PresenceStore`` (see ``trio_wsmgr.broadcast._presence``); the
        Broadcaster calls this once, when it starts.
        """
        return None

    def statistics(self) -> BackendStatistics | None:
        """A snapshot of the backend's state, or None if this backend cannot tell.

        The default says nothing (None): a backend that does not override this
        is not claimed to be connected, nor to have moved zero messages.
        """
        return None
