"""Fan-out: put one message on many sockets' send buffers.

Shared by ``WebSocketManager.broadcast`` and the Broadcaster. The message is
encoded once (:class:`~._message.Outgoing`); each socket with room gets it at
once, synchronously (usually straight into the kernel, see
:mod:`._transport`). Sockets whose buffer is full are handled by ``on_full``:

``"wait"``  wait for room, all of them against one deadline
            (``slow_consumer_timeout`` from now); a socket still full then is
            closed with 1008 "slow consumer". The producer is held up at most
            that long, however many sockets are slow.
``"drop"``  skip them (counted in ``dropped`` on the socket and the manager).
``"close"`` close them with 1008 at once.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Literal, TypeAlias

import trio

from .._config import CloseCode
from .._exceptions import ConnectionClosed
from ..protocol._message import Outgoing

if TYPE_CHECKING:
    from ._context import Counters
    from ._socket import ManagedSocket

OnFull: TypeAlias = Literal["wait", "drop", "close"]
ON_FULL_CHOICES = ("wait", "drop", "close")


def check_on_full(on_full: str) -> None:
    if on_full not in ON_FULL_CHOICES:
        raise ValueError(f"on_full must be one of {ON_FULL_CHOICES}, not {on_full!r}")


def deliver_nowait(
    sockets: Iterable[ManagedSocket], outgoing: Outgoing, on_full: OnFull
) -> tuple[int, list[ManagedSocket]]:
    """Queue on every socket with room; return (count, sockets that were full).

    With ``on_full`` "drop" or "close" the full ones are dealt with here and the
    returned list is empty.
    """
    queued = 0
    full: list[ManagedSocket] = []
    plain: bytes | None = None  # the uncompressed frame, shared by most sockets
    counting: Counters | None = None  # statistics go to the manager once per run
    count = size = 0
    for sock in sockets:
        stream = sock._stream
        if stream.closed or sock._closing:
            continue
        context = sock._context
        if stream.buffered < context.send_buffer_size:
            compressor = sock._compressor
            if compressor is None:
                if plain is None:
                    plain = outgoing.plain_frame()
                frame = plain
            else:
                frame = outgoing.frame_for(compressor)
            try:
                sock._put_frame(frame)
            except ConnectionClosed:
                continue
            queued += 1
            if context.counters is not counting:
                if counting is not None:
                    counting.count_out(size, count)
                counting, count, size = context.counters, 0, 0
            count += 1
            size += len(frame)
        elif on_full == "wait":
            full.append(sock)
        elif on_full == "drop":
            sock._dropped += 1
            sock._context.counters.dropped += 1
        else:
            sock._context.counters.slow_consumer_closes += 1
            sock.close_nowait(CloseCode.POLICY_VIOLATION, "slow consumer", discard_pending=True)
    if counting is not None:
        counting.count_out(size, count)
    return queued, full


async def deliver(sockets: Iterable[ManagedSocket], outgoing: Outgoing, on_full: OnFull) -> int:
    """Queue ``outgoing`` on ``sockets``; return on how many it was queued.

    Cancel-atomic as far as a fan-out can be: a call cancelled before it queued
    the message anywhere raises :class:`trio.Cancelled` and queued nothing; once
    one socket has it the broadcast has happened, so a cancellation while
    waiting for full sockets (``on_full="wait"``) stops the wait, counts the
    sockets still full as dropped, and returns the count. The caller's next
    checkpoint raises the cancellation (its scope stays cancelled).
    """
    await trio.lowlevel.checkpoint_if_cancelled()
    queued, full = deliver_nowait(sockets, outgoing, on_full)
    if not full:
        await trio.lowlevel.cancel_shielded_checkpoint()
        return queued
    deadline = trio.current_time() + full[0]._context.slow_consumer_timeout
    for index, sock in enumerate(full):
        try:
            if await sock._wait_room(deadline):
                sock._put(outgoing)
                queued += 1
        except ConnectionClosed:
            continue
        except trio.Cancelled:
            if not queued:
                raise  # nothing happened anywhere: the call did not happen
            _drop(full[index:])
            return queued
    return queued


def _drop(sockets: list[ManagedSocket]) -> None:
    """Count a broadcast as dropped on ``sockets`` (a cancelled wait for their room)."""
    for sock in sockets:
        if not sock.closed:
            sock._dropped += 1
            sock._context.counters.dropped += 1
