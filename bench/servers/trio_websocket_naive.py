"""trio-websocket, the obvious way: ``await ws.send_message(m)`` for each socket in turn.

Each send waits until its frame is written; a slow client holds up the rest.
trio-websocket has no permessage-deflate: it never negotiates compression.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, WebSocketRequest, serve_websocket

sys.path.insert(0, str(Path(__file__).parent))
from _common import HOST, trio_control


async def main() -> None:
    logging.getLogger("trio-websocket").setLevel(logging.CRITICAL)
    connections: set[WebSocketConnection] = set()

    async def handler(request: WebSocketRequest) -> None:
        ws = await request.accept()
        connections.add(ws)
        try:
            while True:
                await ws.get_message()
        except ConnectionClosed:
            pass
        finally:
            connections.discard(ws)

    async def send(message: str) -> None:
        for ws in list(connections):
            try:
                await ws.send_message(message)
            except ConnectionClosed:
                connections.discard(ws)

    async with trio.open_nursery() as nursery:
        server = await nursery.start(serve_websocket, handler, HOST, 0, None)
        await trio_control(send, lambda: len(connections), server.port)
        nursery.cancel_scope.cancel()


if __name__ == "__main__":
    trio.run(main)
