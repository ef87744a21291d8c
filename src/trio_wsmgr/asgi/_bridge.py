"""The ASGI bridge: a WebSocket connection of an ASGI server, run by the manager.

The ASGI server owns the wire (TCP, TLS, HTTP, the WebSocket framing towards the
client). The manager admits and runs sockets over a trio Stream. The bridge joins
the two without touching either's internals:

* it writes the opening handshake the client made (path, query, headers,
  subprotocols, from the ASGI scope) into an in-memory :func:`~._pipe.pipe_pair`
  whose other end goes to ``manager.serve_stream``, as a WebSocket client would;
* it reads the manager's answer: a 101 becomes ``websocket.accept`` (with the
  chosen subprotocol), a refusal becomes the HTTP denial response where the
  server supports that extension, else ``websocket.close`` (the server answers 403);
* then it carries messages both ways: ``websocket.receive`` becomes a frame to
  the manager, each message the manager sends becomes ``websocket.send``; the
  manager's close becomes ``websocket.close`` with its code and reason, and a
  ``websocket.disconnect`` becomes a close frame with the client's code;
* it answers the manager's heartbeat pings itself: the ASGI server does the
  keepalive with the client (hypercorn: ``websocket_ping_interval``).

Compression is not offered to the manager: the ASGI server owns the wire and
negotiates (or not) permessage-deflate with the client itself.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from typing import TYPE_CHECKING, Any, Protocol

import trio
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Message,
    Ping,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)
from wsproto.utilities import LocalProtocolError

from .._config import CloseCode
from .._exceptions import RequestRejected
from .._util import unwrap_single_group
from ._pipe import pipe_pair
from ._types import ASGIApp, ASGIReceive, ASGISend, Scope

if TYPE_CHECKING:
    from ..server._socket import Handler, ManagedSocket


class BridgedManager(Protocol):
    """What the bridge uses of a :class:`~trio_wsmgr.WebSocketManager` (no import cycle)."""

    @property
    def send_buffer_size(self) -> int | float: ...

    @property
    def close_timeout(self) -> float: ...

    async def serve_stream(
        self, handler: Handler, stream: trio.abc.Stream, *, initial_data: bytes = b""
    ) -> None: ...

    async def close(self, code: int = ..., reason: str = "") -> None: ...


logger = logging.getLogger("trio_wsmgr.asgi")


#: request headers the bridge does not pass on: the handshake's own, and hop-by-hop ones
_SKIPPED_HEADERS = frozenset(
    {
        b"host",
        b"connection",
        b"upgrade",
        b"sec-websocket-key",
        b"sec-websocket-version",
        b"sec-websocket-extensions",
        b"sec-websocket-protocol",
        b"content-length",
        b"transfer-encoding",
        b"keep-alive",
        b"te",
        b"trailer",
        b"proxy-connection",
    }
)
_READ = 65536


def handshake_request(scope: Scope) -> Request:
    """The opening handshake the client made, as wsproto builds it, from an ASGI scope."""
    raw_path = scope.get("raw_path")
    path = raw_path.decode("latin-1") if raw_path else scope.get("path", "/")
    query = scope.get("query_string", b"")
    target = path + ("?" + query.decode("latin-1") if query else "")
    host = None
    headers: list[tuple[bytes, bytes]] = []
    for name, value in scope.get("headers", ()):
        key = bytes(name).lower()
        if key == b"host":
            host = bytes(value).decode("latin-1")
        elif key not in _SKIPPED_HEADERS:
            headers.append((key, bytes(value)))
    if host is None:
        server = scope.get("server")
        host = f"{server[0]}:{server[1]}" if server else "localhost"
    return Request(
        host=host,
        target=target or "/",
        subprotocols=list(scope.get("subprotocols", ())),
        extra_headers=headers,
    )


def _peer(scope: Scope) -> tuple[str, int] | None:
    client = scope.get("client")
    if client is None:
        return None
    return str(client[0]), int(client[1])


class _Bridge:
    """One ASGI WebSocket connection, joined to ``manager.serve_stream`` through a pipe."""

    def __init__(
        self, manager: BridgedManager, scope: Scope, receive: ASGIReceive, send: ASGISend
    ) -> None:
        self.manager = manager
        self.scope = scope
        self.receive = receive
        self.send = send
        limit = int(min(manager.send_buffer_size, 1 << 24))
        self.server_end, self.end = pipe_pair(max(limit, 4096), peer=_peer(scope))
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.lock = trio.Lock()  # writes into the pipe: the pump's and the reader's
        self.answered = trio.Event()  # the manager accepted or refused
        self.refusal: RequestRejected | None = None
        self.asgi_closed = False  # we sent websocket.close (or the denial response)
        self.client_gone = False  # the client disconnected (websocket.disconnect)
        self.cancelled = False  # reading the client was cancelled

    async def write(self, data: bytes) -> None:
        if not data:
            return
        async with self.lock:
            # the manager's side may be gone already; the pump sees the end
            with suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await self.end.send_all(data)

    # -- manager -> ASGI server -------------------------------------------------

    async def pump(self) -> None:
        """Carry the manager's output to the ASGI server until the manager's side ends."""
        parts: list[Any] = []
        body: list[bytes] = []
        reject: RejectConnection | None = None
        while True:
            try:
                data = await self.end.receive_some(_READ)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                data = b""
            self.ws.receive_data(data or None)
            for event in self.ws.events():
                if isinstance(event, AcceptConnection):
                    await self._accept(event)
                elif isinstance(event, RejectConnection):
                    reject = event
                    if not event.has_body:
                        await self._deny(reject, b"")
                elif isinstance(event, RejectData):
                    body.append(event.data)
                    if event.body_finished and reject is not None:
                        await self._deny(reject, b"".join(body))
                elif isinstance(event, Message):
                    parts.append(event.data)
                    if event.message_finished:
                        await self._forward(event, parts)
                        parts = []
                elif isinstance(event, Ping):
                    await self.write(self.ws.send(event.response()))
                elif isinstance(event, CloseConnection):
                    if event.code != CloseCode.ABNORMAL:  # 1006 is "no close frame":
                        await self._close(event.code, event.reason or "")  # run_bridge decides
                    if self.ws.state.name == "REMOTE_CLOSING":
                        await self.write(self.ws.send(event.response()))
            if not data:
                break
        if not self.answered.is_set():  # ended before answering (a malformed request)
            await self._deny(RejectConnection(status_code=400), b"bad request")
        # else: ended without a close frame; run_bridge decides what the client hears

    async def _accept(self, event: AcceptConnection) -> None:
        message: dict[str, Any] = {"type": "websocket.accept", "subprotocol": event.subprotocol}
        headers = [(k, v) for k, v in event.extra_headers if k.lower() not in _SKIPPED_HEADERS]
        if headers:
            message["headers"] = headers
        await self._asgi_send(message)
        self.answered.set()

    async def _deny(self, event: RejectConnection, body: bytes) -> None:
        status = event.status_code
        self.refusal = RequestRejected(status, body.decode("utf-8", "replace").strip())
        extensions = self.scope.get("extensions") or {}
        if "websocket.http.response" in extensions:
            headers = [(k, v) for k, v in event.headers if k.lower() != b"content-length"]
            await self._asgi_send(
                {"type": "websocket.http.response.start", "status": status, "headers": headers}
            )
            await self._asgi_send({"type": "websocket.http.response.body", "body": body})
        else:  # the server answers a close before accept with 403
            await self._asgi_send({"type": "websocket.close", "code": CloseCode.POLICY_VIOLATION})
        self.asgi_closed = True
        self.answered.set()

    async def _forward(self, event: Message[Any], parts: list[Any]) -> None:
        if isinstance(event, TextMessage):
            await self._asgi_send({"type": "websocket.send", "text": "".join(parts)})
        else:
            await self._asgi_send({"type": "websocket.send", "bytes": b"".join(parts)})

    async def _close(self, code: int, reason: str) -> None:
        if self.asgi_closed or self.client_gone:
            self.asgi_closed = True
            return
        self.asgi_closed = True
        if code in (CloseCode.ABNORMAL, 1005, 1015):  # codes that never go on the wire
            code = CloseCode.INTERNAL_ERROR if code == CloseCode.ABNORMAL else CloseCode.NORMAL
        await self._asgi_send({"type": "websocket.close", "code": code, "reason": reason})

    async def _asgi_send(self, message: dict[str, Any]) -> None:
        try:
            await self.send(message)
        except trio.Cancelled:
            raise
        except Exception:  # the server's connection is gone (its own error type): nothing to tell
            self.client_gone = True

    # -- ASGI server -> manager ---------------------------------------------------

    async def read_client(self) -> None:
        """Carry the client's messages to the manager until it disconnects."""
        while True:
            try:
                event = await self.receive()
            except trio.Cancelled:
                self.cancelled = True  # by the server (shutdown), or the connection ended
                raise
            kind = event.get("type")
            if kind == "websocket.receive":
                text = event.get("text")
                message: Message[Any] = (
                    TextMessage(data=text)
                    if text is not None
                    else BytesMessage(data=event.get("bytes") or b"")
                )
                try:
                    data = self.ws.send(message)
                except LocalProtocolError:
                    continue  # the manager is closing: nothing more goes to it
                await self.write(data)
            elif kind == "websocket.disconnect":
                self.client_gone = True
                code = int(event.get("code", CloseCode.NORMAL))
                if code in (1005, CloseCode.ABNORMAL, 1015):
                    code = CloseCode.NORMAL if code == 1005 else CloseCode.GOING_AWAY
                try:
                    data = self.ws.send(CloseConnection(code=code, reason=event.get("reason")))
                except LocalProtocolError:
                    data = b""
                await self.write(data)
                async with self.lock:
                    await self.end.send_eof()
                return


async def run_bridge(
    manager: BridgedManager,
    handler: Handler,
    scope: Scope,
    receive: ASGIReceive,
    send: ASGISend,
) -> RequestRejected | None:
    """Serve one ASGI ``websocket`` scope with ``handler``, admitted by ``manager``.

    Returns the refusal if the manager refused the handshake.
    """
    first = await receive()
    if first.get("type") != "websocket.connect":
        return RequestRejected(400, "the connection ended before the handshake")
    bridge = _Bridge(manager, scope, receive, send)
    await bridge.write(bridge.ws.send(handshake_request(scope)))
    async with trio.open_nursery() as nursery:
        pumping = trio.CancelScope(shield=True)  # delivers the close even when cancelled
        pumped = trio.Event()

        async def pump() -> None:
            with pumping:
                await bridge.pump()
            pumped.set()

        async def serve() -> None:
            cancelled = False
            try:
                await manager.serve_stream(handler, bridge.server_end)
            except trio.Cancelled:
                cancelled = True
                raise
            finally:
                # The manager's side is over (its close went into the pipe): the pump
                # gets EOF. Bounded, in case the server no longer takes our messages.
                bridge.server_end.close()
                with trio.CancelScope(shield=True) as tail:
                    tail.deadline = trio.current_time() + manager.close_timeout
                    await pumped.wait()
                    if bridge.answered.is_set() and not bridge.asgi_closed:
                        # No close frame came through. Cancelled: the server is shutting
                        # down, so the client hears "going away"; else an internal error.
                        going = cancelled or bridge.cancelled
                        code = CloseCode.GOING_AWAY if going else CloseCode.INTERNAL_ERROR
                        await bridge._close(code, "")
                pumping.cancel()
                nursery.cancel_scope.cancel()  # the connection is over: stop reading the client

        nursery.start_soon(pump)
        nursery.start_soon(serve)
        nursery.start_soon(bridge.read_client)
    return bridge.refusal


class _Hold:
    """The handler ``accept_asgi`` runs: it hands the socket over and waits for the block."""

    def __init__(self) -> None:
        self.sock: ManagedSocket | None = None
        self.refusal: RequestRejected | None = None
        self.ready = trio.Event()
        self.done = trio.Event()

    async def __call__(self, sock: ManagedSocket) -> None:
        self.sock = sock
        self.ready.set()
        await self.done.wait()


@asynccontextmanager
async def accept_bridge(
    manager: BridgedManager, scope: Scope, receive: ASGIReceive, send: ASGISend
) -> AsyncIterator[ManagedSocket]:
    """``async with manager.accept_asgi(scope, receive, send) as sock:`` (see there)."""
    if scope.get("type") != "websocket":
        raise ValueError(f"accept_asgi takes a websocket scope, not {scope.get('type')!r}")
    hold = _Hold()
    with unwrap_single_group():
        async with trio.open_nursery() as nursery:

            async def run() -> None:
                try:
                    hold.refusal = await run_bridge(manager, hold, scope, receive, send)
                finally:
                    hold.ready.set()

            nursery.start_soon(run)
            await hold.ready.wait()
            sock = hold.sock
            if sock is not None:
                try:
                    yield sock
                except Exception:
                    with trio.CancelScope(shield=True):
                        await sock.close(CloseCode.INTERNAL_ERROR, "internal error")
                    raise
                finally:  # cancelled: the handler is cancelled with it and closes with 1001
                    hold.done.set()
    if hold.sock is None:
        raise hold.refusal or RequestRejected(400, "the handshake did not complete")


def _not_found_body() -> bytes:
    return b"404 Not Found\n"


def make_app(manager: BridgedManager, handler: Handler, fallback: ASGIApp | None) -> ASGIApp:
    """``manager.asgi_app(handler, fallback=...)`` (see there)."""

    async def app(scope: Scope, receive: ASGIReceive, send: ASGISend) -> None:
        kind = scope.get("type")
        if kind == "websocket":
            await run_bridge(manager, handler, scope, receive, send)
        elif fallback is not None:
            await fallback(scope, receive, send)
        elif kind == "http":
            await _not_found(receive, send)
        elif kind == "lifespan":
            await _lifespan(manager, receive, send)

    return app


async def _not_found(receive: ASGIReceive, send: ASGISend) -> None:
    body = _not_found_body()
    await send(
        {
            "type": "http.response.start",
            "status": 404,
            "headers": [
                (b"content-type", b"text/plain; charset=utf-8"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _lifespan(manager: BridgedManager, receive: ASGIReceive, send: ASGISend) -> None:
    while True:
        event = await receive()
        kind = event.get("type")
        if kind == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif kind == "lifespan.shutdown":
            await manager.close()  # whatever is still open goes with 1001
            await send({"type": "lifespan.shutdown.complete"})
            return
