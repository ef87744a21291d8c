"""Token authentication that works from a browser: the token rides in a subprotocol.

Browsers cannot set an ``Authorization`` header on a WebSocket, so the page offers
the token as a second subprotocol, next to the real one::

    const ws = new WebSocket("ws://127.0.0.1:8766/", ["chat.v1", "bearer." + token]);

The server picks "chat.v1" (never the bearer one: the token is not echoed back),
:class:`~trio_wsmgr.TokenAuth` finds ``bearer.<token>`` (or an ``Authorization:
Bearer`` header, or ``?token=``) and the verifier maps it to a user id. No token or an
unknown one: HTTP 401, before any WebSocket exists.

    python examples/token_auth_server.py [PORT]
"""

from __future__ import annotations

import signal
import sys

import trio

from trio_wsmgr import ManagedSocket, TokenAuth, WebSocketManager, static_tokens

# In real life: look the token up (a database, a JWT check). static_tokens compares
# in constant time, so response times do not leak how much of a guess was right.
TOKENS = {"alice-secret-token": "alice", "bob-secret-token": "bob"}


async def greet(sock: ManagedSocket) -> None:
    await sock.send(f"hello {sock.user_id}, you speak {sock.subprotocol}")
    async for message in sock:
        await sock.send(f"{sock.user_id} said: {message}")


async def main(port: int) -> None:
    manager = WebSocketManager(
        authentication=TokenAuth(static_tokens(TOKENS)),
        protocols=["chat.v1"],  # what we speak; a browser that offered it gets it back
        max_connections_per_user=5,  # a sixth socket of the same user: HTTP 429
    )
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            server = await nursery.start(manager.serve, greet, "127.0.0.1", port)
            print(f"token-auth server on ws://127.0.0.1:{server.port}/", flush=True)
            async for _ in signals:
                break
            await manager.close()


if __name__ == "__main__":
    trio.run(main, int(sys.argv[1]) if len(sys.argv) > 1 else 8766)
