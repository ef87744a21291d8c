"""Heartbeats: a ping every ``heartbeat_interval``, a pong due within ``heartbeat_timeout``."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import trio
import trio_websocket

from . import _border
from ._config import CloseCode

if TYPE_CHECKING:
    from ._socket import ManagedSocket


async def run_heartbeat(
    sock: ManagedSocket, interval: float, pong_timeout: float, queue: int
) -> None:
    """Ping ``sock`` until it closes; abort it with 1011 when a pong is late.

    A peer is reaped at most ``interval + pong_timeout`` after it stopped answering.
    While the application leaves ``queue`` received messages unread, reading
    stops (backpressure), pongs cannot be seen, and so no verdict is made: the
    ping is skipped rather than blaming the peer for our own backlog.
    """
    if math.isinf(interval):
        return
    conn = sock._conn
    while not sock.closed:
        await trio.sleep(interval)
        if sock.closed:
            return
        if _border.pending_messages(conn) >= queue:
            continue
        started = trio.current_time()
        with trio.move_on_after(pong_timeout) as scope:
            try:
                await conn.ping()
            except trio_websocket.ConnectionClosed:
                return
        if scope.cancelled_caught:
            sock._manager._count_heartbeat_timeout()
            await sock.abort(CloseCode.INTERNAL_ERROR, "heartbeat timeout")
            return
        sock._ping_rtt = trio.current_time() - started
