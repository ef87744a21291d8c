"""The sans-IO server wire: the frame reader and the handshake parser, against wsproto's client."""

from __future__ import annotations

import pytest
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    Request,
    TextMessage,
)
from wsproto.handshake import H11Handshake

from trio_wsmgr import Compression
from trio_wsmgr.protocol._handshake import (
    HandshakeError,
    accept_response,
    parse_request,
    plausible_start,
)
from trio_wsmgr.protocol._reader import Close, FrameReader
from trio_wsmgr.protocol._reader import Ping as PingEvent


def client_and_request(**request: object) -> tuple[WSConnection, bytes]:
    client = WSConnection(ConnectionType.CLIENT)
    data = client.send(Request(host="example", target="/chat?x=1", **request))  # type: ignore[arg-type]
    return client, data


def test_a_real_client_request_parses_and_our_101_is_accepted_by_it() -> None:
    client, data = client_and_request(subprotocols=["chat"], extra_headers=[(b"X-A", b"b")])
    head, _, rest = data.partition(b"\r\n\r\n")
    assert rest == b""
    request = parse_request(head)
    assert request.target == "/chat?x=1"
    assert ("x-a", "b") in request.headers
    assert ("host", "example") in request.headers
    assert request.subprotocols == ("chat",)
    client.receive_data(accept_response(request.key, subprotocol="chat"))
    (event,) = client.events()
    assert isinstance(event, AcceptConnection)
    assert event.subprotocol == "chat"


@pytest.mark.parametrize(
    ("mangle", "status"),
    [
        (lambda h: h.replace(b"GET", b"PUT", 1), 400),
        (lambda h: h.replace(b"HTTP/1.1", b"HTTP/1.0", 1), 400),
        (lambda h: h.replace(b"Sec-WebSocket-Version: 13", b"Sec-WebSocket-Version: 7"), 426),
        (lambda h: h + b"\r\nContent-Length: 5", 400),
        (lambda h: h + b"\r\n folded", 400),
        (lambda h: h + b"\r\nBad Header: x", 400),
    ],
)
def test_requests_outside_the_rfc_are_refused(mangle: object, status: int) -> None:
    _, data = client_and_request()
    head = data.partition(b"\r\n\r\n")[0]
    with pytest.raises(HandshakeError) as info:
        parse_request(mangle(head))  # type: ignore[operator]
    assert info.value.status == status


def test_garbage_is_refused_before_a_blank_line_ever_comes() -> None:
    assert plausible_start(b"GET /ws HT")
    assert not plausible_start(b"\x16\x03\x01\x02\x00")
    assert not plausible_start(b"GET /ws HTTP/1.1 extra\r\n")


def opened() -> tuple[WSConnection, FrameReader]:
    client = WSConnection(ConnectionType.CLIENT)
    server = H11Handshake(ConnectionType.SERVER)
    server.receive_data(client.send(Request(host="h", target="/")))
    next(server.events())
    client.receive_data(server.send(AcceptConnection()))
    next(client.events())
    return client, FrameReader(max_message_size=1 << 20)


def test_fragments_interleaved_with_a_ping_fed_one_byte_at_a_time() -> None:
    client, reader = opened()
    wire = (
        client.send(TextMessage(data="hé", message_finished=False))
        + client.send(Ping(payload=b"p"))
        + client.send(TextMessage(data="llo", message_finished=True))
        + client.send(BytesMessage(data=b"\x00" * 70000))
        + client.send(CloseConnection(code=1001, reason="bye"))
    )
    events: list[object] = []
    for i in range(len(wire)):
        events.extend(reader.feed(wire[i : i + 1]))
    assert events == [PingEvent(b"p"), "héllo", b"\x00" * 70000, Close(1001, "bye")]
    assert reader.failure is None


def test_a_compressed_conversation_inflates_within_the_limit() -> None:
    server_side = Compression().extension(max_message_size=1 << 20)
    client_side = Compression().extension(max_message_size=1 << 20)
    client = WSConnection(ConnectionType.CLIENT)
    handshake = H11Handshake(ConnectionType.SERVER)
    handshake.receive_data(client.send(Request(host="h", target="/", extensions=[client_side])))
    request = next(handshake.events())
    client.receive_data(handshake.send(AcceptConnection(extensions=[server_side])))
    next(client.events())
    assert isinstance(request, Request)
    assert server_side.enabled()
    reader = FrameReader(max_message_size=1 << 20, extension=server_side)
    messages = ["deflate me " * 100, "again " * 200, "short"]
    wire = b"".join(client.send(TextMessage(data=m)) for m in messages)
    assert reader.feed(wire) == messages


def test_a_frame_over_the_limit_fails_before_its_payload_arrives() -> None:
    client, _ = opened()
    reader = FrameReader(max_message_size=1000)
    wire = client.send(BytesMessage(data=b"x" * 5000))
    assert reader.feed(wire[:10]) == []  # the header alone says it is too big
    assert reader.failure == (1009, "message too big")


@pytest.mark.parametrize("target", [b"/caf\xc3\xa9", b"/a\x7fb", b"ws://host/"])
def test_a_target_outside_visible_ascii_is_a_400_not_a_crash(target: bytes) -> None:
    _, data = client_and_request()
    head = data.partition(b"\r\n\r\n")[0].replace(b"GET / ", b"GET " + target + b" ", 1)
    head = head.replace(b"GET /chat?x=1 ", b"GET " + target + b" ", 1)
    with pytest.raises(HandshakeError) as info:
        parse_request(head)
    assert info.value.status == 400
