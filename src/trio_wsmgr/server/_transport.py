"""A buffered send side for one connection: fast non-blocking writes, a writer task when needed.

Every byte a managed socket sends -- data frames we encode, and the handshake
response, pings, pongs and close frames trio-websocket writes -- goes through one
:class:`BufferedStream`, so all of them keep their order on the wire.

How a write travels:

* :meth:`BufferedStream.write_nowait` is synchronous. When nothing is queued or
  being written, it tries a non-blocking ``os.write`` on the socket's file
  descriptor (what asyncio transports do); the common case, a socket whose
  kernel buffer has room, ends right there with no task switch and no object
  allocated.
* Whatever the kernel did not take is queued, and a writer task drains the
  queue, joining all pending chunks into one ``send_all``. With
  :meth:`~BufferedStream.attach` the writer is started in the connection's
  nursery only while there is a backlog (an idle connection has no writer
  task, which saves its memory). Without a nursery (before ``attach``, after
  ``detach``) :meth:`~BufferedStream.flush` writes the backlog in its caller's task.
* :meth:`BufferedStream.write_later` queues instead of writing and hands the
  stream to a :class:`~._coalesce.Coalescer`, which writes the whole queue in
  one system call a moment later: back-to-back broadcasts use it.
* ``send_all`` (the :class:`trio.abc.Stream` API that trio-websocket uses) queues
  the same way and waits until its bytes are handed to the kernel.

The queue is bounded by the caller: :attr:`buffered` counts bytes queued and in
flight, and :meth:`wait_below` waits until it drops under a mark. A stream whose
fd we cannot use (TLS, memory streams in tests, non-POSIX) skips the fast path.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Coroutine
from typing import Any

import trio

from ._coalesce import Coalescer

_FAST_PATH = sys.platform != "win32"
#: how long ``aclose`` waits for a last frame (see ``flush_on_close``)
FINAL_FLUSH_TIMEOUT = 0.5
#: the first byte of an unmasked, unfragmented close frame (FIN + opcode 8)
_CLOSE_FRAME_START = b"\x88"
_SEND_ERRORS = (trio.BrokenResourceError, trio.ClosedResourceError, OSError)
#: what ``receive_some()`` reads without a size (trio's own default)
DEFAULT_RECEIVE_SIZE = 65536


def _socket_fd(stream: trio.abc.Stream) -> int | None:
    if _FAST_PATH and isinstance(stream, trio.SocketStream):
        return stream.socket.fileno()
    return None


class BufferedStream(trio.abc.Stream):
    """Wrap ``inner`` so that writes never block the producer (see module docs)."""

    __slots__ = (
        "_broken",
        "_busy",
        "_closed",
        "_fd",
        "_flush_lot",
        "_flushed_total",
        "_gathered",
        "_head_partial",
        "_last_flush",
        "_nursery",
        "_queue",
        "_queued_total",
        "_senders",
        "_unread",
        "_writer_running",
        "_writer_scope",
        "_writing",
        "buffered",
        "close_frame_sent",
        "closed",
        "flush_on_close",
        "inner",
        "on_close",
        "on_close_frame",
    )

    def __init__(self, inner: trio.abc.Stream, *, unread: bytes = b"") -> None:
        self.inner = inner
        self._unread = unread  # bytes already read from ``inner`` by someone else
        self._fd = _socket_fd(inner)
        self._queue: list[bytes] = []
        #: bytes accepted but not yet handed to the kernel (queued + in flight)
        self.buffered = 0
        #: True once closed (by us) or broken (a failed write); writes then raise
        self.closed = False
        self._busy = False  # bytes queued or being written: new bytes go behind them
        self._writing = False
        self._head_partial = False  # the queue's head is the tail of a half-written frame
        self._queued_total = 0  # running totals of bytes queued / written or dropped,
        self._flushed_total = 0  # for send_all's "until flushed" (back to 0 when idle)
        self._senders = 0  # send_all calls waiting for their bytes (each holds a total)
        self._closed = False
        self._broken: BaseException | None = None
        self._nursery: trio.Nursery | None = None  # where to start a writer on demand
        self._writer_running = False
        self._writer_scope: trio.CancelScope | None = None  # the on-demand writer's shield
        self._flush_lot: trio.lowlevel.ParkingLot | None = None  # made on first wait
        self._gathered = False  # marked with the coalescer: it writes the queue next
        #: a WebSocket close frame went through :meth:`send_all`: data frames must not follow
        self.close_frame_sent = False
        #: on aclose, give queued bytes one bounded last chance to go out
        self.flush_on_close = False
        self._last_flush: trio.Event | None = None
        #: called (synchronously) once when the stream is closed
        self.on_close: list[Callable[[], None]] = []
        #: called when a close frame goes through :meth:`send_all` (trio-websocket's)
        self.on_close_frame: Callable[[], None] | None = None

    # -- the synchronous side ------------------------------------------------

    def write_nowait(self, data: bytes) -> None:
        """Send ``data`` now if the kernel takes it, else queue it. Never blocks.

        Raises :class:`trio.ClosedResourceError` / :class:`trio.BrokenResourceError`
        if the stream is closed or failed.
        """
        if self.closed:
            self._raise_closed()
        if not self._busy and self._fd is not None:
            try:
                sent = os.write(self._fd, data)
            except BlockingIOError:
                sent = 0
            except OSError as exc:
                self._fail(exc)
                raise trio.BrokenResourceError("send failed") from exc
            if sent == len(data):
                return
            if sent:
                data = data[sent:]
                self._head_partial = True
        self._enqueue(data)

    def write_later(self, data: bytes, coalescer: Coalescer, most: float) -> None:
        """Queue ``data`` for ``coalescer`` to write with what follows it. Never blocks.

        Once ``most`` bytes are queued they are written at once instead, so
        gathering never holds much. Raises like :meth:`write_nowait`. A stream
        without a usable fd writes as :meth:`write_nowait` does (its writer task
        joins its queue anyway).
        """
        if self.closed:
            self._raise_closed()
        if self._fd is None:
            self._enqueue(data)
            return
        self._append(data)
        if self._writer_running:
            return  # the writer task takes it with the rest
        if self.buffered >= most:
            self.write_gathered()
        elif not self._gathered:
            self._gathered = True
            coalescer.mark(self)

    def write_gathered(self) -> None:
        """The coalescer's turn: write the whole queue in one system call."""
        self._gathered = False
        queue = self._queue
        if self.closed or self._writer_running or not queue or self._fd is None:
            return  # closed, or a writer task (or flush) has the queue
        data = queue[0] if len(queue) == 1 else b"".join(queue)
        queue.clear()
        try:
            sent = os.write(self._fd, data)
        except BlockingIOError:
            sent = 0
        except OSError as exc:
            queue.append(data)
            self._fail(exc)
            return
        self._count_flushed(sent)
        if sent == len(data):
            self._busy = False
        else:
            if sent:  # else the head is as it was (whole, or the rest of a cut frame)
                self._head_partial = True
            queue.append(data[sent:])
            self._start_writer()
        if sent:
            self._wake_flush_waiters()

    def _append(self, data: bytes) -> None:
        """Queue ``data`` behind what is pending (the caller sees that it gets written)."""
        size = len(data)
        self._queue.append(data)
        self.buffered += size
        self._queued_total += size
        self._busy = True

    def _enqueue(self, data: bytes) -> None:
        self._append(data)
        if self._writer_running or self._gathered:
            return  # a writer task, or the coalescer, writes the queue
        self._start_writer()

    def _start_writer(self) -> None:
        if self._nursery is not None:
            self._writer_running = True
            try:
                self._nursery.start_soon(self._write_backlog)
            except RuntimeError:  # the connection is ending; aclose has the last word
                self._writer_running = False

    def _raise_closed(self) -> None:
        if self._closed:
            raise trio.ClosedResourceError("stream is closed")
        raise trio.BrokenResourceError("stream is broken") from self._broken

    def discard_queued(self) -> int:
        """Drop queued bytes that have not started going out; return how many.

        A partly written frame at the head is kept, so the wire stays valid.
        Used before a policy close of a slow consumer, whose backlog is moot.
        """
        queue = self._queue
        keep = queue[0] if self._head_partial and queue else None
        dropped = sum(map(len, queue)) - (len(keep) if keep is not None else 0)
        queue.clear()
        if keep is not None:
            queue.append(keep)
        self._count_flushed(dropped)  # nobody waits for bytes that will never go out
        self._wake_flush_waiters()
        return dropped

    def _count_flushed(self, size: int) -> None:
        """``size`` bytes left the buffer (handed to the kernel, or dropped)."""
        self.buffered -= size
        self._flushed_total += size
        self._rewind_totals()

    def _rewind_totals(self) -> None:
        """Idle, and no send_all holds a total: both running totals start again from 0.

        They only serve send_all's "until flushed". Past 256 they are int objects of
        their own (CPython caches only small ones), so without this a connection
        that once had a backlog kept two objects for it, made whenever that first
        backlog happened -- the short soak saw 600 blocks (two per socket) appear
        in its second half when write coalescing first queued there.
        """
        if not self.buffered and not self._senders:
            self._queued_total = self._flushed_total = 0

    def _fail(self, exc: BaseException) -> None:
        if self._broken is None:
            self._broken = exc
        self.closed = True
        self._wake_flush_waiters()

    def _interrupted(self) -> None:
        """A write of the inner stream was cancelled half way: nothing may follow it.

        The peer may hold part of a frame (trio: a cancelled ``send_all`` leaves
        the stream in an unknown state); bytes written after it would be read
        as the rest of that frame. So the stream is broken from here on: later
        writes raise, and ``aclose`` sends no last frame.
        """
        self._fail(trio.BrokenResourceError("a write was cancelled half way"))

    def _wake_flush_waiters(self) -> None:
        lot = self._flush_lot
        if lot is not None:
            # Dropped once woken (every waiter re-checks and parks on a new one if it
            # must): a connection that had a backlog once keeps nothing for it.
            self._flush_lot = None
            lot.unpark_all()

    # -- the writer ----------------------------------------------------------

    def attach(self, nursery: trio.Nursery) -> None:
        """Start a writer task in ``nursery`` whenever there is a backlog (see module docs)."""
        self._nursery = nursery
        if self._queue and not self._writer_running:
            self._writer_running = True
            nursery.start_soon(self._write_backlog)

    def detach(self) -> None:
        """Start no more writer tasks: from now on :meth:`flush` writes in its caller's task.

        For a connection's final close: when the connection is being cancelled, a
        writer started in its nursery would be cancelled in the middle of a write
        (which breaks a TLS stream), so the shielded close writes for itself.
        """
        self._nursery = None

    async def flush(self) -> None:
        """Write what is queued, in this task if no writer task is doing it."""
        if self._writer_running:
            await self.wait_below(1)
            return
        if not self._queue or self.closed:
            return
        self._writer_running = True
        try:
            await self._drain()
        finally:
            self._writer_running = False

    async def _write_backlog(self) -> None:
        """Drain the queue, then end (the on-demand writer).

        Shielded: cancelling a write half way breaks a TLS stream (and leaves a
        frame cut in two on any stream), so the connection's cancellation does
        not reach it; closing the stream does (:meth:`_mark_closed` cancels it).
        """
        try:
            with trio.CancelScope(shield=True) as self._writer_scope:
                await self._drain()
        finally:
            self._writer_scope = None
            self._writer_running = False

    async def _drain(self) -> None:
        """Write until the queue is empty or the stream ends."""
        queue = self._queue
        try:
            while queue and not self.closed:
                data = queue[0] if len(queue) == 1 else b"".join(queue)
                queue.clear()
                self._writing = True
                self._head_partial = False
                try:
                    await self.inner.send_all(data)
                except BaseException as exc:
                    if not isinstance(exc, _SEND_ERRORS):
                        self._interrupted()
                    raise
                finally:
                    self._writing = False
                self._count_flushed(len(data))
                self._wake_flush_waiters()
        except _SEND_ERRORS as exc:
            self._fail(exc)
        finally:
            if not queue:
                self._busy = False
            self._wake_flush_waiters()

    async def wait_below(self, mark: float) -> None:
        """Wait until fewer than ``mark`` bytes are buffered (or the stream ends)."""
        while self.buffered >= mark and not self.closed:
            await self._flush_waiters().park()

    def _flush_waiters(self) -> trio.lowlevel.ParkingLot:
        if self._flush_lot is None:
            self._flush_lot = trio.lowlevel.ParkingLot()
        return self._flush_lot

    # -- trio.abc.Stream ------------------------------------------------------

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        data = bytes(data)
        if data[:1] == _CLOSE_FRAME_START:  # trio-websocket's close frame: no data after it
            self.close_frame_sent = True
            if self.on_close_frame is not None:
                self.on_close_frame()
        self.write_nowait(data)
        target = self._queued_total
        if self._flushed_total >= target:  # went straight to the kernel
            await trio.lowlevel.checkpoint()
            return
        self._senders += 1
        try:
            while self._flushed_total < target:
                if self.closed:
                    if self._closed:
                        raise trio.ClosedResourceError("stream closed while sending")
                    raise trio.BrokenResourceError("send failed") from self._broken
                await self._flush_waiters().park()
        finally:
            self._senders -= 1
            self._rewind_totals()

    async def wait_send_all_might_not_block(self) -> None:
        await self.wait_below(1)

    def receive_some(self, max_bytes: int | None = None) -> Coroutine[Any, Any, bytes | bytearray]:
        """Read from the socket's file descriptor, or the inner stream's ``receive_some``.

        Not a coroutine of its own: the reader waits here on every idle
        connection. On a TCP socket (the fast path) it is one coroutine that
        reads with a non-blocking ``os.read`` and waits with
        :func:`trio.lowlevel.wait_readable` (what :class:`trio.SocketStream`
        does three coroutines deep): fewer live objects per idle connection, and
        so less work for the garbage collector on every handshake.
        """
        if self._unread:
            return self._receive_unread(max_bytes)
        if self._fd is not None:
            return self._receive_fd(DEFAULT_RECEIVE_SIZE if max_bytes is None else max_bytes)
        return self.inner.receive_some(max_bytes)

    async def _receive_fd(self, max_bytes: int) -> bytes:
        """``receive_some`` on the socket's fd, with trio's checkpoint semantics.

        As :class:`trio.SocketStream` does: a read that does not wait still
        checkpoints (cancelled before the read: nothing was read; the bytes read
        are returned even if a cancellation arrives after). The stream is
        checked before every read, so a closed stream's fd number (which the
        kernel may have given to another connection) is never read.
        """
        if max_bytes < 1:
            raise ValueError("max_bytes must be >= 1")
        await trio.lowlevel.checkpoint_if_cancelled()
        fd = self._fd
        assert fd is not None
        waited = False
        while True:
            if self._closed:
                raise trio.ClosedResourceError("stream is closed")
            try:
                data: bytes | None = os.read(fd, max_bytes)
            except BlockingIOError:
                data = None  # wait outside the except block: no exception kept alive meanwhile
            except OSError as exc:
                raise trio.BrokenResourceError("receive failed") from exc
            if data is not None:
                if not waited:
                    await trio.lowlevel.cancel_shielded_checkpoint()
                return data
            await trio.lowlevel.wait_readable(fd)
            waited = True

    async def _receive_unread(self, max_bytes: int | None) -> bytes | bytearray:
        unread = self._unread
        size = len(unread) if max_bytes is None else max_bytes
        data, self._unread = unread[:size], unread[size:]
        await trio.lowlevel.checkpoint()
        return data

    def abort(self) -> None:
        """Close at once, synchronously where the transport allows (pending bytes dropped)."""
        self._mark_closed()
        inner = self.inner
        if isinstance(inner, trio.SSLStream):
            inner = inner.transport_stream
        if isinstance(inner, trio.SocketStream):
            inner.socket.close()

    def _mark_closed(self) -> None:
        if not self._closed:
            callbacks, self.on_close = self.on_close, []
            try:
                for callback in callbacks:  # before closing: they may still write_nowait
                    callback()
            finally:
                self._closed = True
                self.closed = True
                if self._writer_scope is not None:  # no write can matter any more
                    self._writer_scope.cancel()
                self._wake_flush_waiters()

    async def aclose(self) -> None:
        """Close now (pending bytes are dropped); always succeeds."""
        self._mark_closed()
        if self._last_flush is not None:  # another task is giving the last frame its chance
            with trio.CancelScope(shield=True):
                await self._last_flush.wait()
        elif self.flush_on_close and self._queue and not self._writing and self._broken is None:
            # A last frame (a failure close) queued by an on_close callback.
            data = b"".join(self._queue)
            self._queue.clear()
            self._last_flush = trio.Event()
            with trio.CancelScope(shield=True) as last_chance:
                last_chance.deadline = trio.current_time() + FINAL_FLUSH_TIMEOUT
                with contextlib.suppress(
                    trio.BrokenResourceError, trio.ClosedResourceError, OSError
                ):
                    await self.inner.send_all(data)
            self._last_flush.set()
        await trio.aclose_forcefully(self.inner)
