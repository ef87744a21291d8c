"""Heartbeats and the close watch: a synchronous policy, and the task that hosts it for accept().

:class:`HeartbeatPolicy` decides, without an event loop, when a connection's
heartbeat must next wake and what to do then: send a ping, give up on a peer
whose pong is late (1011), or drop a connection whose close has not finished
within ``close_timeout``. The async shells only sleep until
:meth:`~HeartbeatPolicy.next_wake` and do what :meth:`~HeartbeatPolicy.on_wake`
says: for ``serve`` that is the connection's reader (its read waits with the
policy's deadline, no task of its own); for ``manager.accept`` it is
:class:`~._accepted.HeartbeatHost`, in the task that keeps the connection's
background nursery open.

The close watch runs whatever ``heartbeat_interval`` is: once a close has
started (from either side), the connection is dropped ``close_timeout`` later
if the closing handshake has not finished.
"""

from __future__ import annotations

import enum
import math
import random


class Action(enum.Enum):
    """What :meth:`HeartbeatPolicy.on_wake` asks the shell to do."""

    WAIT = "wait"  #: nothing now; sleep until next_wake()
    PING = "ping"  #: send a ping now (then pong() when it is answered)
    TIMEOUT = "timeout"  #: the pong is late: abort with 1011 "heartbeat timeout"
    CLOSE_TIMEOUT = "close_timeout"  #: the closing handshake took too long: drop the connection


class HeartbeatPolicy:
    """One connection's heartbeat and close watch, as plain synchronous state.

    A ping every ``interval``; a pong due within ``timeout`` of its ping. While
    a ping is in flight no other is sent. While the application leaves
    received messages unread (``backlog``), no ping is sent and a late pong is
    not held against the peer: it could not have been read. ``math.inf``
    means never.
    """

    __slots__ = (
        "_close_deadline",
        "_close_timeout",
        "_closing",
        "_interval",
        "_next_ping",
        "_ping_deadline",
        "_ping_sent",
        "_timeout",
        "rtt",
    )

    def __init__(self, interval: float, timeout: float, close_timeout: float, now: float) -> None:
        self._interval = interval
        self._timeout = timeout
        self._close_timeout = close_timeout
        self._next_ping = now + interval
        self._ping_sent: float | None = None
        self._ping_deadline = math.inf
        self._close_deadline = math.inf
        self._closing = False
        #: the last round trip in seconds (nan before the first)
        self.rtt = math.nan

    def next_wake(self) -> float:
        """When the shell must next call :meth:`on_wake` (``math.inf``: never)."""
        if self._closing:
            return self._close_deadline
        if self._ping_sent is not None:
            return self._ping_deadline
        return self._next_ping

    def on_wake(self, now: float, *, backlog: bool = False) -> Action:
        """What to do at ``now``; a PING is counted as sent."""
        if self._closing:
            return Action.CLOSE_TIMEOUT if now >= self._close_deadline else Action.WAIT
        if self._ping_sent is not None:
            if now < self._ping_deadline:
                return Action.WAIT
            if not backlog:
                return Action.TIMEOUT
            self._ping_sent = None  # its pong may sit unread behind the backlog: no verdict
            self._ping_deadline = math.inf
        if now < self._next_ping:
            return Action.WAIT
        self._next_ping = now + self._interval
        if backlog:
            return Action.WAIT
        self._ping_sent = now
        self._ping_deadline = now + self._timeout
        return Action.PING

    def ping_not_sent(self) -> None:
        """The PING could not go out (the connection is closing)."""
        self._ping_sent = None
        self._ping_deadline = math.inf

    def pong(self, now: float) -> None:
        """The pong of the ping in flight arrived."""
        if self._ping_sent is not None:
            self.rtt = now - self._ping_sent
            self._ping_sent = None
            self._ping_deadline = math.inf

    def close_started(self, now: float) -> None:
        """A close started (either side): watch it for ``close_timeout``. Idempotent."""
        if not self._closing:
            self._closing = True
            self._close_deadline = now + self._close_timeout

    @property
    def closing(self) -> bool:
        """Whether a close has started (and is being watched)."""
        return self._closing


def ping_payload() -> bytes:
    return random.getrandbits(32).to_bytes(4, "big")
