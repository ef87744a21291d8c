"""RFC 7692 permessage-deflate for wsproto: bounded inflation, small and lazy zlib state.

:class:`Compression` is the user-facing, immutable configuration; :meth:`Compression.extension`
builds one :class:`PerMessageDeflate` per connection, which plugs into wsproto through its public
:class:`wsproto.extensions.Extension` hooks.  Compared with wsproto's own extension it

* inflates with a size cap, so a compression bomb is refused with close code 1009 after at most
  ``max_message_size`` plus one chunk of output, never by inflating it all;
* lets the zlib memory level and window sizes be chosen (small by default) and creates zlib
  objects only when a compressed message is actually sent or received;
* sends messages shorter than ``threshold`` uncompressed (RSV1 clear);
* lets a server compress a broadcast once (:func:`deflate_once`, :func:`shared_frame`) and write the
  same bytes to every connection whose :meth:`PerMessageDeflate.shared_key` matches.

Close codes for inbound errors: RSV1 on a control or continuation frame is a framing error, 1002;
data that is not valid DEFLATE, or bytes after a final DEFLATE block, is 1007; a message that
inflates past ``max_message_size`` is 1009.
"""

from __future__ import annotations

import struct
import zlib
from typing import TYPE_CHECKING, Any, NamedTuple

import attrs
from wsproto.events import RejectConnection
from wsproto.extensions import Extension
from wsproto.frame_protocol import CloseReason, FrameDecoder, FrameProtocol, Opcode, RsvBits
from wsproto.utilities import RemoteProtocolError

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = [
    "Compression",
    "DeflateKey",
    "DeflateParameters",
    "PerMessageDeflate",
    "deflate_once",
    "shared_frame",
]

_TAIL = b"\x00\x00\xff\xff"  # the empty stored block a sync flush ends with (RFC 7692 §7.2.1)
_EMPTY_BLOCK = b"\x00" + _TAIL
_CHUNK = 64 * 1024  # most inflated output produced per zlib call
_BITS = {str(n): n for n in range(8, 16)}  # valid window-bits values, as they may be written
_FLAGS = ("server_no_context_takeover", "client_no_context_takeover")
_WINDOWS = ("server_max_window_bits", "client_max_window_bits")


def _int_in(low: int, high: int | None, note: str = "") -> Callable[[Any, Any, Any], None]:
    """Build an attrs validator requiring an ``int`` (not ``bool``) in ``[low, high]``."""

    def check(_inst: Any, attribute: Any, value: Any) -> None:
        span = f"from {low} to {high}" if high is not None else f">= {low}"
        if type(value) is not int:
            raise TypeError(f"{attribute.name} must be an int {span}{note}, got {value!r}")
        if value < low or (high is not None and value > high):
            raise ValueError(f"{attribute.name} must be {span}{note}, got {value}")

    return check


def _is_bool(_inst: Any, attribute: Any, value: Any) -> None:
    """Attrs validator requiring a real ``bool``."""
    if type(value) is not bool:
        raise TypeError(f"{attribute.name} must be a bool, got {value!r}")


def _window(value: int) -> int:
    """Upgrade a window of 8 bits to 9: zlib's raw deflate cannot use 8."""
    return 9 if type(value) is int and value == 8 else value


_WBITS = _int_in(9, 15, " (8 is accepted and treated as 9)")


@attrs.frozen(kw_only=True)
class Compression:
    """Permessage-deflate settings, shared by all connections; see :doc:`/topics/compression`.

    :param level: zlib compression level, 0 to 9, or -1 for zlib's default (6).
    :param memory_level: zlib ``memLevel``, 1 to 9; the compressor's hash tables cost
        ``2 ** (memory_level + 9)`` bytes.
    :param server_max_window_bits: the largest LZ77 window the server compresses with, 9 to 15
        (8 is accepted and treated as 9, the smallest window zlib can compress with).  A server
        offers it even unasked; a client asks the server for it when below 15.
    :param client_max_window_bits: the largest window the client may compress with, 9 to 15 (8 as
        above).  A server can only impose it when the client offers ``client_max_window_bits``;
        otherwise the client may use 15 and the server inflates with a 15-bit window.
    :param server_no_context_takeover: the server compresses each message on its own; required
        for :meth:`PerMessageDeflate.shared_key` on the server and frees its compressor between
        messages.
    :param client_no_context_takeover: the client compresses each message on its own, which frees
        the server's decompressor between messages.
    :param threshold: messages shorter than this many bytes (UTF-8 encoded for text) are sent
        uncompressed; 0 compresses everything.
    """

    level: int = attrs.field(default=6, validator=_int_in(-1, 9))
    memory_level: int = attrs.field(default=5, validator=_int_in(1, 9))
    server_max_window_bits: int = attrs.field(default=12, converter=_window, validator=_WBITS)
    client_max_window_bits: int = attrs.field(default=15, converter=_window, validator=_WBITS)
    server_no_context_takeover: bool = attrs.field(default=False, validator=_is_bool)
    client_no_context_takeover: bool = attrs.field(default=False, validator=_is_bool)
    threshold: int = attrs.field(default=128, validator=_int_in(0, None))

    def extension(self, *, max_message_size: int) -> PerMessageDeflate:
        """Return a fresh extension for one connection, inflating at most ``max_message_size``."""
        return PerMessageDeflate(self, max_message_size=max_message_size)


@attrs.frozen(kw_only=True)
class DeflateParameters:
    """The parameters both peers agreed on during the opening handshake."""

    server_max_window_bits: int  #: window the server compresses with (8 to 15)
    client_max_window_bits: int  #: window the client compresses with (8 to 15)
    server_no_context_takeover: bool  #: the server starts every message with an empty window
    client_no_context_takeover: bool  #: the client starts every message with an empty window


class DeflateKey(NamedTuple):
    """Everything that determines the compressed bytes of a message: a cache key for sharing."""

    level: int
    memory_level: int
    window_bits: int
    threshold: int


def deflate_once(payload: bytes, *, level: int, memory_level: int, window_bits: int) -> bytes:
    """Compress ``payload`` as a stand-alone RFC 7692 message payload (trailing 00 00 ff ff cut).

    The result is valid for any peer that agreed no context takeover for the sending side with a
    window of at least ``window_bits``.
    """
    comp = zlib.compressobj(level, zlib.DEFLATED, -window_bits, memory_level)
    return (comp.compress(payload) + comp.flush(zlib.Z_SYNC_FLUSH))[:-4]


def shared_frame(data: bytes | str, key: DeflateKey | None) -> bytes:
    """Build a complete unmasked (server-to-client) frame holding the whole message ``data``.

    With ``key`` (from :meth:`PerMessageDeflate.shared_key`) and ``data`` of at least
    ``key.threshold`` bytes the payload is compressed and RSV1 set; otherwise, including
    ``key=None``, the frame is plain, which every connection accepts whatever it negotiated.
    The bytes can be written as they are to every connection with an equal key, between messages
    (never in the middle of a fragmented message being sent through wsproto).
    """
    payload = data.encode() if isinstance(data, str) else bytes(data)
    first = 0x80 | (Opcode.TEXT if isinstance(data, str) else Opcode.BINARY)
    if key is not None and len(payload) >= key.threshold:
        payload = deflate_once(
            payload, level=key.level, memory_level=key.memory_level, window_bits=key.window_bits
        )
        first |= 0x40
    size = len(payload)
    if size < 126:
        header = struct.pack("!BB", first, size)
    elif size < 1 << 16:
        header = struct.pack("!BBH", first, 126, size)
    else:
        header = struct.pack("!BBQ", first, 127, size)
    return header + payload


def _parse(offer: str) -> dict[str, int | None] | None:
    """Parse the parameters of one permessage-deflate offer or response.

    Return ``None`` for anything RFC 7692 §7.1 says to refuse: an unknown or repeated parameter, a
    value on a flag, a missing or invalid window size (``server_max_window_bits`` always needs one).
    """
    params: dict[str, int | None] = {}
    for item in offer.split(";")[1:]:
        name, eq, raw = (part.strip() for part in item.partition("="))
        if len(raw) >= 2 and raw[0] == raw[-1] == '"':
            raw = raw[1:-1]  # quoted-string form, RFC 7692 §7.1
        if name in params:
            return None
        if name in _FLAGS and not eq:
            params[name] = None
        elif name in _WINDOWS and raw in _BITS:
            params[name] = _BITS[raw]
        elif name == "client_max_window_bits" and not eq:
            params[name] = None
        else:
            return None
    return params


class PerMessageDeflate(Extension):
    """One connection's permessage-deflate state; build it with :meth:`Compression.extension`.

    After the handshake :attr:`agreed` holds the negotiated :class:`DeflateParameters` (``None``
    when the peer did not negotiate compression and the extension stays disabled).
    """

    name = "permessage-deflate"

    def __init__(self, config: Compression, *, max_message_size: int) -> None:
        if type(max_message_size) is not int or max_message_size < 1:
            raise ValueError(f"max_message_size must be a positive int, got {max_message_size!r}")
        self.config = config
        self.max_message_size = max_message_size
        #: The negotiated parameters, or ``None`` before (or without) an agreement.
        self.agreed: DeflateParameters | None = None
        self._client = False
        self._send_bits: int | None = None  # None: never compress (peer demanded a window of 8)
        self._compressor: zlib._Compress | None = None
        self._decompressor: zlib._Decompress | None = None
        self._in_message = False  # the inbound message being received is compressed
        self._in_frame = False  # the inbound frame being received is inflated
        self._in_size = 0  # inflated bytes of the inbound message so far
        self._out_message = False  # the outbound message being sent is compressed

    def enabled(self) -> bool:
        """Whether the handshake agreed on compression."""
        return self.agreed is not None

    def shared_key(self) -> DeflateKey | None:
        """Key for :func:`shared_frame`, or ``None`` when compressed bytes cannot be shared.

        They can be shared when the handshake agreed no context takeover for our sending side.
        """
        if self.agreed is None or self._send_bits is None or not self._side(own=True)[1]:
            return None
        cfg = self.config
        return DeflateKey(cfg.level, cfg.memory_level, self._send_bits, cfg.threshold)

    # -- negotiation ------------------------------------------------------------------------

    def offer(self) -> str:
        """Client side: the parameters to offer, from the configuration."""
        cfg = self.config
        params = [flag for flag in _FLAGS if getattr(cfg, flag)]
        if cfg.server_max_window_bits < 15:
            params.append(f"server_max_window_bits={cfg.server_max_window_bits}")
        bits = cfg.client_max_window_bits
        params.append("client_max_window_bits" + (f"={bits}" if bits < 15 else ""))
        return "; ".join(params)

    def accept(self, offer: str) -> str | None:
        """Server side: answer one offer, or return ``None`` to decline it.

        Offers are seen in the client's order of preference; the first acceptable one is agreed
        and later ones are declined, as RFC 7692 §5 requires a single response.
        """
        params = _parse(offer)
        if self.agreed is not None or params is None:
            return None
        cfg = self.config
        s_bits = min(cfg.server_max_window_bits, params.get("server_max_window_bits") or 15)
        c_bits = 15  # the client may use any window unless it offered client_max_window_bits
        if "client_max_window_bits" in params:
            c_bits = min(cfg.client_max_window_bits, params["client_max_window_bits"] or 15)
        self._agree(
            client=False,
            server_max_window_bits=s_bits,
            client_max_window_bits=c_bits,
            server_no_context_takeover=_FLAGS[0] in params or cfg.server_no_context_takeover,
            client_no_context_takeover=_FLAGS[1] in params or cfg.client_no_context_takeover,
        )
        assert self.agreed is not None
        response = [flag for flag in _FLAGS if getattr(self.agreed, flag)]
        if s_bits < 15 or "server_max_window_bits" in params:
            response.append(f"server_max_window_bits={s_bits}")
        if "client_max_window_bits" in params and c_bits < 15:
            response.append(f"client_max_window_bits={c_bits}")
        return "; ".join(response)

    def finalize(self, offer: str) -> None:
        """Client side: apply the server's response, failing the handshake when it is invalid."""
        cfg = self.config
        params = _parse(offer)
        s_bits = (params or {}).get("server_max_window_bits") or 15
        c_bits = (params or {}).get("client_max_window_bits", cfg.client_max_window_bits)
        if (
            params is None
            or c_bits is None  # a response must give client_max_window_bits a value
            or c_bits > cfg.client_max_window_bits
            or s_bits > cfg.server_max_window_bits
            or (cfg.server_no_context_takeover and _FLAGS[0] not in params)
        ):
            raise RemoteProtocolError(
                f"invalid permessage-deflate response {offer!r}", event_hint=RejectConnection()
            )
        self._agree(
            client=True,
            server_max_window_bits=s_bits,
            client_max_window_bits=c_bits,
            server_no_context_takeover=_FLAGS[0] in params,
            client_no_context_takeover=_FLAGS[1] in params or cfg.client_no_context_takeover,
        )

    def _agree(self, *, client: bool, **agreed: Any) -> None:
        """Record the agreed parameters and which side of the connection we are."""
        self.agreed = DeflateParameters(**agreed)
        self._client = client
        bits = self._side(own=True)[0]
        self._send_bits = bits if bits > 8 else None

    def _side(self, *, own: bool) -> tuple[int, bool]:
        """The agreed window bits and no-context-takeover flag of our sending side or the peer's."""
        agreed = self.agreed
        assert agreed is not None
        if own != self._client:
            return agreed.server_max_window_bits, agreed.server_no_context_takeover
        return agreed.client_max_window_bits, agreed.client_no_context_takeover

    # -- inbound ----------------------------------------------------------------------------

    def frame_inbound_header(
        self, proto: FrameDecoder | FrameProtocol, opcode: Opcode, rsv: RsvBits, payload_length: int
    ) -> CloseReason | RsvBits:
        """Note whether the message is compressed; RSV1 is only allowed on its first frame."""
        if opcode.iscontrol() or opcode is Opcode.CONTINUATION:
            if rsv.rsv1:
                return CloseReason.PROTOCOL_ERROR
            self._in_frame = self._in_message and not opcode.iscontrol()
            return RsvBits(False, False, False)
        self._in_message = self._in_frame = rsv.rsv1
        self._in_size = 0
        if rsv.rsv1 and self._decompressor is None:  # a bigger window than the peer's is harmless
            self._decompressor = zlib.decompressobj(-max(self._side(own=False)[0], 9))
        return RsvBits(rsv.rsv1, False, False)

    def frame_inbound_payload_data(
        self, proto: FrameDecoder | FrameProtocol, data: bytes
    ) -> bytes | CloseReason:
        """Inflate a piece of a compressed message, within ``max_message_size``."""
        return self._inflate(data) if self._in_frame else data

    def frame_inbound_complete(
        self, proto: FrameDecoder | FrameProtocol, fin: bool
    ) -> bytes | CloseReason | None:
        """At the end of a compressed message, inflate the stripped tail and maybe drop zlib."""
        if not (self._in_frame and fin):
            return None
        assert self._decompressor is not None
        ended = self._decompressor.eof  # the peer closed the stream with a final block
        tail = b"" if ended else self._inflate(_TAIL)
        self._in_message = self._in_frame = False
        if ended or self._side(own=False)[1]:
            self._decompressor = None
        return tail

    def _inflate(self, data: bytes) -> bytes | CloseReason:
        """Inflate ``data`` in chunks, refusing as soon as the message outgrows its budget."""
        inflater = self._decompressor
        assert inflater is not None
        budget = self.max_message_size - self._in_size
        pieces: list[bytes] = []  # a list, not a bytearray: no over-allocation, no copying
        size = 0
        try:
            while True:
                limit = min(_CHUNK, budget - size + 1)
                piece = inflater.decompress(data, limit)
                data = inflater.unconsumed_tail
                pieces.append(piece)
                size += len(piece)
                if size > budget:
                    self._decompressor = None
                    return CloseReason.MESSAGE_TOO_BIG
                if not data and len(piece) < limit:
                    break
        except zlib.error:
            self._decompressor = None
            return CloseReason.INVALID_FRAME_PAYLOAD_DATA
        if inflater.unused_data:  # bytes after a final block: not a valid message
            self._decompressor = None
            return CloseReason.INVALID_FRAME_PAYLOAD_DATA
        self._in_size += size
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)

    # -- outbound ---------------------------------------------------------------------------

    def frame_outbound(
        self,
        proto: FrameDecoder | FrameProtocol,
        opcode: Opcode,
        rsv: RsvBits,
        data: bytes,
        fin: bool,
    ) -> tuple[RsvBits, bytes]:
        """Compress a data frame when its message qualifies; RSV1 goes on the first frame only.

        Whether a fragmented message is compressed is decided on its first frame's size.  Every
        frame is sync-flushed, so each can be inflated on arrival.
        """
        if opcode.iscontrol():
            return rsv, data
        if opcode is not Opcode.CONTINUATION:
            self._out_message = self._send_bits is not None and len(data) >= self.config.threshold
            if self._out_message:
                rsv = RsvBits(True, rsv.rsv2, rsv.rsv3)
        if not self._out_message:
            return rsv, data
        comp = self._compressor
        if comp is None:
            assert self._send_bits is not None
            cfg = self.config
            comp = zlib.compressobj(cfg.level, zlib.DEFLATED, -self._send_bits, cfg.memory_level)
            self._compressor = comp
        out = comp.compress(data) + comp.flush(zlib.Z_SYNC_FLUSH)
        if fin:
            if not out.endswith(_TAIL):  # zlib always ends so, but RFC 7692 §7.2.1 says to check
                out += _EMPTY_BLOCK
            out = out[:-4]
            self._out_message = False
            if self._side(own=True)[1]:
                self._compressor = None
        return rsv, out
