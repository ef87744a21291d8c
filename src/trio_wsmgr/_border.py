"""The border to trio-websocket's and wsproto's internals. Nothing else crosses it.

trio-websocket (0.12) does not let a server accept with WebSocket extensions and
does not show the whole handshake; wsproto does both. Each function here does
one small thing the public APIs cannot, and ``tests/test_border.py`` pins every
private attribute used, so an upgrade that moves one fails loudly there.

What we touch (all on ``WebSocketConnection`` / ``WebSocketRequest``):

=====================  ====================================================
``request._connection`` the connection behind a request
``request._event``      wsproto's ``Request`` event (host, extension offers)
``conn._wsproto``       to accept with extensions (``AcceptConnection``)
``conn._stream``        to put our buffered stream under
                        a connection that trio-websocket's own server made
``conn._subprotocol``,  set as trio-websocket's own ``_accept`` sets them
``conn._path``,
``conn._open_handshake``
``conn._send``          the locked write trio-websocket itself uses
``conn._recv_channel``  how many received messages wait for the application
``conn._max_message_size``
``conn._initial_request`` a client's opening request, to offer extensions
``conn._reader_task``   started as trio-websocket's own client and server do
``conn._pings``         in-flight pings (payload -> object with ``set()``), to
                        ping without waiting for the pong (heartbeats)
=====================  ====================================================

Who uses it: ``manager.accept`` (sockets over a trio-websocket connection: their
pings, closes and backlog) and the client pool (offering compression). ``serve``
and ``serve_stream`` do not: they own their wire on public, sans-IO code
(``protocol/``). ``pyproject.toml`` pins trio-websocket to the versions the border
tests ran on; ``nox -s border_latest`` runs them against the newest release. The stream under
a connection is only known here through :class:`FrameSink`, so this module
imports nothing of the package above it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol, TypeVar, cast

import trio
import trio_websocket
from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import AcceptConnection, CloseConnection, Ping, Request
from wsproto.extensions import Extension
from wsproto.utilities import LocalProtocolError


class FrameSink(Protocol):
    """The part of the server's buffered stream that the border writes to."""

    flush_on_close: bool
    close_frame_sent: bool

    def write_nowait(self, data: bytes) -> None: ...


S = TypeVar("S", bound=trio.abc.Stream)
C = TypeVar("C", bound=trio_websocket.WebSocketConnection)


def connection_of(request: trio_websocket.WebSocketRequest) -> trio_websocket.WebSocketConnection:
    """The connection a request belongs to."""
    conn = request._connection
    assert isinstance(conn, trio_websocket.WebSocketConnection)
    return conn


def handshake_host(request: trio_websocket.WebSocketRequest) -> str:
    """The ``Host`` header, which trio-websocket leaves out of ``request.headers``."""
    return str(request._event.host)


def extension_offers(request: trio_websocket.WebSocketRequest) -> list[str]:
    """The client's ``Sec-WebSocket-Extensions`` offers, one string each."""
    return [str(offer) for offer in request._event.extensions]


def adopt_stream(
    conn: trio_websocket.WebSocketConnection, wrap: Callable[[trio.abc.Stream], S], kind: type[S]
) -> S:
    """Put ``wrap(stream)`` under a connection made elsewhere; return it.

    Safe only before the handshake is answered: nothing is writing yet, and the
    reader task picks the new stream up on its next ``receive_some``. A stream
    already of ``kind`` is kept as it is.
    """
    current = conn._stream
    if isinstance(current, kind):
        return current
    stream = wrap(current)
    conn._stream = stream
    return stream


def handshake_unanswered(request: trio_websocket.WebSocketRequest) -> bool:
    """Whether no answer (101 or refusal) to ``request`` has been started yet."""
    conn = connection_of(request)
    return bool(conn._wsproto.state is ConnectionState.CONNECTING)


def set_max_message_size(conn: trio_websocket.WebSocketConnection, size: int) -> None:
    """Apply the manager's ``max_message_size`` to a connection made elsewhere."""
    conn._max_message_size = size


def pending_messages(conn: trio_websocket.WebSocketConnection) -> int:
    """Received messages waiting for the application to read them."""
    return int(conn._recv_channel.statistics().current_buffer_used)


async def accept(
    request: trio_websocket.WebSocketRequest,
    *,
    subprotocol: str | None,
    extra_headers: list[tuple[bytes, bytes]],
    extensions: Sequence[Extension],
) -> trio_websocket.WebSocketConnection:
    """``request.accept()``, but offering ``extensions`` to wsproto's negotiation.

    wsproto keeps the extensions the client also offered (calling each one's
    ``accept``) and frames later messages through them.
    """
    conn = connection_of(request)
    if not extensions:
        return await request.accept(subprotocol=subprotocol, extra_headers=extra_headers)
    conn._subprotocol = subprotocol
    conn._path = request.path
    await conn._send(
        AcceptConnection(
            subprotocol=subprotocol, extra_headers=extra_headers, extensions=list(extensions)
        )
    )
    conn._open_handshake.set()
    return conn


def send_failure_close_nowait(conn: trio_websocket.WebSocketConnection, stream: FrameSink) -> None:
    """Tell the peer why, when trio-websocket drops a connection over a protocol error.

    When wsproto finds a bad frame (invalid UTF-8 -> 1007, protocol error -> 1002,
    an inflated message over the limit -> 1009) trio-websocket records the code
    but closes the TCP connection without a close frame. Called as the stream
    closes, this writes that close frame first (best effort, never blocking).
    """
    reason = conn.closed
    if reason is None or conn._wsproto.state is not ConnectionState.OPEN:
        return
    try:
        data = conn._wsproto.send(CloseConnection(code=reason.code, reason=reason.reason or ""))
        stream.flush_on_close = True
        stream.close_frame_sent = True
        stream.write_nowait(data)
    except Exception:
        return


class PongWaiter(Protocol):
    """What :func:`ping_nowait` registers: trio-websocket calls ``set()`` on the pong."""

    def set(self) -> None: ...


def ping_nowait(
    conn: trio_websocket.WebSocketConnection,
    stream: FrameSink,
    payload: bytes,
    waiter: PongWaiter,
) -> bool:
    """Send a ping without waiting for its pong; ``waiter.set()`` runs when the pong arrives.

    ``conn.ping()`` waits in the calling task (taking trio-websocket's send lock
    and an Event); the heartbeat only needs to look at its deadline whether the
    pong came. Registered exactly as ``conn.ping()`` registers its Event, so
    trio-websocket's reader settles it (and earlier skipped ones) the same way.
    Returns False, sending nothing, if the connection is no longer open.
    """
    if conn.closed is not None or conn._wsproto.state is not ConnectionState.OPEN:
        return False
    pings = cast("dict[bytes, PongWaiter]", conn._pings)
    if payload in pings:
        return False
    try:
        data = conn._wsproto.send(Ping(payload=payload))
        stream.write_nowait(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError, LocalProtocolError):
        return False
    pings[payload] = waiter
    return True


def send_close_nowait(
    conn: trio_websocket.WebSocketConnection, stream: FrameSink, code: int, reason: str
) -> None:
    """Write a close frame without waiting (best effort), for an abort."""
    if conn._wsproto.state is not ConnectionState.OPEN:
        return
    try:
        data = conn._wsproto.send(CloseConnection(code=code, reason=reason))
        stream.flush_on_close = True
        stream.close_frame_sent = True
        stream.write_nowait(data)
    except Exception:
        return


async def wrap_client_stream(
    nursery: trio.Nursery,
    stream: trio.SocketStream | trio.SSLStream[trio.SocketStream],
    host: str,
    resource: str,
    *,
    connection_class: type[C],
    subprotocols: Sequence[str],
    extra_headers: list[tuple[bytes, bytes]],
    extensions: Sequence[Extension],
    message_queue_size: int,
    max_message_size: int,
) -> C:
    """``trio_websocket.wrap_client_stream``, but offering ``extensions`` (compression)
    and making a ``connection_class`` (a subclass of trio-websocket's connection).

    Done as trio-websocket's own does it: the connection, then its reader task,
    which sends the request; with extensions, ours are put in that request first.
    The handshake is awaited.
    """
    conn = connection_class(
        stream,
        WSConnection(ConnectionType.CLIENT),
        host=host,
        path=resource,
        client_subprotocols=list(subprotocols),
        client_extra_headers=extra_headers,
        message_queue_size=message_queue_size,
        max_message_size=max_message_size,
    )
    if extensions:
        request = conn._initial_request
        assert request is not None
        conn._initial_request = Request(
            host=request.host,
            target=request.target,
            subprotocols=list(request.subprotocols),
            extra_headers=list(request.extra_headers),
            extensions=list(extensions),
        )
    nursery.start_soon(conn._reader_task)
    await conn._open_handshake.wait()
    return conn
