"""A chat room on any ASGI server, with the manager admitting every WebSocket.

Run it as users run ASGI apps, from this folder::

    hypercorn --worker-class trio asgi_chat:app

then connect to ``ws://127.0.0.1:8000/ws?name=alice``. ``GET /`` answers a short
text; every other path is 404. The WebSocket route uses ``manager.accept_asgi``,
the form for a route inside a framework; the Broadcaster lives in the ASGI
lifespan (the server's whole life), and the lifespan's shutdown closes what is
still open with 1001.
"""

from __future__ import annotations

from typing import Any

from trio_wsmgr import (
    Broadcaster,
    HandshakeRequest,
    ManagedSocket,
    RequestRejected,
    WebSocketManager,
)


def name_of(request: HandshakeRequest) -> str | None:
    """The ``name`` query parameter is the user (a real app checks a token here)."""
    return request.query.get("name") or None


manager = WebSocketManager(
    authentication=name_of,
    protocols=["chat.v1"],
    max_connections_per_user=3,
    heartbeat_interval=20.0,
)
broadcaster = Broadcaster()
broadcaster.attach(manager)


async def chat(sock: ManagedSocket) -> None:
    await broadcaster.subscribe(sock, "lobby")
    await broadcaster.broadcast("lobby", f"* {sock.user_id} joined", exclude=sock)
    async for message in sock:
        if message == "/who":
            await sock.send(" ".join(sorted(manager.users())))
        else:
            await broadcaster.broadcast("lobby", f"{sock.user_id}: {message}")


async def lifespan(receive: Any, send: Any) -> None:
    async with broadcaster:
        while True:
            event = await receive()
            if event["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif event["type"] == "lifespan.shutdown":
                await manager.close()
                await send({"type": "lifespan.shutdown.complete"})
                return


async def text(send: Any, status: int, body: bytes) -> None:
    headers = [(b"content-type", b"text/plain; charset=utf-8")]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def app(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        await lifespan(receive, send)
    elif scope["type"] == "websocket" and scope["path"] == "/ws":
        try:
            async with manager.accept_asgi(scope, receive, send) as sock:
                await chat(sock)
        except RequestRejected:
            pass  # the client got its HTTP refusal already
    elif scope["type"] == "websocket":
        await send({"type": "websocket.close", "code": 1008})
    elif scope["path"] == "/":
        await text(send, 200, f"{manager.get_active_connections()} online\n".encode())
    else:
        await text(send, 404, b"not found\n")
