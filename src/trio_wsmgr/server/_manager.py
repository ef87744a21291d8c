"""WebSocketManager: its options, the user index, broadcast, each connection's life, shutdown.

What a handshake goes through before its socket exists (limits, origin,
authentication, subprotocol, refusals) is :mod:`._admission`, built here from
the manager's options and handed the registry and counters.
"""

from __future__ import annotations

import logging
import math
import ssl
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager
from typing import Any, NoReturn

import attrs
import trio
import trio_websocket

from .. import _border
from .._config import CloseCode
from .._exceptions import ConnectionClosed
from .._util import unwrap_single_group
from .._validators import count, instance_of, limit, optional_callable, rate, seconds, str_tuple
from ..asgi._types import ASGIApp, ASGIReceive, ASGISend, Scope
from ..protocol._compression import Compression
from ..protocol._message import Outgoing
from ._accepted import (
    AcceptedSocket,
    HeartbeatHost,
    TwsAnswer,
    background_nursery,
    tws_request_info,
)
from ._admission import UNSET, Admission, _Unset
from ._answer import remote_of
from ._auth import Authenticator
from ._context import Counters, SocketContext
from ._fanout import OnFull, check_on_full, deliver, deliver_nowait
from ._listen import Server, accept_loop, open_listeners
from ._registry import Registry
from ._socket import Handler as Handler
from ._socket import ManagedSocket
from ._statistics import ManagerStatistics, snapshot
from ._transport import BufferedStream

logger = logging.getLogger("trio_wsmgr")


def _protocols(value: Sequence[str]) -> tuple[str, ...]:
    converted = str_tuple("protocols")(value)
    if converted is None:
        raise TypeError("protocols must be a list of strings, not None")
    return converted


def _origins(value: Sequence[str] | None) -> tuple[str, ...] | None:
    return str_tuple("allowed_origins")(value)


def _default_compression() -> Compression:
    """The manager's compression: each broadcast compressed once, no compressor kept per socket.

    The server imposes no context takeover on its side (RFC 7692 allows it
    whatever the client offered); see the compression topic.
    """
    return Compression(server_no_context_takeover=True)


def _fixed(instance: object, attribute: attrs.Attribute[Any], value: object) -> NoReturn:
    raise AttributeError(
        f"{type(instance).__name__}.{attribute.name} is fixed at construction "
        "(the sockets and admission already use it): make a new manager to change it"
    )


#: the manager's own state, which changes after construction (its options do not)
_state = attrs.setters.NO_OP


@attrs.define(kw_only=True, eq=False, on_setattr=_fixed)
class WebSocketManager:
    """Accepts, tracks and closes the server side of WebSocket connections.

    Every option is keyword-only, validated here and fixed from then on
    (assigning one raises :exc:`AttributeError`); ``math.inf`` means "never"
    or "no limit". See :doc:`/reference/manager` for each option's meaning and
    :doc:`/topics/security` for every limit and close code.
    """

    max_connections: int | float = attrs.field(default=10_000, validator=limit)
    connection_timeout: float = attrs.field(default=10.0, validator=seconds)
    heartbeat_interval: float = attrs.field(default=20.0, validator=seconds)
    heartbeat_timeout: float = attrs.field(default=20.0, validator=seconds)
    authentication: Authenticator | None = attrs.field(default=None, validator=optional_callable)
    compression: Compression | None = attrs.field(
        factory=_default_compression,
        validator=attrs.validators.optional(instance_of(Compression, "a Compression(...) or None")),
    )
    protocols: tuple[str, ...] = attrs.field(default=(), converter=_protocols)
    allowed_origins: tuple[str, ...] | None = attrs.field(default=None, converter=_origins)
    max_message_size: int | float = attrs.field(default=1 << 20, validator=limit)
    send_buffer_size: int | float = attrs.field(default=256 * 1024, validator=limit)
    slow_consumer_timeout: float = attrs.field(default=1.0, validator=seconds)
    close_timeout: float = attrs.field(default=5.0, validator=seconds)
    max_incoming_queue: int | float = attrs.field(default=16, validator=limit)
    max_connections_per_user: int | float = attrs.field(default=math.inf, validator=limit)
    max_connections_per_address: int | float = attrs.field(default=math.inf, validator=limit)
    max_messages_per_second: float = attrs.field(default=math.inf, validator=rate)
    receive_buffer_size: int = attrs.field(default=16 * 1024, validator=count(1))

    _registry: Registry[ManagedSocket] = attrs.field(
        on_setattr=_state, init=False, repr=False, factory=Registry
    )
    _closing: bool = attrs.field(on_setattr=_state, init=False, repr=False, default=False)
    _connection_scopes: set[trio.CancelScope] = attrs.field(
        on_setattr=_state, init=False, repr=False, factory=set
    )
    _listener_scopes: set[trio.CancelScope] = attrs.field(
        on_setattr=_state, init=False, repr=False, factory=set
    )
    _idle: trio.lowlevel.ParkingLot = attrs.field(
        on_setattr=_state, init=False, repr=False, factory=trio.lowlevel.ParkingLot
    )
    _close_code: tuple[int, str] = attrs.field(
        on_setattr=_state, init=False, repr=False, default=(CloseCode.GOING_AWAY, "")
    )
    _grace_over: bool = attrs.field(on_setattr=_state, init=False, repr=False, default=False)
    _counters: Counters = attrs.field(on_setattr=_state, init=False, repr=False, factory=Counters)
    _context: SocketContext = attrs.field(on_setattr=_state, init=False, repr=False)
    _admission: Admission = attrs.field(on_setattr=_state, init=False, repr=False)

    def __attrs_post_init__(self) -> None:
        if isinstance(self.max_message_size, float):
            raise TypeError("max_message_size must be an int")
        self._context = SocketContext(
            counters=self._counters,
            unregister=self._registry.remove,
            send_buffer_size=self.send_buffer_size,
            slow_consumer_timeout=self.slow_consumer_timeout,
            close_timeout=self.close_timeout,
            max_messages_per_second=self.max_messages_per_second,
            max_incoming_queue=self.max_incoming_queue,
            receive_buffer_size=self.receive_buffer_size,
            heartbeat_interval=self.heartbeat_interval,
            heartbeat_timeout=self.heartbeat_timeout,
        )
        self._admission = Admission(
            registry=self._registry,
            counters=self._counters,
            context=self._context,
            shutdown=self._shutdown,
            connection_timeout=self.connection_timeout,
            max_connections=self.max_connections,
            max_connections_per_user=self.max_connections_per_user,
            max_connections_per_address=self.max_connections_per_address,
            allowed_origins=self.allowed_origins,
            protocols=self.protocols,
            authentication=self.authentication,
            compression=self.compression,
            max_message_size=int(self.max_message_size),
            receive_buffer_size=self.receive_buffer_size,
        )

    # -- queries (the spec's getActiveConnections / getUserSockets) ---------------

    def get_active_connections(self) -> int:
        """How many sockets are open now."""
        return len(self._registry)

    def get_user_sockets(self, user_id: str) -> list[ManagedSocket]:
        """The open sockets of ``user_id`` (O(number of them)); empty if none."""
        return self._registry.user_sockets(user_id)

    def users(self) -> list[str]:
        """The user ids with at least one open socket."""
        return self._registry.users()

    def sockets(self) -> list[ManagedSocket]:
        """Every open socket (a snapshot)."""
        return self._registry.select(None)

    @property
    def closing(self) -> bool:
        return self._closing

    def statistics(self) -> ManagerStatistics:
        """A snapshot of the manager's counters."""
        return snapshot(self._counters, self._registry, self._admission.rejections())

    # -- broadcast --------------------------------------------------------------

    async def broadcast(
        self,
        message: Any,
        filter: Callable[[ManagedSocket], bool] | None = None,
        *,
        on_full: OnFull = "wait",
    ) -> int:
        """Queue ``message`` on every open socket for which ``filter(sock)`` is true.

        Returns on how many sockets it was queued. The message is encoded once.
        Full send buffers are handled by ``on_full`` (see :mod:`trio_wsmgr`'s
        backpressure topic): by default the call waits for room at most
        ``slow_consumer_timeout`` in all, then closes the sockets still full
        with 1008.
        """
        check_on_full(on_full)
        outgoing = Outgoing(message)
        return await deliver(self._registry.select(filter), outgoing, on_full)

    def broadcast_nowait(
        self,
        message: Any,
        filter: Callable[[ManagedSocket], bool] | None = None,
        *,
        on_full: OnFull = "drop",
    ) -> int:
        """Like :meth:`broadcast` but never waits: full sockets are dropped or closed."""
        if on_full == "wait":
            raise ValueError("broadcast_nowait cannot wait: use on_full='drop' or 'close'")
        check_on_full(on_full)
        queued, _ = deliver_nowait(self._registry.select(filter), Outgoing(message), on_full)
        return queued

    # -- serving ------------------------------------------------------------------

    async def serve(
        self,
        handler: Handler,
        host: str | None,
        port: int,
        *,
        ssl_context: ssl.SSLContext | None = None,
        reuse_port: bool = False,
        task_status: trio.TaskStatus[Server] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Listen on ``host:port`` and run ``handler(sock)`` for every accepted socket.

        Use with ``server = await nursery.start(manager.serve, handler, host, port)``.
        Returns after :meth:`close` once every connection has ended; cancelling
        it closes every connection with 1001 (bounded by ``close_timeout``).
        ``reuse_port=True`` sets SO_REUSEPORT, so several processes (each
        with ``reuse_port=True``) can serve one port; :class:`OSError` where
        the platform lacks it.

        ``ssl_context`` (a server-side :class:`ssl.SSLContext` with its
        certificate loaded) serves ``wss://``: the TLS handshake counts against
        ``connection_timeout``, and a peer that fails it takes nothing else down
        (see :doc:`/howto/tls`).
        """
        if ssl_context is not None and not isinstance(ssl_context, ssl.SSLContext):
            raise TypeError(f"ssl_context must be an ssl.SSLContext or None, not {ssl_context!r}")
        if self._closing:
            raise RuntimeError("this manager is closed")
        listeners = await open_listeners(port, host=host, reuse_port=reuse_port)
        served: list[trio.abc.Listener[Any]] = list(listeners)
        if ssl_context is not None:
            served = [trio.SSLListener(ln, ssl_context, https_compatible=True) for ln in listeners]
        async with trio.open_nursery() as connections:
            with trio.CancelScope() as accepting:
                self._listener_scopes.add(accepting)
                if self._closing:  # close() ran while the listeners were being opened
                    accepting.cancel()
                try:
                    async with trio.open_nursery() as acceptors:
                        for listener in served:
                            acceptors.start_soon(
                                accept_loop, listener, connections, handler, self.serve_stream
                            )
                        task_status.started(Server(tuple(listeners)))
                finally:
                    self._listener_scopes.discard(accepting)
            for listener in served:
                await trio.aclose_forcefully(listener)
            connections.cancel_scope.deadline = min(
                connections.cancel_scope.deadline, trio.current_time() + 2 * self.close_timeout
            )

    async def serve_stream(
        self, handler: Handler, stream: trio.abc.Stream, *, initial_data: bytes = b""
    ) -> None:
        """Run one connection over ``stream`` (a TCP stream or any trio Stream).

        The whole life of a connection: handshake within ``connection_timeout``,
        admission, the handler, and a bounded close. Never raises for the
        peer's faults; a crashing handler is logged and closes with 1011.
        ``initial_data`` is what a front (an HTTP router) already read from the
        stream: it is read again first, so the raw stream can be passed as is
        (keeping ``sock.remote`` and the fast write path).
        """
        buffered = BufferedStream(stream, unread=initial_data)
        scope: trio.CancelScope | None = None
        try:
            # The nursery's scope is the connection's scope (close() cancels it):
            # one cancel scope per connection, not two. The handler runs right
            # here, not in a helper coroutine (the handshake's have ended by
            # then): every coroutine an idle connection waits in is kept alive
            # (and scanned by the garbage collector) for the connection's whole life.
            with unwrap_single_group():
                async with trio.open_nursery() as nursery:
                    scope = nursery.cancel_scope
                    self._connection_scopes.add(scope)
                    admitted = await self._admission.handshake(buffered)
                    if admitted is None:  # refused, or out of time
                        return
                    sock, rest = admitted
                    del admitted
                    buffered.attach(nursery)
                    sock._nursery = nursery
                    sock._reading = True  # from now on only the reader reads (close() waits)
                    nursery.start_soon(sock._read_loop, rest)
                    del rest
                    failure: BaseException | None = None
                    try:
                        await handler(sock)
                    except trio.Cancelled as exc:
                        failure = exc
                        raise
                    except Exception as exc:
                        failure = exc
                        if not _ended_on_own_close(exc, sock):
                            logger.exception("handler for %r failed", sock)
                    finally:
                        code, reason = self._end_code(failure, sock, scope)
                        await self._final_close(sock, code, reason, scope)
                    scope.cancel()
        except Exception:  # a bug must cost this connection only, never serve() and the others
            logger.exception("connection over %r failed", stream)
        finally:
            with trio.CancelScope(shield=True):
                await buffered.aclose()
            if scope is not None:
                self._forget_scope(scope)

    def _end_code(
        self, failure: BaseException | None, sock: ManagedSocket, scope: trio.CancelScope
    ) -> tuple[int, str]:
        """The close code a connection ends with; one rule for ``serve`` and ``accept``.

        Shutting down (``manager.close()``, a cancelled ``serve`` or connection):
        the manager's close code (1001 by default). The handler (or ``accept``
        block) returned, or ended on its own socket's
        :class:`~trio_wsmgr.ConnectionClosed`: 1000. Any other error: 1011.
        """
        if self._closing or scope.cancel_called or isinstance(failure, trio.Cancelled):
            return self._close_code
        if failure is None or _ended_on_own_close(failure, sock):
            return CloseCode.NORMAL, ""
        return CloseCode.INTERNAL_ERROR, "internal error"

    async def _final_close(
        self, sock: ManagedSocket, code: int, reason: str, scope: trio.CancelScope
    ) -> None:
        """The bounded close every connection ends with, even when cancelled.

        With the reader cancelled too, ``sock.close`` reads the peer's close
        reply itself. ``manager.close()`` cancels ``scope`` once its grace is
        over: then there is no grace left here.
        """
        # Not scope.cancel_called: a nursery also cancels itself when a child ends in Cancelled.
        grace = 0.0 if self._grace_over else self.close_timeout
        if not isinstance(sock, AcceptedSocket):
            sock._stream.detach()  # the shielded close writes (and reads) for itself
        with trio.CancelScope(shield=True) as shield:
            shield.deadline = trio.current_time() + grace
            await sock.close(code, reason)
        if not sock._ended:
            sock._stream.abort()

    # -- accept (for users of trio-websocket's own server) -------------------------

    @asynccontextmanager
    async def accept(
        self,
        request: trio_websocket.WebSocketRequest,
        *,
        user_id: str | _Unset | None = UNSET,
        subprotocol: str | _Unset | None = UNSET,
        extra_headers: Sequence[tuple[bytes, bytes]] = (),
        metadata: Mapping[str, Any] | None = None,
    ) -> AsyncIterator[ManagedSocket]:
        """Admit ``request`` and manage the socket for the duration of the block.

        ``async with manager.accept(request) as sock:`` authenticates, checks the
        limits and origin, negotiates subprotocol and compression, accepts and
        registers; heartbeats and the send loop run until the block ends, then
        the socket is closed (1000, or 1011 if the block raised). A refused
        request gets its HTTP answer and :class:`~trio_wsmgr.RequestRejected` is
        raised. ``user_id`` / ``subprotocol`` override authentication and
        negotiation; ``extra_headers`` go into the 101 response.

        A handshake that does not finish within ``connection_timeout`` gets a
        real 408 and raises :class:`~trio_wsmgr.RequestRejected` (408); if the
        answer was already being written, the connection is dropped and
        :class:`~trio_wsmgr.ConnectionClosed` (1006) is raised instead.
        """
        conn = _border.connection_of(request)
        _border.set_max_message_size(conn, int(self.max_message_size))
        buffered = _border.adopt_stream(conn, BufferedStream, BufferedStream)
        heartbeat = HeartbeatHost()
        with self._connection_scope() as scope, unwrap_single_group():
            async with background_nursery(heartbeat) as nursery:
                buffered.attach(nursery)
                sock = await self._admission.admit_request(
                    TwsAnswer(self._context, request, buffered, heartbeat, nursery),
                    tws_request_info(request, remote_of(buffered.inner)),
                    buffered,
                    user_id=user_id,
                    subprotocol=subprotocol,
                    extra_headers=list(extra_headers),
                    metadata=metadata,
                )
                failure: BaseException | None = None
                try:
                    yield sock
                except BaseException as exc:
                    failure = exc
                    raise
                finally:
                    code, reason = self._end_code(failure, sock, scope)
                    await self._final_close(sock, code, reason, scope)

    # -- ASGI (hypercorn, Quart-Trio, ...) ---------------------------------------------

    def asgi_app(self, handler: Handler, *, fallback: ASGIApp | None = None) -> ASGIApp:
        """An ASGI 3 application that runs ``handler(sock)`` for every WebSocket.

        ``websocket`` scopes are admitted by this manager (authentication, origin,
        limits, subprotocols, the user index, broadcast, slow consumers, close
        codes) exactly as with :meth:`serve`; ``http`` scopes go to ``fallback``
        (another ASGI app) or get 404; ``lifespan`` goes to ``fallback``, or is
        answered here, calling :meth:`close` at shutdown. See :doc:`/howto/asgi`
        for what an ASGI server does differently (pings, compression, shutdown).
        """
        from ..asgi._bridge import make_app

        return make_app(self, handler, fallback)

    def accept_asgi(
        self, scope: Scope, receive: ASGIReceive, send: ASGISend
    ) -> AbstractAsyncContextManager[ManagedSocket]:
        """``async with manager.accept_asgi(scope, receive, send) as sock:`` in a route.

        Admits the ASGI ``websocket`` connection (raising
        :class:`~trio_wsmgr.RequestRejected` after the client got its refusal) and
        manages the socket for the block; it closes with 1000 when the block
        ends, 1011 if it raised, and the manager's close code (1001) if it was
        cancelled (server shutdown).
        """
        from ..asgi._bridge import accept_bridge

        return accept_bridge(self, scope, receive, send)

    # -- shutdown -------------------------------------------------------------------

    async def close(self, code: int = CloseCode.GOING_AWAY, reason: str = "") -> None:
        """Stop accepting and close every socket with ``code``/``reason``.

        New handshakes get 503 and ``serve`` stops listening. Every socket gets
        its close frame at once, concurrently; after ``close_timeout`` whatever
        has not finished its closing handshake is cancelled and dropped. Returns
        when every connection task has ended. Safe to call more than once.
        """
        if not self._closing:
            self._closing = True
            self._close_code = (int(code), reason)
        for scope in list(self._listener_scopes):
            scope.cancel()
        for sock in self._registry:
            sock.close_nowait(*self._close_code)
        with trio.move_on_after(self.close_timeout):
            await self._wait_no_connections()
        self._grace_over = True  # connections cancelled from here on get no more grace
        for scope in list(self._connection_scopes):
            scope.cancel()
        await self._wait_no_connections()

    async def _wait_no_connections(self) -> None:
        while self._connection_scopes:
            await self._idle.park()

    async def __aenter__(self) -> WebSocketManager:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    @contextmanager
    def _connection_scope(self) -> Iterator[trio.CancelScope]:
        with trio.CancelScope() as scope:
            self._connection_scopes.add(scope)
            try:
                yield scope
            finally:
                self._forget_scope(scope)

    def _forget_scope(self, scope: trio.CancelScope) -> None:
        self._connection_scopes.discard(scope)
        if not self._connection_scopes:
            self._idle.unpark_all()

    def _shutdown(self) -> tuple[int, str] | None:
        """For admission: None while serving, else the code and reason sockets close with."""
        return self._close_code if self._closing else None


def _ended_on_own_close(failure: BaseException, sock: ManagedSocket) -> bool:
    """A handler ending on its own socket's close: how handlers usually end, not a bug.

    ConnectionClosed while the socket is still open came from some other
    connection the handler used: that is its bug.
    """
    return isinstance(failure, ConnectionClosed) and sock.closed
