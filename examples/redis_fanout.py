"""Two nodes, one Redis: a chat message sent to node A reaches a client of node B.

Each node is a WebSocketManager plus a Broadcaster on a RedisBackend, as two
processes of your service would be; here both run in one process. Redis comes
from ``REDIS_URL``, else a ``redis-server`` on PATH is started for the demo.

    python examples/redis_fanout.py            # the demo, then exit
    python examples/redis_fanout.py --serve    # keep serving; connect with any ws client
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial

import trio
import trio_websocket

from trio_wsmgr import (
    BackendUnavailable,
    Broadcaster,
    ManagedSocket,
    RedisBackend,
    WebSocketManager,
)


async def chat(broadcaster: Broadcaster, sock: ManagedSocket) -> None:
    """Every socket joins "lobby"; what it sends goes to everyone else, on every node."""
    await broadcaster.subscribe(sock, "lobby")  # left automatically when the socket closes
    await sock.send("welcome to the lobby")
    async for message in sock:
        try:
            await broadcaster.broadcast("lobby", message, exclude=sock)
        except BackendUnavailable as exc:  # Redis is down: only this node's sockets got it
            print(f"Redis unavailable, delivered to {exc.delivered} local socket(s) only")


@asynccontextmanager
async def node(url: str, nursery: trio.Nursery) -> AsyncIterator[int]:
    """One node: serve on a free port; yields the port."""
    manager = WebSocketManager()
    async with Broadcaster(backend=RedisBackend(url)) as broadcaster:
        server = await nursery.start(manager.serve, partial(chat, broadcaster), "127.0.0.1", 0)
        try:
            yield server.port
        finally:
            await manager.close()


@asynccontextmanager
async def redis_url() -> AsyncIterator[str]:
    """REDIS_URL, or a throw-away redis-server (no persistence) on a free port."""
    if "REDIS_URL" in os.environ:
        yield os.environ["REDIS_URL"]
        return
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    argv = ["redis-server", "--port", str(port), "--save", "", "--appendonly", "no"]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(partial(trio.run_process, argv, stdout=subprocess.DEVNULL))
        with trio.fail_after(5):
            while True:
                try:
                    await (await trio.open_tcp_stream("127.0.0.1", port)).aclose()
                    break
                except OSError:
                    await trio.sleep(0.02)
        yield f"redis://127.0.0.1:{port}/0"
        nursery.cancel_scope.cancel()


async def main(serve: bool) -> None:
    async with redis_url() as url, trio.open_nursery() as nursery:
        async with node(url, nursery) as port_a, node(url, nursery) as port_b:
            if serve:
                print(f"node A: ws://127.0.0.1:{port_a}/  node B: ws://127.0.0.1:{port_b}/")
                await trio.sleep_forever()
            a_url, b_url = f"ws://127.0.0.1:{port_a}/", f"ws://127.0.0.1:{port_b}/"
            async with (
                trio_websocket.open_websocket_url(a_url) as alice,
                trio_websocket.open_websocket_url(b_url) as bob,
            ):
                with trio.fail_after(5):
                    for ws in (alice, bob):  # both subscribed
                        print(await ws.get_message())
                    await alice.send_message("hello from node A")
                    print("bob, on node B, got:", await bob.get_message())
        nursery.cancel_scope.cancel()


if __name__ == "__main__":
    trio.run(main, "--serve" in sys.argv[1:])
