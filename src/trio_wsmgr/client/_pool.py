"""WebSocketPool: a client-side pool of WebSocket connections to one backend.

Two layers. ``_health.PoolCore`` is the bookkeeping -- slot states, the idle stack (last used
first), the FIFO of waiting acquirers, connect planning, idle reaping, the health state
machine -- as plain synchronous code: it decides, and leaves lists of connects to start and
connections to close. :class:`WebSocketPool`, here, does that I/O in the pool's nursery and
does the waiting.

Words used exactly:

* **active**: checked out by a task (from ``acquire()`` until ``release()``), including while
  ``acquire()`` validates it and after its socket died under its owner;
* **idle**: open, in the pool, ready to be handed out;
* **connecting** / **closing**: a connect or a close handshake in flight.

Each of those holds one token of a :class:`trio.CapacityLimiter` of ``max_connections``
tokens, taken before a connect starts and given back once the socket is closed *and* no task
holds it, so ``active + idle + connecting + closing <= max_connections`` at every moment.
"""

from __future__ import annotations

import random
import ssl
from collections.abc import Generator
from types import TracebackType
from typing import Any

import attrs
import trio
import trio_websocket

from .. import _border
from .._backoff import Backoff
from .._config import CloseCode
from .._exceptions import ConnectionClosed, PoolClosed, PoolTimeout
from .._util import unwrap_single_group
from .._validators import count, instance_of, seconds
from ..protocol._compression import Compression, PerMessageDeflate
from ._connection import PooledConnection
from ._health import (
    Connection,
    HealthStatus,
    HealthTracker,
    PoolCore,
    PoolStatistics,
    Slot,
    SlotState,
    Waiter,
)
from ._target import Target, headers_option, protocols_option, url_option

#: the errors that mean "this connection is broken" when they leave ``async with acquire()``
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    trio_websocket.ConnectionClosed,
    trio_websocket.HandshakeError,
    ConnectionClosed,
    trio.BrokenResourceError,
    trio.ClosedResourceError,
    OSError,
)
#: close codes that are not worth reporting as errors when the backend closes a connection
_CLEAN_CLOSE = (CloseCode.NORMAL, CloseCode.GOING_AWAY)


# -- options ----------------------------------------------------------------------------------


def _is_connection_error(exc: BaseException) -> bool:
    """Whether ``exc`` leaves a connection broken or in an unknown state."""
    if isinstance(exc, BaseExceptionGroup):
        return any(_is_connection_error(e) for e in exc.exceptions)
    return isinstance(exc, CONNECTION_ERRORS) or not isinstance(exc, Exception)


def _split_failure(exc: BaseException) -> tuple[Exception | None, BaseException | None]:
    """Split what a connection task raised into (its first error, what must propagate)."""
    if isinstance(exc, BaseExceptionGroup):
        errors, rest = exc.split(Exception)
        first: BaseException | None = errors
        while isinstance(first, BaseExceptionGroup):
            first = first.exceptions[0]
        assert first is None or isinstance(first, Exception)
        return first, rest
    if isinstance(exc, Exception):
        return exc, None
    return None, exc


def _live_connection(slot: Slot) -> Connection | None:
    """The slot's connection, unless it closed or died while on its way to an acquirer."""
    conn = slot.conn
    return None if slot.dead or conn is None or conn.closed is not None else conn


def _task_alive(task: object) -> bool:
    return not isinstance(task, trio.lowlevel.Task) or task.coro.cr_frame is not None


# -- the pool ---------------------------------------------------------------------------------


@attrs.define(eq=False, repr=False)
class WebSocketPool:
    """A pool of client WebSocket connections to ``url``, kept warm and checked before use.

    Use it as ``async with pool:`` -- its nursery runs the connections' reader tasks, the
    warm-up, idle reaping and health checks -- and take connections with ``async with
    pool.acquire() as conn:`` (or ``conn = await pool.acquire()`` ... ``await
    pool.release(conn)``). See :doc:`/howto/pooling` for a walk-through.

    Leaving ``async with pool`` fails waiting acquirers with :exc:`~trio_wsmgr.PoolClosed`,
    closes every connection with 1000 (waiting up to ``close_timeout``) and stops every task
    the pool started. What the body raised comes out unchanged, not wrapped in an
    ``ExceptionGroup``; connect errors never leave the pool, they show in
    :meth:`get_health_status` and as the ``__cause__`` of :exc:`~trio_wsmgr.PoolTimeout`.
    """

    #: ``ws://`` or ``wss://`` URL of the backend
    url: str = attrs.field(validator=url_option)
    #: hard cap on connections: active + idle + connecting + closing
    max_connections: int = attrs.field(default=10, kw_only=True, validator=count(1))
    #: opened when the pool starts, and re-opened while the backend is up
    min_connections: int = attrs.field(default=1, kw_only=True, validator=count(0))
    #: ``acquire()`` raises :exc:`PoolTimeout` after this many seconds
    acquire_timeout: float = attrs.field(default=10.0, kw_only=True, validator=seconds)
    #: idle connections above ``min_connections`` are closed after this many idle seconds
    idle_timeout: float = attrs.field(default=300.0, kw_only=True, validator=seconds)
    #: ping (and wait for the pong) before handing a connection out
    validate_on_checkout: bool = attrs.field(
        default=True, kw_only=True, validator=instance_of(bool, "a bool")
    )
    #: TCP + TLS + WebSocket handshake, per attempt
    connect_timeout: float = attrs.field(default=10.0, kw_only=True, validator=seconds)
    #: how long a validation or health ping waits for its pong
    ping_timeout: float = attrs.field(default=5.0, kw_only=True, validator=seconds)
    #: how long a close handshake may take before the TCP connection is just closed
    close_timeout: float = attrs.field(default=5.0, kw_only=True, validator=seconds)
    #: idle connections are pinged when idle this long (RTT figures, dead peer detection)
    health_check_interval: float = attrs.field(default=30.0, kw_only=True, validator=seconds)
    #: consecutive connect failures that turn the health state to DOWN
    failure_threshold: int = attrs.field(default=3, kw_only=True, validator=count(1))
    #: delays between reconnect attempts after failures
    backoff: Backoff = attrs.field(
        factory=Backoff, kw_only=True, validator=instance_of(Backoff, "a Backoff(...)")
    )
    #: TLS settings for ``wss://`` (``None``: the system's default context)
    ssl_context: ssl.SSLContext | None = attrs.field(
        default=None,
        kw_only=True,
        validator=attrs.validators.optional(instance_of(ssl.SSLContext, "an ssl.SSLContext")),
    )
    #: sent with every handshake: a mapping or (name, value) pairs, str or bytes
    extra_headers: tuple[tuple[bytes, bytes], ...] = attrs.field(
        default=(), kw_only=True, converter=headers_option
    )
    #: offered in every handshake, in order of preference
    subprotocols: tuple[str, ...] = attrs.field(
        default=(), kw_only=True, converter=protocols_option
    )
    #: larger incoming messages close the connection with 1009
    max_message_size: int = attrs.field(default=1 << 20, kw_only=True, validator=count(1))
    #: received messages buffered per connection before reading pauses
    message_queue_size: int = attrs.field(default=1, kw_only=True, validator=count(0))
    #: permessage-deflate offered in every handshake (``None``: no compression)
    compression: Compression | None = attrs.field(
        default=None,
        kw_only=True,
        validator=attrs.validators.optional(instance_of(Compression, "a Compression(...)")),
    )
    #: the random source of the back-off jitter
    rng: random.Random = attrs.field(
        factory=random.Random,
        kw_only=True,
        validator=instance_of(random.Random, "a random.Random"),
    )

    _core: PoolCore = attrs.field(init=False)
    _target: Target = attrs.field(init=False)
    _nursery: trio.Nursery | None = attrs.field(init=False, default=None)
    _nursery_manager: Any = attrs.field(init=False, default=None)
    _kick: trio.Event = attrs.field(init=False, factory=trio.Event)
    _warm: trio.Event = attrs.field(init=False, factory=trio.Event)
    _all_closed: trio.Event = attrs.field(init=False, factory=trio.Event)
    _tasks: int = attrs.field(init=False, default=0)

    def __attrs_post_init__(self) -> None:
        if self.min_connections > self.max_connections:
            raise ValueError(
                f"min_connections ({self.min_connections}) must be <= "
                f"max_connections ({self.max_connections})"
            )
        if self.ssl_context is not None and self.url.startswith("ws:"):
            raise ValueError("ssl_context is only for wss:// URLs")
        self._target = Target.parse(self.url, self.ssl_context)
        tracker = HealthTracker(self.failure_threshold, self.backoff, self.rng)
        self._core = PoolCore(
            max_connections=self.max_connections,
            min_connections=self.min_connections,
            idle_timeout=self.idle_timeout,
            check_interval=self.health_check_interval,
            health=tracker,
            clock=trio.current_time,
            alive=_task_alive,
        )

    def __repr__(self) -> str:
        c = self._core
        return (
            f"<WebSocketPool {self.url} active={c.counts[SlotState.ACTIVE]}"
            f" idle={c.counts[SlotState.IDLE]} waiting={len(c.waiters)}"
            f" max={self.max_connections} {c.health.state.value}>"
        )

    # -- lifetime -----------------------------------------------------------------------------

    async def __aenter__(self) -> WebSocketPool:
        if self._nursery_manager is not None:
            raise RuntimeError("a WebSocketPool can be entered only once")
        self._nursery_manager = trio.open_nursery()
        self._nursery = await self._nursery_manager.__aenter__()
        try:
            self._nursery.start_soon(self._maintain, name=f"{self!r} maintenance")
            self._core.start()
            self._flush()
            await self._warm.wait()  # the first min_connections attempts, failed or not
        except BaseException as exc:
            await self.__aexit__(type(exc), exc, exc.__traceback__)
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        assert self._nursery is not None
        self._core.close()
        self._flush()
        with trio.move_on_after(self.close_timeout, shield=True):
            await self._all_closed.wait()
        self._nursery.cancel_scope.cancel()
        with unwrap_single_group():
            return bool(await self._nursery_manager.__aexit__(exc_type, exc, tb))

    # -- the spec's methods -------------------------------------------------------------------

    def acquire(self) -> Acquisition:
        """Take a connection: ``async with pool.acquire() as conn:`` or ``await pool.acquire()``.

        Serves the last used idle connection, else opens one while under ``max_connections``,
        else waits its turn (first come, first served). With ``validate_on_checkout`` a
        connection that does not answer a ping within ``ping_timeout`` is discarded and the
        next one tried. Raises :exc:`PoolTimeout` after ``acquire_timeout`` (chained from the
        last connect or ping error seen meanwhile), :exc:`PoolClosed` once the pool closes.

        The ``async with`` form releases on exit, and discards the connection instead when the
        block raised a connection error (:data:`CONNECTION_ERRORS`) or was cancelled: a
        request abandoned half way leaves its reply on the wire for the next user.
        """
        return Acquisition(self)

    async def release(self, conn: Connection, *, discard: bool = False) -> None:
        """Give ``conn`` back; it is closed instead if ``discard`` or in an unknown state.

        Unknown state: closed or closing, a failed health ping while checked out, or received
        messages left unread. Releasing always happens, even when cancelled.
        """
        self.release_nowait(conn, discard=discard)
        await trio.lowlevel.cancel_shielded_checkpoint()

    def release_nowait(self, conn: Connection, *, discard: bool = False) -> None:
        """:meth:`release`, without the schedule point."""
        slot = self._core.by_conn.get(conn)
        if slot is None:
            if self._core.closed:
                return
            raise ValueError(f"{conn} is not a connection of this pool")
        reusable = not discard and conn.closed is None and _border.pending_messages(conn) == 0
        self._core.checkin(slot, reusable=reusable)
        self._flush()

    def get_active_count(self) -> int:
        """Connections checked out by tasks (between ``acquire()`` and ``release()``)."""
        return self._core.counts[SlotState.ACTIVE]

    def get_idle_count(self) -> int:
        """Open connections in the pool, ready to be handed out."""
        return self._core.counts[SlotState.IDLE]

    def get_health_status(self) -> HealthStatus:
        """A frozen snapshot of the backend's health; see :class:`HealthStatus`."""
        c = self._core
        return c.health.status(
            active=c.counts[SlotState.ACTIVE], idle=c.counts[SlotState.IDLE], waiting=len(c.waiters)
        )

    def statistics(self) -> PoolStatistics:
        """A frozen snapshot of the counts and lifetime counters."""
        return self._core.statistics()

    # -- acquire ------------------------------------------------------------------------------

    async def _acquire(self) -> Connection:
        if self._nursery is None:
            raise RuntimeError("use `async with pool:` before acquiring connections")
        core = self._core
        await trio.lowlevel.checkpoint_if_cancelled()
        owner = trio.lowlevel.current_task()
        got = core.checkout(owner)
        if isinstance(got, Slot) and not self.validate_on_checkout:
            conn = _live_connection(got)
            if conn is not None:
                # The fast path: an idle hit decides nothing that needs I/O, nor a timeout.
                await trio.lowlevel.cancel_shielded_checkpoint()
                return conn
        started = trio.current_time()
        with trio.move_on_after(self.acquire_timeout):
            while True:
                self._flush()
                slot = await self._wait(got) if isinstance(got, Waiter) else got
                conn = _live_connection(slot)
                if conn is None:
                    core.checkin(slot, reusable=False)
                elif not self.validate_on_checkout:
                    await trio.lowlevel.cancel_shielded_checkpoint()
                    return conn
                elif await self._validate(slot):
                    return conn
                got = core.checkout(owner, front=True)  # it keeps its turn
        health = core.health
        recent = health.last_error_at is not None and health.last_error_at >= started
        raise PoolTimeout(
            f"no connection to {self.url} within acquire_timeout={self.acquire_timeout}s"
            f" ({core.counts[SlotState.ACTIVE]} of max {self.max_connections} active,"
            f" backend {health.state.value})"
        ) from (health.last_error if recent else None)

    async def _wait(self, waiter: Waiter) -> Slot:
        try:
            slot = await waiter.receive.receive()
        except BaseException:
            self._core.cancel_wait(waiter)
            self._flush()
            raise
        if slot is None or slot.state is not SlotState.ACTIVE:
            raise PoolClosed("the pool closed while waiting for a connection")
        return slot

    async def _validate(self, slot: Slot) -> bool:
        try:
            error, rtt = await self._ping(slot)
        except BaseException:
            self._core.checkin(slot, reusable=False)  # cancelled mid-ping: state unknown
            self._flush()
            raise
        self._core.pinged(slot, error, rtt)
        if error is not None:
            self._core.checkin(slot, reusable=False)
        return error is None

    async def _ping(self, slot: Slot) -> tuple[BaseException | None, float]:
        """Ping and wait for the pong: (None, round trip) or (the error, 0.0)."""
        conn = slot.conn
        assert conn is not None
        start = trio.current_time()
        with trio.move_on_after(self.ping_timeout) as scope:
            slot.pings.add(scope)
            try:
                await conn.ping()
            except ConnectionClosed as exc:
                return exc, 0.0
            finally:
                slot.pings.discard(scope)
            return None, trio.current_time() - start
        if conn.closed is not None:
            return ConnectionClosed(conn.closed.code, conn.closed.reason or ""), 0.0
        return TimeoutError(f"no pong within ping_timeout={self.ping_timeout}s"), 0.0

    # -- background ---------------------------------------------------------------------------

    def _flush(self) -> None:
        """Do the I/O the core decided on: start connects, ask connections to close."""
        core = self._core
        nursery = self._nursery
        assert nursery is not None
        while core.to_start:
            slot = core.to_start.pop(0)
            self._tasks += 1
            nursery.start_soon(self._run_slot, slot, name=f"{self.url} connection {slot.id}")
        while core.to_close:
            slot = core.to_close.pop(0)
            slot.close_requested.set()
            if slot.conn is None:
                slot.scope.cancel()
        if core.needs_wake:
            core.needs_wake = False
            self._kick.set()
        if not self._warm.is_set() and core.counts[SlotState.CONNECTING] == 0:
            self._warm.set()
        if core.closed and self._tasks == 0:
            self._all_closed.set()

    async def _maintain(self) -> None:
        """Reap idle connections, ping them, reclaim leaks, reconnect after back-off."""
        nursery = self._nursery
        assert nursery is not None
        while True:
            for slot in self._core.tick():
                nursery.start_soon(self._health_check, slot)
            self._flush()
            with trio.move_on_at(self._core.wake_at):
                await self._kick.wait()
            self._kick = trio.Event()

    async def _health_check(self, slot: Slot) -> None:
        error, rtt = await self._ping(slot)
        self._core.pinged(slot, error, rtt)
        self._flush()

    async def _run_slot(self, slot: Slot) -> None:
        """One connection's task: connect, serve until it ends or is closed, report."""
        error: BaseException | None = None
        try:
            with slot.scope:
                try:
                    await self._connection(slot)
                except BaseException as exc:
                    error, rest = _split_failure(exc)
                    if rest is exc:
                        raise
                    if rest is not None:
                        raise rest from None
        finally:
            self._tasks -= 1
            for scope in slot.pings:
                scope.cancel()
            conn = slot.conn
            closed = None if conn is None else conn.closed
            if error is None and closed is not None and closed.code not in _CLEAN_CLOSE:
                error = ConnectionClosed(closed.code, closed.reason or "")
            self._core.ended(slot, error)
            self._flush()

    async def _connection(self, slot: Slot) -> None:
        # We open the TCP (TLS) stream ourselves so that we can close it: trio-websocket's
        # client leaves its stream open when the server is the one that closes.
        stream: trio.SocketStream | trio.SSLStream[trio.SocketStream] | None = None
        async with trio.open_nursery() as closer:
            try:
                # The reader task trio-websocket starts lives in this nursery, so leaving
                # it means the connection is over.
                async with trio.open_nursery() as reader:
                    try:
                        with trio.fail_after(self.connect_timeout):
                            stream = await self._open_stream()
                            conn = await _border.wrap_client_stream(
                                reader,
                                stream,
                                self._target.host_header,
                                self._target.resource,
                                connection_class=PooledConnection,
                                subprotocols=self.subprotocols,
                                extra_headers=list(self.extra_headers),
                                extensions=self._extensions(),
                                message_queue_size=self.message_queue_size,
                                max_message_size=self.max_message_size,
                            )
                    except trio.TooSlowError as exc:
                        raise TimeoutError(
                            f"connecting to {self.url} took longer than"
                            f" connect_timeout={self.connect_timeout}s"
                        ) from exc
                    closer.start_soon(self._close_when_asked, slot, conn)
                    self._core.connected(slot, conn)
                    self._flush()
            finally:
                closer.cancel_scope.cancel()
                if stream is not None:
                    await trio.aclose_forcefully(stream)

    def _extensions(self) -> list[PerMessageDeflate]:
        if self.compression is None:
            return []
        return [self.compression.extension(max_message_size=self.max_message_size)]

    async def _open_stream(self) -> trio.SocketStream | trio.SSLStream[trio.SocketStream]:
        target = self._target
        if target.ssl_context is None:
            return await trio.open_tcp_stream(target.host, target.port)
        stream = await trio.open_ssl_over_tcp_stream(
            target.host, target.port, ssl_context=target.ssl_context, https_compatible=True
        )
        # Shake hands here: left to trio-websocket's reader task, a TLS failure ends that
        # task silently and the connect just waits for connect_timeout.
        try:
            await stream.do_handshake()
        except BaseException as exc:
            await trio.aclose_forcefully(stream)
            if isinstance(exc, trio.BrokenResourceError):
                raise ConnectionError(
                    f"TLS handshake with {target.host}:{target.port} failed: {exc.__cause__}"
                ) from exc
            raise
        return stream

    async def _close_when_asked(self, slot: Slot, conn: Connection) -> None:
        await slot.close_requested.wait()
        with trio.move_on_after(self.close_timeout):
            await conn.aclose(CloseCode.NORMAL)
        slot.scope.cancel()


class Acquisition:
    """What ``pool.acquire()`` returns: await it, or use it as an async context manager.

    ``conn = await pool.acquire()`` takes a connection that you give back with
    :meth:`WebSocketPool.release`; ``async with pool.acquire() as conn:`` gives it
    back when the block ends (discarding it if the block raised a connection
    error or was cancelled). Use each one once.
    """

    __slots__ = ("_conn", "_pool")

    def __init__(self, pool: WebSocketPool) -> None:
        self._pool = pool
        self._conn: Connection | None = None

    def __await__(self) -> Generator[Any, None, Connection]:
        return self._pool._acquire().__await__()

    async def __aenter__(self) -> Connection:
        self._conn = await self._pool._acquire()
        return self._conn

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._conn is not None
        conn, self._conn = self._conn, None
        await self._pool.release(conn, discard=exc is not None and _is_connection_error(exc))
