"""What a managed socket needs from its manager: limits, counters, a way to unregister.

Handed to every socket at construction (one shared object per manager), so the
socket, fan-out and heartbeats never import or reach into the manager: the
arrows point one way, ``_manager -> _socket -> _context``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["GATHER_MOST", "Counters", "SocketContext"]

#: the most bytes of gathered broadcasts a socket holds before they are written anyway
GATHER_MOST = 16 * 1024


class Counters:
    """The manager-wide counters sockets and fan-out add to (``manager.statistics()``)."""

    __slots__ = (
        "accepted",
        "bytes_in",
        "bytes_out",
        "dropped",
        "heartbeat_timeouts",
        "messages_in",
        "messages_out",
        "rate_limited",
        "slow_consumer_closes",
    )

    def __init__(self) -> None:
        self.accepted = 0
        self.messages_in = 0
        self.messages_out = 0
        self.bytes_in = 0
        self.bytes_out = 0
        self.dropped = 0
        self.slow_consumer_closes = 0
        self.heartbeat_timeouts = 0
        self.rate_limited = 0

    def count_in(self, size: int) -> None:
        self.messages_in += 1
        self.bytes_in += size


class SocketContext:
    """One manager's limits, counters and unregister callback, shared by its sockets."""

    __slots__ = (
        "close_timeout",
        "counters",
        "gather_most",
        "heartbeat_interval",
        "heartbeat_timeout",
        "max_incoming_queue",
        "max_messages_per_second",
        "receive_buffer_size",
        "send_buffer_size",
        "slow_consumer_timeout",
        "unregister",
    )

    def __init__(
        self,
        *,
        counters: Counters,
        unregister: Callable[[Any], object],
        send_buffer_size: float,
        slow_consumer_timeout: float,
        close_timeout: float,
        max_messages_per_second: float,
        max_incoming_queue: float = 16,
        receive_buffer_size: int = 16 * 1024,
        heartbeat_interval: float = 20.0,
        heartbeat_timeout: float = 20.0,
    ) -> None:
        self.counters = counters
        #: called with a socket as soon as it starts closing or its transport ends
        self.unregister = unregister
        self.send_buffer_size = send_buffer_size
        #: gathered broadcast frames are written once a socket has this many bytes of them
        #: (so gathering alone never fills a send buffer: see server/_coalesce.py)
        self.gather_most = min(GATHER_MOST, send_buffer_size / 4)
        self.slow_consumer_timeout = slow_consumer_timeout
        self.close_timeout = close_timeout
        self.max_messages_per_second = max_messages_per_second
        #: received messages held for the application before reading stops
        self.max_incoming_queue = max_incoming_queue
        self.receive_buffer_size = receive_buffer_size
        self.heartbeat_interval = heartbeat_interval
        self.heartbeat_timeout = heartbeat_timeout
