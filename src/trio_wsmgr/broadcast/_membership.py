"""Who is subscribed to what on this node: plain synchronous bookkeeping, no I/O.

The Broadcaster owns one :class:`Membership` (its async shell, which subscribes
and unsubscribes, is :mod:`._subscriptions`) and hears of each change through
three hooks: a socket joined a channel, left it, and a channel got
its first local subscriber or lost its last (the node's backend subscription
follows that). A socket leaves every channel by itself when it closes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import attrs

if TYPE_CHECKING:
    from ..server._socket import ManagedSocket


class Join:
    """The subscribe calls in flight for one (socket, channel)."""

    __slots__ = ("calls", "owned")

    def __init__(self) -> None:
        #: how many
        self.calls = 0
        #: one of them added the socket and none returned yet
        self.owned = False


@attrs.define(eq=False)
class Membership:
    """channel -> local subscribers, socket -> channels, and the subscribe calls in flight."""

    #: ``joined(channel, sock)``: sock became a member of channel
    joined: Callable[[str, ManagedSocket], None]
    #: ``left(channel, sock)``: it is one no more
    left: Callable[[str, ManagedSocket], None]
    #: ``first_or_last(channel, first)``: the channel got its first member, or lost its last
    first_or_last: Callable[[str, bool], None]
    #: channel -> socket id -> socket
    members: dict[str, dict[int, ManagedSocket]] = attrs.field(factory=dict)
    #: socket id -> its channels
    memberships: dict[int, set[str]] = attrs.field(factory=dict)
    #: subscribe calls in flight per (socket id, channel)
    joins: dict[tuple[int, str], Join] = attrs.field(factory=dict)

    def add(self, sock: ManagedSocket, name: str) -> None:
        members = self.members.setdefault(name, {})
        if sock.id in members:
            return
        members[sock.id] = sock
        self.joined(name, sock)
        names = self.memberships.setdefault(sock.id, set())
        names.add(name)
        if len(names) == 1:
            sock.add_close_callback(self.on_close)  # runs at once if already closed
        if len(members) == 1:
            self.first_or_last(name, True)

    def remove(self, sock: ManagedSocket, name: str) -> None:
        members = self.members.get(name)
        if members is None or members.pop(sock.id, None) is None:
            return
        self.left(name, sock)
        self.memberships.get(sock.id, set()).discard(name)
        if not members:
            del self.members[name]
            self.first_or_last(name, False)

    def forget_if_idle(self, sock: ManagedSocket) -> None:
        """Stop watching ``sock``'s close if it is in no channel any more."""
        names = self.memberships.get(sock.id)
        if names is not None and not names:
            del self.memberships[sock.id]
            sock.remove_close_callback(self.on_close)

    def on_close(self, sock: ManagedSocket) -> None:
        for name in list(self.memberships.get(sock.id, ())):
            self.remove(sock, name)
        self.memberships.pop(sock.id, None)

    def begin_join(self, sock: ManagedSocket, name: str) -> Join:
        """A subscribe call begins: add ``sock`` to ``name`` unless it is a member."""
        join = self.joins.get((sock.id, name))
        if join is None:
            join = self.joins[sock.id, name] = Join()
        join.calls += 1
        if sock.id not in self.members.get(name, {}):
            self.add(sock, name)
            join.owned = True  # undone if every call in flight for it is cancelled
        return join

    def end_join(self, sock: ManagedSocket, name: str, join: Join, *, done: bool) -> None:
        """A subscribe call ends: ``done`` (it returned) or not (it raised: undo it)."""
        join.calls -= 1
        if done:
            join.owned = False  # a call returned: the membership stands
        elif join.owned and not join.calls:
            self.remove(sock, name)  # no-op if it left meanwhile
            self.forget_if_idle(sock)
        if not join.calls:
            del self.joins[sock.id, name]

    def release(self) -> None:
        """Forget every membership (the Broadcaster ends)."""
        for members in self.members.values():
            for sock in members.values():
                sock.remove_close_callback(self.on_close)
        self.members.clear()
        self.memberships.clear()
