"""Sockets from ``manager.accept(request)``: the same ManagedSocket, over trio-websocket.

Users of trio-websocket's own server hand the manager a
:class:`trio_websocket.WebSocketRequest`; trio-websocket's reader task already
owns that stream, so these sockets receive and close through its connection
(everything that needs its internals goes through :mod:`trio_wsmgr._border`),
and their heartbeat runs in :class:`~._heartbeat.HeartbeatHost`. Sending,
fan-out, statistics and the registry are the shared ManagedSocket code.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager, suppress
from typing import Any, NoReturn

import trio
import trio_websocket

from .. import _border
from .._config import CloseCode
from .._exceptions import ConnectionClosed, RequestRejected
from ..protocol._compression import PerMessageDeflate
from ..protocol._message import DeflateCompressor, FrameCompressor
from ._auth import HandshakeRequest, parse_query
from ._context import SocketContext
from ._heartbeat import Action, HeartbeatPolicy, ping_payload
from ._socket import ManagedSocket
from ._transport import BufferedStream


class AcceptedSocket(ManagedSocket):
    """A :class:`ManagedSocket` whose wire is a trio-websocket connection."""

    __slots__ = ("_conn", "_host")

    def __init__(
        self,
        *,
        conn: trio_websocket.WebSocketConnection,
        host: HeartbeatHost,
        context: SocketContext,
        stream: BufferedStream,
        user_id: str | None,
        subprotocol: str | None,
        path: str,
        headers: tuple[tuple[str, str], ...],
        remote: tuple[str, int] | None,
        metadata: dict[str, Any],
        compressor: FrameCompressor | None,
    ) -> None:
        self._conn = conn
        self._host = host
        super().__init__(
            context=context,
            stream=stream,
            user_id=user_id,
            subprotocol=subprotocol,
            path=path,
            headers=headers,
            remote=remote,
            metadata=metadata,
            compressor=compressor,
        )
        stream.on_close_frame = self._close_frame_went_out

    @property
    def closed(self) -> bool:
        return self._closing or self._stream.closed or self._conn.closed is not None

    def _backlog(self) -> bool:
        """Whether the application leaves ``max_incoming_queue`` messages unread."""
        return _border.pending_messages(self._conn) >= self._context.max_incoming_queue

    async def _next_message(self) -> str | bytes:
        try:
            message: str | bytes = await self._conn.get_message()
        except trio_websocket.ConnectionClosed as exc:
            self._note_remote_close()
            raise ConnectionClosed(self.close_code, self.close_reason) from exc
        return message

    async def close(self, code: int = CloseCode.NORMAL, reason: str = "") -> None:
        if self._closing or self._stream.closed:
            with trio.move_on_after(self._context.close_timeout):
                await self.wait_closed()
            return
        self._start_close(code, reason)
        await self._close_started(code, reason)

    async def _close_started(self, code: int, reason: str) -> None:
        try:
            with trio.move_on_after(self._context.close_timeout):
                await self._conn.aclose(code, reason or None)
        finally:
            await self._stream.aclose()

    def close_nowait(
        self, code: int = CloseCode.NORMAL, reason: str = "", *, discard_pending: bool = False
    ) -> None:
        if self._closing or self._stream.closed:
            return
        if discard_pending:
            self._stream.discard_queued()
        if self._nursery is None:  # no connection task to run a graceful close in
            self._start_close(code, reason)
            self._stream.abort()
            return
        nursery = self._nursery
        self._start_close(code, reason)
        nursery.start_soon(self._close_started, code, reason)

    async def abort(self, code: int, reason: str = "") -> None:
        if self._stream.closed:
            return
        self._start_close(code, reason)
        self._stream.discard_queued()
        _border.send_close_nowait(self._conn, self._stream, code, reason)
        await self._stream.aclose()

    def _start_close(self, code: int, reason: str) -> None:
        self._closing = True
        self._context.unregister(self)
        if self.close_code is None:
            self.close_code = int(code)
            self.close_reason = reason
        self._close_frame_went_out()

    def _close_frame_went_out(self) -> None:
        """A close started (ours, or trio-websocket's reply): the close watch starts."""
        self._policy.close_started(trio.current_time())
        self._host.reschedule()

    def _note_remote_close(self) -> None:
        reason = self._conn.closed
        if self.close_code is None and reason is not None:
            self.close_code = reason.code
            self.close_reason = reason.reason or ""

    def _on_transport_close(self) -> None:
        _border.send_failure_close_nowait(self._conn, self._stream)
        super()._on_transport_close()


class TwsAnswer:
    """Answers a trio-websocket request (``manager.accept``), through the border."""

    __slots__ = ("_buffered", "_context", "_heartbeat", "_nursery", "_request")

    def __init__(
        self,
        context: SocketContext,
        request: trio_websocket.WebSocketRequest,
        buffered: BufferedStream,
        heartbeat: HeartbeatHost,
        nursery: trio.Nursery,
    ) -> None:
        self._context = context
        self._request = request
        self._buffered = buffered
        self._heartbeat = heartbeat
        self._nursery = nursery

    def extension_offers(self) -> Sequence[str]:
        return _border.extension_offers(self._request)

    async def reject(self, status: int, text: str) -> None:
        with suppress(trio_websocket.ConnectionClosed, trio.BrokenResourceError):
            await self._request.reject(
                status,
                extra_headers=[(b"content-type", b"text/plain; charset=utf-8")],
                body=text.encode(),
            )

    async def accept(
        self,
        *,
        user_id: str | None,
        subprotocol: str | None,
        extra_headers: list[tuple[bytes, bytes]],
        extension: PerMessageDeflate | None,
        path: str,
        headers: tuple[tuple[str, str], ...],
        remote: tuple[str, int] | None,
        metadata: dict[str, Any],
    ) -> ManagedSocket:
        conn = await _border.accept(
            self._request,
            subprotocol=subprotocol,
            extra_headers=extra_headers,
            extensions=[extension] if extension is not None else [],
        )
        sock = AcceptedSocket(
            conn=conn,
            host=self._heartbeat,
            context=self._context,
            stream=self._buffered,
            user_id=user_id,
            subprotocol=subprotocol,
            path=path,
            headers=headers,
            remote=remote,
            metadata=metadata,
            compressor=(
                DeflateCompressor(extension)
                if extension is not None and extension.enabled()
                else None
            ),
        )
        sock._nursery = self._nursery
        self._heartbeat.start(sock, sock._policy)
        return sock

    async def time_out(self, close_timeout: float) -> NoReturn:
        """The handshake ran out of ``connection_timeout``: answer 408 if we can.

        Nothing answered the request yet (a slow authenticator, the usual case):
        the peer gets a real 408 (within ``close_timeout``) and
        :class:`RequestRejected` (408) is raised. An answer was already on its
        way (the peer stopped reading while we wrote it): the connection is
        dropped and :class:`ConnectionClosed` (1006) raised, since no 408 can
        follow a status already sent.
        """
        if _border.handshake_unanswered(self._request):
            with trio.CancelScope(shield=True) as grace:
                grace.deadline = trio.current_time() + close_timeout
                with suppress(trio_websocket.ConnectionClosed, trio.BrokenResourceError):
                    await self._request.reject(
                        408,
                        extra_headers=[(b"content-type", b"text/plain; charset=utf-8")],
                        body=b"handshake timed out",
                    )
                raise RequestRejected(408, "handshake timed out")
        self._buffered.abort()
        raise ConnectionClosed(CloseCode.ABNORMAL, "handshake timed out")


def tws_request_info(
    request: trio_websocket.WebSocketRequest, remote: tuple[str, int] | None
) -> HandshakeRequest:
    """What an authenticator sees of a trio-websocket request (``Host`` included)."""
    headers = [
        (name.decode("latin-1").lower(), value.decode("latin-1")) for name, value in request.headers
    ]
    headers.append(("host", _border.handshake_host(request)))
    return HandshakeRequest(
        path=request.path,
        headers=tuple(headers),
        subprotocols=request.proposed_subprotocols,
        remote=remote,
        query=parse_query(request.path),
    )


class HeartbeatHost:
    """Runs an accepted socket's heartbeat in a task that exists anyway.

    Every ``manager.accept`` connection has a task whose job is to keep its
    shielded background nursery open. Once the socket is admitted its
    heartbeat and close watch run there rather than in a task of their own.
    """

    __slots__ = ("_policy", "_scope", "_sock", "_waiting")

    def __init__(self) -> None:
        self._sock: AcceptedSocket | None = None
        self._policy: HeartbeatPolicy | None = None
        self._waiting: trio.lowlevel.Task | None = None
        self._scope: trio.CancelScope | None = None

    def start(self, sock: AcceptedSocket, policy: HeartbeatPolicy) -> None:
        """Hand the admitted socket to the host task (see :meth:`run`)."""
        self._sock = sock
        self._policy = policy
        waiting, self._waiting = self._waiting, None
        if waiting is not None:
            trio.lowlevel.reschedule(waiting)

    def reschedule(self) -> None:
        """The policy's next wake-up changed (a pong, a close started): wait until then."""
        if self._scope is not None and self._policy is not None:
            self._scope.deadline = self._policy.next_wake()

    async def run(self) -> None:
        """The host task's body: wait for the socket, run its policy, then wait for cancel."""
        if self._sock is None:
            self._waiting = trio.lowlevel.current_task()
            await trio.lowlevel.wait_task_rescheduled(self._abort)
        sock, policy = self._sock, self._policy
        if sock is None or policy is None:
            await trio.sleep_forever()
            return
        while not sock._stream.closed:
            with trio.CancelScope(deadline=policy.next_wake()) as self._scope:
                await trio.lowlevel.wait_task_rescheduled(_never_rescheduled)
            self._scope = None
            if sock._stream.closed:
                break
            if sock.closed:
                policy.close_started(trio.current_time())
            action = policy.on_wake(trio.current_time(), backlog=sock._backlog())
            if action is Action.PING:
                if not _border.ping_nowait(sock._conn, sock._stream, ping_payload(), _Pong(self)):
                    policy.ping_not_sent()
            elif action is Action.TIMEOUT:
                sock._context.counters.heartbeat_timeouts += 1
                await sock.abort(CloseCode.INTERNAL_ERROR, "heartbeat timeout")
            elif action is Action.CLOSE_TIMEOUT:
                reason = sock._conn.closed
                code = reason.code if reason is not None else CloseCode.ABNORMAL
                await sock.abort(code, "close timed out")
        await trio.sleep_forever()

    def _abort(self, _: object) -> trio.lowlevel.Abort:
        self._waiting = None
        return trio.lowlevel.Abort.SUCCEEDED


def _never_rescheduled(_: object) -> trio.lowlevel.Abort:
    return trio.lowlevel.Abort.SUCCEEDED


class _Pong:
    """Registered with trio-websocket's reader, which calls :meth:`set` on the pong."""

    __slots__ = ("_host",)

    def __init__(self, host: HeartbeatHost) -> None:
        self._host = host

    def set(self) -> None:
        policy = self._host._policy
        if policy is not None:
            policy.pong(trio.current_time())
            self._host.reschedule()


@asynccontextmanager
async def background_nursery(heartbeat: HeartbeatHost) -> AsyncIterator[trio.Nursery]:
    """A nursery for one connection's loops, shielded from cancellation outside it.

    Cancelling ``serve`` (or a handler) must still close each socket cleanly: the
    reader has to keep running to see the peer's close reply. So the loops live
    in a shielded nursery that is cancelled explicitly when the block exits,
    after the connection's bounded final close. The task that keeps it open
    also runs the connection's heartbeat (one task fewer per connection).
    """
    async with trio.open_nursery() as outer:
        inner: trio.Nursery = await outer.start(_shielded_nursery, heartbeat)
        try:
            yield inner
        finally:
            inner.cancel_scope.cancel()


async def _shielded_nursery(
    heartbeat: HeartbeatHost, *, task_status: trio.TaskStatus[trio.Nursery]
) -> None:
    with trio.CancelScope(shield=True):
        async with trio.open_nursery() as nursery:
            task_status.started(nursery)
            await heartbeat.run()  # keeps the nursery open until it is cancelled
