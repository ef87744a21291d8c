"""Permessage-deflate (RFC 7692) against independent peers, entirely in memory.

The peer is the ``websockets`` library's sans-I/O client (its own deflate implementation) or a
wsproto client running our extension; the server is a wsproto connection running our extension.
Bytes are shuttled between them by hand, so every test sees exactly what crosses the wire.
"""

from __future__ import annotations

import gc
import os
import struct
import tracemalloc
import zlib
from typing import Any

import pytest
from websockets.client import ClientProtocol
from websockets.extensions.permessage_deflate import (
    ClientPerMessageDeflateFactory,
)
from websockets.extensions.permessage_deflate import (
    PerMessageDeflate as WebsocketsDeflate,
)
from websockets.frames import Close, Frame
from websockets.frames import Opcode as WsOpcode
from websockets.http11 import Response
from websockets.uri import parse_uri
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Event,
    Message,
    Ping,
    Request,
    TextMessage,
)
from wsproto.extensions import PerMessageDeflate as WsprotoDeflate
from wsproto.frame_protocol import FrameProtocol, Opcode, RsvBits
from wsproto.utilities import RemoteProtocolError

from trio_wsmgr.protocol._compression import (
    Compression,
    DeflateKey,
    DeflateParameters,
    PerMessageDeflate,
    deflate_once,
    shared_frame,
)

MiB = 1 << 20
SMALL = "hi"  # below the default threshold of 128 bytes
LARGE = "".join(f"line {i}: the quick brown fox jumps over the lazy dog\n" for i in range(4000))
LARGE_BYTES = LARGE.encode() * 2  # ~420 KB: inflates over several 64 KiB chunks


def rsv1(wire: bytes) -> bool:
    """Whether the first frame in ``wire`` has RSV1 set."""
    return bool(wire[0] & 0x40)


def masked_frame(opcode: int, payload: bytes, *, fin: bool = True, rsv1: bool = False) -> bytes:
    """A client-to-server frame built by hand, for things real clients never send."""
    first = (0x80 if fin else 0) | (0x40 if rsv1 else 0) | opcode
    assert len(payload) < 126
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return struct.pack("!BB", first, 0x80 | len(payload)) + mask + masked


def raw_deflate(data: bytes, *, mode: int = zlib.Z_SYNC_FLUSH) -> bytes:
    comp = zlib.compressobj(6, zlib.DEFLATED, -15)
    out = comp.compress(data) + comp.flush(mode)
    return out[:-4] if mode == zlib.Z_SYNC_FLUSH else out


class Pair:
    """A websockets sans-I/O client talking to a wsproto server that runs our extension."""

    def __init__(
        self,
        compression: Compression | None = None,
        *,
        max_message_size: int = 16 * MiB,
        **client_options: Any,
    ) -> None:
        self.ext = (compression or Compression()).extension(max_message_size=max_message_size)
        factory = ClientPerMessageDeflateFactory(**client_options)
        self.client = ClientProtocol(
            parse_uri("ws://example.test/"), extensions=[factory], max_size=None
        )
        self.client.send_request(self.client.connect())
        self.server = WSConnection(ConnectionType.SERVER)
        self.server.receive_data(self.client_wire())
        assert isinstance(next(self.server.events()), Request)
        self.client.receive_data(self.server.send(AcceptConnection(extensions=[self.ext])))
        [response] = self.client.events_received()
        assert isinstance(response, Response)
        assert response.status_code == 101
        self.response_header = response.headers.get("Sec-WebSocket-Extensions")

    @property
    def client_ext(self) -> WebsocketsDeflate | None:
        found = [e for e in self.client.extensions if isinstance(e, WebsocketsDeflate)]
        return found[0] if found else None

    def client_wire(self) -> bytes:
        return b"".join(self.client.data_to_send())

    def to_server(self, wire: bytes | None = None) -> list[Event]:
        """Deliver the client's pending bytes (or ``wire``) to the server; return its events."""
        self.server.receive_data(self.client_wire() if wire is None else wire)
        return list(self.server.events())

    def to_client(self, event: Event) -> tuple[bytes, list[Frame]]:
        """Send ``event`` from the server; return the wire bytes and the client's frames."""
        wire = self.server.send(event)
        self.client.receive_data(wire)
        return wire, self.client.events_received()


def joined(events: list[Event]) -> str | bytes:
    """Reassemble the one message that ``events`` carry."""
    parts = [e.data for e in events if isinstance(e, (TextMessage, BytesMessage))]
    assert all(isinstance(e, (TextMessage, BytesMessage, Ping)) for e in events), events
    final = [e for e in events if isinstance(e, (TextMessage, BytesMessage))][-1]
    assert final.message_finished
    return "".join(parts) if isinstance(final, TextMessage) else b"".join(parts)


def frames_payload(frames: list[Frame]) -> bytes:
    assert frames[-1].fin
    return b"".join(bytes(f.data) for f in frames)


def close_code(events: list[Event]) -> int:
    closes = [e for e in events if isinstance(e, CloseConnection)]
    assert closes, events
    return closes[0].code


# -- configuration ----------------------------------------------------------------------------


def test_defaults_are_the_small_memory_profile() -> None:
    cfg = Compression()
    assert (cfg.level, cfg.memory_level, cfg.threshold) == (6, 5, 128)
    assert (cfg.server_max_window_bits, cfg.client_max_window_bits) == (12, 15)
    assert not cfg.server_no_context_takeover
    assert not cfg.client_no_context_takeover


def test_window_bits_of_8_are_upgraded_to_9() -> None:
    cfg = Compression(server_max_window_bits=8, client_max_window_bits=8)
    assert (cfg.server_max_window_bits, cfg.client_max_window_bits) == (9, 9)


@pytest.mark.parametrize(
    ("option", "value", "error"),
    [
        ("level", 10, ValueError),
        ("level", -2, ValueError),
        ("level", "6", TypeError),
        ("memory_level", 0, ValueError),
        ("memory_level", True, TypeError),
        ("server_max_window_bits", 7, ValueError),
        ("server_max_window_bits", 16, ValueError),
        ("client_max_window_bits", 16, ValueError),
        ("client_max_window_bits", 12.0, TypeError),
        ("server_no_context_takeover", 1, TypeError),
        ("client_no_context_takeover", "yes", TypeError),
        ("threshold", -1, ValueError),
    ],
)
def test_invalid_options_are_rejected_naming_the_option(
    option: str, value: object, error: type[Exception]
) -> None:
    with pytest.raises(error, match=option):
        Compression(**{option: value})


@pytest.mark.parametrize("size", [0, -1, 1.5])
def test_max_message_size_must_be_a_positive_int(size: Any) -> None:
    with pytest.raises(ValueError, match="max_message_size"):
        Compression().extension(max_message_size=size)


def test_each_connection_gets_a_fresh_extension() -> None:
    cfg = Compression()
    assert cfg.extension(max_message_size=1) is not cfg.extension(max_message_size=1)


# -- negotiation ------------------------------------------------------------------------------


def test_default_negotiation_with_websockets_client() -> None:
    pair = Pair()
    assert pair.response_header == "permessage-deflate; server_max_window_bits=12"
    assert pair.ext.agreed == DeflateParameters(
        server_max_window_bits=12,
        client_max_window_bits=15,
        server_no_context_takeover=False,
        client_no_context_takeover=False,
    )
    assert pair.client_ext is not None
    assert pair.client_ext.remote_max_window_bits == 12
    assert pair.client_ext.local_max_window_bits == 15


@pytest.mark.parametrize(
    ("client_options", "config", "header", "agreed"),
    [
        pytest.param(
            {"server_no_context_takeover": True},
            {},
            "server_no_context_takeover; server_max_window_bits=12",
            (12, 15, True, False),
            id="client-asks-server-no-context-takeover",
        ),
        pytest.param(
            {"client_no_context_takeover": True},
            {},
            "client_no_context_takeover; server_max_window_bits=12",
            (12, 15, False, True),
            id="client-offers-client-no-context-takeover",
        ),
        pytest.param(
            {"server_max_window_bits": 10},
            {},
            "server_max_window_bits=10",
            (10, 15, False, False),
            id="client-asks-smaller-server-window",
        ),
        pytest.param(
            {"server_max_window_bits": 14},
            {},
            "server_max_window_bits=12",
            (12, 15, False, False),
            id="server-window-stays-below-client-limit",
        ),
        pytest.param(
            {"client_max_window_bits": 11},
            {},
            "server_max_window_bits=12; client_max_window_bits=11",
            (12, 11, False, False),
            id="client-limits-its-own-window",
        ),
        pytest.param(
            {},
            {"client_max_window_bits": 10},
            "server_max_window_bits=12; client_max_window_bits=10",
            (12, 10, False, False),
            id="server-imposes-client-window",
        ),
        pytest.param(
            {"client_max_window_bits": None},
            {"client_max_window_bits": 10},
            "server_max_window_bits=12",
            (12, 15, False, False),
            id="client-window-not-offered-cannot-be-imposed",
        ),
        pytest.param(
            {},
            {"server_no_context_takeover": True, "client_no_context_takeover": True},
            "server_no_context_takeover; client_no_context_takeover; server_max_window_bits=12",
            (12, 15, True, True),
            id="server-imposes-no-context-takeover-both-ways",
        ),
        pytest.param(
            {},
            {"server_max_window_bits": 15},
            "",
            (15, 15, False, False),
            id="full-window-needs-no-parameter",
        ),
    ],
)
def test_negotiation_of_each_parameter(
    client_options: dict[str, Any],
    config: dict[str, Any],
    header: str,
    agreed: tuple[int, int, bool, bool],
) -> None:
    pair = Pair(Compression(**config), **client_options)
    assert pair.response_header == ("permessage-deflate; " + header).strip("; ")
    s_bits, c_bits, s_nct, c_nct = agreed
    assert pair.ext.agreed == DeflateParameters(
        server_max_window_bits=s_bits,
        client_max_window_bits=c_bits,
        server_no_context_takeover=s_nct,
        client_no_context_takeover=c_nct,
    )
    client_ext = pair.client_ext
    assert client_ext is not None
    assert (client_ext.remote_max_window_bits, client_ext.local_max_window_bits) == (s_bits, c_bits)
    assert client_ext.remote_no_context_takeover == s_nct
    assert client_ext.local_no_context_takeover == c_nct
    # and the agreement works: a compressed message each way
    pair.client.send_text(LARGE.encode())
    assert joined(pair.to_server()) == LARGE
    _, frames = pair.to_client(Message(data=LARGE))
    assert frames_payload(frames) == LARGE.encode()


@pytest.mark.parametrize(
    "offer",
    [
        "permessage-deflate; foo",
        "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
        "permessage-deflate; client_max_window_bits; client_max_window_bits=10",
        "permessage-deflate; server_no_context_takeover=1",
        "permessage-deflate; client_no_context_takeover=true",
        "permessage-deflate; server_max_window_bits",
        "permessage-deflate; server_max_window_bits=16",
        "permessage-deflate; server_max_window_bits=7",
        "permessage-deflate; server_max_window_bits=010",
        "permessage-deflate; client_max_window_bits=abc",
        'permessage-deflate; client_max_window_bits="',
    ],
)
def test_offers_with_bad_unknown_or_duplicate_parameters_are_declined(offer: str) -> None:
    ext = Compression().extension(max_message_size=MiB)
    assert ext.accept(offer) is None
    assert not ext.enabled()
    assert ext.agreed is None


def test_quoted_parameter_values_are_accepted() -> None:
    ext = Compression().extension(max_message_size=MiB)
    assert ext.accept('permessage-deflate; server_max_window_bits="10"') == (
        "server_max_window_bits=10"
    )


def test_server_picks_the_first_acceptable_of_several_offers() -> None:
    request = (
        b"GET / HTTP/1.1\r\nHost: example.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
        b"Sec-WebSocket-Extensions: permessage-deflate; foo, "
        b"permessage-deflate; server_max_window_bits=10, permessage-deflate\r\n\r\n"
    )
    server = WSConnection(ConnectionType.SERVER)
    server.receive_data(request)
    assert isinstance(next(server.events()), Request)
    ext = Compression().extension(max_message_size=MiB)
    response = server.send(AcceptConnection(extensions=[ext]))
    assert b"Sec-WebSocket-Extensions: permessage-deflate; server_max_window_bits=10\r\n" in (
        response
    )
    assert ext.agreed is not None
    assert ext.agreed.server_max_window_bits == 10


def test_client_demanding_an_8_bit_server_window_gets_uncompressed_messages() -> None:
    pair = Pair(server_max_window_bits=8)
    assert pair.response_header == "permessage-deflate; server_max_window_bits=8"
    wire, frames = pair.to_client(Message(data=LARGE))
    assert not rsv1(wire)  # zlib cannot compress with a 256-byte window, so we never do
    assert frames_payload(frames) == LARGE.encode()
    assert pair.ext.shared_key() is None
    pair.client.send_text(LARGE.encode())  # while the client's messages still inflate
    assert joined(pair.to_server()) == LARGE


def test_client_side_rejects_responses_that_break_its_offer() -> None:
    ext = Compression(server_no_context_takeover=True).extension(max_message_size=MiB)
    offer = ext.offer()
    assert offer == "server_no_context_takeover; server_max_window_bits=12; client_max_window_bits"
    for response in [
        "permessage-deflate; server_max_window_bits=12",  # dropped server_no_context_takeover
        "permessage-deflate; server_no_context_takeover",  # dropped server_max_window_bits
        "permessage-deflate; server_no_context_takeover; server_max_window_bits=13",
        "permessage-deflate; server_no_context_takeover; server_max_window_bits=12; "
        "client_max_window_bits",  # a response must give the value
        "permessage-deflate; server_no_context_takeover; server_max_window_bits=12; bogus",
    ]:
        with pytest.raises(RemoteProtocolError):
            ext.finalize(response)
    assert not ext.enabled()


# -- round trips ------------------------------------------------------------------------------


@pytest.mark.parametrize("text", [True, False], ids=["text", "binary"])
@pytest.mark.parametrize("size", ["small", "large"])
def test_round_trip_with_websockets_client(text: bool, size: str) -> None:
    pair = Pair()
    payload = {"small": SMALL.encode(), "large": LARGE_BYTES}[size]
    data: str | bytes = payload.decode() if text else payload
    # client -> server: websockets compresses every message
    (pair.client.send_text if text else pair.client.send_binary)(payload)
    wire = pair.client_wire()
    assert rsv1(wire)
    assert joined(pair.to_server(wire)) == data
    # server -> client: compressed only from the threshold up
    wire, frames = pair.to_client(Message(data=data))
    assert rsv1(wire) == (size == "large")
    if size == "large":
        assert len(wire) < len(payload) / 4
    assert frames[0].opcode is (WsOpcode.TEXT if text else WsOpcode.BINARY)
    assert frames_payload(frames) == payload


@pytest.mark.parametrize("threshold", [0, 3])
def test_threshold_is_measured_in_encoded_bytes(threshold: int) -> None:
    pair = Pair(Compression(threshold=threshold))
    wire, frames = pair.to_client(Message(data="é"))  # one character, two bytes
    assert rsv1(wire) == (threshold == 0)
    assert frames_payload(frames) == "é".encode()


def test_fragmented_compressed_message_from_client_with_interleaved_ping() -> None:
    pair = Pair()
    parts = [LARGE[:5000].encode(), LARGE[5000:90000].encode(), LARGE[90000:].encode()]
    pair.client.send_text(parts[0], fin=False)
    first = pair.client_wire()
    pair.client.send_ping(b"ping")
    pair.client.send_continuation(parts[1], fin=False)
    pair.client.send_continuation(parts[2], fin=True)
    rest = pair.client_wire()
    assert rsv1(first)
    events = pair.to_server(first) + pair.to_server(rest)
    assert any(isinstance(e, Ping) for e in events)
    assert joined(events) == LARGE


def test_fragmented_compressed_message_to_client_sets_rsv1_on_first_frame_only() -> None:
    pair = Pair()
    wires = []
    frames: list[Frame] = []
    for part, finished in [(LARGE[:6000], False), (LARGE[6000:], False), ("", True)]:
        wire, got = pair.to_client(Message(data=part, message_finished=finished))
        wires.append(wire)
        frames += got
    assert [rsv1(w) for w in wires] == [True, False, False]
    assert frames_payload(frames) == LARGE.encode()
    # the context carries on into the next message
    _, frames = pair.to_client(Message(data=LARGE))
    assert frames_payload(frames) == LARGE.encode()


def test_context_takeover_makes_a_repeated_message_cheaper() -> None:
    pair = Pair()
    message = os.urandom(1500).hex()  # 3000 bytes that only compress against themselves
    first, _ = pair.to_client(Message(data=message))
    second, frames = pair.to_client(Message(data=message))
    assert len(second) < len(first) / 10
    assert frames_payload(frames) == message.encode()


def test_without_context_takeover_each_message_compresses_alone() -> None:
    pair = Pair(Compression(server_no_context_takeover=True), client_no_context_takeover=True)
    message = os.urandom(1500).hex()
    first, _ = pair.to_client(Message(data=message))
    second, frames = pair.to_client(Message(data=message))
    assert first == second
    assert frames_payload(frames) == message.encode()
    for _ in range(3):  # the client compresses alone too, and the server keeps decoding
        pair.client.send_text(message.encode())
        assert joined(pair.to_server()) == message


def test_zlib_objects_are_created_lazily_and_released_without_takeover() -> None:
    pair = Pair(Compression(server_no_context_takeover=True), client_no_context_takeover=True)
    ext = pair.ext
    pair.to_client(Message(data=SMALL))  # below the threshold: no compressor needed
    assert ext._compressor is None
    assert ext._decompressor is None
    pair.to_client(Message(data=LARGE))
    pair.client.send_text(LARGE.encode())
    pair.to_server()
    assert ext._compressor is None  # released after each message
    assert ext._decompressor is None
    kept = Pair()  # with context takeover the state must be kept
    kept.to_client(Message(data=LARGE))
    kept.client.send_text(LARGE.encode())
    kept.to_server()
    assert kept.ext._compressor is not None
    assert kept.ext._decompressor is not None


# -- compress once, send to many --------------------------------------------------------------


def test_shared_frame_is_decoded_by_every_websockets_client() -> None:
    config = Compression(server_no_context_takeover=True)
    pairs = [Pair(config), Pair(config, client_max_window_bits=11)]
    key = pairs[0].ext.shared_key()
    assert key == DeflateKey(level=6, memory_level=5, window_bits=12, threshold=128)
    assert pairs[1].ext.shared_key() == key
    for message in [LARGE, LARGE_BYTES, os.urandom(70_000), SMALL]:
        frame = shared_frame(message, key)
        assert rsv1(frame) == (len(message) >= 128)
        for pair in pairs:
            pair.client.receive_data(frame)
            [got] = pair.client.events_received()
            expected = message.encode() if isinstance(message, str) else message
            assert got.data == expected
            # and wsproto's own sends on the same connection still decode afterwards
            _, frames = pair.to_client(Message(data=LARGE))
            assert frames_payload(frames) == LARGE.encode()


def test_shared_payload_equals_what_the_connection_would_send() -> None:
    pair = Pair(Compression(server_no_context_takeover=True))
    key = pair.ext.shared_key()
    assert key is not None
    wire, _ = pair.to_client(Message(data=LARGE_BYTES))
    assert wire == shared_frame(LARGE_BYTES, key)
    assert wire.endswith(
        deflate_once(LARGE_BYTES, level=6, memory_level=5, window_bits=key.window_bits)
    )


def test_nothing_is_shareable_with_context_takeover_but_plain_frames_still_work() -> None:
    pair = Pair()
    assert pair.ext.shared_key() is None
    pair.to_client(Message(data=LARGE))
    pair.client.receive_data(shared_frame(LARGE, None))
    [got] = pair.client.events_received()
    assert got.data == LARGE.encode()
    _, frames = pair.to_client(Message(data=LARGE))  # the compression context is intact
    assert frames_payload(frames) == LARGE.encode()


# -- hostile input ----------------------------------------------------------------------------


def peak_while(action: Any) -> tuple[Any, int]:
    """Run ``action()``; return its result and the peak bytes allocated meanwhile."""
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        result = action()
        return result, tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()


def test_compression_bomb_is_refused_with_1009_without_inflating_it() -> None:
    pair = Pair(max_message_size=MiB)
    pair.client.send_binary(bytes(10 * MiB))
    wire = pair.client_wire()
    assert len(wire) < 20_000
    events, peak = peak_while(lambda: pair.to_server(wire))
    assert close_code(events) == 1009
    assert not any(isinstance(e, BytesMessage) for e in events)
    # the budget, plus a 64 KiB chunk in flight, the window and the wire bytes: not 10 MiB
    assert peak < MiB + 256 * 1024, peak
    _, frames = pair.to_client(CloseConnection(code=1009))
    assert isinstance(frames[0], Frame)
    assert Close.parse(frames[0].data).code == 1009


def test_fragmented_bomb_is_refused_once_the_message_total_passes_the_limit() -> None:
    pair = Pair(max_message_size=MiB)
    chunk = bytes(400 * 1024)
    pair.client.send_binary(chunk, fin=False)
    for _ in range(20):
        pair.client.send_continuation(chunk, fin=False)
    pair.client.send_continuation(b"", fin=True)
    events, peak = peak_while(lambda: pair.to_server())
    delivered = sum(len(e.data) for e in events if isinstance(e, BytesMessage))
    assert delivered == 2 * len(chunk)  # two frames fit in 1 MiB, the third does not
    assert close_code(events) == 1009
    assert peak < 2 * MiB, peak


def test_messages_up_to_the_limit_are_accepted() -> None:
    pair = Pair(max_message_size=MiB)
    pair.client.send_binary(bytes(MiB))
    assert joined(pair.to_server()) == bytes(MiB)
    pair.client.send_binary(bytes(MiB + 1))
    assert close_code(pair.to_server()) == 1009


def test_rsv1_on_a_control_frame_is_a_protocol_error() -> None:
    pair = Pair()
    assert close_code(pair.to_server(masked_frame(Opcode.PING, b"x", rsv1=True))) == 1002


@pytest.mark.parametrize("compressed", [True, False])
def test_rsv1_on_a_continuation_frame_is_a_protocol_error(compressed: bool) -> None:
    pair = Pair()
    first = raw_deflate(b"hello") if compressed else b"hello"
    wire = masked_frame(Opcode.TEXT, first, fin=False, rsv1=compressed)
    wire += masked_frame(Opcode.CONTINUATION, raw_deflate(b" world"), rsv1=True)
    assert close_code(pair.to_server(wire)) == 1002


def test_garbage_compressed_data_closes_with_1007() -> None:
    pair = Pair()
    events = pair.to_server(masked_frame(Opcode.BINARY, b"\xff\xff\xff\xff", rsv1=True))
    assert close_code(events) == 1007


def test_bytes_after_a_final_deflate_block_close_with_1007() -> None:
    pair = Pair()
    payload = raw_deflate(b"hello", mode=zlib.Z_FINISH) + b"junk"
    assert close_code(pair.to_server(masked_frame(Opcode.BINARY, payload, rsv1=True))) == 1007


def test_message_ended_by_a_final_deflate_block_is_accepted() -> None:
    pair = Pair()  # RFC 7692 section 7.2.3.4 allows BFINAL instead of a sync flush
    for word in [b"hello", b"again"]:
        payload = raw_deflate(word, mode=zlib.Z_FINISH)
        assert joined(pair.to_server(masked_frame(Opcode.BINARY, payload, rsv1=True))) == word


# -- our extension on both sides --------------------------------------------------------------


def test_wsproto_client_and_server_both_running_our_extension() -> None:
    client_cfg = Compression(server_max_window_bits=10, client_no_context_takeover=True)
    client_ext = client_cfg.extension(max_message_size=4 * MiB)
    server_ext = Compression().extension(max_message_size=4 * MiB)
    client = WSConnection(ConnectionType.CLIENT)
    server = WSConnection(ConnectionType.SERVER)
    server.receive_data(
        client.send(Request(host="example.test", target="/", extensions=[client_ext]))
    )
    assert isinstance(next(server.events()), Request)
    client.receive_data(server.send(AcceptConnection(extensions=[server_ext])))
    assert isinstance(next(client.events()), AcceptConnection)
    expected = DeflateParameters(
        server_max_window_bits=10,
        client_max_window_bits=15,
        server_no_context_takeover=False,
        client_no_context_takeover=True,
    )
    assert client_ext.agreed == server_ext.agreed == expected

    for data in [SMALL, LARGE, SMALL.encode(), LARGE_BYTES, LARGE]:
        wire = client.send(Message(data=data))
        assert rsv1(wire) == (len(data) >= 128)
        server.receive_data(wire)
        assert joined(list(server.events())) == data
        wire = server.send(Message(data=data))
        assert rsv1(wire) == (len(data) >= 128)
        client.receive_data(wire)
        assert joined(list(client.events())) == data
    assert client_ext.shared_key() is not None  # the client side compresses each message alone
    assert server_ext.shared_key() is None


# -- memory -----------------------------------------------------------------------------------


def steady_state_bytes(make: Any, connections: int = 20) -> float:
    """Bytes per connection held by ``make()`` extensions after one compressed message each way."""
    sample = os.urandom(4096).hex().encode()
    incoming = raw_deflate(sample)
    proto = FrameProtocol(client=False, extensions=[])  # wsproto's hooks want to know the side
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        exts = [make() for _ in range(connections)]
        for ext in exts:
            ext.accept("permessage-deflate; client_max_window_bits")
            ext.frame_outbound(proto, Opcode.BINARY, RsvBits(False, False, False), sample, True)
            ext.frame_inbound_header(proto, Opcode.BINARY, RsvBits(True, False, False), 0)
            ext.frame_inbound_payload_data(proto, incoming)
            ext.frame_inbound_complete(proto, True)
        gc.collect()
        return (tracemalloc.get_traced_memory()[0] - base) / connections
    finally:
        tracemalloc.stop()


def test_default_memory_per_connection_is_a_fraction_of_wsprotos() -> None:
    ours = steady_state_bytes(lambda: Compression().extension(max_message_size=MiB))
    theirs = steady_state_bytes(WsprotoDeflate)
    assert ours < theirs / 3, (ours, theirs)


def test_connection_without_compressed_traffic_holds_no_zlib_state() -> None:
    def idle() -> PerMessageDeflate:
        ext = Compression().extension(max_message_size=MiB)
        ext.accept("permessage-deflate")
        proto = FrameProtocol(client=False, extensions=[])
        ext.frame_outbound(proto, Opcode.TEXT, RsvBits(False, False, False), SMALL.encode(), True)
        return ext

    exts, used = peak_while(lambda: [idle() for _ in range(20)])
    assert used / len(exts) < 4096  # a few Python objects, no zlib buffers
