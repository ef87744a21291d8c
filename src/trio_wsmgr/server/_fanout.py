"""Fan-out: put one message on many sockets' send buffers.

Shared by ``WebSocketManager.broadcast`` and the Broadcaster. The message is
encoded once (:class:`~._message.Outgoing`); each socket with room gets it at
once, synchronously (usually straight into the kernel, see
:mod:`._transport`). Fan-out talks to a socket through a few methods of
:class:`~._socket.ManagedSocket` made for it (``_offer`` and the handling of a
full buffer), never through its attributes. Sockets whose buffer is full are
handled by ``on_full``:

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

from .._exceptions import ConnectionClosed
from ..protocol._message import Outgoing
from ._coalesce import coalescer

if TYPE_CHECKING:
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
    plain = outgoing.plain_frame()  # shared by every socket without compression
    gathering = coalescer()
    started = trio.current_time()
    gather = gathering if gathering.gather(started) else None
    for sock in sockets:
        size = sock._offer(outgoing, plain, gather)
        if size > 0:
            queued += 1
        elif size < 0:  # full
            if on_full == "wait":
                full.append(sock)
            else:
                sock._overflow(on_full)
    if gather is None and queued:
        gathering.wrote(started, trio.current_time())
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
    deadline = full[0]._room_deadline()
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
            for rest in full[index:]:
                rest._count_dropped()
            return queued
    return queued
