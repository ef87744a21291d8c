"""Subscribing a socket to a channel and unsubscribing it: the async shell around Membership.

A subscribe adds the socket to the channel at once (:class:`._membership.Membership`,
whose hooks update presence and, on the channel's first local subscriber, the
node's backend topics) and returns once the backend has the topic
(:meth:`._topic_sync.TopicSync.wait`); on a channel with history, once the replay
since the client's last position is done too (:func:`._recovery.recover`). A
subscribe that raises (cancelled, or failed) is undone, unless another call for
the same socket and channel returned meanwhile; one that returns stands.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import attrs
import trio

from . import _recovery
from ._history import ChannelStream, Cursor, StreamPosition, SubscribeResult
from ._membership import Membership
from ._topic_sync import TopicSync

if TYPE_CHECKING:
    from ..server._socket import ManagedSocket


@attrs.frozen(eq=False)
class Subscriptions:
    """Joins and leaves of the Broadcaster's sockets (it validated the arguments)."""

    membership: Membership
    sync: TopicSync
    host: _recovery.HistoryHost

    async def join(self, sock: ManagedSocket, name: str) -> None:
        """Subscribe ``sock`` to ``name`` (a channel without history); idempotent."""
        membership = self.membership
        join = membership.begin_join(sock, name)
        try:
            await self.sync.wait()
        except BaseException:
            membership.end_join(sock, name, join, done=False)  # cancelled: it did not happen
            raise
        membership.end_join(sock, name, join, done=True)

    async def join_with_history(
        self, sock: ManagedSocket, stream: ChannelStream, since: StreamPosition | None
    ) -> SubscribeResult:
        """Subscribe ``sock`` to a channel with history, replaying it ``since`` a position."""
        membership = self.membership
        name = stream.name
        if sock.id in membership.members.get(name, {}):
            return SubscribeResult(False, await _recovery.position(self.host, stream))
        stream.cursors[sock.id] = Cursor()  # held back until the replay is done
        join = membership.begin_join(sock, name)
        try:
            await self.sync.wait()
            # shielded by recover() once it sent sock a publication: from there on,
            # leaving sock out would be a gap its client cannot see
            with trio.CancelScope() as replay:
                result = await _recovery.recover(self.host, sock, stream, since, replay)
        except BaseException:
            # cancelled, or failed: undone (a half replay must not be a gap)
            membership.end_join(sock, name, join, done=False)
            raise
        membership.end_join(sock, name, join, done=True)
        return result

    async def leave(self, sock: ManagedSocket, name: str) -> None:
        """Unsubscribe ``sock`` from ``name``; waits (shielded) for the backend."""
        await trio.lowlevel.checkpoint_if_cancelled()
        self.membership.remove(sock, name)
        self.membership.forget_if_idle(sock)
        with trio.CancelScope(shield=True):
            await self.sync.wait()
