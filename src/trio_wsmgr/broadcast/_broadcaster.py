"""Broadcaster: named channels of managed sockets, fanned out locally and across nodes.

The :class:`Broadcaster` is the face: it checks every call's arguments, keeps
the channels, and wires the parts together, each in a module of its own:

* who is subscribed to what on this node: :mod:`._membership` (synchronous),
  and subscribing and unsubscribing around it: :mod:`._subscriptions`;
* which topics the node is subscribed to on its backend, and the task that keeps
  them in step: :mod:`._topic_sync`;
* ``broadcast`` / ``send_to_user`` (local fan-out, then one publication) and the
  *inbox* task that delivers what other nodes published: :mod:`._dispatch`;
* channels with history (publish, in-order delivery, recovery): :mod:`._recovery`;
* who is present on every node: :mod:`._presence`;
* channel names, topics and the wire format between nodes: :mod:`._wire`.
"""

from __future__ import annotations

import math
import os
from collections.abc import AsyncIterator, Callable, Collection
from contextlib import asynccontextmanager
from typing import Any, Final

import attrs
import trio

from .._util import unwrap_single_group
from .._validators import count, instance_of, seconds
from ..protocol._message import Outgoing
from ..server._fanout import OnFull, check_on_full
from ..server._manager import WebSocketManager
from ..server._socket import ManagedSocket
from . import _recovery
from ._backend import Backend, BackendStatistics
from ._dispatch import Inbox, Inboxed, send
from ._history import (
    NO_HISTORY,
    ChannelStream,
    Envelope,
    HistoryOptions,
    Publication,
    StreamPosition,
    SubscribeResult,
)
from ._membership import Membership
from ._memory import MemoryBackend
from ._presence import NodePresence, Presence
from ._subscriptions import Subscriptions
from ._topic_sync import TopicSync
from ._wire import check_channel_name, user_topic, user_topics


def _channel_name(channel: object) -> str:
    """The name of ``channel``: a :class:`Channel` or a channel name (checked)."""
    if isinstance(channel, Channel):
        return channel.name
    return check_channel_name(channel)


# -- public objects ---------------------------------------------------------------------


class Channel:
    """A named channel of a :class:`Broadcaster` (``broadcaster.create_channel(name)``).

    A view: it stays valid and current however often its subscribers come and go.
    """

    __slots__ = ("_broadcaster", "name")

    def __init__(self, broadcaster: Broadcaster, name: str) -> None:
        self._broadcaster = broadcaster
        #: the channel's name
        self.name = name

    def __repr__(self) -> str:
        return f"<Channel {self.name!r} subscribers={self.subscriber_count}>"

    @property
    def subscriber_count(self) -> int:
        """How many sockets *of this process* are subscribed (see the Redis how-to for all)."""
        return len(self._broadcaster._members.get(self.name, ()))

    def subscribers(self) -> list[ManagedSocket]:
        """The local subscribers (a snapshot)."""
        return list(self._broadcaster._members.get(self.name, {}).values())

    def __contains__(self, sock: object) -> bool:
        return getattr(sock, "id", None) in self._broadcaster._members.get(self.name, {})

    async def broadcast(self, message: Any, **options: Any) -> int:
        """``broadcaster.broadcast(self.name, message, **options)``."""
        return await self._broadcaster.broadcast(self.name, message, **options)


@attrs.frozen
class BroadcasterStatistics:
    """A snapshot of a Broadcaster's counters (``broadcaster.statistics()``)."""

    #: channels with at least one local subscriber
    channels: int
    #: (socket, channel) subscriptions in this process
    subscriptions: int
    #: ``broadcast`` and ``send_to_user`` calls
    broadcasts: int
    #: messages queued on local sockets by those calls
    local_deliveries: int
    #: messages handed to the backend (one per call, whatever the subscriber count)
    published: int
    #: calls that raised BackendUnavailable
    publish_failures: int
    #: messages received from other nodes
    received: int
    #: messages queued on local sockets for other nodes' publications
    remote_deliveries: int
    #: own publications coming back from the backend, skipped
    echoes: int
    #: messages from other nodes waiting for local delivery now
    inbox: int
    #: messages from other nodes dropped because the inbox was full
    inbox_dropped: int
    #: backend messages that were not in this wire format, ignored
    malformed: int
    #: publications of channels with history that this node missed live (its inbox
    #: was full, the backend reconnected) and delivered from the history instead
    gap_fills: int
    #: the backend's own snapshot (None if the backend does not report one)
    backend: BackendStatistics | None


@attrs.define(kw_only=True, eq=False, repr=False)
class Broadcaster:
    """Named channels of sockets; across processes through a backend.

    ``Broadcaster()`` is in-process. ``Broadcaster(backend=RedisBackend(url))``
    reaches every node using the same Redis. Options (keyword-only):

    ``backend``
        A :class:`~trio_wsmgr.backends.Backend` (default: a private
        :class:`~trio_wsmgr.backends.MemoryBackend`).
    ``inbox_size``
        Messages from other nodes waiting for local delivery (default 1024).
        When it is full (local sockets too slow for the incoming rate) further
        messages are dropped for this node and counted in ``inbox_dropped``.
    ``user_shards``
        Topics used for :meth:`send_to_user` (default 1). On Redis Cluster a
        larger number spreads user traffic over the shards. Every node must use
        the same value.
    ``presence_ttl``
        Seconds (default 30) within which a node that died without cleaning
        up drops out of every :meth:`presence`: each node renews a lease on
        its presence entries every third of it.

    Use it as ``async with broadcaster:``; the backend's listener and the
    Broadcaster's two tasks run in a nursery that ends with the block. What can
    come out of the block: your own exception, or (only after a bug in a
    backend) that backend's exception; never an ExceptionGroup of one.
    """

    backend: Backend = attrs.field(
        factory=MemoryBackend, validator=instance_of(Backend, "a trio_wsmgr.backends.Backend")
    )
    inbox_size: int = attrs.field(default=1024, validator=count(1))
    user_shards: int = attrs.field(default=1, validator=count(1))
    presence_ttl: float = attrs.field(default=30.0, validator=seconds)

    _node: bytes = attrs.field(init=False, factory=lambda: os.urandom(8))
    _channels: dict[str, Channel] = attrs.field(init=False, factory=dict)
    _members: dict[str, dict[int, ManagedSocket]] = attrs.field(init=False, factory=dict)
    _memberships: dict[int, set[str]] = attrs.field(init=False, factory=dict)
    _managers: list[WebSocketManager] = attrs.field(init=False, factory=list)
    _sync: TopicSync = attrs.field(init=False)
    _inbox: Inbox = attrs.field(init=False)
    _streams: dict[str, ChannelStream] = attrs.field(init=False, factory=dict)
    _state: str = attrs.field(init=False, default="new")
    _lifetime_cm: Any = attrs.field(init=False, default=None)
    _counts: dict[str, int] = attrs.field(init=False)
    _history: _recovery.HistoryHost = attrs.field(init=False)
    _presence: NodePresence = attrs.field(init=False)
    _membership: Membership = attrs.field(init=False)
    _subscriptions: Subscriptions = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        names = "broadcasts local_deliveries published publish_failures received"
        names += " remote_deliveries echoes inbox_dropped malformed gap_fills"
        self._counts = dict.fromkeys(names.split(), 0)
        self._history = _recovery.HistoryHost(self._node, self.backend, self._counts, self._members)
        self._sync = TopicSync(self.backend, self._wants)
        self._inbox = Inbox(self._history, self._stream, self._user_sockets)
        self._membership = Membership(
            self._joined,
            self._left,
            self._first_or_last,
            members=self._members,
            memberships=self._memberships,
        )
        self._subscriptions = Subscriptions(self._membership, self._sync, self._history)
        self._presence = NodePresence(self.node_id, self.presence_ttl)

    def __repr__(self) -> str:
        return (
            f"<Broadcaster {self._state} node={self._node.hex()} channels={len(self._members)} "
            f"backend={self.backend!r}>"
        )

    @property
    def node_id(self) -> str:
        """This node's random id (hex), as carried in every publication."""
        return self._node.hex()

    # -- channels (sync) ----------------------------------------------------------------

    def create_channel(
        self,
        name: str,
        *,
        history_size: int | None = None,
        history_ttl: float = math.inf,
        envelope: Envelope | None = None,
    ) -> Channel:
        """The :class:`Channel` called ``name``, created if needed (idempotent).

        ``history_size``: keep the last that many publications, so a client that
        reconnects can :meth:`subscribe` ``since`` its last position and miss
        nothing (see :doc:`/howto/recovery`); ``history_ttl``: seconds the
        history is kept after the channel's last publication (``math.inf``:
        always); ``envelope(channel, position, message)``: what subscribers
        receive (default: the JSON text ``{"channel", "epoch", "offset",
        "data"}``). Every node must create the channel with the same options.
        Without ``history_size`` the channel has no history, no envelope and
        no extra cost.
        """
        name = check_channel_name(name)
        if history_size is None:
            if history_ttl != math.inf or envelope is not None:
                raise ValueError("history_ttl and envelope need history_size")
        else:
            options = HistoryOptions(history_size, history_ttl, envelope)
            if not self.backend.supports_history:
                raise ValueError(
                    f"history_size: {type(self.backend).__name__} keeps no channel history"
                )
            stream = self._streams.get(name)
            if stream is None or stream.options != options:
                if stream is not None and self._members.get(name):
                    raise ValueError(f"channel {name!r} has subscribers: its history is set")
                self._streams[name] = ChannelStream(name, options)
        channel = self._channels.get(name)
        if channel is None:
            channel = self._channels[name] = Channel(self, name)
        return channel

    def _stream(self, name: str) -> ChannelStream:
        """The history state of ``name`` (a default one for channels set up by other nodes)."""
        stream = self._streams.get(name)
        if stream is None:
            options = HistoryOptions(_DEFAULT_HISTORY, math.inf, None)
            stream = self._streams[name] = ChannelStream(name, options)
        return stream

    # -- history -------------------------------------------------------------------------

    async def history(
        self,
        channel: str | Channel,
        *,
        since: StreamPosition | None = None,
        limit: float = 100,
    ) -> list[Publication]:
        """Publications of ``channel`` (oldest first), at most ``limit`` of them.

        ``limit``: an int >= 0, or ``math.inf`` for all that are kept.
        ``since=None``: the newest ones; else those after ``since``. When
        ``since`` is of another epoch than the channel's, the history it
        belonged to is gone (lost or expired) and an unknown number of
        publications are missed: this then returns the newest ones of the
        current epoch, whose positions show the new epoch. A client that finds
        ``publication.position.epoch != since.epoch`` must refetch its state
        instead of applying them as what came after ``since``.
        Raises :class:`~trio_wsmgr.BackendUnavailable` when the backend is down.
        """
        self._check_running()
        stream = self._history_of(channel)
        if limit == math.inf:
            limit = stream.options.size  # no more are kept
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
            raise ValueError(f"limit must be an int >= 0 or math.inf, not {limit!r}")
        if since is not None and not isinstance(since, StreamPosition):
            raise TypeError(f"since must be a StreamPosition, not {since!r}")
        return await _recovery.history(self._history, stream, since, limit)

    async def position(self, channel: str | Channel) -> StreamPosition:
        """The position of ``channel``'s newest publication (offset 0: none yet)."""
        self._check_running()
        return await _recovery.position(self._history, self._history_of(channel))

    def _history_of(self, channel: str | Channel) -> ChannelStream:
        name = _channel_name(channel)
        stream = self._streams.get(name)
        if stream is None:
            raise ValueError(f"channel {name!r} has no history: create_channel(history_size=...)")
        return stream

    def channels(self) -> list[str]:
        """Names of the created channels and of those with local subscribers."""
        return sorted(self._channels.keys() | self._members.keys())

    def subscriber_counts(self) -> dict[str, int]:
        """Local subscribers per channel, for channels that have any (a snapshot)."""
        return {name: len(members) for name, members in self._members.items()}

    def channels_of(self, sock: ManagedSocket) -> list[str]:
        """The channels ``sock`` is subscribed to."""
        return sorted(self._memberships.get(sock.id, ()))

    def attach(self, manager: WebSocketManager) -> None:
        """Let :meth:`send_to_user` reach ``manager``'s sockets (any number of managers)."""
        if not isinstance(manager, WebSocketManager):
            raise TypeError(f"attach() takes a WebSocketManager, not {manager!r}")
        if manager in self._managers:
            return
        self._managers.append(manager)
        if len(self._managers) == 1:
            self._sync.change(user_topics(self.user_shards))

    def detach(self, manager: WebSocketManager) -> None:
        """Undo :meth:`attach`."""
        if manager in self._managers:
            self._managers.remove(manager)
            if not self._managers:
                self._sync.change(user_topics(self.user_shards))

    def statistics(self) -> BroadcasterStatistics:
        counts = self._counts
        return BroadcasterStatistics(
            channels=len(self._members),
            subscriptions=sum(len(names) for names in self._memberships.values()),
            broadcasts=counts["broadcasts"],
            local_deliveries=counts["local_deliveries"],
            published=counts["published"],
            publish_failures=counts["publish_failures"],
            received=counts["received"],
            remote_deliveries=counts["remote_deliveries"],
            echoes=counts["echoes"],
            inbox=self._inbox.used,
            inbox_dropped=counts["inbox_dropped"],
            malformed=counts["malformed"],
            gap_fills=counts["gap_fills"],
            backend=self.backend.statistics(),
        )

    # -- subscriptions -------------------------------------------------------------------

    async def subscribe(
        self,
        sock: ManagedSocket,
        channel: str | Channel,
        *,
        since: StreamPosition | None = None,
    ) -> SubscribeResult:
        """Add ``sock`` to ``channel`` (created if needed); idempotent.

        Returns once the node receives the channel from other nodes (the backend
        confirmed the subscription), or at once while the backend is down (it
        subscribes when it reconnects). ``sock`` leaves every channel by itself
        when it closes.

        On a channel with history, ``since`` (the last position the client
        saw) first sends ``sock`` every publication after it, in order, once,
        before any newer live one; the :class:`SubscribeResult` says whether
        that was possible (``recovered``) and the ``position`` to resume from.

        Cancellation: a call that raises ``Cancelled`` did not subscribe
        ``sock`` (the node's backend subscription goes too if ``sock`` was its
        only reason); one that returns did. On a channel with history, once
        the replay has sent ``sock`` its first publication the subscribe has
        happened: it finishes the replay (bounded as a broadcast's wait is,
        by ``slow_consumer_timeout``) and returns, even if cancelled meanwhile.
        """
        self._check_running()
        name = _channel_name(channel)
        if not isinstance(sock, ManagedSocket):
            raise TypeError(f"subscribe() takes a ManagedSocket, not {sock!r}")
        stream = self._streams.get(name)
        if since is not None:
            if not isinstance(since, StreamPosition):
                raise TypeError(f"since must be a StreamPosition, not {since!r}")
            if stream is None:
                raise ValueError(f"since: channel {name!r} has no history")
        if stream is not None:
            return await self._subscriptions.join_with_history(sock, stream, since)
        await self._subscriptions.join(sock, name)
        return NO_HISTORY

    async def unsubscribe(self, sock: ManagedSocket, channel: str | Channel) -> None:
        """Remove ``sock`` from ``channel``; nothing happens if it was not subscribed.

        Returns once the backend confirmed the change (at once while it is
        down). Cancellation: a call that raises ``Cancelled`` changed nothing;
        past its first checkpoint it happens, and waits (shielded, bounded by
        the backend's command timeout) for that confirmation.
        """
        self._check_running()
        name = _channel_name(channel)
        await self._subscriptions.leave(sock, name)

    # -- Membership's hooks: presence, history cursors, backend topics ------------------

    def _joined(self, name: str, sock: ManagedSocket) -> None:
        self._presence.joined(name, sock.user_id)

    def _left(self, name: str, sock: ManagedSocket) -> None:
        self._presence.left(name, sock.user_id)
        stream = self._streams.get(name)
        if stream is not None:
            stream.cursors.pop(sock.id, None)

    def _first_or_last(self, name: str, first: bool) -> None:
        """``name`` got its first local subscriber, or lost its last: tell the backend."""
        stream = self._streams.get(name)
        if not first and stream is not None:
            stream.last = None  # the node stops receiving: no gap to fill later
        self._sync.change((name,))

    # -- presence ------------------------------------------------------------------------

    async def presence(self, channel: str | Channel) -> Presence:
        """Who is subscribed to ``channel`` (a name or a :class:`Channel`) on every live node.

        ``users`` maps each user id to its subscribed sockets, ``anonymous``
        counts sockets without a user id, ``total`` all of them. This node's
        part is exact; other nodes' parts are as they last wrote them (at
        once after each change). A node that died without cleaning up is
        left out within ``presence_ttl``. Costs one or two round trips to
        the backend and O(users in the channel). Raises
        :class:`~trio_wsmgr.BackendUnavailable` when the backend cannot be
        reached, :exc:`NotImplementedError` for a backend without presence.
        """
        self._check_running()
        name = _channel_name(channel)
        keeper = self._presence.keeper
        store = self.backend.presence_store() if keeper is None else keeper.store
        if store is None:
            raise NotImplementedError(f"{self.backend!r} does not share presence")
        return await self._presence.read(store, name)

    # -- publishing ----------------------------------------------------------------------

    async def broadcast(
        self,
        channel: str | Channel,
        message: Any,
        *,
        exclude: ManagedSocket | Collection[ManagedSocket] | None = None,
        filter: Callable[[ManagedSocket], bool] | None = None,
        on_full: OnFull = "wait",
        local_only: bool = False,
    ) -> int:
        """Send ``message`` to every subscriber of ``channel``, on every node.

        The message is encoded once (str -> text, bytes -> binary, else JSON),
        queued on each local subscriber's send buffer (``on_full`` says what to
        do with full buffers, as in ``WebSocketManager.broadcast``; other nodes
        apply the same choice) and published to the backend once. Returns on
        how many sockets *of this process* it was queued.

        ``exclude``: a socket (or several) to skip, typically the sender.
        ``filter(sock)``: a predicate on local sockets; it cannot run on other
        nodes, so it needs ``local_only=True``. ``local_only``: do not publish.

        On a channel with history the message must be a JSON value; the
        backend gives it its position, and local subscribers get it, like other
        nodes' ones, from the node's ordered delivery: the count is then those
        subscribed (less ``exclude``) when it was published. ``local_only``
        and ``filter`` do not apply there (:exc:`ValueError`).

        ``channel`` is a name or a :class:`Channel`. Raises
        :class:`~trio_wsmgr.MessageEncodingError` before sending anything if the
        message cannot be encoded, and :class:`~trio_wsmgr.BackendUnavailable`
        (``.delivered`` = the local count) *after* local delivery if other nodes
        could not be reached.

        Cancellation: a call that raises ``Cancelled`` sent nothing; one that
        got past its first checkpoint finishes (the backend's publication, then
        the wait for full local buffers, at most ``slow_consumer_timeout``) and
        returns its count, even if cancelled meanwhile.
        """
        self._check_running()
        name = _channel_name(channel)
        if filter is not None and not local_only:
            raise ValueError(
                "filter runs on this node only: pass local_only=True, "
                "or use a channel per audience to reach other nodes"
            )
        check_on_full(on_full)
        stream = self._streams.get(name)
        if stream is not None:
            if local_only:
                raise ValueError("local_only: a channel with history publishes through its backend")
            return await _recovery.publish(self._history, stream, message, on_full, _ids(exclude))
        outgoing = Outgoing(message)
        await trio.lowlevel.checkpoint_if_cancelled()
        skip = _ids(exclude)
        sockets = [
            sock
            for sock_id, sock in self._members.get(name, {}).items()
            if sock_id not in skip and (filter is None or filter(sock))
        ]
        topic = None if local_only else name
        return await send(self._history, sockets, outgoing, on_full, topic, None)

    async def send_to_user(
        self,
        user_id: str,
        message: Any,
        *,
        exclude: ManagedSocket | Collection[ManagedSocket] | None = None,
        on_full: OnFull = "wait",
        local_only: bool = False,
    ) -> int:
        """Send ``message`` to every socket of ``user_id``, on whichever node it is connected.

        Local sockets are found through the managers given to :meth:`attach`;
        other nodes do the same with theirs. Returns, raises and treats
        ``exclude``/``on_full``/``local_only`` as :meth:`broadcast` does.
        """
        self._check_running()
        if not isinstance(user_id, str):
            raise TypeError(f"user_id must be a str, not {user_id!r}")
        if len(user_id.encode("utf-8")) > 0xFFFF:
            raise ValueError("user_id must be at most 65535 bytes in UTF-8")
        check_on_full(on_full)
        outgoing = Outgoing(message)
        await trio.lowlevel.checkpoint_if_cancelled()
        skip = _ids(exclude)
        sockets = [s for s in self._user_sockets(user_id) if s.id not in skip]
        topic = None if local_only else user_topic(user_id, self.user_shards)
        return await send(self._history, sockets, outgoing, on_full, topic, user_id)

    def _user_sockets(self, user_id: str) -> list[ManagedSocket]:
        return [sock for manager in self._managers for sock in manager.get_user_sockets(user_id)]

    # -- which topics the node needs from the backend ---------------------------------------

    def _wants(self, topic: str) -> bool:
        if topic.startswith("!"):
            return bool(self._managers) and topic in user_topics(self.user_shards)
        return topic in self._members

    # -- lifetime ------------------------------------------------------------------------

    def _check_running(self) -> None:
        if self._state != "running":
            raise RuntimeError(f"the Broadcaster is {self._state}: use it inside 'async with'")

    async def __aenter__(self) -> Broadcaster:
        if self._state != "new":
            raise RuntimeError("a Broadcaster can be entered only once")
        self._state = "starting"
        self._lifetime_cm = self._lifetime()
        result: Broadcaster = await self._lifetime_cm.__aenter__()
        return result

    async def __aexit__(self, *exc_info: Any) -> bool | None:
        result: bool | None = await self._lifetime_cm.__aexit__(*exc_info)
        return result

    @asynccontextmanager
    async def _lifetime(self) -> AsyncIterator[Broadcaster]:
        queue, receive = trio.open_memory_channel[tuple[str, Inboxed]](self.inbox_size)
        try:
            with unwrap_single_group(), queue, receive:
                async with trio.open_nursery() as nursery:
                    self._inbox.attach(queue)
                    backend_scope = trio.CancelScope()
                    await nursery.start(self._run_backend, backend_scope)
                    nursery.start_soon(self._inbox.run, receive)
                    self._sync.start(nursery)
                    store = self.backend.presence_store()
                    if store is not None:
                        self._presence.start(store, nursery)
                        # The keeper removes our entries at exit, over the backend's
                        # connection: keep it up until then, even when cancelled.
                        backend_scope.shield = True
                    self._state = "running"
                    try:
                        await self._sync.wait()
                        yield self
                    finally:
                        self._state = "closed"
                        await self._presence.stop()  # remove our entries while connected
                        backend_scope.cancel()
                        nursery.cancel_scope.cancel()
        finally:
            self._state = "closed"
            self._inbox.attach(None)
            self._release_sockets()

    async def _run_backend(
        self, scope: trio.CancelScope, *, task_status: trio.TaskStatus[None]
    ) -> None:
        with scope:
            await self.backend.run(self._inbox.receive, task_status=task_status)

    def _release_sockets(self) -> None:
        self._membership.release()
        self._presence.local.clear()


#: history size assumed for a channel with history that this node did not create
_DEFAULT_HISTORY: Final = 100


def _ids(exclude: ManagedSocket | Collection[ManagedSocket] | None) -> frozenset[int]:
    if exclude is None:
        return frozenset()
    if isinstance(exclude, ManagedSocket):
        return frozenset((exclude.id,))
    return frozenset(sock.id for sock in exclude)
