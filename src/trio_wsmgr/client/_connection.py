"""The pool's connection: trio-websocket's, with trio_wsmgr's one ``ConnectionClosed``.

A managed socket and a pooled connection tell "the connection is closed" the same
way: :exc:`trio_wsmgr.ConnectionClosed`, with ``.code`` and ``.reason``. The
trio-websocket error it replaces is its ``__cause__``.
"""

from __future__ import annotations

import trio_websocket

from .._exceptions import ConnectionClosed


def _closed(exc: trio_websocket.ConnectionClosed) -> ConnectionClosed:
    reason = exc.reason
    if reason is None:
        return ConnectionClosed(None)
    return ConnectionClosed(reason.code, reason.reason or "")


class PooledConnection(trio_websocket.WebSocketConnection):
    """What ``pool.acquire()`` gives: a :class:`trio_websocket.WebSocketConnection`.

    Every method is trio-websocket's, except that a closed connection raises
    :exc:`trio_wsmgr.ConnectionClosed` (``.code``, ``.reason``), as a
    :class:`~trio_wsmgr.ManagedSocket` does, instead of trio-websocket's own.
    """

    async def get_message(self) -> str | bytes:
        try:
            return await super().get_message()
        except trio_websocket.ConnectionClosed as exc:
            raise _closed(exc) from exc

    async def send_message(self, message: str | bytes) -> None:
        try:
            await super().send_message(message)
        except trio_websocket.ConnectionClosed as exc:
            raise _closed(exc) from exc

    async def ping(self, payload: bytes | None = None) -> None:
        try:
            await super().ping(payload)
        except trio_websocket.ConnectionClosed as exc:
            raise _closed(exc) from exc

    async def pong(self, payload: bytes | None = None) -> None:
        try:
            await super().pong(payload)
        except trio_websocket.ConnectionClosed as exc:
            raise _closed(exc) from exc
