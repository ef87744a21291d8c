"""Test your own handlers without a network: in-memory clients and faulty peers.

Everything here runs over :mod:`trio.testing` memory streams, so tests are fast,
deterministic and work with ``autojump_clock`` (heartbeat and timeout tests
take milliseconds)::

    from trio_wsmgr.testing import open_client, open_peer

    async def test_echo():
        manager = WebSocketManager()
        async with open_client(manager, echo_handler) as conn:
            await conn.send_message("hi")
            assert await conn.get_message() == "hi"

    async def test_dead_peer_is_reaped(autojump_clock):
        manager = WebSocketManager(heartbeat_interval=5, heartbeat_timeout=5)
        async with open_peer(manager, handler) as peer:
            peer.answer_pings = False          # a peer that vanished
            code, _ = await peer.wait_closed()
            assert code == 1011

:func:`open_client` gives a well-behaved trio-websocket client;
:func:`open_peer` gives a :class:`Peer` whose misbehaviour you choose: dropped
pongs, a reader that stops reading (a slow consumer), raw bytes (hostile
frames), an abrupt close without a close frame.
"""

from __future__ import annotations

import base64
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager, suppress
from typing import Any

import trio
import trio.testing
import trio_websocket
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Event,
    Message,
    Ping,
    RejectConnection,
    Request,
    TextMessage,
)

from ._util import unwrap_single_group
from .server._manager import WebSocketManager
from .server._socket import ManagedSocket

__all__ = ["Peer", "open_client", "open_peer", "stream_pair"]

Handler = Callable[[ManagedSocket], Awaitable[object]]


def stream_pair(*, lockstep: bool = False) -> tuple[trio.abc.Stream, trio.abc.Stream]:
    """A connected (client, server) pair of in-memory streams.

    ``lockstep=True`` makes it unbuffered: a write waits until the other side
    reads, so a peer that stops reading holds the server's writes up exactly as
    a full TCP window would.
    """
    if lockstep:
        return trio.testing.lockstep_stream_pair()
    return trio.testing.memory_stream_pair()


@asynccontextmanager
async def open_client(
    manager: WebSocketManager,
    handler: Handler,
    *,
    path: str = "/",
    subprotocols: Sequence[str] = (),
    headers: Sequence[tuple[str, str]] = (),
) -> AsyncIterator[trio_websocket.WebSocketConnection]:
    """Serve ``handler`` over a memory stream and yield a trio-websocket client for it.

    On exit the client closes (1000) and the block waits until the server's side
    has finished too, so a test can then check that nothing was left behind. A
    refused handshake raises :class:`trio_websocket.ConnectionRejected`.
    """
    client, server = stream_pair()
    with unwrap_single_group():
        async with trio.open_nursery() as nursery:
            nursery.start_soon(manager.serve_stream, handler, server)
            conn = await _connect(nursery, client, path, subprotocols, headers)
            try:
                yield conn
            finally:
                with trio.CancelScope(shield=True), trio.move_on_after(manager.close_timeout):
                    await conn.aclose()


async def _connect(
    nursery: trio.Nursery,
    client: trio.abc.Stream,
    path: str,
    subprotocols: Sequence[str],
    headers: Sequence[tuple[str, str]],
) -> trio_websocket.WebSocketConnection:
    return await trio_websocket.wrap_client_stream(
        nursery,
        client,  # type: ignore[arg-type]  # any trio Stream works; the hint is narrow
        "testserver",
        path,
        subprotocols=list(subprotocols),
        extra_headers=[(k.encode(), v.encode()) for k, v in headers],
    )


class Peer:
    """A raw WebSocket client (wsproto) on an in-memory stream, for fault injection.

    Set :attr:`answer_pings` to False to drop pongs; simply stop calling the
    ``receive`` methods to stop reading (with a lockstep stream that is a stuck
    peer); :meth:`send_raw` writes any bytes at all; :meth:`abort` drops the
    connection without a close frame.
    """

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.ws = WSConnection(ConnectionType.CLIENT)
        #: answer the server's pings (False: a peer that vanished)
        self.answer_pings = True
        #: the HTTP status of a refused handshake, or 101
        self.status: int | None = None
        self.response_headers: list[tuple[bytes, bytes]] = []
        self.close_code: int | None = None
        self.close_reason = ""
        self._eof = False

    async def handshake(
        self,
        path: str = "/",
        *,
        subprotocols: Sequence[str] = (),
        headers: Sequence[tuple[str, str]] = (),
        extensions: Sequence[Any] = (),
    ) -> int:
        """Send the opening handshake and read the answer; return the HTTP status."""
        request = Request(
            host="testserver",
            target=path,
            subprotocols=list(subprotocols),
            extra_headers=[(k.encode(), v.encode()) for k, v in headers],
            extensions=list(extensions),
        )
        await self.stream.send_all(self.ws.send(request))
        while self.status is None:
            event = await self.next_event()
            if event is None:
                raise trio.BrokenResourceError("connection closed during the handshake")
        return self.status

    async def send(self, message: str | bytes) -> None:
        event: Message[Any] = (
            TextMessage(data=message) if isinstance(message, str) else BytesMessage(data=message)
        )
        await self.stream.send_all(self.ws.send(event))

    async def send_raw(self, data: bytes) -> None:
        """Write bytes as they are (hostile frames, garbage)."""
        await self.stream.send_all(data)

    async def next_event(self) -> Event | None:
        """The next wsproto event, reading as needed; None at end of stream."""
        while True:
            for event in self.ws.events():
                await self._note(event)
                return event
            if self._eof:
                return None
            try:
                data = await self.stream.receive_some(65536)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                data = b""
            if not data:
                self._eof = True
                self.ws.receive_data(None)
            else:
                self.ws.receive_data(bytes(data))

    async def _note(self, event: Event) -> None:
        if isinstance(event, AcceptConnection):
            self.status = 101
        elif isinstance(event, RejectConnection):
            self.status = event.status_code
            self.response_headers = list(event.headers)
        elif isinstance(event, Ping) and self.answer_pings:
            await self._try_send(self.ws.send(event.response()))
        elif isinstance(event, CloseConnection):
            if self.close_code is None:
                self.close_code = event.code
                self.close_reason = event.reason or ""
            if self.ws.state.name == "REMOTE_CLOSING":
                await self._try_send(self.ws.send(event.response()))

    async def _try_send(self, data: bytes) -> None:
        with suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await self.stream.send_all(data)

    async def receive(self) -> str | bytes:
        """The next whole message; raises :class:`EOFError` if the connection closes."""
        parts: list[Any] = []
        while True:
            event = await self.next_event()
            if event is None or isinstance(event, CloseConnection):
                raise EOFError(f"closed: {self.close_code} {self.close_reason!r}")
            if isinstance(event, TextMessage | BytesMessage):
                parts.append(event.data)
                if event.message_finished:
                    if isinstance(event, TextMessage):
                        return "".join(parts)
                    return b"".join(parts)

    async def wait_closed(self) -> tuple[int | None, str]:
        """Read (discarding messages) until the server closes; return (code, reason).

        The code is None if the TCP connection ended without a close frame.
        """
        while await self.next_event() is not None:
            pass
        return self.close_code, self.close_reason

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Start a clean close (send our close frame)."""
        await self._try_send(self.ws.send(CloseConnection(code=code, reason=reason)))

    async def abort(self) -> None:
        """Drop the connection without a close frame."""
        await trio.aclose_forcefully(self.stream)


@asynccontextmanager
async def open_peer(
    manager: WebSocketManager,
    handler: Handler,
    *,
    path: str = "/",
    subprotocols: Sequence[str] = (),
    headers: Sequence[tuple[str, str]] = (),
    lockstep: bool = False,
    handshake: bool = True,
) -> AsyncIterator[Peer]:
    """Serve ``handler`` over a memory stream and yield a :class:`Peer` for it.

    With ``handshake=False`` the peer has sent nothing yet (for handshake
    tests). The block ends by aborting the peer and waiting for the server's
    side to finish.
    """
    client, server = stream_pair(lockstep=lockstep)
    peer = Peer(client)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(manager.serve_stream, handler, server)
        try:
            if handshake:
                await peer.handshake(path, subprotocols=subprotocols, headers=headers)
                # let the server finish registering the socket it just accepted
                await trio.testing.wait_all_tasks_blocked()
            yield peer
        finally:
            await peer.abort()


def random_key() -> bytes:
    """A fresh ``Sec-WebSocket-Key`` value."""
    return base64.b64encode(os.urandom(16))
