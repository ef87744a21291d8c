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
        """Hand the admitted socket's heartbeat to the host task (see :meth:`run`)."""
        self._job = (sock, interval, pong_timeout, queue)
        waiting, self._waiting = self._waiting, None
        if waiting is not None:
            trio.lowlevel.reschedule(waiting)

    async def run(self) -> None:
        """The host task's body: wait for the socket, beat until it closes, then for cancel.

        Ping the socket every ``interval``; abort it with 1011 when a pong is
        late. A peer is reaped at most ``interval + pong_timeout`` after it
        stopped answering. While the application leaves ``queue`` received
        messages unread, reading stops (backpressure), pongs cannot be seen,
        and so no verdict is made: the ping is skipped rather than blaming the
        peer for our own backlog.

        Idle waits call ``wait_task_rescheduled`` directly rather than
        ``trio.sleep``: fewer coroutine frames stay alive on every connection.
        """
        if self._job is None:
            self._waiting = trio.lowlevel.current_task()
            await trio.lowlevel.wait_task_rescheduled(self._abort)
        if self._job is not None:
            sock, interval, pong_timeout, queue = self._job
            if not math.isinf(interval):
                conn = sock._conn
                while not sock.closed:
                    with trio.CancelScope(deadline=trio.current_time() + interval):
                        await trio.lowlevel.wait_task_rescheduled(_never_rescheduled)
                    if sock.closed:
                        break
                    if _border.pending_messages(conn) >= queue:
                        continue
                    started = trio.current_time()
                    with trio.move_on_after(pong_timeout) as scope:
                        try:
                            await conn.ping()
                        except trio_websocket.ConnectionClosed:
                            break
                    if scope.cancelled_caught:
                        sock._manager._count_heartbeat_timeout()
                        await sock.abort(CloseCode.INTERNAL_ERROR, "heartbeat timeout")
                        break
                    sock._ping_rtt = trio.current_time() - started
        await trio.sleep_forever()

    def _abort(self, _: object) -> trio.lowlevel.Abort:
        self._waiting = None
        return trio.lowlevel.Abort.SUCCEEDED


def _never_rescheduled(_: object) -> trio.lowlevel.Abort:
    return trio.lowlevel.Abort.SUCCEEDED
