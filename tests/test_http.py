"""The HTTP front: static answers, the hand-over to the manager, and hostile input.

Responses are parsed with an h11 *client*; WebSocket clients are the
``websockets`` library (and a raw wsproto client for pipelined bytes). Timer
tests run over in-memory streams with the autojump clock.
"""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import h11
import pytest
import trio
import trio.lowlevel
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st
from websockets.exceptions import InvalidStatus
from websockets.trio.client import connect
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, Request, TextMessage
from wsproto.frame_protocol import FrameProtocol

from trio_wsmgr import ManagedSocket, WebSocketManager
from trio_wsmgr._demo._http import HttpFront, Resource, error, route
from trio_wsmgr.server._transport import BufferedStream

PAGE = Resource(b"<!doctype html><title>t</title>", "text/html; charset=utf-8")
SCRIPT = Resource(b"console.log(1)", "text/javascript; charset=utf-8")
ROUTES = {"/": PAGE, "/app.js": SCRIPT}


async def echo(sock: ManagedSocket) -> None:
    async for message in sock:
        await sock.send(f"{sock.path} {message}")


def front(**options: Any) -> HttpFront:
    manager = options.pop("manager", None) or WebSocketManager(heartbeat_interval=math.inf)
    return HttpFront(manager=manager, handler=echo, routes=ROUTES, **options)


@asynccontextmanager
async def serving(http: HttpFront) -> AsyncIterator[int]:
    async with trio.open_nursery() as nursery:
        server = await nursery.start(http.serve, "127.0.0.1", 0)
        try:
            yield server.port
        finally:
            await http.manager.close()
            nursery.cancel_scope.cancel()


def parse(raw: bytes) -> tuple[h11.Response, bytes]:
    """An HTTP response, as a real HTTP client sees it."""
    client = h11.Connection(h11.CLIENT)
    client.send(h11.Request(method="GET", target="/", headers=[("Host", "x")]))
    client.send(h11.EndOfMessage())
    client.receive_data(raw)
    client.receive_data(b"")
    response = client.next_event()
    assert isinstance(response, h11.Response), response
    body = b""
    while isinstance(event := client.next_event(), h11.Data):
        body += event.data
    return response, body


def header(response: h11.Response, name: str) -> str | None:
    for key, value in response.headers:
        if key == name.lower().encode():
            return value.decode()
    return None


async def exchange(port: int, raw: bytes) -> bytes:
    """Send ``raw`` on a fresh TCP connection; everything until the server closes."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(raw)
        await stream.send_eof()  # a request, then nothing more
        received = b""
        with trio.fail_after(5):
            while data := await stream.receive_some():
                received += data
        return received


def get(path: str, method: str = "GET", *extra: str) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", *extra, "", ""]
    return "\r\n".join(lines).encode()


# -- route(): the decisions, no I/O ------------------------------------------------------------


def request(target: bytes, method: bytes = b"GET", **headers: str) -> h11.Request:
    return h11.Request(method=method, target=target, headers=[("Host", "x"), *headers.items()])


@pytest.mark.parametrize(
    ("target", "method", "headers", "status"),
    [
        (b"/", b"GET", {}, 200),
        (b"/?cache=bust", b"GET", {}, 200),
        (b"/app.js", b"HEAD", {}, 200),
        (b"http://example.com/app.js", b"GET", {}, 200),
        (b"/missing", b"GET", {}, 404),
        (b"/", b"POST", {}, 405),
        (b"/ws", b"GET", {}, 426),
        (b"/ws", b"POST", {"Upgrade": "websocket"}, 405),
        (b"/ws", b"GET", {"Upgrade": "h2c"}, 426),
        (b"*", b"OPTIONS", {}, 400),
        (b"/ws", b"GET", {"Upgrade": "WebSocket"}, 101),
        (b"/ws?name=a", b"GET", {"Upgrade": "foo, websocket"}, 101),
    ],
)
def test_route_decides_from_method_path_and_upgrade(
    target: bytes, method: bytes, headers: dict[str, str], status: int
) -> None:
    answer = route(request(target, method, **headers), ROUTES, "/ws")
    assert answer.status == status
    assert answer.websocket == (status == 101)


def test_method_not_allowed_says_which_are() -> None:
    page = route(request(b"/", b"DELETE"), ROUTES, "/ws")
    assert ("Allow", "GET, HEAD") in page.headers
    ws = route(request(b"/ws", b"PUT"), ROUTES, "/ws")
    assert ("Allow", "GET") in ws.headers


def test_upgrade_required_names_the_protocol() -> None:
    assert ("Upgrade", "websocket") in route(request(b"/ws"), ROUTES, "/ws").headers


def test_options_are_validated_at_construction() -> None:
    with pytest.raises(ValueError, match="request_timeout"):
        front(request_timeout=0)
    with pytest.raises(TypeError, match="max_head_size"):
        front(max_head_size=1.5)
    with pytest.raises(ValueError, match="websocket_path"):
        front(websocket_path="ws")
    with pytest.raises(TypeError, match="routes"):
        HttpFront(manager=WebSocketManager(), handler=echo, routes={"app.js": SCRIPT})


# -- static answers on a real socket ------------------------------------------------------------


async def test_get_answers_with_type_length_caching_and_nosniff() -> None:
    async with serving(front()) as port:
        response, body = parse(await exchange(port, get("/")))
    assert response.status_code == 200
    assert body == PAGE.body
    assert header(response, "Content-Type") == "text/html; charset=utf-8"
    assert header(response, "Content-Length") == str(len(PAGE.body))
    assert header(response, "Cache-Control") == "no-cache"
    assert header(response, "X-Content-Type-Options") == "nosniff"
    assert "default-src 'self'" in (header(response, "Content-Security-Policy") or "")
    assert header(response, "Connection") == "close"


async def test_head_sends_the_headers_and_no_body() -> None:
    async with serving(front()) as port:
        raw = await exchange(port, get("/app.js", "HEAD"))
    assert raw.endswith(b"\r\n\r\n")
    assert b"console.log" not in raw
    assert f"Content-Length: {len(SCRIPT.body)}".encode() in raw


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (get("/nope"), 404),
        (get("/", "POST", "Content-Length: 3") + b"abc", 405),
        (get("/ws"), 426),
        (b"HELLO\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 40_000 + b"\r\n\r\n", 431),
    ],
)
async def test_bad_requests_get_a_plain_error_and_the_connection_ends(
    raw: bytes, status: int, caplog: pytest.LogCaptureFixture
) -> None:
    async with serving(front()) as port:
        response, body = parse(await exchange(port, raw))
    assert response.status_code == status
    assert body.startswith(str(status).encode())
    assert header(response, "Content-Type") == "text/plain; charset=utf-8"
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []


async def test_a_peer_that_hangs_up_at_once_costs_nothing(caplog: pytest.LogCaptureFixture) -> None:
    async with serving(front()) as port:
        assert await exchange(port, b"") == b""
    assert caplog.records == []


# -- the WebSocket hand-over ---------------------------------------------------------------------


async def test_websocket_upgrade_is_handed_to_the_manager_with_its_path() -> None:
    http = front()
    async with serving(http) as port, connect(f"ws://127.0.0.1:{port}/ws?room=a") as ws:
        await ws.send("hi")
        assert await ws.recv() == "/ws?room=a hi"
        assert http.manager.get_active_connections() == 1
        (sock,) = http.manager.sockets()
        assert sock.statistics().compressed  # the extension offer survived the replay


async def test_a_handshake_split_over_many_packets_is_replayed_whole() -> None:
    client = WSConnection(ConnectionType.CLIENT)
    handshake = client.send(Request(host="127.0.0.1", target="/ws"))
    frame = FrameProtocol(client=True, extensions=[]).send_data("whole")
    pieces = [handshake[i : i + 7] for i in range(0, len(handshake), 7)]
    async with serving(front()) as port:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            for piece in pieces:  # separate writes: the front reads the head in pieces
                await stream.send_all(piece)
                await trio.lowlevel.checkpoint()
            events: list[Any] = []
            with trio.fail_after(5):
                while not events:
                    client.receive_data(await stream.receive_some())
                    events += list(client.events())
                assert isinstance(events[0], AcceptConnection)
                await stream.send_all(frame)
                while not any(isinstance(e, TextMessage) for e in events):
                    client.receive_data(await stream.receive_some())
                    events += list(client.events())
    assert events[-1].data == "/ws whole"


async def test_a_closing_manager_refuses_upgrades_with_503() -> None:
    http = front()
    async with serving(http) as port:
        await http.manager.close()
        with pytest.raises(InvalidStatus) as caught:
            async with connect(f"ws://127.0.0.1:{port}/ws"):
                pass
        assert caught.value.response.status_code == 503


# -- timers and hostile peers, in memory ---------------------------------------------------------


async def answer_in_memory(http: HttpFront, raw: bytes, *, eof: bool = False) -> bytes:
    client, server = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(http.serve_stream, server)
        await client.send_all(raw)
        if eof:
            await client.send_eof()
        received = b""
        while data := await client.receive_some():
            received += data
        await client.aclose()
    return received


async def test_a_head_that_does_not_arrive_in_time_gets_408(autojump_clock: Any) -> None:
    http = front(request_timeout=3)
    started = trio.current_time()
    response, _ = parse(await answer_in_memory(http, b"GET / HTTP/1.1\r\nHost: x\r\n"))
    assert response.status_code == 408
    assert trio.current_time() - started == pytest.approx(3)


async def test_a_silent_peer_is_dropped_without_an_answer(autojump_clock: Any) -> None:
    assert await answer_in_memory(front(request_timeout=3), b"") == b""


async def test_a_peer_that_never_reads_the_answer_is_dropped(autojump_clock: Any) -> None:
    http = front(write_timeout=2)
    client, server = trio.testing.lockstep_stream_pair()  # writes wait for the reader
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(http.serve_stream, server)
            await client.send_all(get("/"))
    with pytest.raises(trio.BrokenResourceError):
        await client.send_all(b"anyone?")


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=300))
async def test_any_bytes_at_all_end_in_an_answer_or_a_hang_up(data: bytes) -> None:
    raw = await answer_in_memory(front(), data, eof=True)
    assert raw == b"" or raw.startswith(b"HTTP/1.1 ")


# -- replaying the head the front read ---------------------------------------------------------


async def test_bytes_the_front_read_are_read_again_first_then_the_stream() -> None:
    client, server = trio.testing.memory_stream_pair()
    stream = BufferedStream(server, unread=b"abcdef")
    await client.send_all(b"XYZ")
    assert await stream.receive_some(4) == b"abcd"
    assert await stream.receive_some(100) == b"ef"
    assert await stream.receive_some(100) == b"XYZ"
    await stream.aclose()
    assert await client.receive_some() == b""


def test_error_bodies_say_the_status() -> None:
    answer = error(404)
    assert answer.body == b"404 Not Found\n"
    assert answer.to_bytes().startswith(b"HTTP/1.1 404 Not Found\r\n")
