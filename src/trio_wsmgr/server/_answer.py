"""Answering an opening handshake: over serve's own wire, or (see _accepted) trio-websocket's.

:class:`Answer` is what admission needs from either: the extension offers, a
refusal, and an acceptance that returns the new socket. :class:`StreamAnswer`
answers a request that ``serve`` parsed itself (:mod:`..protocol._handshake`):
the ``101`` goes out with one non-blocking write, no task switch.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import suppress
from typing import Any, Protocol

import trio

from .._exceptions import RequestRejected
from ..protocol._compression import PerMessageDeflate
from ..protocol._handshake import (
    HEAD_END,
    UpgradeRequest,
    accept_response,
    plausible_start,
    reject_response,
)
from ..protocol._message import DeflateCompressor
from ..protocol._reader import FrameReader
from ._auth import HandshakeRequest, parse_query
from ._context import SocketContext
from ._socket import ManagedSocket
from ._transport import BufferedStream


class Answer(Protocol):
    """How one handshake is answered: over our own wire, or through trio-websocket."""

    def extension_offers(self) -> Sequence[str]: ...

    async def reject(self, status: int, text: str) -> None: ...

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
    ) -> ManagedSocket: ...


class StreamAnswer:
    """Answers a handshake ``serve`` parsed itself: the 101 is written without waiting."""

    __slots__ = ("_buffered", "_context", "_max_message_size", "_request")

    def __init__(
        self,
        context: SocketContext,
        max_message_size: int,
        buffered: BufferedStream,
        request: UpgradeRequest,
    ) -> None:
        self._context = context
        self._max_message_size = max_message_size
        self._buffered = buffered
        self._request = request

    def extension_offers(self) -> Sequence[str]:
        return self._request.extensions

    async def reject(self, status: int, text: str) -> None:
        response = reject_response(
            status,
            headers=[(b"Content-Type", b"text/plain; charset=utf-8")],
            body=text.encode(),
        )
        await write_and_close(self._buffered, response)

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
        agreed = None
        if extension is not None:
            for offer in self._request.extensions:
                if offer.split(";", 1)[0].strip() == extension.name:
                    response = extension.accept(offer)
                    if response is not None:
                        agreed = extension.name + ("; " + response if response else "")
                        break
        enabled = extension if agreed is not None else None
        sock = ManagedSocket(
            context=self._context,
            stream=self._buffered,
            user_id=user_id,
            subprotocol=subprotocol,
            path=path,
            headers=self._request.head,
            remote=remote,
            metadata=metadata,
            compressor=DeflateCompressor(enabled) if enabled is not None else None,
            reader=FrameReader(max_message_size=self._max_message_size, extension=enabled),
        )
        try:
            self._buffered.write_nowait(
                accept_response(
                    self._request.key,
                    subprotocol=subprotocol,
                    extensions=agreed,
                    extra_headers=extra_headers,
                )
            )
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise RequestRejected(400, "connection lost during the handshake") from exc
        # No checkpoint after the write: reading the request was one, and a
        # cancellation here would leave a client that got its 101 with no socket
        # registered. One scheduler pass fewer per handshake.
        return sock


def request_info(request: UpgradeRequest, remote: tuple[str, int] | None) -> HandshakeRequest:
    return HandshakeRequest(
        path=request.target,
        headers=request.headers,
        subprotocols=request.subprotocols,
        remote=remote,
        query=parse_query(request.target),
    )


def remote_of(stream: trio.abc.Stream) -> tuple[str, int] | None:
    """The peer's (host, port) under ``stream``, if it is a socket (or a bridged connection)."""
    if isinstance(stream, trio.SSLStream):
        stream = stream.transport_stream
    if isinstance(stream, trio.SocketStream):
        try:
            peer = stream.socket.getpeername()
        except OSError:
            return None
        return str(peer[0]), int(peer[1])
    peer = getattr(stream, "peer", None)  # a bridged connection (ASGI): the real client
    if isinstance(peer, tuple):
        return str(peer[0]), int(peer[1])
    return None


async def read_head(stream: BufferedStream, limit: int) -> tuple[bytes, bytes] | None:
    """Read an HTTP request head: (head, the bytes after it), or None (EOF, or over ``limit``)."""
    data = b""
    while True:
        try:
            chunk = await stream.receive_some(limit)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return None
        if not chunk:
            return None
        start = max(0, len(data) - 3)
        data += chunk
        end = data.find(HEAD_END, start)
        if end >= 0:
            return data[:end], data[end + 4 :]
        if len(data) > limit or not plausible_start(data):
            return None


async def write_and_close(stream: BufferedStream, data: bytes) -> None:
    """Write a last answer (bounded, best effort) and close."""
    with suppress(trio.BrokenResourceError, trio.ClosedResourceError):
        stream.write_nowait(data)
    stream.flush_on_close = True
    await stream.aclose()
