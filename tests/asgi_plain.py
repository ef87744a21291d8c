"""A bare ``manager.asgi_app(handler)`` (no fallback) for tests/test_asgi.py to serve."""

from __future__ import annotations

from trio_wsmgr import ManagedSocket, WebSocketManager


def user(request: object) -> str | None:
    return request.query.get("user") or None  # type: ignore[attr-defined,no-any-return]


manager = WebSocketManager(authentication=user, allowed_origins=["http://good.example"])


async def echo(sock: ManagedSocket) -> None:
    await sock.send(f"{sock.user_id} from {sock.remote is not None}")
    async for message in sock:
        await sock.send(message)


app = manager.asgi_app(echo)
