"""The in-process backend: Broadcasters connected through a :class:`MemoryHub`.

``Broadcaster()`` uses a :class:`MemoryBackend` on a hub of its own, so
``broadcast`` reaches only the local subscribers. Several Broadcasters whose
backends share one hub behave like nodes sharing a Redis server, which is how
the contract tests run the same cases against both backends. Delivery is
synchronous: ``publish`` calls every subscribed member's receiver before it
returns.
"""

from __future__ import annotations

from collections.abc import Collection

import attrs
import trio

from .._exceptions import BackendUnavailable
from ._backend import Backend, BackendStatistics, Receiver
from ._history import HistoryPage, Ring, StreamPosition, encode_positioned
from ._presence import MemoryPresence, PresenceStore, PresenceTable


@attrs.define(eq=False)
class MemoryHub:
    """The "server" that :class:`MemoryBackend` instances in one process share.

    ``available = False`` simulates an outage: every ``publish`` raises
    :class:`~trio_wsmgr.BackendUnavailable` until it is set back to True;
    subscriptions are kept meanwhile.
    """

    available: bool = True
    #: messages published through the hub (successful ones)
    published: int = attrs.field(init=False, default=0)
    _members: dict[str, set[MemoryBackend]] = attrs.field(init=False, factory=dict, repr=False)
    _rings: dict[str, Ring] = attrs.field(init=False, factory=dict, repr=False)
    _presence: PresenceTable = attrs.field(init=False, factory=PresenceTable, repr=False)

    def subscribers(self, topic: str) -> int:
        """How many backends are subscribed to ``topic`` (Redis' PUBSUB NUMSUB)."""
        return len(self._members.get(topic, ()))

    def topics(self) -> list[str]:
        """The topics with at least one subscribed backend (Redis' PUBSUB CHANNELS)."""
        return sorted(self._members)

    def _join(self, backend: MemoryBackend, topics: Collection[str]) -> None:
        for topic in topics:
            self._members.setdefault(topic, set()).add(backend)

    def _leave(self, backend: MemoryBackend, topics: Collection[str]) -> None:
        for topic in topics:
            members = self._members.get(topic)
            if members is not None:
                members.discard(backend)
                if not members:
                    del self._members[topic]

    # -- history: a ring per channel (see trio_wsmgr.broadcast._history) --

    def _ring(self, topic: str, now: float) -> Ring:
        ring = self._rings.get(topic)
        if ring is None or ring.expires <= now:  # never published, or expired: a new epoch
            ring = self._rings[topic] = Ring()
        return ring

    def _publish_history(self, topic: str, inner: bytes, size: int, ttl: float) -> StreamPosition:
        if not self.available:
            raise BackendUnavailable("the memory hub is unavailable", delivered=0)
        now = trio.current_time()
        ring = self._ring(topic, now)
        offset = ring.append(inner, size=size, ttl=ttl, now=now)
        self._publish(topic, encode_positioned(ring.epoch, offset, inner))
        return StreamPosition(ring.epoch, offset)

    def _read_history(self, topic: str, after: int | None, limit: int) -> HistoryPage:
        if not self.available:
            raise BackendUnavailable("the memory hub is unavailable", delivered=0)
        return self._ring(topic, trio.current_time()).read(after, limit)

    def forget_history(self) -> None:
        """Lose every channel's history (what a Redis restart without persistence does)."""
        self._rings.clear()

    def _publish(self, topic: str, data: bytes) -> None:
        if not self.available:
            raise BackendUnavailable("the memory hub is unavailable", delivered=0)
        self.published += 1
        for member in list(self._members.get(topic, ())):
            member._deliver(topic, data)


@attrs.define(eq=False)
class MemoryBackend(Backend):
    """A :class:`~trio_wsmgr.backends.Backend` within one process.

    ``hub``: the :class:`MemoryHub` to share with other backends (a new one by
    default, which makes the Broadcaster purely local).
    """

    hub: MemoryHub = attrs.field(
        kw_only=True, factory=MemoryHub, validator=attrs.validators.instance_of(MemoryHub)
    )
    _receive: Receiver | None = attrs.field(init=False, default=None, repr=False)
    _topics: set[str] = attrs.field(init=False, factory=set, repr=False)
    _counts: dict[str, int] = attrs.field(init=False, repr=False)

    def __attrs_post_init__(self) -> None:
        self._counts = dict.fromkeys(["published", "publish_failures", "received"], 0)

    async def run(
        self,
        receive: Receiver,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        if self._receive is not None:
            raise RuntimeError("this backend is already running (one Broadcaster per backend)")
        self._receive = receive
        self.hub._join(self, self._topics)
        try:
            task_status.started()
            await trio.sleep_forever()
        finally:
            self.hub._leave(self, self._topics)
            self._receive = None

    # Cancel atomicity as in trio's memory channels: a call that raises Cancelled
    # did nothing, one that returns did everything (checkpoint_if_cancelled, the
    # synchronous work, then cancel_shielded_checkpoint).

    async def publish(self, topic: str, data: bytes) -> None:
        await trio.lowlevel.checkpoint_if_cancelled()
        try:
            self.hub._publish(topic, data)
        except BackendUnavailable:
            self._counts["publish_failures"] += 1
            raise
        self._counts["published"] += 1
        await trio.lowlevel.cancel_shielded_checkpoint()

    supports_history = True

    async def publish_history(
        self, topic: str, inner: bytes, *, size: int, ttl: float
    ) -> StreamPosition:
        await trio.lowlevel.checkpoint_if_cancelled()
        try:
            position = self.hub._publish_history(topic, inner, size, ttl)
        except BackendUnavailable:
            self._counts["publish_failures"] += 1
            raise
        self._counts["published"] += 1
        await trio.lowlevel.cancel_shielded_checkpoint()
        return position

    async def read_history(
        self, topic: str, *, after: int | None, limit: int, size: int, ttl: float
    ) -> HistoryPage:
        await trio.lowlevel.checkpoint_if_cancelled()
        page = self.hub._read_history(topic, after, limit)
        await trio.lowlevel.cancel_shielded_checkpoint()
        return page

    async def subscribe(self, topics: Collection[str]) -> None:
        await trio.lowlevel.checkpoint_if_cancelled()
        self._topics.update(topics)
        if self._receive is not None:
            self.hub._join(self, topics)
        await trio.lowlevel.cancel_shielded_checkpoint()

    async def unsubscribe(self, topics: Collection[str]) -> None:
        await trio.lowlevel.checkpoint_if_cancelled()
        self._topics.difference_update(topics)
        self.hub._leave(self, topics)
        await trio.lowlevel.cancel_shielded_checkpoint()

    def presence_store(self) -> PresenceStore:
        return MemoryPresence(self.hub)

    def statistics(self) -> BackendStatistics:
        return BackendStatistics(
            connected=self._receive is not None and self.hub.available,
            topics=len(self._topics),
            published=self._counts["published"],
            publish_failures=self._counts["publish_failures"],
            received=self._counts["received"],
            reconnects=0,
            connection_failures=0,
        )

    def _deliver(self, topic: str, data: bytes) -> None:
        receive = self._receive
        if receive is not None:
            self._counts["received"] += 1
            receive(topic, data)
