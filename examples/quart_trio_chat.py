"""A Quart-Trio app whose WebSockets are run by the manager, with a Broadcaster.

Quart serves the HTTP routes; ``manager.asgi_app(chat, fallback=quart)`` puts the
manager in front of it for WebSocket connections (any path; this chat checks
``sock.path``). Run it as users run Quart-Trio apps, from this folder::

    hypercorn --worker-class trio quart_trio_chat:app

then open ``ws://127.0.0.1:8000/ws?name=alice``; ``GET /`` and ``GET /status``
are Quart's. The Broadcaster lives while Quart serves (``while_serving``); at
shutdown the manager closes what is left with 1001.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from quart_trio import QuartTrio

from trio_wsmgr import Broadcaster, HandshakeRequest, ManagedSocket, WebSocketManager

quart = QuartTrio(__name__)


def name_of(request: HandshakeRequest) -> str | None:
    """The ``name`` query parameter is the user (a real app checks a token here)."""
    return request.query.get("name") or None


manager = WebSocketManager(authentication=name_of, protocols=["chat.v1"])
broadcaster = Broadcaster()
broadcaster.attach(manager)


@quart.while_serving
async def broadcasting() -> AsyncIterator[None]:
    async with broadcaster:
        yield
        await manager.close()  # shutdown: every socket still open gets 1001


@quart.route("/")
async def index() -> str:
    return "chat: connect a WebSocket to /ws?name=...\n"


@quart.route("/status")
async def status() -> dict[str, Any]:
    stats = manager.statistics()
    return {"online": stats.open_sockets, "users": manager.users(), "accepted": stats.accepted}


async def chat(sock: ManagedSocket) -> None:
    if not sock.path.startswith("/ws"):
        await sock.close(1008, "no such endpoint")
        return
    await broadcaster.subscribe(sock, "lobby")
    async for message in sock:
        await broadcaster.broadcast("lobby", f"{sock.user_id}: {message}")


app = manager.asgi_app(chat, fallback=quart)
