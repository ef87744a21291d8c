"""trio_wsmgr: ``manager.broadcast`` (default), or a channel of a Broadcaster.

    python bench/servers/wsmgr.py [--channel | --redis URL]

``--channel``: every socket subscribes to one channel of an in-process
``Broadcaster()`` and the producer calls ``broadcaster.broadcast(channel, m)``.
``--redis URL``: two Broadcasters ("nodes") on a RedisBackend in this process;
the sockets subscribe on node B, the producer broadcasts on node A, which has
no local subscribers, so every delivery crosses Redis. The producer keeps node
B's inbox under ``INBOX_HIGH`` messages (a full inbox drops), so the fan-out
figure is the rate B sustains without loss.

Library defaults otherwise: heartbeats every 20 s, permessage-deflate
available (negotiated only if the client offers it, which the load client does
with ``--compression``).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).parent))
from _common import HOST, trio_control

from trio_wsmgr import Broadcaster, ManagedSocket, WebSocketManager

CHANNEL = "bench"
INBOX_HIGH = 256


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--channel", action="store_true")
    parser.add_argument("--redis", default=None)
    args = parser.parse_args()
    logging.getLogger("trio_wsmgr").setLevel(logging.CRITICAL)
    manager = WebSocketManager(max_connections=100_000)
    async with trio.open_nursery() as nursery:
        if args.channel or args.redis:
            if args.redis:
                from trio_wsmgr.backends import RedisBackend

                node_a = Broadcaster(backend=RedisBackend(args.redis))
                node_b = Broadcaster(backend=RedisBackend(args.redis))
            else:
                node_a = node_b = Broadcaster()
            async with contextlib.AsyncExitStack() as stack:
                await stack.enter_async_context(node_a)
                if node_b is not node_a:
                    await stack.enter_async_context(node_b)

                async def handler(sock: ManagedSocket) -> None:
                    await node_b.subscribe(sock, CHANNEL)
                    async for _ in sock:
                        pass

                async def broadcast(message: str) -> None:
                    await node_a.broadcast(CHANNEL, message)
                    if node_b is not node_a:
                        # Pace the producer by node B's inbox, which drops when full:
                        # the figure is the rate B sustains without losing anything.
                        while node_b.statistics().inbox > INBOX_HIGH:
                            await trio.sleep(0.001)

                channel = node_b.create_channel(CHANNEL)
                server = await nursery.start(manager.serve, handler, HOST, 0)
                await trio_control(broadcast, lambda: channel.subscriber_count, server.port)
        else:

            async def handler(sock: ManagedSocket) -> None:
                async for _ in sock:
                    pass

            server = await nursery.start(manager.serve, handler, HOST, 0)
            await trio_control(manager.broadcast, manager.get_active_connections, server.port)
        nursery.cancel_scope.cancel()


if __name__ == "__main__":
    trio.run(main)
