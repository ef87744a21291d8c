"""The manager's statistics: a frozen snapshot of its counters (``manager.statistics()``)."""

from __future__ import annotations

from collections.abc import Mapping

import attrs

__all__ = ["ManagerStatistics"]


@attrs.frozen
class ManagerStatistics:
    """A snapshot of the manager's counters (``manager.statistics()``)."""

    open_sockets: int
    handshaking: int
    accepted: int
    #: refused handshakes by cause: closing, full, origin, unauthenticated,
    #: forbidden, per_address, per_user, bad_request, timeout, error
    rejected: Mapping[str, int]
    messages_in: int
    messages_out: int
    bytes_in: int
    bytes_out: int
    #: broadcast deliveries skipped because a socket's buffer was full
    dropped: int
    slow_consumer_closes: int
    heartbeat_timeouts: int
    #: sockets closed (1008) for exceeding ``max_messages_per_second``
    rate_limited: int
