"""The send path's edge cases: BufferedStream over real sockets, and mixed compression fan-out.

Real TCP pairs on 127.0.0.1 with small kernel buffers, so that a peer that does
not read fills them quickly: that is how the fast path meets partial writes and
EAGAIN. No mocks.
"""

from __future__ import annotations

import itertools
import math
import os
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio.lowlevel
import trio.testing
import trio_websocket
from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory
from websockets.trio.client import connect

from trio_wsmgr import Broadcaster, Compression, ManagedSocket, WebSocketManager, _border
from trio_wsmgr.protocol._message import Outgoing
from trio_wsmgr.server._accepted import AcceptedSocket
from trio_wsmgr.server._transport import BufferedStream
from trio_wsmgr.testing import Peer, open_peer

SMALL = 4096  # SO_SNDBUF / SO_RCVBUF asked for (the kernel doubles it, with a floor)


@asynccontextmanager
async def tcp_pair() -> AsyncIterator[tuple[BufferedStream, trio.SocketStream]]:
    """(our BufferedStream over the server side, the raw client side), small buffers."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    client_sock = trio.socket.socket()
    client_sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SMALL)
    await client_sock.connect(("127.0.0.1", port))
    client = trio.SocketStream(client_sock)
    server = await listeners[0].accept()
    await listeners[0].aclose()
    assert isinstance(server, trio.SocketStream)
    server.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SMALL)
    stream = BufferedStream(server)
    try:
        yield stream, client
    finally:
        await stream.aclose()
        await client.aclose()


def fill_kernel(stream: BufferedStream) -> int:
    """Write filler bytes straight to the socket until the kernel refuses; return how many."""
    fd = stream.inner.socket.fileno()  # type: ignore[attr-defined]
    total = 0
    for size in (65536, 4096, 256, 16, 1):
        while True:
            try:
                total += os.write(fd, b"\0" * size)
            except BlockingIOError:
                break
    return total


async def read_exactly(client: trio.SocketStream, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = await client.receive_some(size - len(data))
        assert chunk, f"EOF after {len(data)} of {size} bytes"
        data += chunk
    return bytes(data)


def frame(i: int, size: int = 64) -> bytes:
    head = f"<{i}:".encode()
    return head + b"." * (size - len(head) - 1) + b">"


# -- the fast path ---------------------------------------------------------------------


async def test_write_goes_to_the_kernel_at_once_when_nothing_is_queued() -> None:
    async with tcp_pair() as (stream, client):
        stream.write_nowait(b"hello")  # no writer task running: must not need one
        assert stream.buffered == 0
        with trio.fail_after(5):
            assert await read_exactly(client, 5) == b"hello"


async def test_partial_write_queues_only_the_rest_and_the_writer_finishes_it() -> None:
    big = bytes(range(256)) * 4096  # 1 MiB, far more than the kernel takes
    async with tcp_pair() as (stream, client), trio.open_nursery() as nursery:
        stream.write_nowait(big)
        assert 0 < stream.buffered < len(big)  # the kernel took a part
        stream.write_nowait(b"after")
        assert stream.buffered > len(b"after")
        stream.attach(nursery)
        with trio.fail_after(10):
            assert await read_exactly(client, len(big) + 5) == big + b"after"
            await stream.wait_below(1)
        assert stream.buffered == 0
        nursery.cancel_scope.cancel()


async def test_eagain_queues_the_whole_frame_and_order_is_kept() -> None:
    async with tcp_pair() as (stream, client), trio.open_nursery() as nursery:
        filler = fill_kernel(stream)
        stream.write_nowait(frame(0))
        assert stream.buffered == 64  # refused outright (EAGAIN): all of it queued
        for i in range(1, 100):
            stream.write_nowait(frame(i))
        assert stream.buffered == 100 * 64
        stream.attach(nursery)
        with trio.fail_after(10):
            assert await read_exactly(client, filler) == b"\0" * filler
            for i in range(100):
                assert await read_exactly(client, 64) == frame(i)
        nursery.cancel_scope.cancel()


async def test_order_is_kept_across_fast_path_queue_and_send_all() -> None:
    """Frames written while the kernel has room, while it is full, and by send_all."""
    received: list[bytes] = []
    total = 3000
    async with tcp_pair() as (stream, client), trio.open_nursery() as nursery:
        stream.attach(nursery)

        async def slow_reader() -> None:
            data = b""
            while len(received) < total:
                data += await client.receive_some(1000)
                while len(data) >= 256:
                    received.append(data[:256])
                    data = data[256:]
                if len(received) % 50 == 0:
                    await trio.sleep(0.001)

        nursery.start_soon(slow_reader)
        fast = queued = 0
        for i in range(total):
            if i % 97 == 0:
                await stream.send_all(frame(i, 256))  # how trio-websocket writes pings/pongs
                continue
            before = stream.buffered
            stream.write_nowait(frame(i, 256))
            if stream.buffered == before:
                fast += 1
            else:
                queued += 1
            if i % 10 == 0:
                await trio.lowlevel.checkpoint()
        with trio.fail_after(10):
            while len(received) < total:
                await trio.sleep(0.01)
        assert received == [frame(i, 256) for i in range(total)]
        assert fast > 0
        assert queued > 0
        nursery.cancel_scope.cancel()


async def test_discarding_the_backlog_keeps_a_half_written_frame_whole() -> None:
    big = b"A" * (1 << 20)
    async with tcp_pair() as (stream, client), trio.open_nursery() as nursery:
        stream.write_nowait(big)
        rest = stream.buffered
        assert 0 < rest < len(big)
        stream.write_nowait(b"B" * 1000)
        stream.write_nowait(b"C" * 1000)
        assert stream.discard_queued() == 2000
        assert stream.buffered == rest  # the tail of the started frame stays
        stream.write_nowait(b"D")
        stream.attach(nursery)
        with trio.fail_after(10):
            assert await read_exactly(client, len(big) + 1) == big + b"D"
        nursery.cancel_scope.cancel()


async def test_attached_stream_has_a_writer_task_only_while_there_is_a_backlog() -> None:
    async with tcp_pair() as (stream, client), trio.open_nursery() as nursery:
        stream.attach(nursery)
        stream.write_nowait(b"x")
        assert not nursery.child_tasks  # idle: no writer task, no memory for one
        filler = fill_kernel(stream)
        for i in range(10):
            stream.write_nowait(frame(i))
        assert len(nursery.child_tasks) == 1  # one writer, however many frames queued
        with trio.fail_after(10):
            assert await read_exactly(client, 1 + filler) == b"x" + b"\0" * filler
            for i in range(10):
                assert await read_exactly(client, 64) == frame(i)
            await stream.wait_below(1)
        await trio.testing.wait_all_tasks_blocked()
        assert not nursery.child_tasks  # drained: the writer ended
        stream.write_nowait(b"back on the fast path")
        assert stream.buffered == 0
        assert await read_exactly(client, 21) == b"back on the fast path"


async def test_bytes_queued_after_the_writer_nursery_ended_wait_for_the_next_attach() -> None:
    async with tcp_pair() as (stream, client):
        async with trio.open_nursery() as nursery:
            stream.attach(nursery)
            await trio.testing.wait_all_tasks_blocked()
            nursery.cancel_scope.cancel()
        fill_kernel(stream)
        stream.write_nowait(b"queued")  # the nursery is closed: no writer, stays queued
        assert stream.buffered == 6
        async with trio.open_nursery() as nursery:
            stream.attach(nursery)  # a writer starts for the backlog
            with trio.fail_after(10):
                while stream.buffered:
                    await client.receive_some(1 << 16)
                    await trio.lowlevel.checkpoint()


async def test_one_fan_out_over_two_managers_counts_each_managers_deliveries() -> None:
    managers = [WebSocketManager(heartbeat_interval=math.inf) for _ in range(2)]
    async with Broadcaster() as broadcaster:

        async def handler(sock: ManagedSocket) -> None:
            await broadcaster.subscribe(sock, "room")
            async for _ in sock:
                pass

        async with (
            open_peer(managers[0], handler) as a,
            open_peer(managers[1], handler) as b,
            open_peer(managers[0], handler) as c,
        ):
            await trio.testing.wait_all_tasks_blocked()
            assert await broadcaster.broadcast("room", "hello") == 3
            for peer in (a, b, c):
                assert await peer.receive() == "hello"
    frame = len("hello") + 2
    first, second = (m.statistics() for m in managers)
    assert (first.messages_out, first.bytes_out) == (2, 2 * frame)
    assert (second.messages_out, second.bytes_out) == (1, frame)


# -- closing and failing during a write ----------------------------------------------------------


async def test_close_during_a_write_fails_waiters_and_refuses_more() -> None:
    async with tcp_pair() as (stream, client):
        failures: list[BaseException] = []
        async with trio.open_nursery() as nursery:
            stream.attach(nursery)
            fill_kernel(stream)

            async def sender() -> None:
                try:
                    await stream.send_all(b"x" * 100_000)
                except trio.ClosedResourceError as exc:
                    failures.append(exc)

            nursery.start_soon(sender)
            await trio.testing.wait_all_tasks_blocked()
            assert stream.buffered > 0  # the writer is stuck on a full kernel buffer
            with trio.fail_after(5):
                await stream.aclose()
        # the writer task ended by itself, the waiting sender was told
        assert len(failures) == 1
        assert stream.closed
        with pytest.raises(trio.ClosedResourceError):
            stream.write_nowait(b"more")
        with trio.fail_after(1):
            await stream.wait_below(1)  # does not hang on a closed stream
        _ = client


async def test_peer_reset_during_a_write_breaks_the_stream() -> None:
    async with tcp_pair() as (stream, client), trio.open_nursery() as nursery:
        stream.attach(nursery)
        fill_kernel(stream)
        stream.write_nowait(b"y" * 100_000)
        await trio.testing.wait_all_tasks_blocked()
        # close with unread data: the kernel answers with a reset
        client.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")
        client.socket.close()
        with trio.fail_after(5):
            while not stream.closed:
                await trio.sleep(0.01)
        with pytest.raises(trio.BrokenResourceError):
            stream.write_nowait(b"z")
        with pytest.raises(trio.BrokenResourceError):
            await stream.send_all(b"z")


async def test_cancelled_send_all_leaves_its_bytes_queued_in_order() -> None:
    async with tcp_pair() as (stream, client), trio.open_nursery() as nursery:
        filler = fill_kernel(stream)
        with trio.move_on_after(0.05) as scope:
            await stream.send_all(b"first")  # no writer yet: it cannot be flushed
        assert scope.cancelled_caught
        stream.write_nowait(b"second")
        stream.attach(nursery)
        with trio.fail_after(10):
            await read_exactly(client, filler)
            assert await read_exactly(client, 11) == b"firstsecond"
        nursery.cancel_scope.cancel()


# -- streams without a file descriptor ----------------------------------------------------------


async def test_reads_from_the_socket_keep_trios_checkpoint_semantics() -> None:
    # The fast read path (os.read on the fd): a read cancelled before it started
    # consumes nothing, a waiting read gets bytes sent later, EOF reads b"".
    async with tcp_pair() as (stream, client):
        await client.send_all(b"first")
        with trio.CancelScope() as scope:
            scope.cancel()
            await stream.receive_some(100)
        assert scope.cancelled_caught
        assert await stream.receive_some(100) == b"first"
        async with trio.open_nursery() as nursery:
            got: list[bytes | bytearray] = []

            async def read() -> None:
                got.append(await stream.receive_some(100))

            nursery.start_soon(read)
            await trio.testing.wait_all_tasks_blocked()
            await client.send_all(b"later")
        assert got == [b"later"]
        await client.send_eof()
        assert await stream.receive_some(100) == b""


async def test_a_read_on_a_closed_stream_raises_and_a_waiting_read_is_woken() -> None:
    async with tcp_pair() as (stream, client):
        async with trio.open_nursery() as nursery:
            failures: list[BaseException] = []

            async def read() -> None:
                try:
                    await stream.receive_some(100)
                except trio.ClosedResourceError as exc:
                    failures.append(exc)

            nursery.start_soon(read)
            await trio.testing.wait_all_tasks_blocked()
            await stream.aclose()
        assert len(failures) == 1
        await client.send_all(b"too late")
        with pytest.raises(trio.ClosedResourceError):
            await stream.receive_some(100)


async def test_a_read_after_the_peer_reset_breaks_the_stream() -> None:
    async with tcp_pair() as (stream, client):
        client.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")
        await client.aclose()  # SO_LINGER 0: a reset, not a FIN
        with pytest.raises(trio.BrokenResourceError):
            await stream.receive_some(100)


async def test_memory_streams_take_the_queue_and_writer_path() -> None:
    left, right = trio.testing.memory_stream_pair()
    stream = BufferedStream(left)
    async with trio.open_nursery() as nursery:
        for i in range(10):
            stream.write_nowait(frame(i))
        assert stream.buffered == 640  # no fd: always queued
        stream.attach(nursery)
        data = b""
        with trio.fail_after(5):
            while len(data) < 640:
                data += await right.receive_some()
            await stream.wait_send_all_might_not_block()
        assert data == b"".join(frame(i) for i in range(10))
        assert stream.buffered == 0
        nursery.cancel_scope.cancel()
    await stream.aclose()


# -- compression negotiated on some sockets and not others ---------------------------------------


async def test_one_broadcast_reaches_compressed_and_plain_sockets_alike() -> None:
    manager = WebSocketManager(
        heartbeat_interval=math.inf, compression=Compression(threshold=0, level=1)
    )
    sockets: list[ManagedSocket] = []

    async def handler(sock: ManagedSocket) -> None:
        sockets.append(sock)
        async for _ in sock:
            pass

    shared = ClientPerMessageDeflateFactory(server_no_context_takeover=True)
    async with trio.open_nursery() as nursery:
        server = await nursery.start(manager.serve, handler, "127.0.0.1", 0)
        url = f"ws://127.0.0.1:{server.port}"
        async with (
            connect(url, compression=None) as plain,
            connect(url) as stateful,  # the server keeps its compression context
            connect(url, compression=None, extensions=[shared]) as stateless_a,
            connect(url, compression=None, extensions=[shared]) as stateless_b,
        ):
            with trio.fail_after(5):
                while len(sockets) < 4:
                    await trio.sleep(0.01)
            by_kind = {s.statistics().compressed: s for s in sockets}
            assert set(by_kind) == {True, False}
            messages = [f"message {i} " + "abc" * (i * 40) for i in range(20)] + [b"\x00" * 500]
            for message in messages:
                assert await manager.broadcast(message) == 4
            for ws in (plain, stateful, stateless_a, stateless_b):
                for message in messages:
                    assert await ws.recv() == message
            assert [e.name for e in stateful.protocol.extensions] == ["permessage-deflate"]
            assert plain.protocol.extensions == []
            # the stateless sockets share one compressed frame; the others get their own
            compressors = [s._compressor for s in sockets]
            outgoing = Outgoing("shared? " * 100)
            frames = [outgoing.frame_for(c) for c in compressors]
            stateless = [c for c in compressors if c is not None and c.shared_key() is not None]
            assert len(stateless) == 2
            assert outgoing.frame_for(stateless[0]) is outgoing.frame_for(stateless[1])
            assert len({len(f) for f in frames}) >= 2  # plain and compressed differ
        await manager.close()


# -- what an idle connection costs ------------------------------------------------------------


def _all_tasks() -> list[trio.lowlevel.Task]:
    tasks: list[trio.lowlevel.Task] = []

    def walk(task: trio.lowlevel.Task) -> None:
        tasks.append(task)
        for nursery in task.child_nurseries:
            for child in nursery.child_tasks:
                walk(child)

    walk(trio.lowlevel.current_root_task())
    return tasks


async def test_an_idle_connection_runs_one_task_besides_its_handler() -> None:
    """The handler's task and the socket's reader, which also runs the heartbeat.

    The reader's read waits with the heartbeat's deadline (no sleeping task per
    socket) and the writer is started only for a backlog: each task costs
    memory on every idle connection.
    """
    manager = WebSocketManager(heartbeat_interval=5, heartbeat_timeout=5)

    async def handler(sock: ManagedSocket) -> None:
        async for _ in sock:
            pass

    async with open_peer(manager, handler):
        await trio.testing.wait_all_tasks_blocked()
        before = _all_tasks()
        async with open_peer(manager, handler) as peer:
            await trio.testing.wait_all_tasks_blocked()
            new = [task for task in _all_tasks() if task not in before]
            assert len(new) == 2, [task.name for task in new]
            await peer.send("ping me")  # still alive and served


async def test_sockets_from_accept_get_heartbeats_too() -> None:
    """manager.accept() has the same host task, and its heartbeat reaps a vanished peer."""
    manager = WebSocketManager(heartbeat_interval=0.1, heartbeat_timeout=0.1)

    async def ws_handler(request: trio_websocket.WebSocketRequest) -> None:
        async with manager.accept(request) as sock:
            async for _ in sock:
                pass

    async with trio.open_nursery() as nursery:
        server = await nursery.start(
            trio_websocket.serve_websocket, ws_handler, "127.0.0.1", 0, None
        )
        peer = Peer(await trio.open_tcp_stream("127.0.0.1", server.port))
        peer.answer_pings = False
        assert await peer.handshake() == 101
        with trio.fail_after(5):
            code, reason = await peer.wait_closed()
        await peer.stream.aclose()
        assert (code, reason) == (1011, "heartbeat timeout")
        assert manager.statistics().heartbeat_timeouts == 1
        await manager.close()
        nursery.cancel_scope.cancel()


# -- heartbeats that do not wait for their pongs ------------------------------------------


class _Waiter:
    def __init__(self) -> None:
        self.calls = 0

    def set(self) -> None:
        self.calls += 1


async def test_ping_nowait_is_settled_by_trio_websockets_reader() -> None:
    """Pins ``conn._pings`` (accept()'s sockets): a pong sets the waiter ping_nowait registered."""
    manager = WebSocketManager(heartbeat_interval=math.inf)
    client_stream, server_stream = trio.testing.memory_stream_pair()
    accepted: list[AcceptedSocket] = []
    done = trio.Event()

    async def serve_one() -> None:
        request = await trio_websocket.wrap_server_stream(nursery, server_stream)
        async with manager.accept(request) as sock:
            assert isinstance(sock, AcceptedSocket)
            accepted.append(sock)
            await done.wait()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve_one)
        client = await trio_websocket.wrap_client_stream(
            nursery,
            client_stream,  # type: ignore[arg-type]
            "testserver",
            "/",
        )
        while not accepted:
            await trio.testing.wait_all_tasks_blocked()
        (sock,) = accepted
        assert hasattr(sock._conn, "_pings"), "WebSocketConnection._pings moved"
        waiter = _Waiter()
        assert _border.ping_nowait(sock._conn, sock._stream, b"beat", waiter)
        assert not _border.ping_nowait(sock._conn, sock._stream, b"beat", _Waiter())  # in flight
        with trio.fail_after(5):
            while not waiter.calls:
                await trio.sleep(0.001)
        assert waiter.calls == 1
        assert b"beat" not in sock._conn._pings
        await sock.close()
        assert not _border.ping_nowait(sock._conn, sock._stream, b"late", _Waiter())
        done.set()
        await client.aclose()


async def handler_idle(sock: ManagedSocket) -> None:
    async for _ in sock:
        pass


async def test_silent_peer_is_reaped_in_time_when_the_timeout_exceeds_the_interval(
    autojump_clock: Any,
) -> None:
    manager = WebSocketManager(heartbeat_interval=2, heartbeat_timeout=5)
    async with open_peer(manager, handler_idle) as peer:
        with trio.move_on_after(7):  # a few healthy beats first (reading answers the pings)
            while True:
                await peer.next_event()
        assert manager.get_active_connections() == 1
        peer.answer_pings = False
        start = trio.current_time()
        code, reason = await peer.wait_closed()
        assert (code, reason) == (1011, "heartbeat timeout")
        assert trio.current_time() - start <= 2 + 5 + 0.1


async def test_pings_keep_their_interval_and_record_the_round_trip(autojump_clock: Any) -> None:
    manager = WebSocketManager(heartbeat_interval=3, heartbeat_timeout=3)
    pings: list[float] = []

    async with open_peer(manager, handler_idle) as peer:
        original = peer._note

        async def note(event: Any) -> None:
            if type(event).__name__ == "Ping":
                pings.append(trio.current_time())
            await original(event)

        peer._note = note  # type: ignore[method-assign]
        (sock,) = manager.sockets()
        with trio.move_on_after(31):
            while True:
                await peer.next_event()
        assert 9 <= len(pings) <= 11
        gaps = [b - a for a, b in itertools.pairwise(pings)]
        assert all(2.9 <= gap <= 3.1 for gap in gaps), gaps
        assert sock.statistics().ping_rtt >= 0
        assert manager.statistics().heartbeat_timeouts == 0


async def test_no_verdict_while_the_application_leaves_messages_unread(
    autojump_clock: Any,
) -> None:
    manager = WebSocketManager(heartbeat_interval=2, heartbeat_timeout=2, max_incoming_queue=2)

    async def never_reads(sock: ManagedSocket) -> None:
        await trio.sleep(40)

    async with open_peer(manager, never_reads) as peer:
        for i in range(5):
            await peer.send(f"unread {i}")
        peer.answer_pings = False
        await trio.sleep(30)  # pongs could not be read anyway: no pings, no verdict
        assert manager.get_active_connections() == 1
        assert manager.statistics().heartbeat_timeouts == 0


async def test_a_write_cancelled_half_way_breaks_the_stream_so_nothing_follows_it(
    autojump_clock: Any,
) -> None:
    """A cancelled inner send_all may leave part of a frame with the peer: never write after it.

    Over a lockstep pair (memory only, so the clock may jump) the peer never reads,
    so the flush is cut by its deadline with the frame in flight. Writing again
    would put new bytes behind half a frame (trio's memory streams assert on it).
    """
    client, server = trio.testing.lockstep_stream_pair()
    stream = BufferedStream(server)
    stream.write_nowait(b"\x81\x05hello")  # no fd: queued
    with trio.move_on_after(1) as cut:
        await stream.flush()
    assert cut.cancelled_caught
    assert stream.closed
    with pytest.raises(trio.BrokenResourceError):
        stream.write_nowait(b"\x81\x05world")
    with pytest.raises(trio.BrokenResourceError):
        await stream.send_all(b"\x88\x02\x03\xe8")
    stream.flush_on_close = True
    await stream.aclose()  # no last frame after a cut one
    await client.aclose()


async def test_send_all_waits_for_its_own_bytes_after_an_earlier_backlog_drained() -> None:
    """Once a backlog is written out the send path starts counting afresh; waits stay exact."""
    async with tcp_pair() as (stream, client), trio.open_nursery() as nursery:
        stream.attach(nursery)
        for round_ in range(3):
            filler = fill_kernel(stream)
            stream.write_nowait(frame(2 * round_))  # queued behind the full kernel buffer
            done = trio.Event()

            async def sender(i: int = 2 * round_ + 1, finished: trio.Event = done) -> None:
                await stream.send_all(frame(i))
                finished.set()

            nursery.start_soon(sender)
            await trio.testing.wait_all_tasks_blocked()
            assert not done.is_set()  # the peer reads nothing: its bytes are still queued
            with trio.fail_after(10):
                await read_exactly(client, filler)
                assert await read_exactly(client, 128) == frame(2 * round_) + frame(2 * round_ + 1)
                await done.wait()
            assert stream.buffered == 0
        nursery.cancel_scope.cancel()
