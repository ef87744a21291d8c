"""Write coalescing: back-to-back broadcasts gathered into one write per socket.

The rule is plain synchronous code (tested without an event loop); the
gathering is tested on real TCP pairs and with real ``websockets`` clients.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import trio
import trio.testing
from websockets.trio.client import ClientConnection, connect

from test_transport import fill_kernel, frame, read_exactly, tcp_pair
from trio_wsmgr import ManagedSocket, WebSocketManager
from trio_wsmgr.server._coalesce import Coalescer, coalescer
from trio_wsmgr.server._context import GATHER_MOST as MOST

# -- the rule ----------------------------------------------------------------------------


class _Marked:
    def write_gathered(self) -> None:  # pragma: no cover - never run: no event loop here
        raise AssertionError


def test_a_fresh_coalescer_lets_a_broadcast_write_at_once() -> None:
    assert not Coalescer().gather(0.0)


def test_a_broadcast_right_after_a_write_out_is_gathered() -> None:
    rule = Coalescer()
    rule.wrote(10.0, 10.004)  # a fan-out took 4 ms to write
    assert rule.gather(10.0043)  # the next came 0.3 ms after it ended: back to back


def test_a_paced_producer_writes_at_once_even_when_it_keeps_the_server_busy() -> None:
    rule = Coalescer()
    rule.wrote(10.0, 10.006)  # 6 ms to write, every 10 ms: busy 60 % of the time
    assert not rule.gather(10.010)  # gathering one message per socket would only add work


def test_a_fan_out_that_took_no_time_never_makes_the_next_one_wait() -> None:
    rule = Coalescer()
    rule.wrote(3.0, 3.0)
    assert not rule.gather(3.0)


def test_while_frames_are_gathered_every_fan_out_gathers_to_keep_order() -> None:
    rule = Coalescer()
    rule._marked.append(_Marked())  # a socket has frames waiting for the coalescer
    assert rule.gather(1e9)


# -- the stream --------------------------------------------------------------------------


async def test_gathered_frames_wait_for_the_coalescer_then_go_out_in_order() -> None:
    async with tcp_pair() as (stream, client):
        gather = coalescer()
        for i in range(3):
            stream.write_later(frame(i), gather, MOST)
        assert stream.buffered == 3 * 64  # held: nothing written yet
        await trio.testing.wait_all_tasks_blocked()
        assert stream.buffered == 0  # the coalescer wrote them
        assert await read_exactly(client, 3 * 64) == frame(0) + frame(1) + frame(2)


async def test_a_direct_write_never_overtakes_gathered_frames() -> None:
    async with tcp_pair() as (stream, client):
        stream.write_later(frame(0), coalescer(), MOST)
        stream.write_nowait(frame(1))  # a handler's send or a pong meanwhile
        assert stream.buffered == 2 * 64  # it queued behind, not straight to the kernel
        await trio.testing.wait_all_tasks_blocked()
        assert await read_exactly(client, 2 * 64) == frame(0) + frame(1)
        stream.write_nowait(frame(2))  # nothing gathered any more: the fast path again
        assert stream.buffered == 0
        assert await read_exactly(client, 64) == frame(2)


async def test_what_the_kernel_does_not_take_from_a_gathered_write_goes_to_the_writer() -> None:
    async with tcp_pair() as (stream, client), trio.open_nursery() as nursery:
        stream.attach(nursery)
        filler = fill_kernel(stream)
        frames = [frame(i) for i in range(200)]
        for f in frames:
            stream.write_later(f, coalescer(), math.inf)
        await trio.testing.wait_all_tasks_blocked()
        assert stream.buffered == 200 * 64  # the kernel is full: still queued, whole
        with trio.fail_after(10):
            assert await read_exactly(client, filler) == b"\0" * filler
            assert await read_exactly(client, 200 * 64) == b"".join(frames)
            await stream.wait_below(1)
        nursery.cancel_scope.cancel()


async def test_a_socket_holding_the_most_it_may_gather_writes_at_once() -> None:
    async with tcp_pair() as (stream, client):
        for i in range(4):
            stream.write_later(frame(i), coalescer(), 4 * 64)
        assert stream.buffered == 0  # the fourth frame reached the bound: all four written
        stream.write_later(frame(4), coalescer(), 4 * 64)
        assert stream.buffered == 64
        await trio.testing.wait_all_tasks_blocked()
        assert await read_exactly(client, 5 * 64) == b"".join(frame(i) for i in range(5))


async def test_a_stream_closed_with_gathered_frames_does_not_stop_the_coalescer() -> None:
    async with tcp_pair() as (closing, _), tcp_pair() as (stream, client):
        closing.write_later(frame(0), coalescer(), MOST)
        await closing.aclose()
        await trio.testing.wait_all_tasks_blocked()  # the coalescer skipped it and lives on
        stream.write_later(frame(1), coalescer(), MOST)
        await trio.testing.wait_all_tasks_blocked()
        assert stream.buffered == 0
        assert await read_exactly(client, 64) == frame(1)


# -- through the manager -------------------------------------------------------------------


@asynccontextmanager
async def serving(
    count: int, **options: Any
) -> AsyncIterator[tuple[WebSocketManager, list[ClientConnection]]]:
    """A manager serving ``count`` real websockets clients, all of them connected."""
    manager = WebSocketManager(**options)
    arrived = 0
    all_in = trio.Event()

    async def handler(sock: ManagedSocket) -> None:
        nonlocal arrived
        arrived += 1
        if arrived == count:
            all_in.set()
        async for _ in sock:
            pass

    async with trio.open_nursery() as nursery, AsyncExitStack() as stack:
        server = await nursery.start(manager.serve, handler, "127.0.0.1", 0)
        clients = [
            await stack.enter_async_context(connect(f"ws://127.0.0.1:{server.port}/"))
            for _ in range(count)
        ]
        with trio.fail_after(10):
            await all_in.wait()
        yield manager, clients
        await manager.close()
        nursery.cancel_scope.cancel()


async def test_a_lone_broadcast_is_written_before_broadcast_returns() -> None:
    async with serving(3) as (manager, clients):
        now = trio.current_time()
        coalescer().wrote(now, now)  # the last write-out is long over
        assert await manager.broadcast("tick") == 3
        assert all(s.statistics().send_buffer_bytes == 0 for s in manager.sockets())
        for ws in clients:
            assert await ws.recv() == "tick"


async def test_back_to_back_broadcasts_are_gathered_and_reach_every_client_in_order() -> None:
    async with serving(5) as (manager, clients):
        before = manager.statistics().messages_out
        now = trio.current_time()
        coalescer().wrote(now - 1.0, now)  # a one-second write-out just ended
        for i in range(100):  # no checkpoint in between: one burst
            assert manager.broadcast_nowait(f"m{i}") == 5
        held = [s.statistics().send_buffer_bytes for s in manager.sockets()]
        assert all(size > 0 for size in held)  # gathered, not written one by one
        assert manager.statistics().messages_out - before == 500  # yet counted as sent
        with trio.fail_after(10):
            for ws in clients:
                for i in range(100):
                    assert await ws.recv() == f"m{i}"
        assert all(s.statistics().send_buffer_bytes == 0 for s in manager.sockets())


async def test_a_close_after_gathered_broadcasts_comes_after_them_on_the_wire() -> None:
    async with serving(1) as (manager, (ws,)):
        now = trio.current_time()
        coalescer().wrote(now - 1.0, now)
        for i in range(10):
            manager.broadcast_nowait(f"m{i}")
        (sock,) = manager.sockets()
        await sock.close(4000, "done")
        with trio.fail_after(10):
            got = [await ws.recv() for _ in range(10)]
            await ws.wait_closed()
        assert got == [f"m{i}" for i in range(10)]
        assert ws.close_code == 4000


async def test_a_burst_bigger_than_the_send_buffer_loses_nothing_to_gathering() -> None:
    # 200 broadcasts in one tick are 13 KiB per socket, the send buffer is 4 KiB: if
    # gathering held them all, "drop" would drop most. The kernel has room for them.
    async with serving(2, send_buffer_size=4096) as (manager, clients):
        now = trio.current_time()
        coalescer().wrote(now - 1.0, now)
        for i in range(200):
            assert manager.broadcast_nowait(f"{i:062d}", on_full="drop") == 2
        assert manager.statistics().dropped == 0
        with trio.fail_after(10):
            for ws in clients:
                for i in range(200):
                    assert await ws.recv() == f"{i:062d}"
