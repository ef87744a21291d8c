"""The ASGI bridge's translation, event by event, with an in-process ASGI "server".

The server side here is two memory channels (what an ASGI server does with an app's
receive and send); the manager side is the real one. What hypercorn does on the wire
is in test_asgi.py.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing

from trio_wsmgr import HandshakeRequest, ManagedSocket, RequestRejected, WebSocketManager


class FakeServer:
    """Plays an ASGI server: feeds ``receive`` and records what the app sends."""

    def __init__(self, scope: dict[str, Any]) -> None:
        self.scope = scope
        self.to_app, self._from_server = trio.open_memory_channel[dict[str, Any]](16)
        self._to_test, self.from_app = trio.open_memory_channel[dict[str, Any]](16)

    async def receive(self) -> dict[str, Any]:
        return await self._from_server.receive()

    async def send(self, event: Any) -> None:
        await self._to_test.send(dict(event))

    async def next(self) -> dict[str, Any]:
        with trio.fail_after(10):
            return await self.from_app.receive()


def websocket_scope(path: str = "/chat", query: bytes = b"", **extra: Any) -> dict[str, Any]:
    return {
        "type": "websocket",
        "asgi": {"version": "3.0"},
        "path": path,
        "raw_path": path.encode(),
        "query_string": query,
        "headers": [
            (b"host", b"example.test"),
            (b"origin", b"http://example.test"),
            (b"sec-websocket-extensions", b"permessage-deflate"),
            (b"sec-websocket-key", b"ignored"),
        ],
        "subprotocols": ["chat.v2", "chat.v1"],
        "client": ("203.0.113.7", 50000),
        "server": ("127.0.0.1", 8000),
        **extra,
    }


@asynccontextmanager
async def running(
    manager: WebSocketManager, handler: Any, scope: dict[str, Any]
) -> AsyncIterator[FakeServer]:
    server = FakeServer(scope)
    app = manager.asgi_app(handler)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(app, scope, server.receive, server.send)
        await server.to_app.send({"type": "websocket.connect"})
        yield server
        nursery.cancel_scope.cancel()


def test_asgi_app_takes_fallback_by_keyword_only() -> None:
    async def handler(sock: ManagedSocket) -> None:
        pass

    manager = WebSocketManager()
    with pytest.raises(TypeError):
        manager.asgi_app(handler, handler)  # type: ignore[misc]


async def test_the_handshake_carries_path_query_headers_and_subprotocols() -> None:
    seen: list[ManagedSocket] = []

    def auth(request: HandshakeRequest) -> str:
        assert request.header("origin") == "http://example.test"
        assert request.header("host") == "example.test"
        return request.query["user"]

    async def handler(sock: ManagedSocket) -> None:
        seen.append(sock)
        async for message in sock:
            await sock.send(message)

    manager = WebSocketManager(authentication=auth, protocols=["chat.v1"])
    scope = websocket_scope(query=b"user=ada")
    async with running(manager, handler, scope) as server:
        accept = await server.next()
        assert accept == {"type": "websocket.accept", "subprotocol": "chat.v1"}
        (sock,) = seen
        assert sock.user_id == "ada"
        assert sock.path == "/chat?user=ada"
        assert sock.remote == ("203.0.113.7", 50000)
        assert not sock.statistics().compressed  # never offered: the server owns the wire
        await server.to_app.send({"type": "websocket.receive", "text": "hé"})
        assert await server.next() == {"type": "websocket.send", "text": "hé"}
        await server.to_app.send({"type": "websocket.receive", "bytes": b"\x00\xff"})
        assert await server.next() == {"type": "websocket.send", "bytes": b"\x00\xff"}


async def test_a_refusal_uses_the_denial_response_when_the_server_has_it() -> None:
    manager = WebSocketManager(authentication=lambda request: None)
    scope = websocket_scope(extensions={"websocket.http.response": {}})
    async with running(manager, None, scope) as server:
        start = await server.next()
        assert start["type"] == "websocket.http.response.start"
        assert start["status"] == 401
        body = await server.next()
        assert body == {"type": "websocket.http.response.body", "body": b"authentication required"}
    assert manager.statistics().rejected == {"unauthenticated": 1}


async def test_a_refusal_is_a_close_before_accept_without_the_extension() -> None:
    manager = WebSocketManager(allowed_origins=["https://elsewhere.test"])
    async with running(manager, None, websocket_scope()) as server:
        assert await server.next() == {"type": "websocket.close", "code": 1008}


async def test_a_websocket_accepted_while_close_runs_gets_the_close_code(
    autojump_clock: Any,
) -> None:
    # The ASGI server holds the accept event (as a real server may await its
    # write) and close() starts meanwhile. The bridge registers the socket
    # before the accept event goes out, so close() sees it here (the late close
    # in the manager's admission is exercised by test_races over
    # manager.accept). Either way the socket must get close()'s code at once,
    # not only when close_timeout drops what close() missed.
    accepting, release = trio.Event(), trio.Event()

    class HoldingServer(FakeServer):
        async def send(self, event: Any) -> None:
            if event["type"] == "websocket.accept":
                accepting.set()
                await release.wait()
            await super().send(event)

    async def handler(sock: ManagedSocket) -> None:
        async for _ in sock:
            pass

    manager = WebSocketManager(close_timeout=10, heartbeat_interval=math.inf)
    scope = websocket_scope()
    server = HoldingServer(scope)
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(manager.asgi_app(handler), scope, server.receive, server.send)
            await server.to_app.send({"type": "websocket.connect"})
            await accepting.wait()
            started = trio.current_time()
            nursery.start_soon(manager.close, 1012, "restart")
            await trio.testing.wait_all_tasks_blocked()
            assert manager.closing
            release.set()
            assert (await server.next())["type"] == "websocket.accept"
            closing = await server.next()
            assert trio.current_time() - started < 10  # virtual time: before close_timeout
            await server.to_app.send({"type": "websocket.disconnect", "code": 1012})
    assert closing == {"type": "websocket.close", "code": 1012, "reason": "restart"}
    assert manager.get_active_connections() == 0


async def test_close_codes_go_both_ways() -> None:
    closed: list[int | None] = []
    both = trio.Event()

    def note(sock: ManagedSocket) -> None:
        closed.append(sock.close_code)
        if len(closed) == 2:
            both.set()

    async def handler(sock: ManagedSocket) -> None:
        sock.add_close_callback(note)
        message = await sock.receive()
        if message == "bye":
            await sock.close(4001, "done")
        else:
            async for _ in sock:
                pass

    manager = WebSocketManager(heartbeat_interval=math.inf)
    async with running(manager, handler, websocket_scope()) as server:
        await server.next()  # accept
        await server.to_app.send({"type": "websocket.receive", "text": "bye"})
        assert await server.next() == {"type": "websocket.close", "code": 4001, "reason": "done"}
    async with running(manager, handler, websocket_scope()) as server:
        await server.next()  # accept
        await server.to_app.send({"type": "websocket.receive", "text": "stay"})
        await server.to_app.send({"type": "websocket.disconnect", "code": 4002})
        with trio.fail_after(10):
            await both.wait()
    assert closed == [4001, 4002]


async def test_the_managers_pings_are_answered_by_the_bridge(autojump_clock: Any) -> None:
    manager = WebSocketManager(heartbeat_interval=1, heartbeat_timeout=1)

    async def handler(sock: ManagedSocket) -> None:
        await trio.sleep(8)  # 8 heartbeats (virtual seconds): a lost pong would close it
        await sock.send(f"rtt {sock.statistics().ping_rtt}")

    async with running(manager, handler, websocket_scope()) as server:
        await server.next()  # accept
        message = await server.next()
        assert message["type"] == "websocket.send"
        assert message["text"].startswith("rtt ")
        assert manager.statistics().heartbeat_timeouts == 0


async def test_accept_asgi_raises_the_managers_refusal() -> None:
    manager = WebSocketManager(authentication=lambda request: None)
    server = FakeServer(websocket_scope())
    await server.to_app.send({"type": "websocket.connect"})
    refused: list[RequestRejected] = []
    async with trio.open_nursery() as nursery:

        async def route() -> None:
            try:
                async with manager.accept_asgi(server.scope, server.receive, server.send):
                    raise AssertionError("admitted")
            except RequestRejected as exc:
                refused.append(exc)

        nursery.start_soon(route)
        assert await server.next() == {"type": "websocket.close", "code": 1008}
    (exc,) = refused
    assert exc.status_code == 401


async def test_a_message_over_max_message_size_closes_1009() -> None:
    async def handler(sock: ManagedSocket) -> None:
        async for _ in sock:
            pass

    manager = WebSocketManager(max_message_size=1000, heartbeat_interval=math.inf)
    async with running(manager, handler, websocket_scope()) as server:
        await server.next()  # accept
        await server.to_app.send({"type": "websocket.receive", "text": "x" * 5000})
        close = await server.next()
        assert (close["type"], close["code"]) == ("websocket.close", 1009)


async def test_a_client_the_server_cannot_write_to_is_closed_as_a_slow_consumer(
    autojump_clock: Any,
) -> None:
    # The test stops taking the app's events: the ASGI server's send blocks, the bridge's
    # bounded pipe fills, then the manager's send buffer; the slow-consumer policy applies.
    manager = WebSocketManager(
        send_buffer_size=16 * 1024, slow_consumer_timeout=1.0, heartbeat_interval=math.inf
    )
    ready = trio.Event()

    async def handler(sock: ManagedSocket) -> None:
        ready.set()
        async for _ in sock:
            pass

    async with running(manager, handler, websocket_scope()) as server:
        await server.next()  # accept
        await ready.wait()
        for _ in range(200):  # 200 x 1 KiB: far more than the server, pipe and buffer hold
            await manager.broadcast("y" * 1024)
        assert manager.statistics().slow_consumer_closes == 1
        events = []
        while (event := await server.next())["type"] == "websocket.send":
            events.append(event)
        assert (event["type"], event["code"]) == ("websocket.close", 1008)
        assert len(events) < 200
