"""Pool connections to a WebSocket backend, then watch the pool's health when it goes away.

Self-contained: it starts a tiny echo backend in-process with trio-websocket.

    python examples/pool_client.py
"""

from __future__ import annotations

import trio
import trio_websocket

from trio_wsmgr import PoolTimeout, WebSocketPool


async def shouting_backend(request: trio_websocket.WebSocketRequest) -> None:
    """The backend: answers every message with an upper-case copy."""
    ws = await request.accept()
    try:
        while True:
            message = await ws.get_message()
            await ws.send_message(message.upper())
    except trio_websocket.ConnectionClosed:
        pass


async def ask(pool: WebSocketPool, question: str) -> str | bytes:
    """One request and its reply, on whichever pooled connection is free."""
    async with pool.acquire() as conn:  # released on exit; discarded if it broke
        await conn.send_message(question)
        return await conn.get_message()


async def main() -> None:
    backend = trio.CancelScope()

    async def run_backend(*, task_status: trio.TaskStatus[trio_websocket.WebSocketServer]) -> None:
        with backend:
            await trio_websocket.serve_websocket(
                shouting_backend, "127.0.0.1", 0, None, task_status=task_status
            )

    async with trio.open_nursery() as nursery:
        server = await nursery.start(run_backend)
        pool = WebSocketPool(
            f"ws://127.0.0.1:{server.port}/rpc",
            max_connections=3,  # never more than 3 sockets to the backend
            min_connections=1,  # one kept open (and re-opened) while the backend is up
            acquire_timeout=2.0,
            idle_timeout=60.0,
            validate_on_checkout=True,  # ping before handing a connection out
        )
        async with pool:
            # 20 tasks share at most 3 connections; the others wait their turn.
            replies: list[str | bytes] = []

            async def worker(n: int) -> None:
                replies.append(await ask(pool, f"hello {n}"))

            async with trio.open_nursery() as workers:
                for n in range(20):
                    workers.start_soon(worker, n)
            print(f"{len(replies)} replies, e.g. {replies[0]!r}")

            # The explicit form: release in a finally (discard=True if it broke).
            conn = await pool.acquire()
            try:
                await conn.send_message("explicit")
                print("explicit:", await conn.get_message())
            finally:
                await pool.release(conn)
            print(pool.statistics())
            print(pool.get_health_status())

            # The backend goes away: the pool sees its connections drop, tries to reopen
            # min_connections, backs off between failures, and turns unhealthy.
            backend.cancel()
            await trio.sleep(1.0)  # three failed connects take ~0.3 s with the default back-off
            print(pool.get_health_status())
            try:
                await ask(pool, "anyone there?")
            except PoolTimeout as exc:
                print(f"PoolTimeout, caused by {exc.__cause__!r}")


if __name__ == "__main__":
    trio.run(main)
