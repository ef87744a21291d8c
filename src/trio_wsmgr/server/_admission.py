"""Admission: everything a handshake goes through before its socket exists.

The decisions are plain synchronous code over the registry, with no awaits
(testable without an event loop): the limits and the origin
(:meth:`Admission.check`), the per-user limit (:meth:`Admission.check_user`),
the subprotocol (:meth:`Admission.select_subprotocol`), what an
authenticator's refusal means (:func:`authenticator_refusal`), and the count
of refusals by cause. The async shell around them does the I/O and keeps the
handshake's deadline (``connection_timeout``): it reads ``serve``'s handshake
(:meth:`Admission.handshake`), calls the authenticator, answers the request
through an :class:`~._answer.Answer` (``serve``'s own wire, or
trio-websocket's for ``manager.accept``: :meth:`Admission.admit_request`) and
registers the new socket (:meth:`Admission.admit`).

The manager builds one :class:`Admission` from its options and hands it the
registry, the counters, the sockets' context and a callback that says whether
it is shutting down; admission knows nothing else of the manager.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import Any, Final, NoReturn, Protocol

import attrs
import trio

from .._exceptions import RequestRejected
from ..protocol._compression import Compression
from ..protocol._handshake import HandshakeError, parse_request, reject_response
from ._answer import (
    Answer,
    StreamAnswer,
    read_head,
    remote_of,
    request_info,
    write_and_close,
)
from ._auth import Authenticator, HandshakeRequest, maybe_await, redact_path
from ._context import Counters, SocketContext
from ._registry import Registry
from ._socket import ManagedSocket
from ._transport import BufferedStream

__all__ = ["UNSET", "Admission", "Refusal", "authenticator_refusal"]

logger = logging.getLogger("trio_wsmgr")


class _Unset:
    def __repr__(self) -> str:
        return "UNSET"


#: ``accept()``'s default for ``user_id``/``subprotocol``: authenticate, negotiate
UNSET: Final = _Unset()


@attrs.frozen
class Refusal:
    """A refused handshake: the HTTP status, the cause it is counted under, the text sent."""

    status: int
    #: the key in ``ManagerStatistics.rejected``
    cause: str
    text: str


CLOSING: Final = Refusal(503, "closing", "server is shutting down")
FULL: Final = Refusal(503, "full", "too many connections")
PER_ADDRESS: Final = Refusal(429, "per_address", "too many connections from this address")
PER_USER: Final = Refusal(429, "per_user", "too many connections for this user")
ORIGIN: Final = Refusal(403, "origin", "origin not allowed")
AUTH_REQUIRED: Final = Refusal(401, "unauthenticated", "authentication required")
AUTH_ERROR: Final = Refusal(500, "error", "authentication error")

#: handshake headers that must appear exactly once (RFC 6455 section 4.2.1)
_SINGLE_HEADERS = ("sec-websocket-key", "sec-websocket-version")


class TimedAnswer(Answer, Protocol):
    """An answer that can still say the handshake timed out (``accept``'s, see _accepted)."""

    async def time_out(self, close_timeout: float) -> NoReturn: ...


def authenticator_refusal(exc: RequestRejected) -> Refusal:
    """What an authenticator raising :class:`RequestRejected` refuses with (403: forbidden)."""
    cause = "forbidden" if exc.status_code == 403 else "unauthenticated"
    return Refusal(exc.status_code, cause, exc.reason)


class Admission:
    """One manager's admission: its limits and policies, its registry, its refusal counts."""

    __slots__ = (
        "_context",
        "_counters",
        "_registry",
        "_rejected",
        "_shutdown",
        "allowed_origins",
        "authentication",
        "compression",
        "connection_timeout",
        "max_connections",
        "max_connections_per_address",
        "max_connections_per_user",
        "max_message_size",
        "protocols",
        "receive_buffer_size",
    )

    def __init__(
        self,
        *,
        registry: Registry[ManagedSocket],
        counters: Counters,
        context: SocketContext,
        shutdown: Callable[[], tuple[int, str] | None],
        connection_timeout: float,
        max_connections: float,
        max_connections_per_user: float,
        max_connections_per_address: float,
        allowed_origins: tuple[str, ...] | None,
        protocols: tuple[str, ...],
        authentication: Authenticator | None,
        compression: Compression | None,
        max_message_size: int,
        receive_buffer_size: int,
    ) -> None:
        self._registry = registry
        self._counters = counters
        self._context = context
        #: None while serving; the close code and reason once the manager is closing
        self._shutdown = shutdown
        self._rejected: dict[str, int] = {}
        #: the deadline of a whole handshake, from its first byte to the 101
        self.connection_timeout = connection_timeout
        self.max_connections = max_connections
        self.max_connections_per_user = max_connections_per_user
        self.max_connections_per_address = max_connections_per_address
        self.allowed_origins = allowed_origins
        self.protocols = protocols
        self.authentication = authentication
        self.compression = compression
        self.max_message_size = max_message_size
        self.receive_buffer_size = receive_buffer_size

    # -- decisions (synchronous) --------------------------------------------------------

    def check(self, info: HandshakeRequest, address: str | None) -> Refusal | None:
        """Whether a handshake may proceed to authentication: None, or its refusal."""
        if self._shutdown() is not None:
            return CLOSING
        for name in _SINGLE_HEADERS:
            if sum(1 for key, _ in info.headers if key == name) > 1:
                return Refusal(400, "bad_request", f"duplicate {name} header")
        if self._registry.in_use >= self.max_connections:
            return FULL
        if address is not None and self._registry.address_count(address) >= (
            self.max_connections_per_address
        ):
            return PER_ADDRESS
        if self.allowed_origins is not None:
            origin = info.header("origin")
            if origin is not None and origin not in self.allowed_origins:
                return ORIGIN
        return None

    def check_user(self, user_id: str) -> Refusal | None:
        """Whether ``user_id`` may open one more socket (its handshakes in progress count)."""
        if self._registry.user_count(user_id) >= self.max_connections_per_user:
            return PER_USER
        return None

    def select_subprotocol(self, offered: Sequence[str]) -> str | None:
        """The first of the manager's ``protocols`` the client offered, else None."""
        for name in self.protocols:
            if name in offered:
                return name
        return None

    def count_rejection(self, cause: str) -> None:
        self._rejected[cause] = self._rejected.get(cause, 0) + 1
        logger.debug("handshake refused: %s", cause)

    def rejections(self) -> Mapping[str, int]:
        """A read-only snapshot of the refusals by cause."""
        return MappingProxyType(dict(self._rejected))

    # -- the async shell ------------------------------------------------------------------

    async def handshake(self, buffered: BufferedStream) -> tuple[ManagedSocket, bytes] | None:
        """Read and answer ``serve``'s opening handshake: the socket and the bytes after it.

        None if it was refused (the answer is written and the stream closed), or
        if it did not finish within ``connection_timeout`` (counted as
        ``timeout`` unless the stream is already closed; nothing is answered).
        """
        admitted: tuple[ManagedSocket, bytes] | None = None
        with trio.move_on_after(self.connection_timeout):
            admitted = await self._read_and_admit(buffered)
        if admitted is None and not buffered.closed:
            self.count_rejection("timeout")
        return admitted

    async def _read_and_admit(self, buffered: BufferedStream) -> tuple[ManagedSocket, bytes] | None:
        head = await read_head(buffered, self.receive_buffer_size)
        if head is None:  # ended early, or a head too big: 400 (if there is anyone to tell)
            self.count_rejection("bad_request")
            await write_and_close(buffered, reject_response(400, body=b"bad request"))
            return None
        try:
            request = parse_request(head[0])
        except HandshakeError as exc:
            self.count_rejection("bad_request")
            response = reject_response(
                exc.status, headers=list(exc.headers), body=exc.reason.encode()
            )
            await write_and_close(buffered, response)
            return None
        answer = StreamAnswer(self._context, self.max_message_size, buffered, request)
        try:
            sock = await self.admit(
                answer, request_info(request, remote_of(buffered.inner)), buffered
            )
        except RequestRejected:
            return None
        return sock, head[1]

    async def admit_request(
        self,
        answer: TimedAnswer,
        info: HandshakeRequest,
        buffered: BufferedStream,
        *,
        user_id: str | _Unset | None,
        subprotocol: str | _Unset | None,
        extra_headers: list[tuple[bytes, bytes]],
        metadata: Mapping[str, Any] | None,
    ) -> ManagedSocket:
        """``accept()``'s admission: :meth:`admit` within ``connection_timeout``.

        Out of time, the refusal is counted as ``timeout`` and ``answer`` says
        so (a 408 if nothing was answered yet; see ``TwsAnswer.time_out``).
        """
        sock: ManagedSocket | None = None
        with trio.move_on_after(self.connection_timeout):
            sock = await self.admit(
                answer,
                info,
                buffered,
                user_id=user_id,
                subprotocol=subprotocol,
                extra_headers=extra_headers,
                metadata=metadata,
            )
        if sock is None:
            self.count_rejection("timeout")
            await answer.time_out(self._context.close_timeout)
        return sock

    async def admit(
        self,
        answer: Answer,
        info: HandshakeRequest,
        buffered: BufferedStream,
        *,
        user_id: str | _Unset | None = UNSET,
        subprotocol: str | _Unset | None = UNSET,
        extra_headers: list[tuple[bytes, bytes]] | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> ManagedSocket:
        """Decide on a handshake, answer it, and register the socket; RequestRejected if refused."""
        address = info.remote[0] if info.remote is not None else None
        refusal = self.check(info, address)
        if refusal is not None:
            await self.refuse(answer, refusal)
        registry = self._registry
        registry.reserve(address)
        registered = False
        reserved_user: str | None = None
        try:
            if isinstance(user_id, _Unset):
                user_id = await self._authenticate(answer, info)
            if user_id is not None:
                # Check and reserve with no await between, so that concurrent
                # handshakes of one user cannot all pass the check.
                refusal = self.check_user(user_id)
                if refusal is not None:
                    await self.refuse(answer, refusal)
                registry.reserve_user(user_id)
                reserved_user = user_id
            if isinstance(subprotocol, _Unset):
                subprotocol = self.select_subprotocol(info.subprotocols)
            if self._shutdown() is not None:
                await self.refuse(answer, CLOSING)
            extension = None
            if self.compression is not None and answer.extension_offers():
                extension = self.compression.extension(max_message_size=self.max_message_size)
            sock = await answer.accept(
                user_id=user_id,
                subprotocol=subprotocol,
                extra_headers=list(extra_headers or ()),
                extension=extension,
                path=redact_path(info.path),
                headers=info.headers,
                remote=info.remote,
                metadata=dict(metadata or {}),
            )
            if buffered.closed:  # died while we were accepting
                raise RequestRejected(400, "connection lost during the handshake")
            registry.add(sock, address)
            registered = True
            self._counters.accepted += 1
            shutdown = self._shutdown()
            if shutdown is not None:  # close() ran during our accept: it could not see this socket
                sock.close_nowait(*shutdown)
            return sock
        finally:
            if not registered:
                registry.release(address)
                if reserved_user is not None:
                    registry.release_user(reserved_user)

    async def _authenticate(self, answer: Answer, info: HandshakeRequest) -> str | None:
        if self.authentication is None:
            return None
        try:
            result = await maybe_await(self.authentication(info))
        except RequestRejected as exc:
            await self.refuse(answer, authenticator_refusal(exc))
        except trio.Cancelled:
            raise
        except Exception:
            logger.exception("authentication failed with an error for %r", info)
            await self.refuse(answer, AUTH_ERROR)
        if result is None:
            await self.refuse(answer, AUTH_REQUIRED)
        return str(result)

    async def refuse(self, answer: Answer, refusal: Refusal) -> NoReturn:
        """Count the refusal, answer it, and raise :class:`RequestRejected`."""
        self.count_rejection(refusal.cause)
        await answer.reject(refusal.status, refusal.text)
        raise RequestRejected(refusal.status, refusal.text)
