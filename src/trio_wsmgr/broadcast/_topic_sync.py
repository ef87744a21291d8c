"""Which topics the node is subscribed to on its backend, kept in step with what it wants.

A node is subscribed to a topic exactly while it needs it (a channel with local
subscribers, the user topics while a manager is attached): the Broadcaster says
*which* topics may have changed (:meth:`TopicSync.change`, synchronous) and one
task applies the changes to the backend, in order, one batch at a time. Callers
that must not return before the backend has a topic (``subscribe``) wait for
every change requested so far (:meth:`TopicSync.wait`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import attrs
import trio

from ._backend import Backend


@attrs.define(eq=False)
class TopicSync:
    """The node's backend subscriptions, and the task that applies changes to them."""

    backend: Backend
    #: ``wants(topic)``: the node needs ``topic`` now
    wants: Callable[[str], bool]

    #: topics the backend has been told to subscribe to
    _subscribed: set[str] = attrs.field(init=False, factory=set)
    #: topics that may have changed since the last batch
    _changed: set[str] = attrs.field(init=False, factory=set)
    _requested: int = attrs.field(init=False, default=0)
    _applied: int = attrs.field(init=False, default=0)
    _syncing: bool = attrs.field(init=False, default=False)
    _sync_lot: trio.lowlevel.ParkingLot = attrs.field(init=False, factory=trio.lowlevel.ParkingLot)
    _synced_lot: trio.lowlevel.ParkingLot = attrs.field(
        init=False, factory=trio.lowlevel.ParkingLot
    )

    def change(self, topics: Iterable[str]) -> None:
        """Whether the node wants ``topics`` may have changed: bring the backend in step."""
        self._changed.update(topics)
        self._requested += 1
        self._sync_lot.unpark_all()

    def start(self, nursery: trio.Nursery) -> None:
        """Run the task that applies the changes in ``nursery`` (until it is cancelled)."""
        self._syncing = True
        nursery.start_soon(self._run)

    async def _run(self) -> None:
        try:
            while True:
                while self._applied == self._requested:
                    await self._sync_lot.park()
                target = self._requested
                changed, self._changed = self._changed, set()
                add = sorted(t for t in changed if self.wants(t) and t not in self._subscribed)
                drop = sorted(t for t in changed if not self.wants(t) and t in self._subscribed)
                if drop:
                    self._subscribed.difference_update(drop)
                    await self.backend.unsubscribe(drop)
                if add:
                    self._subscribed.update(add)
                    await self.backend.subscribe(add)
                self._applied = target
                self._synced_lot.unpark_all()
        finally:
            self._syncing = False
            self._synced_lot.unpark_all()

    async def wait(self) -> None:
        """Wait until every change requested so far reached the backend.

        Returns at once (after a checkpoint) if they did, or if the task does not run.
        """
        generation = self._requested
        if self._applied >= generation or not self._syncing:
            await trio.lowlevel.checkpoint()
            return
        while self._applied < generation and self._syncing:
            await self._synced_lot.park()
