"""WebSocketManager behaviour, against real clients on 127.0.0.1 and in-memory peers."""

from __future__ import annotations

import contextlib
import json
import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import pytest
import trio
import trio.testing
import trio_websocket
from websockets.exceptions import ConnectionClosed as WsClosed
from websockets.exceptions import InvalidStatus
from websockets.trio.client import connect

from trio_wsmgr import (
    Compression,
    ConnectionClosed,
    ManagedSocket,
    RequestRejected,
    TokenAuth,
    WebSocketManager,
    static_tokens,
)
from trio_wsmgr.testing import Peer, open_client, open_peer

Handler = Callable[[ManagedSocket], Awaitable[object]]


async def echo(sock: ManagedSocket) -> None:
    async for message in sock:
        await sock.send(message)


async def idle(sock: ManagedSocket) -> None:
    async for _ in sock:
        pass


@asynccontextmanager
async def serving(manager: WebSocketManager, handler: Handler) -> AsyncIterator[str]:
    """Serve on 127.0.0.1 (free port); yield the base URL; close the manager after."""
    async with trio.open_nursery() as nursery:
        server = await nursery.start(manager.serve, handler, "127.0.0.1", 0)
        try:
            yield f"ws://127.0.0.1:{server.port}"
        finally:
            await manager.close()


def quiet(**options: Any) -> WebSocketManager:
    """A manager without heartbeats (real-clock tests)."""
    options.setdefault("heartbeat_interval", math.inf)
    return WebSocketManager(**options)


# -- basics with the websockets client ---------------------------------------


async def test_echo_round_trips_text_binary_and_json() -> None:
    manager = quiet()

    async def handler(sock: ManagedSocket) -> None:
        async for message in sock:
            await sock.send(message)
            if message == "json":
                await sock.send({"n": 1, "s": "é"})

    async with serving(manager, handler) as url, connect(url + "/echo") as ws:
        await ws.send("héllo")
        assert await ws.recv() == "héllo"
        await ws.send(b"\x00\x01" * 1000)
        assert await ws.recv() == b"\x00\x01" * 1000
        await ws.send("json")
        assert await ws.recv() == "json"
        assert json.loads(await ws.recv()) == {"n": 1, "s": "é"}
    stats = manager.statistics()
    assert stats.accepted == 1
    assert stats.messages_in == 3
    assert stats.messages_out == 4
    assert stats.open_sockets == 0


async def test_socket_exposes_handshake_details() -> None:
    manager = quiet(protocols=["chat.v2", "chat.v1"])
    seen: list[ManagedSocket] = []

    async def handler(sock: ManagedSocket) -> None:
        seen.append(sock)
        await sock.send("ok")
        await idle(sock)

    async with (
        serving(manager, handler) as url,
        connect(
            url + "/room?x=1",
            subprotocols=["chat.v1", "chat.v2"],  # type: ignore[list-item]
            additional_headers={"X-Trace": "abc"},
        ) as ws,
    ):
        assert await ws.recv() == "ok"
        assert ws.subprotocol == "chat.v2"  # the server's preference wins
        (sock,) = seen
        assert sock.path == "/room?x=1"
        assert sock.subprotocol == "chat.v2"
        assert ("x-trace", "abc") in sock.headers
        assert sock.remote is not None
        assert sock.remote[0] == "127.0.0.1"
        assert not sock.closed
    assert sock.closed
    assert sock.close_code == 1000


async def test_no_common_subprotocol_proceeds_without_one() -> None:
    manager = quiet(protocols=["chat.v1"])
    async with (
        serving(manager, echo) as url,
        connect(url, subprotocols=["other"]) as ws,  # type: ignore[list-item]
    ):
        assert ws.subprotocol is None
        await ws.send("still works")
        assert await ws.recv() == "still works"


async def test_handshake_beyond_max_connections_gets_503() -> None:
    manager = quiet(max_connections=2)
    async with serving(manager, idle) as url, connect(url) as a, connect(url) as b:
        with pytest.raises(InvalidStatus) as info:
            async with connect(url):
                pass
        assert info.value.response.status_code == 503
        assert manager.get_active_connections() == 2
        assert manager.statistics().rejected["full"] == 1
        _ = (a, b)


async def test_origin_outside_the_allowed_list_gets_403() -> None:
    manager = quiet(allowed_origins=["https://app.example"])
    async with serving(manager, echo) as url:
        with pytest.raises(InvalidStatus) as info:
            async with connect(url, origin="https://evil.example"):  # type: ignore[arg-type]
                pass
        assert info.value.response.status_code == 403
        async with connect(url, origin="https://app.example") as ws:  # type: ignore[arg-type]
            await ws.send("a")
            assert await ws.recv() == "a"
        async with connect(url) as ws:  # no Origin header: allowed (not a browser)
            await ws.send("b")
            assert await ws.recv() == "b"


# -- authentication -------------------------------------------------------------


TOKENS = {"s3cret-alice": "alice", "s3cret-bob": "bob"}


async def whoami(sock: ManagedSocket) -> None:
    await sock.send(sock.user_id or "")
    await idle(sock)


@pytest.mark.parametrize("where", ["header", "query", "subprotocol"])
async def test_token_auth_finds_the_token_and_sets_user_id(where: str) -> None:
    manager = quiet(authentication=TokenAuth(static_tokens(TOKENS)), protocols=["chat.v1"])
    seen: list[ManagedSocket] = []

    async def handler(sock: ManagedSocket) -> None:
        seen.append(sock)
        await whoami(sock)

    kwargs: dict[str, Any] = {}
    path = "/chat"
    if where == "header":
        kwargs["additional_headers"] = {"Authorization": "Bearer s3cret-alice"}
    elif where == "query":
        path = "/chat?room=1&token=s3cret-alice"
    else:
        kwargs["subprotocols"] = ["chat.v1", "bearer.s3cret-alice"]
    async with serving(manager, handler) as url, connect(url + path, **kwargs) as ws:
        assert await ws.recv() == "alice"
        assert manager.get_user_sockets("alice") == seen
        assert "s3cret" not in seen[0].path
        assert "s3cret" not in repr(seen[0])
        if where == "subprotocol":
            assert ws.subprotocol == "chat.v1"  # the token is never echoed back


async def test_bad_or_missing_token_gets_401_and_never_registers() -> None:
    manager = quiet(authentication=TokenAuth(static_tokens(TOKENS)))
    async with serving(manager, whoami) as url:
        for headers in ({"Authorization": "Bearer wrong"}, {}):
            with pytest.raises(InvalidStatus) as info:
                async with connect(url, additional_headers=headers):
                    pass
            assert info.value.response.status_code == 401
        assert manager.get_active_connections() == 0
        assert manager.statistics().rejected["unauthenticated"] == 2
        async with connect(url, additional_headers={"Authorization": "Bearer s3cret-bob"}) as ws:
            assert await ws.recv() == "bob"


async def test_authenticator_can_refuse_with_403_and_crashing_one_gets_500() -> None:
    async def auth(request: Any) -> str:
        if request.path == "/boom":
            raise RuntimeError("bug in the authenticator")
        raise RequestRejected(403, "banned")

    manager = quiet(authentication=auth)
    async with serving(manager, whoami) as url:
        for path, status in (("/", 403), ("/boom", 500)):
            with pytest.raises(InvalidStatus) as info:
                async with connect(url + path):
                    pass
            assert info.value.response.status_code == status
    assert manager.statistics().rejected == {"forbidden": 1, "error": 1}


# -- the user index and broadcast ---------------------------------------------------


async def test_user_index_tracks_open_sockets_only() -> None:
    async def auth(request: Any) -> str:
        return str(request.query["user"])

    manager = quiet(authentication=auth)
    async with serving(manager, whoami) as url:
        async with connect(url + "/?user=u1") as a1, connect(url + "/?user=u2") as b1:
            assert await a1.recv() == "u1"
            assert await b1.recv() == "u2"
            async with connect(url + "/?user=u1") as a2:
                assert await a2.recv() == "u1"
                assert len(manager.get_user_sockets("u1")) == 2
                assert sorted(manager.users()) == ["u1", "u2"]
            with trio.fail_after(5):
                while len(manager.get_user_sockets("u1")) != 1:
                    await trio.sleep(0.01)
        with trio.fail_after(5):
            while manager.get_active_connections():
                await trio.sleep(0.01)
        assert manager.get_user_sockets("u1") == []
        assert manager.users() == []


async def test_broadcast_reaches_filtered_sockets_and_returns_the_count() -> None:
    async def auth(request: Any) -> str:
        return str(request.query["user"])

    manager = quiet(authentication=auth)
    async with (
        serving(manager, whoami) as url,
        connect(url + "/?user=a") as a,
        connect(url + "/?user=b") as b,
        connect(url + "/?user=c") as c,
    ):
        for ws in (a, b, c):
            await ws.recv()
        count = await manager.broadcast({"hello": 1}, filter=lambda s: s.user_id != "b")
        assert count == 2
        assert json.loads(await a.recv()) == {"hello": 1}
        assert json.loads(await c.recv()) == {"hello": 1}
        assert await manager.broadcast("all") == 3
        assert await b.recv() == "all"
        assert manager.statistics().messages_out == 3 + 2 + 3  # whoami, then 2 broadcasts


async def test_a_closing_socket_leaves_the_registry_at_once(autojump_clock: Any) -> None:
    manager = WebSocketManager(authentication=lambda request: "u", close_timeout=5)
    async with open_peer(manager, idle, lockstep=True) as peer:  # never answers the close
        (sock,) = manager.get_user_sockets("u")
        sock.close_nowait(1000)
        assert manager.get_user_sockets("u") == []
        assert manager.get_active_connections() == 0
        assert await manager.broadcast("nobody") == 0
        _ = peer


async def test_healthy_peer_gets_every_message_in_order_when_producer_is_faster() -> None:
    manager = quiet(send_buffer_size=64 * 1024)
    total = 3000
    payload = "x" * 2000

    async def producer(sock: ManagedSocket) -> None:
        for i in range(total):
            await sock.send(f"{i}:{payload}")
        await idle(sock)

    async with serving(manager, producer) as url, connect(url, compression=None) as ws:
        for i in range(total):
            message = await ws.recv()
            assert isinstance(message, str)
            assert message.split(":", 1)[0] == str(i)
    assert manager.statistics().slow_consumer_closes == 0


async def test_stuck_peer_is_closed_1008_and_others_keep_receiving() -> None:
    manager = quiet(send_buffer_size=64 * 1024, slow_consumer_timeout=0.5)
    async with serving(manager, idle) as url:
        port = int(url.rsplit(":", 1)[1])
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        stuck = Peer(stream)
        assert await stuck.handshake() == 101  # ...and never reads again
        async with connect(url, compression=None, max_size=None) as healthy:
            with trio.fail_after(5):
                while manager.get_active_connections() < 2:
                    await trio.sleep(0.01)
            chunk = b"z" * 256 * 1024
            sent = 0
            with trio.fail_after(20):
                while manager.statistics().slow_consumer_closes == 0:
                    await manager.broadcast(chunk)
                    sent += 1
                    assert await healthy.recv() == chunk
            # the healthy peer got every one, and is still served afterwards
            assert await manager.broadcast(b"after") == 1
            assert await healthy.recv() == b"after"
        await stuck.abort()
        assert sent > 1


async def test_broadcast_can_drop_for_full_sockets_and_counts_it(autojump_clock: Any) -> None:
    manager = quiet(send_buffer_size=1024)
    async with open_peer(manager, idle, lockstep=True) as peer:
        (sock,) = manager.sockets()
        big = b"y" * 4096
        assert await manager.broadcast(big, on_full="drop") == 1  # room for the first
        assert manager.broadcast_nowait(big) == 0  # full now: dropped
        assert manager.statistics().dropped == 1
        assert sock.statistics().dropped == 1
        assert not sock.closed
        _ = peer


# -- close codes for bad input ---------------------------------------------------------


async def test_oversized_message_closes_1009_without_disturbing_others() -> None:
    manager = quiet(max_message_size=1000)
    async with serving(manager, echo) as url, connect(url) as other, connect(url) as ws:
        await ws.send("x" * 1001)
        with pytest.raises(WsClosed) as info:
            await ws.recv()
        assert info.value.rcvd is not None
        assert info.value.rcvd.code == 1009
        await other.send("still here")
        assert await other.recv() == "still here"


async def test_invalid_utf8_closes_1007(autojump_clock: Any) -> None:
    manager = quiet()
    async with open_peer(manager, echo) as peer:
        await peer.send_raw(bytes([0x81, 0x82, 0, 0, 0, 0, 0xC3, 0x28]))  # masked text, bad UTF-8
        code, _ = await peer.wait_closed()
        assert code == 1007
    assert manager.get_active_connections() == 0


async def test_reserved_bits_close_1002(autojump_clock: Any) -> None:
    manager = quiet(compression=None)
    async with open_peer(manager, echo) as peer:
        await peer.send_raw(bytes([0xC1, 0x80, 0, 0, 0, 0]))  # RSV1 set, nothing negotiated
        code, _ = await peer.wait_closed()
        assert code == 1002
    assert manager.get_active_connections() == 0


async def test_handler_crash_closes_1011_and_is_contained() -> None:
    manager = quiet()

    async def handler(sock: ManagedSocket) -> None:
        message = await sock.receive()
        if message == "crash":
            raise RuntimeError("handler bug")
        await sock.send(message)
        await echo(sock)

    async with serving(manager, handler) as url, connect(url) as ok, connect(url) as bad:
        await bad.send("crash")
        with pytest.raises(WsClosed) as info:
            await bad.recv()
        assert info.value.rcvd is not None
        assert info.value.rcvd.code == 1011
        await ok.send("fine")
        assert await ok.recv() == "fine"


# -- compression ---------------------------------------------------------------------------


async def test_permessage_deflate_is_negotiated_with_the_websockets_client() -> None:
    manager = quiet(compression=Compression())
    seen: list[ManagedSocket] = []

    async def handler(sock: ManagedSocket) -> None:
        seen.append(sock)
        await echo(sock)

    async with serving(manager, handler) as url:
        async with connect(url) as ws:
            text = "compress me " * 500
            await ws.send(text)
            assert await ws.recv() == text
            assert [e.name for e in ws.protocol.extensions] == ["permessage-deflate"]
            stats = seen[0].statistics()
            assert stats.compressed
            assert stats.bytes_out < len(text) // 10  # it really went out compressed
        async with connect(url, compression=None) as ws:
            await ws.send("plain")
            assert await ws.recv() == "plain"
            assert not seen[1].statistics().compressed


# -- timers (in memory, autojump clock) -----------------------------------------------------


async def test_peer_that_stops_answering_pings_is_closed_1011(autojump_clock: Any) -> None:
    manager = WebSocketManager(heartbeat_interval=5, heartbeat_timeout=3)
    async with open_peer(manager, idle) as peer:
        peer.answer_pings = False
        start = trio.current_time()
        code, reason = await peer.wait_closed()
        assert code == 1011
        assert reason == "heartbeat timeout"
        assert trio.current_time() - start <= 5 + 3 + 0.1
    assert manager.get_active_connections() == 0
    assert manager.statistics().heartbeat_timeouts == 1


async def test_healthy_peer_survives_many_heartbeats(autojump_clock: Any) -> None:
    manager = WebSocketManager(heartbeat_interval=5, heartbeat_timeout=3)

    async def handler(sock: ManagedSocket) -> None:
        await trio.sleep(60)
        await sock.send(f"rtt={sock.statistics().ping_rtt:.3f}")
        await idle(sock)

    async with open_peer(manager, handler) as peer:  # it answers pings while it reads
        message = await peer.receive()
        assert isinstance(message, str)
        assert message.startswith("rtt=0.")
        assert manager.get_active_connections() == 1
    assert manager.statistics().heartbeat_timeouts == 0


async def test_serve_stream_replays_bytes_a_front_already_read() -> None:
    manager = quiet()
    seen: list[ManagedSocket] = []

    async def handler(sock: ManagedSocket) -> None:
        seen.append(sock)
        await echo(sock)

    async def front(stream: trio.SocketStream) -> None:
        head = await stream.receive_some(10)  # e.g. a router peeking at the request line
        await manager.serve_stream(handler, stream, initial_data=head)

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, front, 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        async with connect(f"ws://127.0.0.1:{port}/front") as ws:
            await ws.send("through the front")
            assert await ws.recv() == "through the front"
            assert seen[0].path == "/front"
            assert seen[0].remote is not None  # the raw TCP stream was kept
        await manager.close()
        nursery.cancel_scope.cancel()


async def test_handler_ending_on_its_own_closed_socket_is_not_an_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    manager = quiet()

    async def handler(sock: ManagedSocket) -> None:
        while True:
            await sock.receive()  # raises ConnectionClosed once the peer has gone

    async with serving(manager, handler) as url, connect(url) as ws:
        await ws.send("one")
    with trio.fail_after(5):
        while manager.get_active_connections():
            await trio.sleep(0.01)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_in_memory_client_reports_a_refused_handshake_plainly() -> None:
    manager = WebSocketManager(authentication=lambda request: None)
    with pytest.raises(trio_websocket.ConnectionRejected) as info:
        async with open_client(manager, echo):
            pytest.fail("the handshake should have been refused")
    assert info.value.status_code == 401


async def test_in_memory_client_round_trip() -> None:
    manager = WebSocketManager()
    async with open_client(manager, echo, path="/memory") as conn:
        await conn.send_message("in memory")
        assert await conn.get_message() == "in memory"
    assert manager.get_active_connections() == 0


async def test_silent_tcp_connection_is_dropped_after_connection_timeout(
    autojump_clock: Any,
) -> None:
    manager = WebSocketManager(connection_timeout=7)
    async with open_peer(manager, idle, handshake=False) as peer:
        await peer.send_raw(b"GET / HTTP/1.1\r\nHost: x\r\n")  # and never finishes
        start = trio.current_time()
        assert await peer.next_event() is None
        assert 7 <= trio.current_time() - start < 7.5
    assert manager.statistics().rejected == {"timeout": 1}


async def test_close_is_bounded_when_the_peer_never_answers(autojump_clock: Any) -> None:
    manager = WebSocketManager(close_timeout=2, heartbeat_interval=math.inf)
    async with open_peer(manager, idle, lockstep=True) as peer:
        start = trio.current_time()
        await manager.close(1001, "bye")  # the peer reads nothing, answers nothing
        assert trio.current_time() - start <= 2 * 2 + 0.1
        assert manager.get_active_connections() == 0
        _ = peer


async def test_manager_close_sends_its_code_to_every_socket_and_serve_returns() -> None:
    manager = quiet()
    async with trio.open_nursery() as nursery:
        server = await nursery.start(manager.serve, idle, "127.0.0.1", 0)
        url = f"ws://127.0.0.1:{server.port}"
        async with connect(url) as a, connect(url) as b:
            with trio.fail_after(5):
                while manager.get_active_connections() < 2:
                    await trio.sleep(0.01)
            await manager.close(1012, "restart")
            for ws in (a, b):
                with pytest.raises(WsClosed) as info:
                    await ws.recv()
                assert info.value.rcvd is not None
                assert (info.value.rcvd.code, info.value.rcvd.reason) == (1012, "restart")
        with pytest.raises(OSError):
            await trio.open_tcp_stream("127.0.0.1", server.port)
    # serve returned on its own: the nursery closed without a cancel


# -- cancellation -----------------------------------------------------------------------


async def test_cancelling_serve_closes_every_socket_with_1001_and_leaves_nothing() -> None:
    manager = quiet()
    serving_scope = trio.CancelScope()

    async def run_server(task_status: trio.TaskStatus[Any]) -> None:
        with serving_scope:
            await manager.serve(idle, "127.0.0.1", 0, task_status=task_status)

    async with trio.open_nursery() as nursery:
        server = await nursery.start(run_server)
        url = f"ws://127.0.0.1:{server.port}"
        async with connect(url) as ws:
            with trio.fail_after(5):
                while manager.get_active_connections() < 1:
                    await trio.sleep(0.01)
            serving_scope.cancel()
            with trio.fail_after(5), pytest.raises(WsClosed) as info:
                await ws.recv()
            assert info.value.rcvd is not None
            assert info.value.rcvd.code == 1001
    assert manager.get_active_connections() == 0
    assert manager._connection_scopes == set()


async def handshake_ignoring_errors(peer: Peer) -> None:
    with contextlib.suppress(Exception):  # the server may drop us half way: that is the test
        await peer.handshake()


@pytest.mark.parametrize("phase", ["handshake", "auth", "handler", "closing"])
async def test_cancellation_at_each_await_point_leaves_nothing_behind(
    phase: str, autojump_clock: Any
) -> None:
    reached = trio.Event()

    async def auth(request: Any) -> str:
        if phase == "auth":
            reached.set()
            await trio.sleep_forever()
        return "u"

    async def handler(sock: ManagedSocket) -> None:
        if phase == "handler":
            reached.set()
        await idle(sock)

    manager = WebSocketManager(authentication=auth, close_timeout=3)
    client, server = trio.testing.lockstep_stream_pair()
    peer = Peer(client)
    async with trio.open_nursery() as nursery:
        scope = trio.CancelScope()

        async def run() -> None:
            with scope:
                await manager.serve_stream(handler, server)

        nursery.start_soon(run)
        if phase == "handshake":
            await peer.send_raw(b"GET / HTTP/1.1\r\n")
            await trio.testing.wait_all_tasks_blocked()
        elif phase == "closing":
            nursery.start_soon(peer.handshake)
            with trio.fail_after(5):
                while manager.get_active_connections() == 0:
                    await trio.sleep(0.01)
            # the peer stops reading: the close frame cannot even be written
            (sock,) = manager.sockets()
            sock.close_nowait(1000)
            await trio.testing.wait_all_tasks_blocked()
        else:
            nursery.start_soon(handshake_ignoring_errors, peer)
            await reached.wait()
        start = trio.current_time()
        scope.cancel()
    assert trio.current_time() - start <= 3 + 0.1
    assert manager.get_active_connections() == 0
    assert manager.statistics().handshaking == 0
    assert manager._connection_scopes == set()


# -- accept() with trio-websocket's own server ------------------------------------------------


async def test_accept_manages_sockets_from_a_trio_websocket_server() -> None:
    manager = quiet(authentication=TokenAuth(static_tokens(TOKENS)))

    refused: list[int] = []

    async def ws_handler(request: trio_websocket.WebSocketRequest) -> None:
        try:
            async with manager.accept(request, metadata={"via": "trio-websocket"}) as sock:
                assert manager.get_user_sockets("alice") == [sock]
                await sock.send({"user": sock.user_id, "meta": sock.metadata})
                await echo(sock)
        except RequestRejected as exc:
            refused.append(exc.status_code)

    async with trio.open_nursery() as nursery:
        server = await nursery.start(
            trio_websocket.serve_websocket, ws_handler, "127.0.0.1", 0, None
        )
        url = f"ws://127.0.0.1:{server.port}/"
        async with connect(url, additional_headers={"Authorization": "Bearer s3cret-alice"}) as ws:
            assert json.loads(await ws.recv()) == {
                "user": "alice",
                "meta": {"via": "trio-websocket"},
            }
            big = "deflate " * 1000
            await ws.send(big)
            assert await ws.recv() == big
            assert [e.name for e in ws.protocol.extensions] == ["permessage-deflate"]
        with pytest.raises(InvalidStatus) as info:
            async with connect(url):
                pass
        assert info.value.response.status_code == 401
        assert refused == [401]
        await manager.close()
        nursery.cancel_scope.cancel()
    assert manager.get_active_connections() == 0


async def test_accept_answers_a_handshake_timeout_with_a_real_408(autojump_clock: Any) -> None:
    async def slow_auth(request: object) -> str:
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    manager = quiet(authentication=slow_auth, connection_timeout=5)
    raised: list[BaseException] = []
    client, server = trio.testing.memory_stream_pair()

    async def serve_one() -> None:
        request = await trio_websocket.wrap_server_stream(nursery, server)
        try:
            async with manager.accept(request):
                raise AssertionError("admitted")
        except (RequestRejected, ConnectionClosed) as exc:
            raised.append(exc)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve_one)
        peer = Peer(client)
        with trio.fail_after(60):
            assert await peer.handshake() == 408  # the peer really got a 408...
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    assert len(raised) == 1
    assert isinstance(raised[0], RequestRejected)  # ...and only then is RequestRejected(408) raised
    assert raised[0].status_code == 408
    assert manager.statistics().rejected == {"timeout": 1}


# -- options -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "error", "name"),
    [
        ({"max_connections": 0}, ValueError, "max_connections"),
        ({"max_connections": "10"}, TypeError, "max_connections"),
        ({"heartbeat_interval": -1}, ValueError, "heartbeat_interval"),
        ({"heartbeat_timeout": math.nan}, ValueError, "heartbeat_timeout"),
        ({"connection_timeout": None}, TypeError, "connection_timeout"),
        ({"authentication": "nope"}, TypeError, "authentication"),
        ({"compression": True}, TypeError, "compression"),
        ({"protocols": "chat"}, TypeError, "protocols must be a list of strings"),
        ({"protocols": ["chat", ""]}, TypeError, "protocols"),
        ({"allowed_origins": "https://a.example"}, TypeError, "allowed_origins"),
        ({"allowed_origins": [b"https://a.example"]}, TypeError, "allowed_origins"),
        ({"max_messages_per_second": 0}, ValueError, "max_messages_per_second must be > 0"),
        ({"receive_buffer_size": math.inf}, TypeError, "receive_buffer_size"),
        ({"slow_consumer_timeout": 0}, ValueError, "slow_consumer_timeout"),
    ],
)
def test_bad_options_raise_errors_naming_the_option(
    options: dict[str, Any], error: type[Exception], name: str
) -> None:
    with pytest.raises(error, match=name):
        WebSocketManager(**options)


def test_rate_errors_do_not_speak_of_seconds() -> None:
    with pytest.raises(ValueError, match="max_messages_per_second") as info:
        WebSocketManager(max_messages_per_second=-1)
    assert "second" not in str(info.value).replace("max_messages_per_second", "")


async def test_infinite_limits_mean_never(autojump_clock: Any) -> None:
    manager = WebSocketManager(
        authentication=lambda request: "alice",
        max_connections=math.inf,
        max_connections_per_user=math.inf,
        max_connections_per_address=math.inf,
        max_messages_per_second=math.inf,
        heartbeat_interval=math.inf,
        heartbeat_timeout=math.inf,
    )
    async with contextlib.AsyncExitStack() as stack:
        peers = [await stack.enter_async_context(open_peer(manager, idle)) for _ in range(20)]
        assert [peer.status for peer in peers] == [101] * 20
        assert len(manager.get_user_sockets("alice")) == 20  # no per-user limit
        for i in range(500):  # a burst no finite rate limit would let through
            await peers[0].send(str(i))
        await trio.sleep(86_000)  # a (virtual) day: no heartbeat is ever due
        for peer in peers:
            with trio.move_on_after(1):
                event = await peer.next_event()
                raise AssertionError(f"the server sent {event!r}")
        stats = manager.statistics()
        assert stats.messages_in == 500
        assert (stats.rate_limited, stats.heartbeat_timeouts) == (0, 0)
        assert manager.get_active_connections() == 20


# -- the close code a connection ends with (one rule for serve and accept) ------------------


@pytest.mark.parametrize(
    ("failure", "sock_closed", "expected"),
    [
        (None, False, 1000),
        (ConnectionClosed(1000), True, 1000),  # ended on its own socket's close
        (ConnectionClosed(1000), False, 1011),  # some other connection's close: its bug
        (RuntimeError("bug"), False, 1011),
        (KeyboardInterrupt(), False, 1011),
    ],
)
async def test_a_connection_ends_with_one_close_code_rule(
    failure: BaseException | None, sock_closed: bool, expected: int
) -> None:
    from types import SimpleNamespace

    manager = quiet()
    sock = SimpleNamespace(closed=sock_closed)
    assert manager._end_code(failure, sock, trio.CancelScope())[0] == expected  # type: ignore[arg-type]
    cancelled = trio.CancelScope()
    cancelled.cancel()  # serve or the connection cancelled: the manager's code, whatever ended it
    assert manager._end_code(failure, sock, cancelled)[0] == 1001  # type: ignore[arg-type]


def test_an_option_assigned_after_construction_raises_instead_of_being_ignored() -> None:
    # Admission and the sockets take their options at construction: a later
    # assignment would silently change nothing, so it is refused.
    manager = WebSocketManager(allowed_origins=["https://a.example"], max_connections=5)
    with pytest.raises(AttributeError, match="fixed at construction"):
        manager.allowed_origins = ("https://b.example",)
    with pytest.raises(AttributeError, match="max_connections"):
        manager.max_connections = 10
    assert manager.allowed_origins == ("https://a.example",)
    assert manager.max_connections == 5
