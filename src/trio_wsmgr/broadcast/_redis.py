"""The Redis backend: pub/sub over one Redis server, or sharded pub/sub over a Redis Cluster.

:class:`RedisBackend` is the face: its options (validated here), the set of
topics the node wants, its counters, and the backend interface, which it hands
to one of two sides. On a single server that is :mod:`._redis_single`, over
`coredis <https://coredis.readthedocs.io>`_ (the ``redis`` extra), which runs
natively under Trio: one session (client plus pub/sub connection) at a time,
reconnecting with the :class:`~trio_wsmgr.Backoff`; between sessions
``publish`` fails fast with :class:`~trio_wsmgr.BackendUnavailable`.

Topics map to Redis channels as ``prefix + topic``. With ``cluster=True`` the
backend uses SPUBLISH / SSUBSCRIBE (Redis >= 7), so each channel lives on the
shard that owns its hash slot instead of being copied to every node of the
cluster. That side does not use coredis: :mod:`._redis_cluster` keeps one
connection of its own per master, follows failovers and resharding (``MOVED``
replies, ``sunsubscribe`` pushes, a periodic ``CLUSTER SLOTS``) and restores the
subscriptions on each slot's new owner.
"""

from __future__ import annotations

import importlib.util
import random
from collections.abc import Collection, Iterable
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

import attrs
import trio

from .._backoff import Backoff
from .._exceptions import BackendUnavailable
from .._validators import seconds
from . import _redis_history
from ._backend import Backend, BackendStatistics, Receiver
from ._history import HistoryPage, StreamPosition
from ._presence import PresenceStore
from ._redis_cluster import ClusterPubSub
from ._redis_resp import Credentials, key_slot
from ._redis_single import SinglePubSub


def _url(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, str):
        raise TypeError(f"{attribute.name} must be a redis:// URL string, not {value!r}")
    parts = urlsplit(value)
    if parts.scheme not in ("redis", "rediss", "unix"):
        raise ValueError(
            f"{attribute.name} must be a redis://, rediss:// or unix:// URL, not {_redact(value)!r}"
        )


def _seeds(instance: object, attribute: attrs.Attribute[Any], value: tuple[object, ...]) -> None:
    for seed in value:
        _url(instance, attribute, seed)
        assert isinstance(seed, str)
        parts = urlsplit(seed)
        if parts.scheme == "unix" or not parts.hostname:
            raise ValueError(f"{attribute.name} must be redis:// URLs with a host, not {seed!r}")


def _tuple_of_urls(value: object) -> tuple[object, ...]:
    if isinstance(value, str | bytes):  # one URL is not a sequence of seeds
        raise TypeError(f"seeds must be a sequence of URLs, not the string {value!r}")
    if not isinstance(value, Iterable):
        raise TypeError(f"seeds must be a sequence of URLs, not {value!r}")
    try:
        return tuple(value)
    except TypeError:
        raise TypeError(f"seeds must be a sequence of URLs, not {value!r}") from None


def _prefix(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, str):
        raise TypeError(f"{attribute.name} must be a str, not {value!r}")
    if any(ch.isspace() for ch in value):
        raise ValueError(f"{attribute.name} must not contain whitespace, not {value!r}")


def _redact(url: str) -> str:
    """``url`` without its password, for reprs and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[-1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


@attrs.define(eq=False, repr=False)
class RedisBackend(Backend):
    """A :class:`~trio_wsmgr.backends.Backend` over Redis pub/sub.

    ``RedisBackend("redis://127.0.0.1:6379/0")``; every option is keyword-only:

    ``cluster``
        The URL names a node of a Redis Cluster (>= 7): use sharded pub/sub
        (SPUBLISH / SSUBSCRIBE), one connection per master.
    ``seeds``
        With ``cluster=True``: more nodes to read the cluster's layout from, as
        ``redis://`` (or ``rediss://``) URLs, when the one in ``url`` is down.
        Their user name and password are those of ``url``. Every node the
        cluster reports is remembered too, so seeds matter mostly at start.
    ``refresh_interval``
        With ``cluster=True``: how often the layout is read again while all is
        well (it is also read on every redirection, lost connection or moved
        slot, and about every second while a shard is down).
    ``prefix``
        Prepended to every Redis channel name (default ``"trio_wsmgr:"``), so
        several applications can share a server.
    ``connect_timeout``
        Longest time a connection attempt (connect, handshake, restoring the
        subscriptions) may take before it counts as failed.
    ``command_timeout``
        Longest wait for Redis to answer a PUBLISH or to confirm a
        (un)subscription. A PUBLISH that takes longer raises
        :class:`~trio_wsmgr.BackendUnavailable`; a confirmation that takes longer
        ends the session (the subscriptions are restored by the next one).
    ``health_check_interval``
        After this long without traffic the pub/sub connection sends a PING,
        so a dead peer is noticed.
    ``backoff``
        The waits between reconnection attempts (see :class:`Backoff`).
    """

    url: str = attrs.field(validator=_url)
    cluster: bool = attrs.field(
        kw_only=True, default=False, validator=attrs.validators.instance_of(bool)
    )
    seeds: tuple[str, ...] = attrs.field(
        kw_only=True, default=(), converter=_tuple_of_urls, validator=_seeds
    )
    prefix: str = attrs.field(kw_only=True, default="trio_wsmgr:", validator=_prefix)
    connect_timeout: float = attrs.field(kw_only=True, default=5.0, validator=seconds)
    command_timeout: float = attrs.field(kw_only=True, default=2.0, validator=seconds)
    health_check_interval: float = attrs.field(kw_only=True, default=15.0, validator=seconds)
    refresh_interval: float = attrs.field(kw_only=True, default=30.0, validator=seconds)
    backoff: Backoff = attrs.field(
        kw_only=True,
        factory=lambda: Backoff(initial=0.05, maximum=5.0),
        validator=attrs.validators.instance_of(Backoff),
    )

    _receive: Receiver | None = attrs.field(init=False, default=None)
    _topics: set[str] = attrs.field(init=False, factory=set)
    #: the single-server side (unused with ``cluster=True``)
    _single: SinglePubSub = attrs.field(init=False)
    _cluster: ClusterPubSub | None = attrs.field(init=False, default=None)
    _rng: random.Random = attrs.field(init=False, factory=random.Random)
    _counts: dict[str, int] = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        if self.cluster and urlsplit(self.url).scheme == "unix":
            raise ValueError("url must be redis:// or rediss:// when cluster=True")
        if self.seeds and not self.cluster:
            raise ValueError("seeds are for a Redis Cluster: pass cluster=True (or no seeds)")
        scheme = urlsplit(self.url).scheme
        if any(urlsplit(seed).scheme != scheme for seed in self.seeds):
            raise ValueError(f"seeds must all use the url's scheme ({scheme}://)")
        if not self.cluster and importlib.util.find_spec("coredis") is None:
            raise ImportError(
                "RedisBackend needs coredis: pip install 'trio-wsmgr[redis]'", name="coredis"
            )
        self._counts = dict.fromkeys(
            [
                "published",
                "publish_failures",
                "received",
                "reconnects",
                "connection_failures",
            ],
            0,
        )
        self._single = SinglePubSub(
            url=self.url,
            where=_redact(self.url),
            prefix=self.prefix,
            topics=self._topics,
            counts=self._counts,
            connect_timeout=self.connect_timeout,
            command_timeout=self.command_timeout,
            health_check_interval=self.health_check_interval,
            backoff=self.backoff,
            rng=self._rng,
        )

    def __repr__(self) -> str:
        degraded = self._cluster is not None and self._cluster.degraded
        state = "connected" if self.connected else ("degraded" if degraded else "disconnected")
        mode = (
            f" cluster (+{len(self.seeds)} seeds)"
            if self.seeds
            else (" cluster" if self.cluster else "")
        )
        return f"<RedisBackend {_redact(self.url)}{mode} {state} topics={len(self._topics)}>"

    @property
    def connected(self) -> bool:
        """True while a session is up and every subscription has been restored.

        On a cluster: while the backend is connected to every master, with every
        subscription restored (see ``statistics().degraded`` for "some of them").
        """
        if self.cluster:
            return self._cluster is not None and self._cluster.connected
        return self._single.connected

    def statistics(self) -> BackendStatistics:
        counts = self._counts
        cluster = self._cluster
        return BackendStatistics(
            connected=self.connected,
            degraded=cluster is not None and cluster.degraded,
            shards=cluster.shard_statistics() if cluster is not None else (),
            topics=len(self._topics),
            published=counts["published"],
            publish_failures=counts["publish_failures"],
            received=counts["received"],
            reconnects=counts["reconnects"],
            connection_failures=counts["connection_failures"],
        )

    # -- the backend interface ----------------------------------------------------

    async def run(
        self,
        receive: Receiver,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        if self._receive is not None:
            raise RuntimeError("this backend is already running (one Broadcaster per backend)")
        self._receive = receive
        if self.cluster:
            try:
                await self._run_cluster(receive, task_status)
            finally:
                self._receive = self._cluster = None
            return
        try:
            await self._single.run(receive, task_status)
        finally:
            self._receive = None

    async def _run_cluster(self, receive: Receiver, task_status: trio.TaskStatus[None]) -> None:
        cut = len(self.prefix.encode())

        def deliver(channel: bytes, data: bytes) -> None:
            receive(channel[cut:].decode("utf-8", "replace"), data)

        parts = urlsplit(self.url)
        addresses = [(parts.hostname or "127.0.0.1", parts.port or 6379)]
        for seed in self.seeds:
            seed_parts = urlsplit(seed)
            addresses.append((seed_parts.hostname or "127.0.0.1", seed_parts.port or 6379))
        self._cluster = cluster = ClusterPubSub(
            seeds=list(dict.fromkeys(addresses)),
            credentials=Credentials(
                username=unquote(parts.username) if parts.username else None,
                password=unquote(parts.password) if parts.password else None,
                tls=parts.scheme == "rediss",
            ),
            deliver=deliver,
            counts=self._counts,
            connect_timeout=self.connect_timeout,
            command_timeout=self.command_timeout,
            health_check_interval=self.health_check_interval,
            refresh_interval=self.refresh_interval,
            backoff=self.backoff,
        )
        prefix = self.prefix
        cluster.wanted.update(
            {
                (prefix + topic).encode(): key_slot((prefix + topic).encode())
                for topic in self._topics
            }
        )
        await cluster.run(task_status=task_status)

    async def publish(self, topic: str, data: bytes) -> None:
        if self.cluster:
            await self._publish_cluster(topic, data)
            return
        await self._single.publish(self.prefix + topic, data)

    async def _publish_cluster(self, topic: str, data: bytes) -> None:
        cluster = self._cluster
        try:
            if cluster is None:
                await trio.lowlevel.checkpoint()
                raise BackendUnavailable(
                    f"not connected to the Redis Cluster at {_redact(self.url)}", delivered=0
                )
            await cluster.publish((self.prefix + topic).encode(), data)
        except BackendUnavailable:
            self._counts["publish_failures"] += 1
            raise
        self._counts["published"] += 1

    # -- channel history: a Redis Stream per channel (see _redis_history) ----------

    supports_history = True

    async def publish_history(
        self, topic: str, inner: bytes, *, size: int, ttl: float
    ) -> StreamPosition:
        channel = self.prefix + topic
        args = _redis_history.publish_args(channel, inner, size=size, ttl=ttl, sharded=self.cluster)
        try:
            reply = await self._history_script(_redis_history.PUBLISH_SCRIPT, channel, args)
        except BackendUnavailable:
            self._counts["publish_failures"] += 1
            raise
        self._counts["published"] += 1
        return _redis_history.parse_position(reply)

    async def read_history(
        self, topic: str, *, after: int | None, limit: int, size: int, ttl: float
    ) -> HistoryPage:
        channel = self.prefix + topic
        args = _redis_history.read_args(after, limit, ttl)
        reply = await self._history_script(_redis_history.READ_SCRIPT, channel, args)
        return _redis_history.parse_page(reply, after)

    async def _history_script(self, source: str, channel: str, args: list[Any]) -> Any:
        keys = _redis_history.keys(channel)
        if self.cluster:  # on the master of the channel's slot, where its keys live too
            cluster = self._cluster
            if cluster is None:
                await trio.lowlevel.checkpoint()
                raise BackendUnavailable(
                    f"not connected to the Redis Cluster at {_redact(self.url)}", delivered=0
                )
            slot = key_slot(channel.encode())
            command = (b"EVAL", source, len(keys), *keys, *args)
            return await cluster.execute(slot, *command, with_run_id=True)
        return await self._single.script(source, keys, args)

    async def subscribe(self, topics: Collection[str]) -> None:
        new = [topic for topic in topics if topic not in self._topics]
        self._topics.update(new)
        if self.cluster:
            await self._change_cluster(new, subscribe=True)
            return
        await self._single.change(new, subscribe=True)

    async def unsubscribe(self, topics: Collection[str]) -> None:
        gone = [topic for topic in topics if topic in self._topics]
        self._topics.difference_update(gone)
        if self.cluster:
            await self._change_cluster(gone, subscribe=False)
            return
        await self._single.change(gone, subscribe=False)

    async def _change_cluster(self, topics: list[str], *, subscribe: bool) -> None:
        cluster = self._cluster
        if cluster is None or not topics:  # the next run subscribes to self._topics
            await trio.lowlevel.checkpoint()
            return
        channels = [(self.prefix + topic).encode() for topic in topics]
        if subscribe:
            await cluster.subscribe(channels)
        else:
            await cluster.unsubscribe(channels)

    # -- the hook for presence (broadcast/_presence_redis.py) ------------------------

    def presence_store(self) -> PresenceStore:
        from ._presence_redis import RedisPresence

        return RedisPresence(self)

    async def _command(self, key: str, *args: bytes | str | int) -> object:
        """One command about ``key`` over this backend's connections; the raw RESP3 reply.

        On a single server it goes over the pub/sub connection (RESP3 allows
        it), in order with the node's publications; on a cluster to the master
        that owns ``key``'s slot. Raises :class:`~trio_wsmgr.BackendUnavailable`
        when not connected; other failures come out as they are.
        """
        if self.cluster:
            cluster = self._cluster
            if cluster is None:
                await trio.lowlevel.checkpoint()
                raise BackendUnavailable(
                    f"not connected to the Redis Cluster at {_redact(self.url)}", delivered=0
                )
            return await cluster.execute(key_slot(key.encode()), *args)
        return await self._single.command(*args)
