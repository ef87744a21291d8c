"""The managed socket: one accepted WebSocket connection and its send buffer."""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
from collections.abc import Callable
from typing import Any

import attrs
import trio
import trio_websocket

from .. import _border
from .._config import CloseCode
from .._exceptions import ConnectionClosed
from ..protocol._message import FrameCompressor, Outgoing
from ._context import SocketContext
from ._transport import BufferedStream

_ids = itertools.count(1)
logger = logging.getLogger("trio_wsmgr")


@attrs.frozen
class SocketStatistics:
    """A snapshot of one socket's counters (``sock.statistics()``)."""

    messages_in: int
    messages_out: int
    bytes_in: int
    bytes_out: int
    #: bytes queued for the peer and not yet taken by the kernel
    send_buffer_bytes: int
    #: broadcast messages dropped for this socket because its buffer was full
    dropped: int
    #: the last heartbeat round trip in seconds (``math.nan`` before the first)
    ping_rtt: float
    #: :func:`trio.current_time` when the socket opened
    connected_at: float
    compressed: bool


class _TokenBucket:
    """``rate`` events per second on average, bursts of up to ``max(1, rate)``."""

    __slots__ = ("_capacity", "_last", "_rate", "_tokens")

    def __init__(self, rate: float, now: float) -> None:
        self._rate = rate
        self._capacity = self._tokens = max(1.0, rate)
        self._last = now

    def take(self, now: float) -> bool:
        elapsed = now - self._last
        self._last = now
        self._tokens = min(self._capacity, self._tokens + elapsed * self._rate)
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True


class ManagedSocket:
    """An open WebSocket connection managed by a :class:`~trio_wsmgr.WebSocketManager`.

    You get one as the argument of your handler (``manager.serve``) or from
    ``async with manager.accept(request) as sock``. Sending never loses a message
    to a healthy peer; a peer that cannot keep up is closed with 1008 after
    ``slow_consumer_timeout`` (see :doc:`/topics/backpressure`).
    """

    def __init__(
        self,
        *,
        context: SocketContext,
        conn: trio_websocket.WebSocketConnection,
        stream: BufferedStream,
        user_id: str | None,
        subprotocol: str | None,
        path: str,
        headers: tuple[tuple[str, str], ...],
        remote: tuple[str, int] | None,
        metadata: dict[str, Any],
        compressor: FrameCompressor | None,
    ) -> None:
        #: unique (per process) integer id
        self.id: int = next(_ids)
        #: what the authenticator returned (or the ``user_id`` accept option)
        self.user_id = user_id
        #: the negotiated subprotocol, or None
        self.subprotocol = subprotocol
        #: the request target, with any ``token`` query parameter removed
        self.path = path
        #: the handshake's headers, lower-case names
        self.headers = headers
        #: ``(host, port)`` of the peer, or None when not on a TCP socket
        self.remote = remote
        #: free for the application
        self.metadata = metadata
        #: the close code sent or received (None while open)
        self.close_code: int | None = None
        self.close_reason: str = ""
        self._context = context
        self._conn = conn
        self._stream = stream
        self._compressor = compressor
        self._closing = False
        self._closed_event = trio.Event()
        self._close_callbacks: list[Callable[[ManagedSocket], None]] = []
        self._nursery: trio.Nursery | None = None
        self._messages_in = self._messages_out = self._bytes_in = self._bytes_out = 0
        self._dropped = 0
        self._ping_rtt = math.nan
        self._connected_at = trio.current_time()
        rate = context.max_messages_per_second
        self._rate = None if math.isinf(rate) else _TokenBucket(rate, self._connected_at)
        stream.on_close.append(self._on_transport_close)

    def __repr__(self) -> str:
        state = "open" if not self.closed else f"closed {self.close_code}"
        return f"<ManagedSocket id={self.id} user={self.user_id!r} path={self.path!r} {state}>"

    # -- state ----------------------------------------------------------------

    @property
    def closed(self) -> bool:
        """True once a close has started (from either side) or the connection died."""
        return self._closing or self._stream.closed or self._conn.closed is not None

    async def wait_closed(self) -> None:
        """Wait until the connection is fully closed and unregistered."""
        await self._closed_event.wait()

    def statistics(self) -> SocketStatistics:
        return SocketStatistics(
            messages_in=self._messages_in,
            messages_out=self._messages_out,
            bytes_in=self._bytes_in,
            bytes_out=self._bytes_out,
            send_buffer_bytes=self._stream.buffered,
            dropped=self._dropped,
            ping_rtt=self._ping_rtt,
            connected_at=self._connected_at,
            compressed=self._compressor is not None,
        )

    def add_close_callback(self, callback: Callable[[ManagedSocket], None]) -> None:
        """Call ``callback(sock)`` (synchronously) once the socket is closed.

        Runs at once if it already is. The Broadcaster uses this to drop closed
        sockets from its channels.
        """
        if self._closed_event.is_set():
            callback(self)
        else:
            self._close_callbacks.append(callback)

    def remove_close_callback(self, callback: Callable[[ManagedSocket], None]) -> None:
        with contextlib.suppress(ValueError):
            self._close_callbacks.remove(callback)

    # -- receiving -------------------------------------------------------------

    async def receive(self) -> str | bytes:
        """The next message (str for text, bytes for binary).

        Raises :class:`~trio_wsmgr.ConnectionClosed` once the connection is closed
        and every message received before that has been read.
        """
        try:
            message = await self._conn.get_message()
        except trio_websocket.ConnectionClosed as exc:
            self._note_remote_close()
            raise ConnectionClosed(self.close_code, self.close_reason) from exc
        self._messages_in += 1
        if self._rate is not None and not self._rate.take(trio.current_time()):
            self._context.counters.rate_limited += 1
            self.close_nowait(CloseCode.POLICY_VIOLATION, "message rate limit exceeded")
            raise ConnectionClosed(self.close_code, self.close_reason)
        size = len(message)
        self._bytes_in += size
        self._context.counters.count_in(size)
        return message

    def __aiter__(self) -> ManagedSocket:
        return self

    async def __anext__(self) -> str | bytes:
        try:
            return await self.receive()
        except ConnectionClosed:
            raise StopAsyncIteration from None

    # -- sending -------------------------------------------------------------------

    async def send(self, message: Any) -> None:
        """Queue ``message`` (str -> text, bytes -> binary, else JSON text).

        Waits while the send buffer is full. If it stays full for
        ``slow_consumer_timeout`` the socket is closed with 1008 and
        :class:`~trio_wsmgr.ConnectionClosed` is raised.

        Cancel-atomic, as trio's channels are: if it returns the message was
        queued; if it raises :class:`trio.Cancelled` it was not.
        """
        outgoing = Outgoing(message)
        await trio.lowlevel.checkpoint_if_cancelled()
        if not await self._wait_room(trio.current_time() + self._context.slow_consumer_timeout):
            raise ConnectionClosed(self.close_code, self.close_reason)
        self._put(outgoing)  # synchronous: nothing can cancel it half way
        await trio.lowlevel.cancel_shielded_checkpoint()

    def send_nowait(self, message: Any) -> None:
        """Queue ``message`` without waiting; :class:`trio.WouldBlock` if the buffer is full."""
        outgoing = Outgoing(message)
        if not self.has_room():
            raise trio.WouldBlock
        self._put(outgoing)

    def has_room(self) -> bool:
        """True if the send buffer is below its limit (a send would not wait)."""
        self._raise_if_closed()
        return self._stream.buffered < self._context.send_buffer_size

    def _raise_if_closed(self) -> None:
        if self.closed or self._conn.closed is not None:
            self._note_remote_close()
            raise ConnectionClosed(self.close_code, self.close_reason)

    def _put(self, outgoing: Outgoing) -> None:
        """Frame and write one message (room already checked). Synchronous."""
        frame = outgoing.frame_for(self._compressor)
        self._put_frame(frame)
        self._context.counters.count_out(len(frame))

    def _put_frame(self, frame: bytes) -> None:
        """Write one message's frame (room already checked); the caller counts it on the manager."""
        if self._stream.close_frame_sent:  # trio-websocket sent a close frame: no data after it
            self._note_remote_close()
            raise ConnectionClosed(self.close_code, self.close_reason)
        try:
            self._stream.write_nowait(frame)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self._note_remote_close()
            raise ConnectionClosed(self.close_code, self.close_reason) from exc
        self._messages_out += 1
        self._bytes_out += len(frame)

    async def _wait_room(self, deadline: float) -> bool:
        """Wait for buffer room until ``deadline``; on timeout close 1008. True if room."""
        self._raise_if_closed()
        limit = self._context.send_buffer_size
        if self._stream.buffered < limit:
            return True
        with trio.move_on_at(deadline):
            await self._stream.wait_below(limit)
        self._raise_if_closed()
        if self._stream.buffered < limit:
            return True
        self._context.counters.slow_consumer_closes += 1
        self.close_nowait(CloseCode.POLICY_VIOLATION, "slow consumer", discard_pending=True)
        return False

    # -- closing -----------------------------------------------------------------

    async def close(self, code: int = CloseCode.NORMAL, reason: str = "") -> None:
        """Close: queued messages go out, then the close frame; wait for the peer's reply.

        Bounded by the manager's ``close_timeout``; after it (or if cancelled) the
        TCP connection is dropped. Idempotent: a second call waits for the first.
        """
        if self._closing or self._stream.closed:
            with trio.move_on_after(self._context.close_timeout):
                await self._closed_event.wait()
            return
        self._start_close(code, reason)
        await self._close_started(code, reason)

    async def _close_started(self, code: int, reason: str) -> None:
        try:
            with trio.move_on_after(self._context.close_timeout):
                await self._conn.aclose(code, reason or None)
        finally:
            await self._stream.aclose()

    def close_nowait(
        self, code: int = CloseCode.NORMAL, reason: str = "", *, discard_pending: bool = False
    ) -> None:
        """Start a close without waiting for it; it runs in the socket's own nursery.

        ``discard_pending`` drops queued messages first (used for slow consumers,
        whose backlog would hold the close frame up).
        """
        if self._closing or self._stream.closed:
            return
        if discard_pending:
            self._stream.discard_queued()
        if self._nursery is None:  # no connection task to run a graceful close in
            self._start_close(code, reason)
            self._stream.abort()
            return
        nursery = self._nursery
        self._start_close(code, reason)
        nursery.start_soon(self._close_started, code, reason)

    async def abort(self, code: int, reason: str = "") -> None:
        """Drop the connection now: a close frame if it can go out at once, then the TCP.

        For peers that are gone (heartbeat timeout): no waiting for a reply. The
        socket leaves the registry before this first awaits.
        """
        if self._stream.closed:
            return
        self._start_close(code, reason)
        self._stream.discard_queued()
        _border.send_close_nowait(self._conn, self._stream, code, reason)
        await self._stream.aclose()

    def _start_close(self, code: int, reason: str) -> None:
        self._closing = True
        self._context.unregister(self)  # a closing socket is no longer "open" to anyone
        if self.close_code is None:
            self.close_code = int(code)
            self.close_reason = reason

    def _note_remote_close(self) -> None:
        reason = self._conn.closed
        if self.close_code is None and reason is not None:
            self.close_code = reason.code
            self.close_reason = reason.reason or ""

    def _on_transport_close(self) -> None:
        """The transport is closing: record why, unregister, run callbacks."""
        _border.send_failure_close_nowait(self._conn, self._stream)
        self._note_remote_close()
        if self.close_code is None:
            self.close_code = CloseCode.ABNORMAL
        self._context.unregister(self)
        callbacks, self._close_callbacks = self._close_callbacks, []
        try:
            for callback in callbacks:
                try:
                    callback(self)
                except Exception:  # one bad callback must not take the connection task down
                    logger.exception("close callback %r for %r failed", callback, self)
        finally:
            self._closed_event.set()
