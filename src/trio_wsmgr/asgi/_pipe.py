"""An in-memory, byte-bounded, bidirectional trio Stream pair.

The ASGI bridge runs the manager's own connection code over one end and speaks
WebSocket to it from the other. Each direction holds at most ``limit`` bytes: a
writer waits while the reader is that far behind, so backpressure (and the
manager's slow-consumer policy) works as over TCP.
"""

from __future__ import annotations

import trio


class _OneWay:
    """One direction: bytes written by one end, read by the other."""

    __slots__ = ("_buffer", "_limit", "_readable", "_writable", "read_closed", "write_closed")

    def __init__(self, limit: int) -> None:
        self._buffer = bytearray()
        self._limit = limit
        self._readable = trio.lowlevel.ParkingLot()
        self._writable = trio.lowlevel.ParkingLot()
        self.write_closed = False  # the writer closed: the reader sees EOF after the rest
        self.read_closed = False  # the reader closed: writes are refused

    async def write(self, data: bytes) -> None:
        await trio.lowlevel.checkpoint_if_cancelled()
        while len(self._buffer) >= self._limit and not self.read_closed:
            await self._writable.park()
        if self.write_closed:
            raise trio.ClosedResourceError("this end is closed")
        if self.read_closed:
            raise trio.BrokenResourceError("the other end is closed")
        self._buffer += data
        self._readable.unpark_all()
        await trio.lowlevel.cancel_shielded_checkpoint()

    async def read(self, max_bytes: int | None) -> bytes:
        await trio.lowlevel.checkpoint_if_cancelled()
        while not self._buffer and not self.write_closed and not self.read_closed:
            await self._readable.park()
        if self.read_closed:
            raise trio.ClosedResourceError("this end is closed")
        size = len(self._buffer) if max_bytes is None else min(max_bytes, len(self._buffer))
        data = bytes(self._buffer[:size])
        del self._buffer[:size]
        self._writable.unpark_all()
        await trio.lowlevel.cancel_shielded_checkpoint()
        return data

    def close_write(self) -> None:
        self.write_closed = True
        self._readable.unpark_all()
        self._writable.unpark_all()

    def close_read(self) -> None:
        self.read_closed = True
        self._buffer.clear()
        self._readable.unpark_all()
        self._writable.unpark_all()


class PipeStream(trio.abc.Stream):
    """One end of :func:`pipe_pair`. ``peer`` is what ``sock.remote`` should show."""

    def __init__(self, incoming: _OneWay, outgoing: _OneWay, peer: tuple[str, int] | None) -> None:
        self._incoming = incoming
        self._outgoing = outgoing
        self.peer = peer

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._outgoing.write(bytes(data))

    async def wait_send_all_might_not_block(self) -> None:
        await trio.lowlevel.checkpoint()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        return await self._incoming.read(max_bytes)

    async def send_eof(self) -> None:
        self._outgoing.close_write()
        await trio.lowlevel.checkpoint()

    def close(self) -> None:
        self._outgoing.close_write()
        self._incoming.close_read()

    async def aclose(self) -> None:
        self.close()
        await trio.lowlevel.checkpoint()


def pipe_pair(limit: int, *, peer: tuple[str, int] | None = None) -> tuple[PipeStream, PipeStream]:
    """Two connected streams; the first one's ``peer`` is ``peer`` (the real client)."""
    forward, backward = _OneWay(limit), _OneWay(limit)
    return PipeStream(backward, forward, peer), PipeStream(forward, backward, None)
