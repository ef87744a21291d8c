"""Heartbeats: a ping every ``heartbeat_interval``, a pong due within ``heartbeat_timeout``."""

from __future__ import annotations

import math
import random
from typing import TYPE_CHECKING

import trio

from .. import _border
from .._config import CloseCode

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
        """The host task's body: wait for the socket, ping it until it closes, wait for cancel.

        A ping every ``interval``; a peer whose pong is ``pong_timeout`` late is
        aborted with 1011, so it is reaped at most ``interval + pong_timeout``
        after it stopped answering. While the application leaves ``queue``
        received messages unread, reading stops (backpressure) and pongs cannot
        be seen, so no ping is sent: the peer is not blamed for our own backlog.

        The task wakes only to send a ping or to judge one at its deadline (with
        equal interval and timeout, one wake-up does both): pings go out without
        waiting (:func:`~._border.ping_nowait`) and trio-websocket's reader notes
        the pong. Waits call ``wait_task_rescheduled`` directly, not
        ``trio.sleep``: fewer coroutine frames stay alive on every connection.
        """
        if self._job is None:
            self._waiting = trio.lowlevel.current_task()
            await trio.lowlevel.wait_task_rescheduled(self._abort)
        if self._job is None or math.isinf(self._job[1]):
            await trio.sleep_forever()
        sock, interval, pong_timeout, queue = self._job
        conn = sock._conn
        next_ping = trio.current_time() + interval
        ping: _Ping | None = None
        while not sock.closed:
            if ping is None:
                wake = next_ping
            elif next_ping > trio.current_time():
                wake = min(ping.deadline, next_ping)  # a prompt pong: the next ping on time
            else:
                wake = ping.deadline  # the next ping waits until this one is settled
            with trio.CancelScope(deadline=wake):
                await trio.lowlevel.wait_task_rescheduled(_never_rescheduled)
            if sock.closed:
                break
            now = trio.current_time()
            if ping is not None:
                if ping.answered_at is not None:
                    sock._ping_rtt = ping.answered_at - ping.sent_at
                    ping = None
                elif now >= ping.deadline:
                    sock._context.counters.heartbeat_timeouts += 1
                    await sock.abort(CloseCode.INTERNAL_ERROR, "heartbeat timeout")
                    break
            if ping is None and now >= next_ping:
                next_ping = now + interval
                if _border.pending_messages(conn) < queue:
                    ping = _Ping(now, now + pong_timeout)
                    payload = random.getrandbits(32).to_bytes(4, "big")
                    if not _border.ping_nowait(conn, sock._stream, payload, ping):
                        ping = None  # closing: the loop's condition sees to it
        await _reap(sock)
        await trio.sleep_forever()

    def _abort(self, _: object) -> trio.lowlevel.Abort:
        self._waiting = None
        return trio.lowlevel.Abort.SUCCEEDED


async def _reap(sock: ManagedSocket) -> None:
    """Make a close that trio-websocket started end within ``close_timeout``.

    When the peer sends a close frame and then stops reading, trio-websocket
    waits without limit for its reply to be written. Whoever started a close,
    the connection is dropped ``close_timeout`` after this task noticed it.
    """
    if sock._stream.closed:
        return
    with trio.move_on_after(sock._context.close_timeout):
        await sock.wait_closed()
    if not sock._stream.closed:
        reason = sock._conn.closed
        await sock.abort(
            reason.code if reason is not None else CloseCode.ABNORMAL, "close timed out"
        )


def _never_rescheduled(_: object) -> trio.lowlevel.Abort:
    return trio.lowlevel.Abort.SUCCEEDED


class _Ping:
    """One ping in flight; trio-websocket's reader calls :meth:`set` when its pong arrives."""

    __slots__ = ("answered_at", "deadline", "sent_at")

    def __init__(self, sent_at: float, deadline: float) -> None:
        self.sent_at = sent_at
        self.deadline = deadline
        self.answered_at: float | None = None

    def set(self) -> None:
        if self.answered_at is None:
            self.answered_at = trio.current_time()
