"""The smallest server: every message comes back to its sender.

    python examples/echo_server.py          # ws://127.0.0.1:8765/
    python examples/echo_server.py 0        # any free port (printed)
    python -m websockets ws://127.0.0.1:8765/   # in another terminal: type, see it echoed

Ctrl-C closes every connection with 1001 (going away) and exits.
"""

from __future__ import annotations

import signal
import sys

import trio

from trio_wsmgr import ManagedSocket, WebSocketManager


async def echo(sock: ManagedSocket) -> None:
    """One connection's whole life: the socket closes (1000) when this returns."""
    async for message in sock:  # str for text frames, bytes for binary ones
        await sock.send(message)


async def main(port: int) -> None:
    manager = WebSocketManager()  # defaults: heartbeats, limits, permessage-deflate
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            server = await nursery.start(manager.serve, echo, "127.0.0.1", port)
            print(f"echo server on ws://127.0.0.1:{server.port}/", flush=True)
            async for _ in signals:
                break
            await manager.close()  # 1001 to everyone; serve() then returns


if __name__ == "__main__":
    trio.run(main, int(sys.argv[1]) if len(sys.argv) > 1 else 8765)
