"""A channel with history: clients that reconnect get what they missed.

    python examples/recovery_server.py          # ws://127.0.0.1:8000/
    python examples/recovery_server.py 0        # any free port (printed)
    python examples/recovery_client.py ws://127.0.0.1:8000/   # in another terminal

Every client is subscribed to "news" (``?epoch=...&offset=...``: since that
position, as the client in examples/recovery_client.py sends after a drop) and
receives each publication in an envelope ``{"channel", "epoch", "offset",
"data"}``. A text a client sends is published on "news"; the text ``!drop``
instead cuts every other client's connection (1012), to try the recovery.
"""

from __future__ import annotations

import signal
import sys
from urllib.parse import parse_qs, urlsplit

import trio

from trio_wsmgr import Broadcaster, CloseCode, ManagedSocket, StreamPosition, WebSocketManager


def since_of(sock: ManagedSocket) -> StreamPosition | None:
    """The client's last position, from the query string (None if absent or invalid)."""
    query = parse_qs(urlsplit(sock.path).query)
    try:
        return StreamPosition(query["epoch"][0], int(query["offset"][0]))
    except (KeyError, ValueError):
        return None


async def main(port: int) -> None:
    manager = WebSocketManager()
    broadcaster = Broadcaster()  # Broadcaster(backend=RedisBackend(url)) across nodes
    news = broadcaster.create_channel("news", history_size=1000, history_ttl=3600.0)

    async def handler(sock: ManagedSocket) -> None:
        await broadcaster.subscribe(sock, news, since=since_of(sock))
        async for message in sock:
            if message == "!drop":
                for other in news.subscribers():
                    if other is not sock:
                        await other.close(CloseCode.SERVICE_RESTART, "try again")
            else:
                await broadcaster.broadcast(news, str(message))

    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with broadcaster, trio.open_nursery() as nursery:
            server = await nursery.start(manager.serve, handler, "127.0.0.1", port)
            print(f"news with history on ws://127.0.0.1:{server.port}/", flush=True)
            async for _ in signals:
                break
            await manager.close()


if __name__ == "__main__":
    trio.run(main, int(sys.argv[1]) if len(sys.argv) > 1 else 8000)
