"""A minimal HTTP/1.1 front: a few static pages and the WebSocket endpoint on one port.

Not a web server. It reads one request head per connection (with h11, under a
timeout and a size cap) and then does exactly one of three things:

* a ``GET`` of the WebSocket path that asks for ``Upgrade: websocket`` is
  handed to :meth:`WebSocketManager.serve_stream` with the bytes already read
  as ``initial_data``, so the manager sees the handshake as if it had read it
  itself (and keeps the raw TCP stream: peer address, fast writes);
* a ``GET`` or ``HEAD`` of a known route is answered from memory with
  ``Content-Type``, ``Content-Length``, ``Cache-Control`` and
  ``X-Content-Type-Options: nosniff`` (plus a strict Content-Security-Policy);
* anything else gets a short plain-text error: 400 (malformed), 404, 405
  (with ``Allow``), 408 (head too slow), 426 (the WebSocket path without an
  upgrade) or 431 (head too large).

Every answer ends the connection (``Connection: close``). Which answer is
decided synchronously by :func:`route` from the parsed request; only reading
and writing are async. Bad input never raises out of :meth:`HttpFront.serve_stream`.
"""

from __future__ import annotations

import http
import logging
import ssl
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any, Final
from urllib.parse import urlsplit

import attrs
import h11
import trio

from .._validators import count, seconds
from ..server._listen import Server
from ..server._manager import Handler, WebSocketManager

logger = logging.getLogger("trio_wsmgr.http")

#: headers on every successful static answer (besides type, length and caching)
SECURITY_HEADERS: Final[tuple[tuple[str, str], ...]] = (
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    (
        "Content-Security-Policy",
        "default-src 'self'; connect-src 'self'; img-src 'self' data:; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    ),
)
_READ_CHUNK = 4096
#: after an answer, how long and how much we read what the peer still sends
LINGER_SECONDS: Final = 2.0
LINGER_BYTES: Final = 256 * 1024
_IO_ERRORS = (trio.BrokenResourceError, trio.ClosedResourceError, OSError)


@attrs.frozen
class Resource:
    """A static answer: the body and its ``Content-Type``."""

    body: bytes
    content_type: str
    cache_control: str = "no-cache"


@attrs.frozen
class Answer:
    """What :func:`route` decided: an HTTP response (``websocket`` False) or the hand-over."""

    status: int
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""
    #: HEAD: send the headers (with the full Content-Length) but not the body
    head_only: bool = False
    #: hand the connection to the WebSocket manager instead of answering
    websocket: bool = False

    def to_bytes(self) -> bytes:
        """The whole response as it goes on the wire."""
        phrase = http.HTTPStatus(self.status).phrase
        lines = [f"HTTP/1.1 {self.status} {phrase}"]
        lines += [f"{name}: {value}" for name, value in self.headers]
        lines += [f"Content-Length: {len(self.body)}", "Connection: close", "", ""]
        head = "\r\n".join(lines).encode("latin-1")
        return head if self.head_only else head + self.body


UPGRADE: Final = Answer(101, websocket=True)


def error(status: int, *headers: tuple[str, str]) -> Answer:
    """A short plain-text error answer."""
    text = f"{status} {http.HTTPStatus(status).phrase}\n".encode()
    return Answer(
        status,
        (
            ("Content-Type", "text/plain; charset=utf-8"),
            ("Cache-Control", "no-store"),
            ("X-Content-Type-Options", "nosniff"),
            *headers,
        ),
        text,
    )


def _header_tokens(request: h11.Request, name: bytes) -> set[bytes]:
    """The comma-separated tokens of every ``name`` header, lower-cased."""
    tokens: set[bytes] = set()
    for key, value in request.headers:
        if key == name:
            tokens.update(part.strip().lower() for part in value.split(b","))
    return tokens


def request_path(target: bytes) -> str | None:
    """The path of a request target (origin or absolute form); None if it has none."""
    text = target.decode("ascii", "replace")
    if text.startswith("/"):
        return text.partition("?")[0].partition("#")[0]
    if "://" in text:
        return urlsplit(text).path or "/"
    return None  # "*" or an authority: not for us


#: a route: a fixed answer, or a function that makes one for each request (``/metrics``)
Route = Resource | Callable[[], Resource]


def route(request: h11.Request, routes: Mapping[str, Route], websocket_path: str) -> Answer:
    """Decide, synchronously, how to answer ``request``."""
    path = request_path(request.target)
    method = request.method
    if path is None:
        return error(400)
    if path == websocket_path:
        if method != b"GET":
            return error(405, ("Allow", "GET"))
        if b"websocket" not in _header_tokens(request, b"upgrade"):
            return error(426, ("Upgrade", "websocket"))
        return UPGRADE
    found = routes.get(path)
    if found is None:
        return error(404)
    if method not in (b"GET", b"HEAD"):
        return error(405, ("Allow", "GET, HEAD"))
    resource = found if isinstance(found, Resource) else found()
    return Answer(
        200,
        (
            ("Content-Type", resource.content_type),
            ("Cache-Control", resource.cache_control),
            *SECURITY_HEADERS,
        ),
        resource.body,
        head_only=method == b"HEAD",
    )


async def _linger(stream: trio.abc.Stream) -> None:
    """Half-close, then read what the peer still sends, briefly, before closing.

    Closing a TCP socket with unread input sends a reset, which can destroy
    our answer before the peer reads it (a 413/431 to a client still sending,
    say). So: FIN first, then drain until the peer closes, within bounds.
    """
    if not isinstance(stream, trio.abc.HalfCloseableStream):
        return
    with trio.move_on_after(LINGER_SECONDS):
        await stream.send_eof()
        drained = 0
        while drained < LINGER_BYTES:
            data = await stream.receive_some(_READ_CHUNK)
            if not data:
                break
            drained += len(data)


def _path(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, str) or not value.startswith("/"):
        raise ValueError(f"{attribute.name} must be a path starting with '/', not {value!r}")


def _routes(value: Mapping[str, Route]) -> Mapping[str, Route]:
    for path, resource in value.items():
        if not path.startswith("/") or not (isinstance(resource, Resource) or callable(resource)):
            raise TypeError(
                f"routes maps '/paths' to Resource objects (or functions making one),"
                f" not {path!r}: {resource!r}"
            )
    return dict(value)


@attrs.define(kw_only=True, eq=False)
class HttpFront:
    """Serve ``routes`` and, at ``websocket_path``, ``manager`` running ``handler``."""

    manager: WebSocketManager
    handler: Handler
    routes: Mapping[str, Route] = attrs.field(factory=dict, converter=_routes)
    websocket_path: str = attrs.field(default="/ws", validator=_path)
    #: the request head must arrive within this many seconds (then 408)
    request_timeout: float = attrs.field(default=10.0, validator=seconds)
    #: the largest request head accepted, in bytes (then 431)
    max_head_size: int = attrs.field(default=16 * 1024, validator=count(1))
    #: an answer must be written within this many seconds (else the connection is dropped)
    write_timeout: float = attrs.field(default=10.0, validator=seconds)

    async def serve(
        self,
        host: str | None,
        port: int,
        *,
        task_status: trio.TaskStatus[Server] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Listen on ``host:port`` until cancelled: ``await nursery.start(front.serve, ...)``.

        Cancelling it cancels every connection; the WebSocket ones close with
        the manager's close code (1001 unless ``manager.close()`` chose another).
        """
        listeners = await trio.open_tcp_listeners(port, host=host)
        await self.serve_listeners(listeners, task_status=task_status)

    async def serve_listeners(
        self,
        listeners: Sequence[trio.SocketListener],
        *,
        ssl_context: ssl.SSLContext | None = None,
        task_status: trio.TaskStatus[Server] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Like :meth:`serve`, on listeners opened beforehand (so a busy port fails early).

        With ``ssl_context`` it serves HTTPS and ``wss://`` on them.
        """
        served: list[trio.abc.Listener[Any]] = list(listeners)
        if ssl_context is not None:
            served = [trio.SSLListener(ln, ssl_context, https_compatible=True) for ln in listeners]
        async with trio.open_nursery() as nursery:
            await nursery.start(partial(trio.serve_listeners, self.serve_stream, served))
            task_status.started(Server(tuple(listeners)))

    async def serve_stream(self, stream: trio.abc.Stream) -> None:
        """Answer the one request on ``stream`` (or hand it to the manager); then close."""
        handed_over = False
        try:
            received = bytearray()
            answer = await self._read_and_route(stream, received)
            if answer is not None and answer.websocket:
                handed_over = True
                await self.manager.serve_stream(self.handler, stream, initial_data=bytes(received))
            elif answer is not None:
                with trio.move_on_after(self.write_timeout) as writing:
                    await stream.send_all(answer.to_bytes())
                if not writing.cancelled_caught:
                    await _linger(stream)
        except _IO_ERRORS:
            pass
        except Exception:  # a bug here must not take the listener down
            logger.exception("HTTP front failed on a connection")
        finally:
            if not handed_over:
                await trio.aclose_forcefully(stream)

    async def _read_and_route(self, stream: trio.abc.Stream, received: bytearray) -> Answer | None:
        """Read the request head into ``received`` and decide; None: just hang up."""
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=self.max_head_size)
        with trio.move_on_after(self.request_timeout):
            while True:
                try:
                    event = conn.next_event()
                except h11.RemoteProtocolError as exc:
                    return error(exc.error_status_hint)
                if isinstance(event, h11.Request):
                    return route(event, self.routes, self.websocket_path)
                if event is not h11.NEED_DATA:  # the peer went away before a request
                    return None
                data = await stream.receive_some(_READ_CHUNK)
                received += data
                conn.receive_data(bytes(data))
        return error(408) if received else None
