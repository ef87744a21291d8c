"""Moving messages between this node's sockets and the backend (channels without history).

Out, :func:`send` (``broadcast`` / ``send_to_user``): queue the message on the
local sockets with room now (the shared fan-out, :mod:`..server._fanout`),
publish it to the backend once, then wait for the full ones as ``on_full``
says, so a slow local consumer never delays other nodes.

In, :class:`Inbox`: the backend's callback decides synchronously (decode, skip
this node's own echoes, queue without waiting; a full queue drops and counts)
and one task delivers what other nodes published, in arrival order. For
channels with history the inbox carries positioned publications, this node's
own included, and hands them to :mod:`._recovery`, which delivers them in
position order and reads back from the history what the full queue dropped.

The wire format between nodes is in :mod:`._wire`.
"""

from __future__ import annotations

from collections.abc import Callable

import trio

from .._exceptions import BackendUnavailable
from ..protocol._message import Outgoing
from ..server._fanout import OnFull, deliver, deliver_nowait
from ..server._socket import ManagedSocket
from . import _recovery
from ._history import POSITIONED, ChannelStream, StreamPosition, split_positioned
from ._wire import Wire, decode_wire, encode_wire

#: what the inbox carries: another node's message, or a positioned publication
Inboxed = Wire | tuple[StreamPosition, bytes]


async def send(
    host: _recovery.HistoryHost,
    sockets: list[ManagedSocket],
    outgoing: Outgoing,
    on_full: OnFull,
    topic: str | None,
    user_id: str | None,
) -> int:
    """Queue ``outgoing`` on ``sockets`` and publish it on ``topic`` (None: local only).

    Returns on how many sockets it was queued. The caller passed
    ``checkpoint_if_cancelled()``; raises :class:`~trio_wsmgr.BackendUnavailable`
    (with that count) after local delivery if the backend failed.
    """
    counts = host.counts
    counts["broadcasts"] += 1
    # Sockets with room get the message now; the full ones wait (per on_full)
    # after the publication, so a slow local consumer never delays other nodes.
    # The caller passed checkpoint_if_cancelled(): from here on the broadcast
    # happens. What follows is shielded and bounded (the backend's command
    # timeout, then slow_consumer_timeout), so a cancellation cannot cut it
    # in half and lose the count.
    queued, full = deliver_nowait(sockets, outgoing, on_full)
    failure: BackendUnavailable | None = None
    try:
        with trio.CancelScope(shield=True):
            if topic is not None:
                data = encode_wire(host.node, outgoing, on_full, user_id)
                try:
                    await host.backend.publish(topic, data)
                    counts["published"] += 1
                except BackendUnavailable as exc:
                    failure = exc
            if full:
                queued += await deliver(full, outgoing, on_full)
        if topic is None and not full:
            await trio.lowlevel.cancel_shielded_checkpoint()
    finally:
        counts["local_deliveries"] += queued
    if failure is not None:
        counts["publish_failures"] += 1
        raise BackendUnavailable(
            f"queued for {queued} local socket(s) but other nodes were not reached: {failure}",
            delivered=queued,
        ) from failure
    return queued


class Inbox:
    """What the backend delivers to this node, queued (bounded) and delivered in order.

    ``stream_of(channel)``: the history state of a channel with history;
    ``user_sockets(user_id)``: that user's local sockets.
    """

    __slots__ = ("_host", "_missed", "_queue", "_stream_of", "_user_sockets")

    def __init__(
        self,
        host: _recovery.HistoryHost,
        stream_of: Callable[[str], ChannelStream],
        user_sockets: Callable[[str], list[ManagedSocket]],
    ) -> None:
        self._host = host
        self._stream_of = stream_of
        self._user_sockets = user_sockets
        self._queue: trio.MemorySendChannel[tuple[str, Inboxed]] | None = None
        #: per channel with history: the newest position the full inbox dropped
        self._missed: dict[str, StreamPosition] = {}

    def attach(self, queue: trio.MemorySendChannel[tuple[str, Inboxed]] | None) -> None:
        """Queue on ``queue`` from now on (None: drop everything, the Broadcaster ended)."""
        self._queue = queue

    @property
    def used(self) -> int:
        """Messages waiting for local delivery now."""
        queue = self._queue
        return 0 if queue is None else queue.statistics().current_buffer_used

    def receive(self, topic: str, data: bytes) -> None:
        """The backend's callback: decide synchronously, queue without waiting."""
        counts = self._host.counts
        # history: own publications are delivered from here too, in position order
        wire: Inboxed | None = (
            split_positioned(data) if data[:1] == POSITIONED else decode_wire(data)
        )
        if wire is None:
            counts["malformed"] += 1
            return
        if isinstance(wire, Wire) and wire.node == self._host.node:
            counts["echoes"] += 1
            return
        counts["received"] += 1
        queue = self._queue
        try:
            if queue is None:
                raise trio.WouldBlock
            queue.send_nowait((topic, wire))
        except (trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError):
            counts["inbox_dropped"] += 1
            if not isinstance(wire, Wire):  # history: read it back once the inbox is empty
                self._missed[topic] = wire[0]

    async def run(self, queue: trio.MemoryReceiveChannel[tuple[str, Inboxed]]) -> None:
        """Deliver what ``queue`` holds, in order, until it is closed."""
        host = self._host
        while True:
            try:
                topic, wire = queue.receive_nowait()
            except trio.WouldBlock:
                if self._missed:  # publications of channels with history that were dropped
                    topic, position = self._missed.popitem()
                    await _recovery.catch_up(host, self._stream_of(topic), position)
                    continue
                try:
                    topic, wire = await queue.receive()
                except trio.EndOfChannel:
                    return
            if not isinstance(wire, Wire):  # a channel with history: in position order
                await _recovery.deliver_positioned(host, self._stream_of(topic), *wire)
                continue
            if wire.user_id is not None:
                sockets = self._user_sockets(wire.user_id)
            else:
                sockets = list(host.members.get(topic, {}).values())
            if sockets:
                queued = await deliver(sockets, wire.outgoing(), wire.on_full)
                host.counts["remote_deliveries"] += queued
