"""websockets' Trio server (``websockets.trio``) with its ``broadcast()``.

Its ``broadcast()`` starts a task per connection that writes the frame and
waits for it to be sent, so it has backpressure of its own.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import trio
from websockets.trio.server import ServerConnection, broadcast, serve

sys.path.insert(0, str(Path(__file__).parent))
from _common import HOST, trio_control


async def main() -> None:
    logging.getLogger("websockets").setLevel(logging.CRITICAL)
    connections: set[ServerConnection] = set()

    async def handler(ws: ServerConnection) -> None:
        connections.add(ws)
        try:
            async for _ in ws:
                pass
        finally:
            connections.discard(ws)

    async def send(message: str) -> None:
        await broadcast(list(connections), message)

    async with trio.open_nursery() as nursery:
        server = await nursery.start(
            lambda task_status: serve(handler, 0, host=HOST, task_status=task_status)
        )
        port = server.listeners[0].socket.getsockname()[1]
        await trio_control(send, lambda: len(connections), port)
        nursery.cancel_scope.cancel()


if __name__ == "__main__":
    trio.run(main)
