"""The Broadcaster's I/O for channels with history: publish, deliver in order, recover.

Three paths, each deciding synchronously (:class:`._history.ChannelStream`) and
then doing the I/O:

* :func:`publish`: hand the publication to the backend, which appends it to the
  history and sends it, positioned, to every subscribed node, this one
  included. Local subscribers get it from that echo like everyone else, so
  every node delivers a channel's publications in position order.
* :func:`deliver_positioned` (the inbox task): a publication whose offset is
  not the next one (the inbox dropped some, the backend reconnected) is
  preceded by the missing ones, read back from the history.
* :func:`recover`: subscribe live first (publications are held back for the
  socket), replay the history after ``since``, then let the held-back ones
  through from past the last replayed offset: no gap, no duplicate, also while
  other nodes publish meanwhile. Memory stays bounded: one page of history at a
  time, and the socket's own send buffer (full: the slow-consumer policy).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import attrs
import trio

from .._exceptions import BackendUnavailable
from ..server._fanout import OnFull, deliver
from ._history import (
    PAGE,
    ChannelStream,
    HistoryPage,
    Publication,
    StreamPosition,
    SubscribeResult,
    decode_inner,
    encode_inner,
    encode_json,
)

if TYPE_CHECKING:
    from ..server._socket import ManagedSocket
    from ._backend import Backend


@attrs.frozen(eq=False)
class HistoryHost:
    """What these paths use of their Broadcaster (which makes one and shares its state).

    :mod:`._dispatch` (plain publications and the inbox) uses the same one.

    ``counts`` and ``members`` are the Broadcaster's own dicts: updates through
    them are its counters and its channel membership.
    """

    #: this node's random id
    node: bytes
    backend: Backend
    #: the Broadcaster's counters by name
    counts: dict[str, int]
    #: channel -> socket id -> local subscriber
    members: dict[str, dict[int, ManagedSocket]]


async def publish(
    broadcaster: HistoryHost,
    stream: ChannelStream,
    message: object,
    on_full: OnFull,
    exclude: frozenset[int],
) -> int:
    """Publish on a channel with history; return how many local subscribers will get it."""
    inner = encode_inner(broadcaster.node, on_full, exclude, encode_json(message))
    await trio.lowlevel.checkpoint_if_cancelled()
    counts = broadcaster.counts
    counts["broadcasts"] += 1
    members = broadcaster.members.get(stream.name, {})
    expected = sum(1 for sock_id in members if sock_id not in exclude)
    try:
        with trio.CancelScope(shield=True):  # bounded by the backend's command timeout
            options = stream.options
            await broadcaster.backend.publish_history(
                stream.name, inner, size=options.size, ttl=options.ttl
            )
    except BackendUnavailable as exc:
        counts["publish_failures"] += 1
        raise BackendUnavailable(
            f"the publication was not stored nor sent to anyone: {exc}", delivered=0
        ) from exc
    counts["published"] += 1
    return expected


async def read(
    broadcaster: HistoryHost, stream: ChannelStream, after: int | None, limit: int
) -> HistoryPage:
    options = stream.options
    return await broadcaster.backend.read_history(
        stream.name, after=after, limit=limit, size=options.size, ttl=options.ttl
    )


async def history(
    broadcaster: HistoryHost, stream: ChannelStream, since: StreamPosition | None, limit: int
) -> list[Publication]:
    after = None
    if since is not None:
        page = await read(broadcaster, stream, None, 0)
        if since.epoch == page.epoch:
            after = since.offset
    page = await read(broadcaster, stream, after, limit)
    publications = []
    for offset, data in page.entries:
        inner = decode_inner(data)
        if inner is not None:
            position = StreamPosition(page.epoch, offset)
            publications.append(Publication(position, json.loads(inner.payload)))
    return publications


async def position(broadcaster: HistoryHost, stream: ChannelStream) -> StreamPosition:
    page = await read(broadcaster, stream, None, 0)
    return StreamPosition(page.epoch, page.top)


# -- live delivery (the inbox task) ---------------------------------------------------------


async def deliver_positioned(
    broadcaster: HistoryHost, stream: ChannelStream, position: StreamPosition, data: bytes
) -> None:
    """Deliver one positioned publication to the local subscribers, in order."""
    last = stream.last
    if last is not None and last.epoch == position.epoch:
        if position.offset <= last.offset:
            return  # already delivered (by a gap fill)
        if position.offset > last.offset + 1:
            await _fill(broadcaster, stream, last.offset, position)
    await _deliver_one(broadcaster, stream, position, data)


async def catch_up(
    broadcaster: HistoryHost, stream: ChannelStream, position: StreamPosition
) -> None:
    """Deliver from the history what the full inbox dropped, up to ``position``."""
    last = stream.last
    if last is None or last.epoch != position.epoch or position.offset <= last.offset:
        return  # nobody was following, another epoch began, or it came through after all
    await _fill(
        broadcaster, stream, last.offset, StreamPosition(position.epoch, position.offset + 1)
    )


async def _fill(
    broadcaster: HistoryHost, stream: ChannelStream, after: int, upto: StreamPosition
) -> None:
    """Deliver the publications between ``after`` and ``upto`` from the history."""
    while after + 1 < upto.offset:
        try:
            page = await read(broadcaster, stream, after, min(PAGE, upto.offset - 1 - after))
        except BackendUnavailable:
            return  # subscribers see the offsets jump: a gap they can detect
        if page.epoch != upto.epoch or page.first > after + 1 or not page.entries:
            return  # no longer in the history: the same
        for offset, data in page.entries:
            if offset >= upto.offset:
                return
            await _deliver_one(broadcaster, stream, StreamPosition(page.epoch, offset), data)
            broadcaster.counts["gap_fills"] += 1
            after = offset


async def _deliver_one(
    broadcaster: HistoryHost, stream: ChannelStream, position: StreamPosition, data: bytes
) -> None:
    stream.last = position
    inner = decode_inner(data)
    if inner is None:
        broadcaster.counts["malformed"] += 1
        return
    members = broadcaster.members.get(stream.name)
    if not members:
        return
    if inner.node == broadcaster.node and inner.exclude:
        items = [(i, s) for i, s in members.items() if i not in inner.exclude]
    else:
        items = list(members.items())
    sockets = stream.route(items, position)
    if sockets:
        queued = await deliver(sockets, stream.frame(position, inner.payload), inner.on_full)
        key = "local_deliveries" if inner.node == broadcaster.node else "remote_deliveries"
        broadcaster.counts[key] += queued


# -- recovery (subscribe) ---------------------------------------------------------------------


async def recover(
    broadcaster: HistoryHost,
    sock: ManagedSocket,
    stream: ChannelStream,
    since: StreamPosition | None,
    scope: trio.CancelScope,
) -> SubscribeResult:
    """Replay the history after ``since`` to ``sock`` (already a member, held back).

    ``scope`` (around this call) is shielded as soon as ``sock`` got a
    publication: from then on the subscribe has happened and finishes.
    """
    cursor = stream.cursors.get(sock.id)
    if cursor is None:  # the socket closed meanwhile and left the channel
        return SubscribeResult(recovered=False, position=None)
    if since is None:
        page = await read(broadcaster, stream, None, 0)
    else:
        page = await read(broadcaster, stream, since.offset, PAGE)
    epoch = page.epoch
    recovered = (
        since is not None and since.epoch == epoch and page.first - 1 <= since.offset <= page.top
    )
    done = since.offset if recovered and since is not None else page.top
    entries = page.entries if recovered else []
    gone = False
    while True:
        for offset, data in entries:
            if stream.cursors.get(sock.id) is not cursor:
                gone = True  # unsubscribed (or closed) meanwhile: replay no more
                break
            if offset <= done:
                continue
            inner = decode_inner(data)
            if inner is not None:
                frame = stream.frame(StreamPosition(epoch, offset), inner.payload)
                if await deliver([sock], frame, "wait") == 0:
                    gone = True  # closed (or closed as a slow consumer): it leaves the channel
                    break
                scope.shield = True  # deliver() is cancel-atomic: sock has it
            done = offset
        if gone:
            break
        seen = cursor.seen
        if seen is not None and seen.epoch != epoch:
            break  # the history was lost meanwhile: the client sees the new epoch
        target = max(page.top, 0 if seen is None else seen.offset)
        if done >= target:
            break
        page = await read(broadcaster, stream, done, PAGE)
        if page.epoch != epoch or page.first > done + 1:
            recovered = False  # lost meanwhile: the envelopes show the jump
            break
        entries = page.entries
    # synchronously from here: the inbox task cannot run in between
    cursor.epoch, cursor.offset, cursor.replaying = epoch, done, False
    return SubscribeResult(recovered=recovered, position=StreamPosition(epoch, done))
