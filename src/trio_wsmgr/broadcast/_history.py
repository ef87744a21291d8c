"""Channel history: positions, the envelope, the in-memory ring, the node's cursors.

Plain synchronous code; the Broadcaster (:mod:`._broadcaster`) does the I/O.

A channel with history numbers its publications: a :class:`StreamPosition` is
an *epoch* (a random token naming one unbroken history) and an *offset* (1 for
the first publication of the epoch, +1 for each next one). The backend assigns
positions when it appends a publication to the channel's history, and sends it
to the nodes as a *positioned* message::

    b"\\x02" epoch b" " offset (decimal) b" " inner

``inner`` is what the publishing node handed to the backend (and what the
history keeps)::

    byte 0      on_full (0 wait, 1 drop, 2 close)
    bytes 1-8   the publishing node's id
    bytes 9-10  n, the number of excluded socket ids (the sender's node only)
    8 * n       the excluded socket ids
    payload     the message as JSON (UTF-8)
"""

from __future__ import annotations

import json
import math
import secrets
import struct
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any, Final, TypeAlias

import attrs

from .._exceptions import MessageEncodingError
from ..protocol._frames import OPCODE_TEXT
from ..protocol._message import Outgoing
from ..server._fanout import ON_FULL_CHOICES, OnFull

#: ``envelope(channel, position, message) -> message``: shapes what subscribers receive
Envelope: TypeAlias = Callable[[str, "StreamPosition", Any], Any]

#: entries read from a backend's history at once (replays and gap fills page through it)
PAGE: Final = 100
POSITIONED: Final = b"\x02"
_INNER = struct.Struct("!B8sH")
_ID = struct.Struct("!Q")


def _epoch(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, str):
        raise TypeError(f"{attribute.name} must be a str, not {value!r}")


def _offset(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{attribute.name} must be an int, not {value!r}")
    if value < 0:
        raise ValueError(f"{attribute.name} must be >= 0, not {value!r}")


@attrs.frozen(slots=True)
class StreamPosition:
    """Where a publication sits in a channel's history.

    ``offset`` counts the publications of one ``epoch`` (1 is the first; 0 is
    "before the first"). A new epoch means the history before it was lost.
    """

    epoch: str = attrs.field(validator=_epoch)
    offset: int = attrs.field(validator=_offset)


@attrs.frozen(slots=True)
class Publication:
    """One entry of a channel's history: its position and the message (as JSON decodes it)."""

    position: StreamPosition
    data: Any


@attrs.frozen(slots=True)
class SubscribeResult:
    """What :meth:`~trio_wsmgr.Broadcaster.subscribe` returns.

    ``recovered``: True when ``since`` was given and every publication after it
    was sent to the socket, in order, once, before any newer live one; False
    when no ``since`` was given, when the channel keeps no history, or when
    the history no longer reaches back to ``since`` (or its epoch changed): the
    client must then refetch its state.

    ``position``: the position of the newest publication sent or known (resume
    from it if nothing else arrives); None on a channel without history.
    """

    recovered: bool
    position: StreamPosition | None


#: the result for channels without history (no allocation per subscribe)
NO_HISTORY: Final = SubscribeResult(recovered=False, position=None)


@attrs.frozen
class HistoryPage:
    """What a backend's ``read_history`` returns.

    ``top``: the newest offset of ``epoch`` (0 if nothing was published);
    ``first``: the oldest offset still kept (``top + 1`` when none is);
    ``entries``: ``(offset, inner)`` pairs, oldest first.
    """

    epoch: str
    top: int
    first: int
    entries: list[tuple[int, bytes]]


def new_epoch() -> str:
    """A fresh random epoch."""
    return secrets.token_hex(6)


# -- encodings ----------------------------------------------------------------------------


def encode_json(message: Any) -> bytes:
    """A message of a channel with history, as JSON (what the history keeps)."""
    try:
        return json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    except (TypeError, ValueError) as exc:
        raise MessageEncodingError(
            f"cannot publish a {type(message).__name__} on a channel with history: "
            "its messages are JSON-serialisable values"
        ) from exc


def encode_inner(node: bytes, on_full: OnFull, exclude: Iterable[int], payload: bytes) -> bytes:
    ids = list(exclude)
    head = _INNER.pack(ON_FULL_CHOICES.index(on_full), node, len(ids))
    return b"".join((head, *(_ID.pack(sock_id) for sock_id in ids), payload))


@attrs.frozen(slots=True)
class Inner:
    node: bytes
    on_full: OnFull
    exclude: frozenset[int]
    payload: bytes


def decode_inner(data: bytes) -> Inner | None:
    if len(data) < _INNER.size:
        return None
    on_full_index, node, count = _INNER.unpack_from(data)
    end = _INNER.size + count * _ID.size
    if on_full_index >= len(ON_FULL_CHOICES) or len(data) < end:
        return None
    ids = frozenset(_ID.unpack_from(data, _INNER.size + i * _ID.size)[0] for i in range(count))
    on_full: OnFull = ON_FULL_CHOICES[on_full_index]  # type: ignore[assignment]
    return Inner(node, on_full, ids, data[end:])


def encode_positioned(epoch: str, offset: int, inner: bytes) -> bytes:
    return b"".join((POSITIONED, epoch.encode("ascii"), b" ", str(offset).encode(), b" ", inner))


def split_positioned(data: bytes) -> tuple[StreamPosition, bytes] | None:
    """A positioned message's position and inner part; None if malformed."""
    first = data.find(b" ", 1)
    second = data.find(b" ", first + 1) if first > 0 else -1
    if second < 0:
        return None
    try:
        epoch = data[1:first].decode("ascii")
        offset = int(data[first + 1 : second])
    except ValueError:
        return None
    if offset < 1 or not epoch:
        return None
    return StreamPosition(epoch, offset), data[second + 1 :]


def default_frame(channel: str, position: StreamPosition, payload: bytes) -> Outgoing:
    """The default envelope, built without decoding the payload again."""
    head = (
        f'{{"channel":{json.dumps(channel)},"epoch":{json.dumps(position.epoch)},'
        f'"offset":{position.offset},"data":'
    )
    return Outgoing.from_encoded(OPCODE_TEXT, b"".join((head.encode(), payload, b"}")))


# -- a channel's settings and this node's delivery state -------------------------------------


def _size(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"history_size must be an int, not {value!r}")
    if value < 1:
        raise ValueError(f"history_size must be >= 1, not {value!r}")


def _ttl(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"history_ttl must be a number of seconds, not {value!r}")
    if math.isnan(value) or value <= 0:
        raise ValueError(f"history_ttl must be > 0 (math.inf means never), not {value!r}")


def _envelope(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is not None and not callable(value):
        raise TypeError(f"envelope must be callable or None, not {value!r}")


@attrs.frozen
class HistoryOptions:
    """A channel's history settings (``create_channel``'s keyword arguments)."""

    size: int = attrs.field(validator=_size)
    ttl: float = attrs.field(validator=_ttl)
    envelope: Envelope | None = attrs.field(validator=_envelope)


@attrs.define(slots=True)
class Cursor:
    """A socket catching up: live publications are held back until its replay is done."""

    epoch: str = ""
    offset: int = 0
    replaying: bool = True
    #: the newest live position seen while replaying (the replay must reach it)
    seen: StreamPosition | None = None


@attrs.define(eq=False)
class ChannelStream:
    """This node's view of one channel with history: its options and its cursors."""

    name: str
    options: HistoryOptions
    #: the position last delivered to the live subscribers (None when the node is idle)
    last: StreamPosition | None = None
    cursors: dict[int, Cursor] = attrs.field(factory=dict)

    def frame(self, position: StreamPosition, payload: bytes) -> Outgoing:
        envelope = self.options.envelope
        if envelope is None:
            return default_frame(self.name, position, payload)
        return Outgoing(envelope(self.name, position, json.loads(payload)))

    def route(self, members: Iterable[tuple[int, Any]], position: StreamPosition) -> list[Any]:
        """The members that get the publication at ``position`` now (sync decision).

        Sockets replaying note it and wait; caught-up sockets skip what their
        replay already sent, then become plain live members.
        """
        cursors = self.cursors
        if not cursors:
            return [sock for _, sock in members]
        chosen = []
        for sock_id, sock in members:
            cursor = cursors.get(sock_id)
            if cursor is None:
                chosen.append(sock)
            elif cursor.replaying:
                cursor.seen = position
            elif position.epoch == cursor.epoch and position.offset <= cursor.offset:
                continue
            else:
                del cursors[sock_id]
                chosen.append(sock)
        return chosen


# -- the in-memory ring (MemoryHub's history) ----------------------------------------------


@attrs.define(slots=True)
class Ring:
    """One channel's history in a :class:`~trio_wsmgr.backends.MemoryHub`.

    The whole history expires ``ttl`` seconds after its last publication (as a
    Redis key would); the next one starts a new epoch.
    """

    epoch: str = attrs.field(factory=new_epoch)
    top: int = 0
    expires: float = math.inf
    entries: deque[tuple[int, bytes]] = attrs.field(factory=deque)

    def append(self, inner: bytes, *, size: int, ttl: float, now: float) -> int:
        self.top += 1
        self.entries.append((self.top, inner))
        while len(self.entries) > size:
            self.entries.popleft()
        self.expires = now + ttl
        return self.top

    def read(self, after: int | None, limit: int) -> HistoryPage:
        entries = self.entries
        first = entries[0][0] if entries else self.top + 1
        if limit <= 0:
            chosen: list[tuple[int, bytes]] = []
        elif after is None:
            chosen = list(entries)[-limit:]
        else:
            start = max(0, after + 1 - first)
            chosen = [entries[i] for i in range(start, min(len(entries), start + limit))]
        return HistoryPage(self.epoch, self.top, first, chosen)
