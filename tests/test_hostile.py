"""Hostile input and faults.

Every case ends with a clear answer (or a dropped TCP), the server alive and the registry clean.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import struct
from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.exceptions import InvalidStatus
from websockets.trio.client import connect

from trio_wsmgr import Compression, ManagedSocket, TokenAuth, WebSocketManager, static_tokens
from trio_wsmgr.testing import Peer, open_peer

KEY = "dGhlIHNhbXBsZSBub25jZQ=="
GOOD = [
    "GET /ws HTTP/1.1",
    "Host: testserver",
    "Upgrade: websocket",
    "Connection: Upgrade",
    f"Sec-WebSocket-Key: {KEY}",
    "Sec-WebSocket-Version: 13",
]


def request(lines: list[str]) -> bytes:
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def idle(sock: ManagedSocket) -> None:
    async for _ in sock:
        pass


async def echo(sock: ManagedSocket) -> None:
    async for message in sock:
        await sock.send(message)


def manager(**options: Any) -> WebSocketManager:
    options.setdefault("heartbeat_interval", math.inf)
    options.setdefault("connection_timeout", 5)
    return WebSocketManager(**options)


async def read_all(peer: Peer) -> bytes:
    data = b""
    while True:
        try:
            chunk = await peer.stream.receive_some(65536)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return data
        if not chunk:
            return data
        data += chunk


def frame(
    opcode: int, payload: bytes, *, fin: bool = True, rsv: int = 0, mask: bool = True
) -> bytes:
    """A client frame, built by hand so it can be wrong on purpose."""
    first = (0x80 if fin else 0) | rsv | opcode
    size = len(payload)
    if size < 126:
        header = bytes((first, (0x80 if mask else 0) | size))
    elif size < 65536:
        header = struct.pack("!BBH", first, (0x80 if mask else 0) | 126, size)
    else:
        header = struct.pack("!BBQ", first, (0x80 if mask else 0) | 127, size)
    if not mask:
        return header + payload
    key = os.urandom(4)
    masked = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    return header + key + masked


# -- handshakes ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "data", "status"),
    [
        ("duplicate key", request([*GOOD, f"Sec-WebSocket-Key: {KEY}"]), b"400"),
        ("duplicate version", request([*GOOD, "Sec-WebSocket-Version: 13"]), b"400"),
        ("wrong version", request([*GOOD[:-1], "Sec-WebSocket-Version: 8"]), b"426"),
        ("missing upgrade", request([g for g in GOOD if not g.startswith("Upgrade")]), b"400"),
        ("missing key", request([g for g in GOOD if "Key" not in g]), b"400"),
        ("plain http", b"GET /ws HTTP/1.1\r\nHost: x\r\n\r\n", b"400"),
        ("post", request(["POST /ws HTTP/1.1", *GOOD[1:]]), b"400"),
        ("huge header block", request(GOOD + [f"X-{i}: {'a' * 1000}" for i in range(100)]), b"400"),
        ("tls client hello", bytes.fromhex("16030102000100") + bytes(300), b"400"),
        ("binary garbage", b"\x00\xff" * 100, b"400"),
    ],
)
async def test_malformed_handshake_gets_an_http_error_at_once(
    name: str, data: bytes, status: bytes, autojump_clock: Any
) -> None:
    mgr = manager()
    async with open_peer(mgr, idle, handshake=False) as peer:
        start = trio.current_time()
        await peer.send_raw(data)
        answer = await read_all(peer)
        assert answer.startswith(b"HTTP/1.1 " + status), (name, answer[:60])
        assert trio.current_time() - start < 1
    assert mgr.get_active_connections() == 0
    assert mgr.statistics().rejected == {"bad_request": 1}
    assert mgr._connection_scopes == set()


async def test_request_written_one_byte_at_a_time_still_works(autojump_clock: Any) -> None:
    mgr = manager()
    async with open_peer(mgr, echo, handshake=False) as peer:
        for byte in request(GOOD):
            await peer.send_raw(bytes([byte]))
        answer = await peer.stream.receive_some(65536)
        assert answer.startswith(b"HTTP/1.1 101")


async def test_client_that_stops_mid_request_is_dropped_after_connection_timeout(
    autojump_clock: Any,
) -> None:
    mgr = manager(connection_timeout=4)
    async with open_peer(mgr, idle, handshake=False) as peer:
        await peer.send_raw(request(GOOD)[:30])
        start = trio.current_time()
        assert await read_all(peer) == b""  # dropped, no answer
        assert 4 <= trio.current_time() - start < 4.5
    assert mgr.statistics().rejected == {"timeout": 1}


async def test_failed_auth_never_registers_nor_logs_the_token(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    mgr = manager(authentication=TokenAuth(static_tokens({"good-token": "u"})))
    got: list[Any] = []

    async def handler(sock: ManagedSocket) -> None:
        got.append(sock)
        await idle(sock)

    async with trio.open_nursery() as nursery:
        server = await nursery.start(mgr.serve, handler, "127.0.0.1", 0)
        url = f"ws://127.0.0.1:{server.port}/?token=bad-token-value"
        with pytest.raises(InvalidStatus):
            async with connect(url):
                pass
        assert await mgr.broadcast("to everyone") == 0
        await mgr.close()
    assert got == []
    ours = [r for r in caplog.records if not r.name.startswith("websockets")]  # the client's own
    assert ours  # we did log the refusal...
    assert all("bad-token-value" not in r.getMessage() for r in ours)  # ...without the token


# -- frames ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "data", "code"),
    [
        ("invalid utf-8", frame(0x1, b"\xc3\x28"), 1007),
        ("reserved bit 2", frame(0x1, b"hi", rsv=0x20), 1002),
        ("reserved opcode", frame(0x3, b"hi"), 1002),
        ("unmasked client frame", frame(0x1, b"hi", mask=False), 1002),
        ("control frame over 125 bytes", frame(0x9, b"p" * 126), 1002),
        ("fragmented control frame", frame(0x9, b"p", fin=False), 1002),
        ("continuation without start", frame(0x0, b"x"), 1002),
        ("just over max_message_size in one frame", frame(0x2, b"b" * 1025), 1009),
        (
            "just over max_message_size in fragments",
            b"".join(
                [frame(0x2, b"b" * 256, fin=False)]
                + [frame(0x0, b"b" * 256, fin=False) for _ in range(3)]
                + [frame(0x0, b"b")]
            ),
            1009,
        ),
    ],
)
async def test_bad_frames_close_with_the_right_code_and_spare_the_others(
    name: str, data: bytes, code: int, autojump_clock: Any
) -> None:
    mgr = manager(max_message_size=1024, compression=None)
    async with open_peer(mgr, echo) as bystander:
        async with open_peer(mgr, echo) as peer:
            await peer.send_raw(data)
            got, _ = await peer.wait_closed()
            assert got == code, name
        await bystander.send("still fine")
        assert await bystander.receive() == "still fine"
        assert mgr.get_active_connections() == 1
    assert mgr.get_active_connections() == 0


async def test_compression_bomb_is_refused_with_1009(autojump_clock: Any) -> None:
    mgr = manager(max_message_size=64 * 1024, compression=Compression())
    client_ext = Compression().extension(max_message_size=1 << 30)
    client, server = trio.testing.memory_stream_pair()
    peer = Peer(client)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(mgr.serve_stream, idle, server)
        assert await peer.handshake(extensions=[client_ext]) == 101
        await peer.send(b"\x00" * (16 << 20))  # 16 MiB of zeros: about 16 KiB on the wire
        code, _ = await peer.wait_closed()
        assert code == 1009
    assert mgr.get_active_connections() == 0


async def test_message_rate_limit_closes_1008(autojump_clock: Any) -> None:
    mgr = manager(max_messages_per_second=10)
    async with open_peer(mgr, echo) as peer:
        for i in range(10):  # a burst of one second's worth is fine
            await peer.send(str(i))
            assert await peer.receive() == str(i)
        await trio.sleep(1)
        for i in range(30):  # then a flood is not
            await peer.send(str(i))
        code, reason = await peer.wait_closed()
        assert (code, reason) == (1008, "message rate limit exceeded")
    assert mgr.statistics().rate_limited == 1


async def test_per_user_and_per_address_limits_refuse_with_429() -> None:
    async def auth(request: Any) -> str:
        return str(request.query.get("user", "anon"))

    mgr = manager(authentication=auth, max_connections_per_user=2, max_connections_per_address=3)
    async with trio.open_nursery() as nursery:
        server = await nursery.start(mgr.serve, idle, "127.0.0.1", 0)
        url = f"ws://127.0.0.1:{server.port}/"
        async with connect(url + "?user=a") as a1, connect(url + "?user=a") as a2:
            with pytest.raises(InvalidStatus) as info:
                async with connect(url + "?user=a"):
                    pass
            assert info.value.response.status_code == 429
            async with connect(url + "?user=b") as b1:
                with pytest.raises(InvalidStatus) as info:
                    async with connect(url + "?user=c"):
                        pass
                assert info.value.response.status_code == 429
                _ = (a1, a2, b1)
        assert mgr.statistics().rejected == {"per_user": 1, "per_address": 1}
        await mgr.close()


# -- faults ------------------------------------------------------------------------


async def test_peer_that_vanishes_without_fin_is_reaped(autojump_clock: Any) -> None:
    mgr = WebSocketManager(heartbeat_interval=10, heartbeat_timeout=5)
    async with open_peer(mgr, idle, lockstep=True) as peer:
        # it neither reads nor writes from now on: no FIN, no pong, nothing
        start = trio.current_time()
        with trio.fail_after(30):
            while mgr.get_active_connections():
                await trio.sleep(0.5)
        assert trio.current_time() - start <= 10 + 5 + 0.5
        _ = peer
    assert mgr.statistics().heartbeat_timeouts == 1


async def test_half_closed_tcp_is_reaped_at_once() -> None:
    mgr = manager()
    async with trio.open_nursery() as nursery:
        server = await nursery.start(mgr.serve, idle, "127.0.0.1", 0)
        stream = await trio.open_tcp_stream("127.0.0.1", server.port)
        peer = Peer(stream)
        assert await peer.handshake() == 101
        with trio.fail_after(5):
            while not mgr.get_active_connections():
                await trio.sleep(0.01)
        await stream.send_eof()  # half close: we will still read
        with trio.fail_after(5):
            while mgr.get_active_connections():
                await trio.sleep(0.01)
        await stream.aclose()
        await mgr.close()


async def test_close_under_load_with_stuck_peers_finishes_within_its_bound(
    autojump_clock: Any,
) -> None:
    mgr = WebSocketManager(close_timeout=3, heartbeat_interval=math.inf)
    healthy = 300
    stuck = 30
    async with trio.open_nursery() as nursery:
        peers: list[Peer] = []
        for i in range(healthy + stuck):
            client, server = (
                trio.testing.lockstep_stream_pair()
                if i < stuck
                else trio.testing.memory_stream_pair()
            )
            peer = Peer(client)
            peers.append(peer)
            nursery.start_soon(mgr.serve_stream, idle, server)
            await peer.handshake()
        await trio.testing.wait_all_tasks_blocked()
        assert mgr.get_active_connections() == healthy + stuck
        for peer in peers[stuck:]:  # healthy peers answer the close
            nursery.start_soon(peer.wait_closed)
        start = trio.current_time()
        await mgr.close()
        assert trio.current_time() - start <= 3 + 0.1
        assert mgr.get_active_connections() == 0
        assert mgr._connection_scopes == set()
        for peer in peers:
            await peer.abort()
    assert [p.close_code for p in peers[stuck:]] == [1001] * healthy


# -- fuzzing -----------------------------------------------------------------------


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(chunks=st.lists(st.binary(min_size=1, max_size=300), min_size=1, max_size=8))
def test_random_bytes_after_the_handshake_never_hurt_the_server(chunks: list[bytes]) -> None:
    async def main() -> None:
        mgr = manager(max_message_size=4096)
        async with open_peer(mgr, echo) as bystander, open_peer(mgr, echo) as peer:
            for chunk in chunks:
                with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                    await peer.send_raw(chunk)  # the server may have hung up already
            await trio.testing.wait_all_tasks_blocked()
            await peer.abort()
            await trio.testing.wait_all_tasks_blocked()
            # whatever happened to the fuzzed socket, the other one is untouched
            await bystander.send("ok")
            assert await bystander.receive() == "ok"
            assert mgr.get_active_connections() == 1
        assert mgr.get_active_connections() == 0
        assert mgr._connection_scopes == set()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.binary(min_size=0, max_size=600))
def test_random_handshake_bytes_get_an_answer_or_a_drop(data: bytes) -> None:
    async def main() -> None:
        mgr = manager(connection_timeout=2)
        async with open_peer(mgr, idle, handshake=False) as peer:
            await peer.send_raw(data)
            with trio.fail_after(3):
                answer = await read_all(peer)
            assert answer == b"" or answer.startswith(b"HTTP/1.1 ")
        assert mgr.get_active_connections() == 0
        assert mgr._connection_scopes == set()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


async def test_a_failing_reader_costs_its_own_connection_only(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, autojump_clock: Any
) -> None:
    from trio_wsmgr.protocol._reader import FrameReader

    original = FrameReader.feed

    def feed(self: FrameReader, data: bytes | bytearray) -> list[Any]:
        events = original(self, data)
        if "boom" in events:
            raise RuntimeError("a bug in the reader")
        return events

    monkeypatch.setattr(FrameReader, "feed", feed)
    mgr = manager()
    with caplog.at_level(logging.ERROR, logger="trio_wsmgr"):
        async with open_peer(mgr, echo) as bystander, open_peer(mgr, echo) as peer:
            await peer.send("boom")
            code, _ = await peer.wait_closed()
            assert code == 1011
            await bystander.send("still fine")
            assert await bystander.receive() == "still fine"
            assert mgr.get_active_connections() == 1
    assert any("reader of" in r.getMessage() for r in caplog.records)
