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


class HeartbeatHost:
    """Runs one connection's heartbeat in a task that exists anyway.

    Every connection has a task whose job is to keep its shielded background
    nursery open (see ``_manager._background_nursery``). Once the socket is
    admitted its heartbeat runs there rather than in a task of its own: on
    thousands of idle connections that task's memory adds up.
    """

    __slots__ = ("_job", "_waiting")

    def __init__(self) -> None:
        self._job: tuple[ManagedSocket, float, float, int] | None = None
        self._waiting: trio.lowlevel.Task | None = None

    def start(self, sock: ManagedSocket, interval: float, pong_timeout: float, queue: int) -> None:
        """Hand the admitted socket's heartbeat (see :func:`run_heartbeat`) to the host task."""
        self._job = (sock, interval, pong_timeout, queue)
        waiting, self._waiting = self._waiting, None
        if waiting is not None:
            trio.lowlevel.reschedule(waiting)

    async def run(self) -> None:
        """The host task's body: wait for a socket, beat until it closes, then wait for cancel."""
        if self._job is None:
            self._waiting = trio.lowlevel.current_task()
            await trio.lowlevel.wait_task_rescheduled(self._abort)
        if self._job is not None:
            await run_heartbeat(*self._job)
        await trio.sleep_forever()

    def _abort(self, _: object) -> trio.lowlevel.Abort:
        self._waiting = None
        return trio.lowlevel.Abort.SUCCEEDED


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
        await _sleep(interval)
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


def _never_rescheduled(_: object) -> trio.lowlevel.Abort:
    return trio.lowlevel.Abort.SUCCEEDED


async def _sleep(seconds: float) -> None:
    """``trio.sleep`` with three fewer coroutine frames kept alive while it waits.

    Thousands of idle connections each have a heartbeat sleeping here, so its
    frames are a measurable part of the memory per connection.
    """
    with trio.CancelScope(deadline=trio.current_time() + seconds):
        await trio.lowlevel.wait_task_rescheduled(_never_rescheduled)
