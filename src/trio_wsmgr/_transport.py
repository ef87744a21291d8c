"""A buffered send side for one connection: fast non-blocking writes, one writer task.

Every byte a managed socket sends -- data frames we encode, and the handshake
response, pings, pongs and close frames trio-websocket writes -- goes through one
:class:`BufferedStream`, so all of them keep their order on the wire.

How a write travels:

* :meth:`BufferedStream.write_nowait` is synchronous. When nothing is queued and
  the writer task is idle, it tries a non-blocking ``os.write`` on the socket's
  file descriptor (what asyncio transports do); the common case, a socket whose
  kernel buffer has room, ends right there with no task switch.
* Whatever the kernel did not take is queued; the writer task (:meth:`run`, the
  connection's *send loop*) drains the queue, joining all pending chunks into
  one ``send_all``.
* ``send_all`` (the :class:`trio.abc.Stream` API that trio-websocket uses) queues
  the same way and waits until its bytes are handed to the kernel.

The queue is bounded by the caller: :attr:`buffered` counts bytes queued and in
flight, and :meth:`wait_below` waits until it drops under a mark. A stream whose
fd we cannot use (TLS, memory streams in tests, non-POSIX) skips the fast path.
"""

from __future__ import annotations

import collections
import contextlib
import os
import sys
from collections.abc import Callable

import trio

_FAST_PATH = sys.platform != "win32"
#: how long ``aclose`` waits for a last frame (see ``flush_on_close``)
FINAL_FLUSH_TIMEOUT = 0.5
_SEND_ERRORS = (trio.BrokenResourceError, trio.ClosedResourceError, OSError)


def _socket_fd(stream: trio.abc.Stream) -> int | None:
    if _FAST_PATH and isinstance(stream, trio.SocketStream):
        return stream.socket.fileno()
    return None


class BufferedStream(trio.abc.Stream):
    """Wrap ``inner`` so that writes never block the producer (see module docs)."""

    def __init__(self, inner: trio.abc.Stream) -> None:
        self.inner = inner
        self._fd = _socket_fd(inner)
        self._queue: collections.deque[bytes] = collections.deque()
        #: bytes accepted but not yet handed to the kernel (queued + in flight)
        self.buffered = 0
        self._accepted = 0  # running totals, for send_all's "until flushed"
        self._flushed = 0
        self._writing = False
        self._head_partial = False  # the queue's head is the tail of a half-written frame
        self._closed = False
        self._broken: BaseException | None = None
        self._writer_lot = trio.lowlevel.ParkingLot()
        self._flush_lot = trio.lowlevel.ParkingLot()
        #: on aclose, give queued bytes one bounded last chance to go out
        self.flush_on_close = False
        self._last_flush: trio.Event | None = None
        #: called (synchronously) once when the stream is closed
        self.on_close: list[Callable[[], None]] = []

    # -- the synchronous side ------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._closed or self._broken is not None

    def write_nowait(self, data: bytes) -> None:
        """Send ``data`` now if the kernel takes it, else queue it. Never blocks.

        Raises :class:`trio.ClosedResourceError` / :class:`trio.BrokenResourceError`
        if the stream is closed or failed.
        """
        if self._closed:
            raise trio.ClosedResourceError("stream is closed")
        if self._broken is not None:
            raise trio.BrokenResourceError("stream is broken") from self._broken
        size = len(data)
        self._accepted += size
        if self._fd is not None and not self._queue and not self._writing:
            try:
                sent = os.write(self._fd, data)
            except BlockingIOError:
                sent = 0
            except OSError as exc:
                self._fail(exc)
                raise trio.BrokenResourceError("send failed") from exc
            self._flushed += sent
            if sent == size:
                return
            if sent:
                data = data[sent:]
                size -= sent
                self._head_partial = True
        self._queue.append(data)
        self.buffered += size
        self._writer_lot.unpark_all()

    def discard_queued(self) -> int:
        """Drop queued bytes that have not started going out; return how many.

        A partly written frame at the head is kept, so the wire stays valid.
        Used before a policy close of a slow consumer, whose backlog is moot.
        """
        keep = self._queue.popleft() if self._head_partial and self._queue else None
        dropped = sum(map(len, self._queue))
        self._queue.clear()
        if keep is not None:
            self._queue.append(keep)
        self.buffered -= dropped
        self._flushed += dropped  # nobody waits for bytes that will never go out
        self._flush_lot.unpark_all()
        return dropped

    def _fail(self, exc: BaseException) -> None:
        if self._broken is None:
            self._broken = exc
        self._writer_lot.unpark_all()
        self._flush_lot.unpark_all()

    # -- the writer task ---------------------------------------------------

    async def run(self) -> None:
        """The send loop: drain the queue until the stream closes or breaks."""
        try:
            while not self.closed:
                if not self._queue:
                    await self._writer_lot.park()
                    continue
                if len(self._queue) == 1:
                    data = self._queue.popleft()
                else:
                    data = b"".join(self._queue)
                    self._queue.clear()
                self._writing = True
                self._head_partial = False
                try:
                    await self.inner.send_all(data)
                finally:
                    self._writing = False
                self.buffered -= len(data)
                self._flushed += len(data)
                self._flush_lot.unpark_all()
        except _SEND_ERRORS as exc:
            self._fail(exc)
        finally:
            self._flush_lot.unpark_all()

    async def wait_below(self, mark: float) -> None:
        """Wait until fewer than ``mark`` bytes are buffered (or the stream ends)."""
        while self.buffered >= mark and not self.closed:
            await self._flush_lot.park()

    # -- trio.abc.Stream ------------------------------------------------------

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        self.write_nowait(bytes(data))
        target = self._accepted
        if self._flushed >= target:
            await trio.lowlevel.checkpoint()
            return
        while self._flushed < target:
            if self._closed:
                raise trio.ClosedResourceError("stream closed while sending")
            if self._broken is not None:
                raise trio.BrokenResourceError("send failed") from self._broken
            await self._flush_lot.park()

    async def wait_send_all_might_not_block(self) -> None:
        await self.wait_below(1)

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        return await self.inner.receive_some(max_bytes)

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
            for callback in callbacks:  # before closing: they may still write_nowait
                callback()
            self._closed = True
            self._writer_lot.unpark_all()
            self._flush_lot.unpark_all()

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
