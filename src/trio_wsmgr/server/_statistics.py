"""The manager's statistics: a frozen snapshot of its counters (``manager.statistics()``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from ._context import Counters
from ._registry import Registry

__all__ = ["ManagerStatistics", "snapshot"]


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


def snapshot(
    counters: Counters, registry: Registry[Any], rejected: Mapping[str, int]
) -> ManagerStatistics:
    """The statistics of a manager with these counters, registry and refusal counts."""
    return ManagerStatistics(
        open_sockets=len(registry),
        handshaking=registry.reserved,
        accepted=counters.accepted,
        rejected=rejected,
        messages_in=counters.messages_in,
        messages_out=counters.messages_out,
        bytes_in=counters.bytes_in,
        bytes_out=counters.bytes_out,
        dropped=counters.dropped,
        slow_consumer_closes=counters.slow_consumer_closes,
        heartbeat_timeouts=counters.heartbeat_timeouts,
        rate_limited=counters.rate_limited,
    )
