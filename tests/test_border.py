"""Pins the border to trio-websocket's and wsproto's internals (see _border.py).

If an upgrade of either moves a private attribute we rely on, these fail first,
with a message naming it, instead of the manager misbehaving somewhere else.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import trio
import trio.testing
import trio_websocket
import wsproto
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, BytesMessage, Request, TextMessage

from trio_wsmgr import Compression, _border
from trio_wsmgr.protocol import _frames
from trio_wsmgr.server._transport import BufferedStream

CONNECTION_ATTRIBUTES = [
    "_wsproto",
    "_stream",
    "_subprotocol",
    "_path",
    "_open_handshake",
    "_send",
    "_recv_channel",
    "_max_message_size",
    "_initial_request",
    "_reader_task",
    "_pings",
    "_close_reason",
]


async def test_trio_websocket_still_has_what_the_border_uses() -> None:
    client, server = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio_websocket.wrap_client_stream, nursery, client, "host", "/path?q=1")
        request = await trio_websocket.wrap_server_stream(nursery, server)
        assert hasattr(request, "_event"), "WebSocketRequest._event moved"
        assert isinstance(request._event, Request)
        conn = _border.connection_of(request)
        for name in CONNECTION_ATTRIBUTES:
            assert hasattr(conn, name), f"WebSocketConnection.{name} moved"
        assert isinstance(conn._wsproto, WSConnection)
        assert _border.handshake_host(request) == "host"
        assert _border.extension_offers(request) == []
        assert _border.pending_messages(conn) == 0
        stream = _border.adopt_stream(conn, BufferedStream, BufferedStream)
        assert isinstance(stream, BufferedStream)
        assert conn._stream is stream
        assert _border.adopt_stream(conn, BufferedStream, BufferedStream) is stream  # idempotent
        nursery.cancel_scope.cancel()


async def test_accept_with_extensions_negotiates_deflate() -> None:
    client, server = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        extension = Compression().extension(max_message_size=1 << 20)

        async def accept() -> None:
            request = await trio_websocket.wrap_server_stream(nursery, server)
            stream = _border.adopt_stream(
                _border.connection_of(request), BufferedStream, BufferedStream
            )
            stream.attach(nursery)
            await _border.accept(
                request, subprotocol=None, extra_headers=[], extensions=[extension]
            )

        nursery.start_soon(accept)
        conn = await _border.wrap_client_stream(
            nursery,
            client,  # type: ignore[arg-type]
            "host",
            "/",
            connection_class=trio_websocket.WebSocketConnection,
            subprotocols=[],
            extra_headers=[],
            extensions=[Compression().extension(max_message_size=1 << 20)],
            message_queue_size=1,
            max_message_size=1 << 20,
        )
        assert extension.enabled()
        assert conn.closed is None
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("size", [0, 125, 126, 65535, 65536, 70000])
@pytest.mark.parametrize("opcode", [_frames.OPCODE_TEXT, _frames.OPCODE_BINARY])
def test_encode_frame_is_read_back_by_wsproto(size: int, opcode: int) -> None:
    payload = b"a" * size
    client = WSConnection(ConnectionType.CLIENT)
    server = WSConnection(ConnectionType.SERVER)
    server.receive_data(client.send(Request(host="h", target="/")))
    next(server.events())
    client.receive_data(server.send(AcceptConnection()))
    next(client.events())
    client.receive_data(_frames.encode_frame(opcode, payload))
    parts = [e.data for e in client.events()]
    kind = TextMessage if opcode == _frames.OPCODE_TEXT else BytesMessage
    assert all(isinstance(p, str | bytes | bytearray) for p in parts)
    joined = "".join(parts) if kind is TextMessage else b"".join(parts)  # type: ignore[arg-type]
    assert joined == (payload.decode() if kind is TextMessage else payload)


def test_wsproto_version_is_the_one_pyproject_pins() -> None:
    # pyproject pins wsproto exactly (the border was tested against that release);
    # an environment with another version is not what these tests vouch for.
    text = (Path(__file__).parent.parent / "pyproject.toml").read_text()
    pins = re.findall(r'"wsproto==([0-9.]+)"', text)
    assert len(pins) == 1, "pyproject must pin wsproto with == (exactly as tested)"
    assert wsproto.__version__ == pins[0]
