"""websockets' asyncio server with its ``broadcast()``.

``broadcast()`` writes to every connection's transport without backpressure, so
the producer adds the simplest flow control an application would: after each
broadcast it yields to the event loop, and (every ``CHECK_EVERY`` broadcasts)
while some connection has more than ``HIGH`` bytes waiting in its transport it
waits for them to drain. Without it
the producer would run ahead of the clients and buffer without limit.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import sys
from pathlib import Path

from websockets.asyncio.server import ServerConnection, broadcast, serve

sys.path.insert(0, str(Path(__file__).parent))
from _common import HOST, asyncio_control

HIGH = 256 * 1024
CHECK_EVERY = 8  # broadcasts between looks at the write buffers


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

    sent = itertools.count()

    async def send(message: str) -> None:
        conns = list(connections)
        broadcast(conns, message)
        await asyncio.sleep(0)
        if next(sent) % CHECK_EVERY == 0:
            while any(c.transport.get_write_buffer_size() > HIGH for c in conns):
                await asyncio.sleep(0.001)

    async with serve(handler, HOST, 0, max_queue=16) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        await asyncio_control(send, lambda: len(connections), port)


if __name__ == "__main__":
    asyncio.run(main())
