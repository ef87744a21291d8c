"""The managed socket: one accepted WebSocket connection, its reader and its send buffer.

A socket from ``manager.serve`` owns its wire: frames are parsed by the
sans-IO :class:`~trio_wsmgr.protocol._reader.FrameReader` and written through
the connection's :class:`~._transport.BufferedStream`. One task per connection
besides the handler, :meth:`ManagedSocket._read_loop`, reads, answers pings,
hands messages to ``receive()`` and runs the heartbeat and close watch: its
read waits with the :class:`~._heartbeat.HeartbeatPolicy`'s next deadline, so
there is no sleeping task per socket. (Sockets from ``manager.accept`` run over
trio-websocket instead, see :mod:`._accepted`.)
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
from collections.abc import Awaitable, Callable
from typing import Any, TypeAlias

import attrs
import outcome
import trio

from .._config import CloseCode
from .._exceptions import ConnectionClosed
from ..protocol._frames import encode_frame
from ..protocol._handshake import parse_request
from ..protocol._message import FrameCompressor, Outgoing
from ..protocol._reader import Close, FrameReader, Ping, Pong
from ._coalesce import Coalescer
from ._context import SocketContext
from ._heartbeat import Action, HeartbeatPolicy, ping_payload
from ._transport import BufferedStream

_ids = itertools.count(1)
logger = logging.getLogger("trio_wsmgr")

_OPCODE_CLOSE = 0x8
_OPCODE_PING = 0x9
_OPCODE_PONG = 0xA
_STREAM_ERRORS = (trio.BrokenResourceError, trio.ClosedResourceError)


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


def close_frame(code: int, reason: str) -> bytes:
    """A server close frame; 1005 (no code received) is answered with an empty one."""
    if code == 1005:
        return encode_frame(_OPCODE_CLOSE, b"")
    payload = reason.encode("utf-8")[:123]
    return encode_frame(_OPCODE_CLOSE, int(code).to_bytes(2, "big") + payload)


class ManagedSocket:
    """An open WebSocket connection managed by a :class:`~trio_wsmgr.WebSocketManager`.

    You get one as the argument of your handler (``manager.serve``) or from
    ``async with manager.accept(request) as sock``. Sending never loses a message
    to a healthy peer; a peer that cannot keep up is closed with 1008 after
    ``slow_consumer_timeout`` (see :doc:`/topics/backpressure`).
    """

    __slots__ = (
        "__weakref__",
        "_bytes_in",
        "_bytes_out",
        "_close_callbacks",
        "_closing",
        "_compressor",
        "_connected_at",
        "_context",
        "_dropped",
        "_ended",
        "_ended_event",
        "_headers",
        "_inbox",
        "_messages_in",
        "_messages_out",
        "_nursery",
        "_peer_close_seen",
        "_ping",
        "_policy",
        "_rate",
        "_reader",
        "_reader_parked",
        "_reading",
        "_receiver",
        "_scope",
        "_stop",
        "_stream",
        "_waiter",
        "close_code",
        "close_reason",
        "id",
        "metadata",
        "path",
        "remote",
        "subprotocol",
        "user_id",
    )

    def __init__(
        self,
        *,
        context: SocketContext,
        stream: BufferedStream,
        user_id: str | None,
        subprotocol: str | None,
        path: str,
        headers: tuple[tuple[str, str], ...] | bytes,
        remote: tuple[str, int] | None,
        metadata: dict[str, Any],
        compressor: FrameCompressor | None,
        reader: FrameReader | None = None,
    ) -> None:
        #: unique (per process) integer id
        self.id: int = next(_ids)
        #: what the authenticator returned (or the ``user_id`` accept option)
        self.user_id = user_id
        #: the negotiated subprotocol, or None
        self.subprotocol = subprotocol
        #: the request target, with any ``token`` query parameter removed
        self.path = path
        self._headers = headers  # or the raw request head, parsed on first use
        #: ``(host, port)`` of the peer, or None when not on a TCP socket
        self.remote = remote
        #: free for the application
        self.metadata = metadata
        #: the close code sent or received (None while open)
        self.close_code: int | None = None
        self.close_reason: str = ""
        self._context = context
        self._stream = stream
        self._compressor = compressor
        self._reader = reader
        self._closing = False
        self._ended = False  # the transport is closed and the socket unregistered
        self._ended_event: trio.Event | None = None  # made by the first wait_closed()
        self._close_callbacks: list[Callable[[ManagedSocket], None]] | None = None
        self._nursery: trio.Nursery | None = None
        self._messages_in = self._messages_out = self._bytes_in = self._bytes_out = 0
        self._dropped = 0
        now = trio.current_time()
        self._connected_at = now
        rate = context.max_messages_per_second
        self._rate = None if math.isinf(rate) else _TokenBucket(rate, now)
        self._policy = HeartbeatPolicy(
            context.heartbeat_interval, context.heartbeat_timeout, context.close_timeout, now
        )
        self._inbox: list[str | bytes] | None = None  # messages not yet received
        self._receiver: trio.lowlevel.Task | None = None  # a receive() waiting
        self._reader_parked: trio.lowlevel.Task | None = None  # the reader, held by backpressure
        self._waiter: trio.lowlevel.Task | None = None  # a close() waiting for the reader
        self._scope: trio.CancelScope | None = None  # the reader's current wait
        self._reading = False
        self._ping: bytes | None = None
        self._peer_close_seen = False  # the peer's close frame arrived
        self._stop = False  # the reader must stop (a heartbeat verdict)
        stream.on_close.append(self._on_transport_close)

    def __repr__(self) -> str:
        state = "open" if not self.closed else f"closed {self.close_code}"
        return f"<ManagedSocket id={self.id} user={self.user_id!r} path={self.path!r} {state}>"

    @property
    def headers(self) -> tuple[tuple[str, str], ...]:
        """The handshake's headers, lower-case names, in the order sent."""
        headers = self._headers
        if isinstance(headers, bytes):  # kept raw: most applications never look
            headers = self._headers = parse_request(headers).headers
        return headers

    # -- state ----------------------------------------------------------------

    @property
    def closed(self) -> bool:
        """True once a close has started (from either side) or the connection died."""
        return self._closing or self._stream.closed

    async def wait_closed(self) -> None:
        """Wait until the connection is fully closed and unregistered."""
        if self._ended:
            await trio.lowlevel.checkpoint()
            return
        if self._ended_event is None:
            self._ended_event = trio.Event()
        await self._ended_event.wait()

    def statistics(self) -> SocketStatistics:
        return SocketStatistics(
            messages_in=self._messages_in,
            messages_out=self._messages_out,
            bytes_in=self._bytes_in,
            bytes_out=self._bytes_out,
            send_buffer_bytes=self._stream.buffered,
            dropped=self._dropped,
            ping_rtt=self._policy.rtt,
            connected_at=self._connected_at,
            compressed=self._compressor is not None,
        )

    def add_close_callback(self, callback: Callable[[ManagedSocket], None]) -> None:
        """Call ``callback(sock)`` (synchronously) once the socket is closed.

        Runs at once if it already is. The Broadcaster uses this to drop closed
        sockets from its channels.
        """
        if self._ended:
            callback(self)
        elif self._close_callbacks is None:
            self._close_callbacks = [callback]
        else:
            self._close_callbacks.append(callback)

    def remove_close_callback(self, callback: Callable[[ManagedSocket], None]) -> None:
        if self._close_callbacks is not None:
            with contextlib.suppress(ValueError):
                self._close_callbacks.remove(callback)

    # -- receiving -------------------------------------------------------------

    async def receive(self) -> str | bytes:
        """The next message (str for text, bytes for binary).

        Raises :class:`~trio_wsmgr.ConnectionClosed` once the connection is closed
        and every message received before that has been read.
        """
        return self._took(await self._next_message())

    def _took(self, message: str | bytes) -> str | bytes:
        """Count a message handed to the handler (and apply the rate limit)."""
        self._messages_in += 1
        if self._rate is not None and not self._rate.take(trio.current_time()):
            self._context.counters.rate_limited += 1
            self.close_nowait(CloseCode.POLICY_VIOLATION, "message rate limit exceeded")
            raise ConnectionClosed(self.close_code, self.close_reason)
        size = len(message)
        self._bytes_in += size
        self._context.counters.count_in(size)
        return message

    async def _next_message(self) -> str | bytes:
        inbox = self._inbox
        if inbox:
            await trio.lowlevel.checkpoint_if_cancelled()
            message = inbox.pop(0)
            parked = self._reader_parked
            if parked is not None:  # room again: reading resumes
                self._reader_parked = None
                trio.lowlevel.reschedule(parked)
            await trio.lowlevel.cancel_shielded_checkpoint()
            return message
        if self._ended or (not self._reading and self._stream.closed):
            await trio.lowlevel.checkpoint()
            raise ConnectionClosed(self.close_code, self.close_reason)
        if self._receiver is not None:
            raise trio.BusyResourceError("another task is already receiving on this socket")
        self._receiver = trio.lowlevel.current_task()
        result: str | bytes = await trio.lowlevel.wait_task_rescheduled(self._abort_receive)
        return result

    def _abort_receive(self, _: object) -> trio.lowlevel.Abort:
        self._receiver = None
        return trio.lowlevel.Abort.SUCCEEDED

    def __aiter__(self) -> ManagedSocket:
        return self

    async def __anext__(self) -> str | bytes:
        # receive() inlined: an idle handler in ``async for`` waits one coroutine less deep
        try:
            return self._took(await self._next_message())
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
        if not await self._wait_room(self._room_deadline()):
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
        if self.closed:
            self._note_remote_close()
            raise ConnectionClosed(self.close_code, self.close_reason)

    def _put(self, outgoing: Outgoing) -> None:
        """Frame and write one message (room already checked). Synchronous."""
        if self._offer(outgoing, outgoing.plain_frame(), None) <= 0:
            raise ConnectionClosed(self.close_code, self.close_reason)

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
        self._close_slow_consumer()
        return False

    # -- fan-out's interface: :mod:`._fanout` uses these methods and nothing else -------

    def _offer(self, outgoing: Outgoing, plain: bytes, gather: Coalescer | None) -> int:
        """Write a broadcast if the send buffer has room. Synchronous: fan-out's hot path.

        ``plain`` is the message's uncompressed frame, shared by every socket
        without compression. With ``gather`` the frame is queued for that
        coalescer to write with the next ones (see :mod:`._coalesce`). Returns
        the frame's size once written or queued (counted here and on the
        manager); 0 if the socket is closing or closed; -1 if its buffer is
        full. In both of the latter nothing was written.
        """
        stream = self._stream
        if stream.closed or self._closing:
            return 0
        context = self._context
        if stream.buffered >= context.send_buffer_size:
            return -1
        compressor = self._compressor
        frame = plain if compressor is None else outgoing.frame_for(compressor)
        if stream.close_frame_sent:  # a close frame went out: no data after it
            self._note_remote_close()
            return 0
        try:
            if gather is None:
                stream.write_nowait(frame)
            else:
                stream.write_later(frame, gather, context.gather_most)
        except _STREAM_ERRORS:
            self._note_remote_close()
            return 0
        size = len(frame)
        self._messages_out += 1
        self._bytes_out += size
        counters = context.counters
        counters.messages_out += 1
        counters.bytes_out += size
        return size

    def _overflow(self, on_full: str) -> None:
        """A broadcast found the buffer full: count it dropped ("drop") or close 1008 ("close")."""
        if on_full == "drop":
            self._count_dropped()
        else:
            self._close_slow_consumer()

    def _count_dropped(self) -> None:
        """One broadcast this socket did not get (its buffer was full)."""
        if not self.closed:
            self._dropped += 1
            self._context.counters.dropped += 1

    def _room_deadline(self) -> float:
        """How long a producer may wait for room on this socket: ``slow_consumer_timeout``."""
        return trio.current_time() + self._context.slow_consumer_timeout

    def _close_slow_consumer(self) -> None:
        self._context.counters.slow_consumer_closes += 1
        self.close_nowait(CloseCode.POLICY_VIOLATION, "slow consumer", discard_pending=True)

    # -- closing -----------------------------------------------------------------

    async def close(self, code: int = CloseCode.NORMAL, reason: str = "") -> None:
        """Close: queued messages go out, then the close frame; wait for the peer's reply.

        Bounded by the manager's ``close_timeout``; after it (or if cancelled) the
        TCP connection is dropped. Idempotent: a second call waits for the first.
        """
        self.close_nowait(code, reason)
        try:
            with trio.move_on_after(self._context.close_timeout):
                await self._stream.flush()  # the close frame, if no writer task can send it
                await self._wait_reply()
        finally:
            if not self._ended:
                await self._stream.aclose()

    async def _wait_reply(self) -> None:
        """Wait until the closing handshake ends; read it here if the reader is gone."""
        while not self._ended:
            if not self._reading:
                await self._read_until_closed()
                return
            self._waiter = trio.lowlevel.current_task()
            try:
                await trio.lowlevel.wait_task_rescheduled(self._abort_waiter)
            finally:
                self._waiter = None

    def _abort_waiter(self, _: object) -> trio.lowlevel.Abort:
        self._waiter = None
        return trio.lowlevel.Abort.SUCCEEDED

    def _wake_waiter(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            trio.lowlevel.reschedule(waiter)

    def close_nowait(
        self, code: int = CloseCode.NORMAL, reason: str = "", *, discard_pending: bool = False
    ) -> None:
        """Start a close without waiting for it: the reader sees the reply (or the deadline).

        ``discard_pending`` drops queued messages first (used for slow consumers,
        whose backlog would hold the close frame up).
        """
        if self._closing or self._stream.closed:
            return
        if discard_pending:
            self._stream.discard_queued()
        self._start_close(code, reason)
        self._write_close(code, reason)

    async def abort(self, code: int, reason: str = "") -> None:
        """Drop the connection now: a close frame if it can go out at once, then the TCP.

        For peers that are gone (heartbeat timeout): no waiting for a reply. The
        socket leaves the registry before this first awaits.
        """
        if self._stream.closed:
            return
        self._abort_nowait(code, reason)
        await self._stream.aclose()

    def _abort_nowait(self, code: int, reason: str) -> None:
        stream = self._stream
        if not self._closing:
            self._start_close(code, reason)
            stream.discard_queued()
            self._write_close(code, reason)
        stream.flush_on_close = True
        stream.abort()

    def _start_close(self, code: int, reason: str) -> None:
        self._closing = True
        self._context.unregister(self)  # a closing socket is no longer "open" to anyone
        if self.close_code is None:
            self.close_code = int(code)
            self.close_reason = reason
        self._policy.close_started(trio.current_time())
        scope = self._scope
        if scope is not None:  # the reader waits with the close deadline from now on
            scope.deadline = self._policy.next_wake()
        parked = self._reader_parked
        if parked is not None:  # closing: the reader reads (and drops) whatever comes
            self._reader_parked = None
            trio.lowlevel.reschedule(parked)

    def _write_close(self, code: int, reason: str) -> None:
        stream = self._stream
        if stream.close_frame_sent or stream.closed:
            return
        stream.close_frame_sent = True
        with contextlib.suppress(*_STREAM_ERRORS):
            stream.write_nowait(close_frame(code, reason))

    def _note_remote_close(self) -> None:
        """Kept for the accept path's sockets (trio-websocket records the peer's close)."""

    def _on_transport_close(self) -> None:
        """The transport is closing: record why, unregister, wake waiters, run callbacks."""
        self._note_remote_close()
        if self.close_code is None:
            self.close_code = CloseCode.ABNORMAL
        self._context.unregister(self)
        self._ended = True
        receiver = self._receiver
        if receiver is not None and not self._inbox:
            self._receiver = None
            trio.lowlevel.reschedule(
                receiver, outcome.Error(ConnectionClosed(self.close_code, self.close_reason))
            )
        self._wake_waiter()
        parked = self._reader_parked
        if parked is not None:
            self._reader_parked = None
            trio.lowlevel.reschedule(parked)
        callbacks, self._close_callbacks = self._close_callbacks, None
        try:
            for callback in callbacks or ():
                try:
                    callback(self)
                except Exception:  # one bad callback must not take the connection task down
                    logger.exception("close callback %r for %r failed", callback, self)
        finally:
            if self._ended_event is not None:
                self._ended_event.set()

    # -- the reader (serve's sockets) --------------------------------------------

    async def _read_loop(self, initial: bytes = b"") -> None:
        """Read and dispatch frames until the connection ends; run the heartbeat on the way.

        Ends the connection (closes the transport) itself, except when cancelled:
        then the manager's final close reads the peer's reply in its place.
        """
        reader = self._reader
        assert reader is not None
        stream = self._stream
        policy = self._policy
        receive = stream.receive_some
        size = self._context.receive_buffer_size
        finished = False
        try:
            if initial:
                self._dispatch(reader.feed(initial))
            while not self._end_requested(reader):
                if self._backlogged():
                    await self._wait_for_room()
                    continue
                with trio.CancelScope(deadline=policy.next_wake()) as scope:
                    self._scope = scope
                    data = await receive(size)
                self._scope = None
                if scope.cancelled_caught:
                    self._on_wake()
                    continue
                if not data:
                    break
                self._dispatch(reader.feed(data))
            finished = True
        except _STREAM_ERRORS:
            finished = True
        except Exception:  # a bug here must cost this connection only, never the server
            logger.exception("reader of %r failed", self)
            if reader.failure is None:
                reader.failure = (CloseCode.INTERNAL_ERROR, "internal error")
            finished = True
        finally:
            self._scope = None
            self._reading = False
            self._wake_waiter()
            if finished:
                await self._end(reader)

    def _end_requested(self, reader: FrameReader) -> bool:
        return (
            self._stop or self._peer_close_seen or reader.failure is not None or self._stream.closed
        )

    async def _read_until_closed(self) -> None:
        """The closing handshake's end, read by close() when the reader task is gone."""
        reader = self._reader
        if reader is None:
            return
        try:
            while not self._end_requested(reader):
                data = await self._stream.receive_some(self._context.receive_buffer_size)
                if not data:
                    break
                self._dispatch(reader.feed(data))
        except _STREAM_ERRORS:
            pass
        await self._end(reader)

    async def _end(self, reader: FrameReader) -> None:
        """The reader is done: fail with the reader's code if any, then close the transport."""
        failure = reader.failure
        if failure is not None and not self._closing:
            self._start_close(*failure)
            self._write_close(*failure)
        self._stream.flush_on_close = True
        with trio.CancelScope(shield=True):
            await self._stream.aclose()

    def _backlogged(self) -> bool:
        inbox = self._inbox
        return (
            inbox is not None
            and len(inbox) >= self._context.max_incoming_queue
            and not self._closing
        )

    async def _wait_for_room(self) -> None:
        """Backpressure: stop reading until receive() takes a message (or a deadline)."""
        with trio.CancelScope(deadline=self._policy.next_wake()) as scope:
            self._scope = scope
            self._reader_parked = trio.lowlevel.current_task()
            try:
                await trio.lowlevel.wait_task_rescheduled(self._abort_parked)
            finally:
                self._reader_parked = None
        self._scope = None
        if scope.cancelled_caught:
            self._on_wake()

    def _abort_parked(self, _: object) -> trio.lowlevel.Abort:
        self._reader_parked = None
        return trio.lowlevel.Abort.SUCCEEDED

    def _on_wake(self) -> None:
        """A heartbeat or close deadline: do what the policy says."""
        action = self._policy.on_wake(trio.current_time(), backlog=self._backlogged())
        if action is Action.PING:
            payload = ping_payload()
            try:
                self._stream.write_nowait(encode_frame(_OPCODE_PING, payload))
            except _STREAM_ERRORS:
                self._policy.ping_not_sent()
                return
            self._ping = payload
        elif action is Action.TIMEOUT:
            self._context.counters.heartbeat_timeouts += 1
            self._start_close(CloseCode.INTERNAL_ERROR, "heartbeat timeout")
            self._stream.discard_queued()
            self._write_close(CloseCode.INTERNAL_ERROR, "heartbeat timeout")
            self._stop = True  # no reply awaited: the reader ends the connection now
        elif action is Action.CLOSE_TIMEOUT:
            self._stop = True

    def _dispatch(self, events: list[str | bytes | Ping | Pong | Close]) -> None:
        for event in events:
            if isinstance(event, str | bytes):
                self._deliver(event)
            elif isinstance(event, Ping):
                if not self._stream.close_frame_sent:
                    with contextlib.suppress(*_STREAM_ERRORS):
                        self._stream.write_nowait(encode_frame(_OPCODE_PONG, event.payload))
            elif isinstance(event, Pong):
                if event.payload == self._ping:
                    self._ping = None
                    self._policy.pong(trio.current_time())
            else:
                self._on_peer_close(event)
                return  # nothing after a close frame counts

    def _deliver(self, message: str | bytes) -> None:
        if self._closing:  # we sent our close: data from the peer is dropped
            return
        receiver = self._receiver
        if receiver is not None:
            self._receiver = None
            trio.lowlevel.reschedule(receiver, outcome.Value(message))
        elif self._inbox is None:
            self._inbox = [message]
        else:
            self._inbox.append(message)

    def _on_peer_close(self, event: Close) -> None:
        self._peer_close_seen = True
        if not self._closing:  # the peer started: answer with its code
            self._start_close(event.code, event.reason)
            self._write_close(event.code, event.reason)
        elif self.close_code is None:
            self.close_code, self.close_reason = event.code, event.reason


#: what serves one connection: ``async def handler(sock)`` (its result is ignored)
Handler: TypeAlias = Callable[[ManagedSocket], Awaitable[object]]
