"""Pub/sub over one Redis server, through coredis: sessions, reconnection, the listener.

Each connection *session* is one coredis client plus one pub/sub connection;
when either fails the session ends, :class:`SinglePubSub` waits
(:class:`~trio_wsmgr.Backoff`: exponential, capped, jittered), opens a new
session and subscribes again to every topic the node still wants. Between
sessions ``publish`` fails fast with :class:`~trio_wsmgr.BackendUnavailable`.

PUBLISH goes over the pub/sub connection itself (RESP3 allows it), queued
synchronously, so a node's publications leave in call order and each session is
one TCP connection; so do the history's scripts and presence's commands.
Incoming messages are handed to the Broadcaster's receiver as they are read, so
coredis' own (unbounded) buffers stay empty; the bounded buffer is the
Broadcaster's inbox.

This is the ``cluster=False`` side of :class:`~trio_wsmgr.backends.RedisBackend`,
which owns the options and the set of wanted topics and hands them over here.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import attrs
import trio

from .._backoff import Backoff
from .._exceptions import BackendUnavailable
from . import _redis_history
from ._backend import Receiver

if TYPE_CHECKING:
    import coredis
    from coredis.patterns.pubsub import BasePubSub

logger = logging.getLogger("trio_wsmgr.backends.redis")

_MESSAGE_TYPES = frozenset({"message", "smessage"})
#: channels per SUBSCRIBE command when restoring many subscriptions at once
_SUBSCRIBE_BATCH = 500


def _summary(exc: BaseException) -> str:
    """The leaf errors of a (possibly nested) exception group, for one log line."""
    if isinstance(exc, BaseExceptionGroup):
        return "; ".join(dict.fromkeys(_summary(inner) for inner in exc.exceptions))
    return repr(exc)


@attrs.define(eq=False)
class SinglePubSub:
    """The single-server side of :class:`~trio_wsmgr.RedisBackend` (``cluster=False``)."""

    url: str = attrs.field(repr=False)  # it may hold a password
    #: ``url`` without its password, for messages, logs and the repr
    where: str
    prefix: str
    #: the backend's set of topics the node wants (it updates it, then calls :meth:`change`)
    topics: set[str]
    counts: dict[str, int]
    connect_timeout: float
    command_timeout: float
    health_check_interval: float
    backoff: Backoff
    rng: random.Random

    _receive: Receiver | None = attrs.field(init=False, default=None)
    _client: Any = attrs.field(init=False, default=None)
    _pubsub: Any = attrs.field(init=False, default=None)
    #: the run_id of the server process behind ``_pubsub`` (for the history's writer)
    _run_id: bytes = attrs.field(init=False, default=b"")
    _session: trio.CancelScope | None = attrs.field(init=False, default=None)
    _lock: trio.Lock = attrs.field(init=False, factory=trio.Lock)

    @property
    def connected(self) -> bool:
        """True while a session is up and every subscription has been restored."""
        return self._pubsub is not None

    # -- life -------------------------------------------------------------------------

    async def run(self, receive: Receiver, task_status: trio.TaskStatus[None]) -> None:
        """Sessions, one after the other, with the backoff between them; until cancelled.

        ``task_status.started()`` once the first session is up or has failed.
        """
        self._receive = receive
        started = False
        sessions = 0
        failures = 0

        def ready() -> None:
            nonlocal started, sessions, failures
            if sessions:
                self.counts["reconnects"] += 1
                logger.info("reconnected to Redis at %s", self.where)
            sessions += 1
            failures = 0
            if not started:
                started = True
                task_status.started()

        try:
            while True:
                try:
                    await self._run_session(ready)
                except BaseException as exc:
                    # Cancelled, coredis' clean-up can fail on its closed connection and
                    # mix that error with the Cancelled. When we are being cancelled this
                    # checkpoint raises a clean Cancelled instead of the mixture.
                    await trio.lowlevel.checkpoint()
                    if not isinstance(exc, Exception):
                        raise
                    failures += 1
                    self.counts["connection_failures"] += 1
                    if failures == 1:  # once per outage; the details at debug level
                        logger.warning(
                            "Redis at %s unavailable (%s); reconnecting with backoff",
                            self.where,
                            _summary(exc),
                        )
                    logger.debug("Redis session ended", exc_info=exc)
                if not started:
                    started = True
                    task_status.started()
                await trio.sleep(self.backoff.delay(max(failures, 1), self.rng))
        finally:
            self._receive = None

    async def _run_session(self, ready: Callable[[], None]) -> None:
        """One connection: connect, restore the subscriptions, listen until it fails."""
        with trio.CancelScope() as scope:
            self._session = scope
            scope.deadline = trio.current_time() + self.connect_timeout
            try:
                await self._probe()
                async with self._open() as (client, pubsub):
                    async with self._lock:
                        # the server process behind this connection: the history's writer
                        self._run_id = await _redis_history.learn_run_id(pubsub.connection)
                        topics = sorted(self.topics)
                        for start in range(0, len(topics), _SUBSCRIBE_BATCH):
                            batch = topics[start : start + _SUBSCRIBE_BATCH]
                            await pubsub.subscribe(*[self.prefix + t for t in batch])
                        self._client, self._pubsub = client, pubsub
                    scope.deadline = math.inf
                    ready()
                    await self._listen(pubsub)
            finally:
                self._client = self._pubsub = self._session = None
        # Only a deadline or a forced reconnect gets here: the session did not fail loudly.
        raise ConnectionError("Redis session timed out or was restarted")

    async def _probe(self) -> None:
        """Check that the server accepts connections before coredis tries.

        (A coredis connection whose connect fails is never closed, which shows as
        ResourceWarnings; probing first keeps reconnect attempts during an outage clean.)
        """
        parts = urlsplit(self.url)
        stream: trio.abc.Stream
        if parts.scheme == "unix":
            stream = await trio.open_unix_socket(parts.path)
        else:
            stream = await trio.open_tcp_stream(parts.hostname or "127.0.0.1", parts.port or 6379)
        await stream.aclose()

    @asynccontextmanager
    async def _open(self) -> AsyncIterator[tuple[Any, BasePubSub[bytes, Any]]]:
        from coredis import Redis
        from coredis.retry import NoRetryPolicy

        options: dict[str, Any] = {
            "retry_policy": NoRetryPolicy(),
            "connect_timeout": self.connect_timeout,
            "stream_timeout": self.command_timeout,
        }
        client: coredis.Redis[bytes] = Redis.from_url(self.url, **options)
        pubsub: BasePubSub[bytes, Any]
        async with client:
            pubsub = client.pubsub(**self._pubsub_options())
            async with pubsub:
                yield client, pubsub

    def _pubsub_options(self) -> dict[str, Any]:
        from coredis.retry import NoRetryPolicy

        return {
            "ignore_subscribe_messages": True,
            "retry_policy": NoRetryPolicy(),
            "subscription_timeout": self.command_timeout,
            "max_idle_seconds": self.health_check_interval,
        }

    async def _listen(self, pubsub: BasePubSub[bytes, Any]) -> None:
        receive = self._receive
        assert receive is not None
        cut = len(self.prefix.encode())
        counts = self.counts
        while True:
            message = await pubsub.get_message()
            if message is None or message["type"] not in _MESSAGE_TYPES:
                continue
            channel = message["channel"]
            data = message["data"]
            if not isinstance(channel, bytes) or not isinstance(data, bytes):
                continue
            counts["received"] += 1
            receive(channel[cut:].decode("utf-8", "replace"), data)

    # -- the backend's calls ------------------------------------------------------------

    async def publish(self, channel: str, data: bytes) -> None:
        """PUBLISH on the live session; counted in ``published`` / ``publish_failures``."""
        client = self._client
        if client is None or self._pubsub is None:
            self.counts["publish_failures"] += 1
            await trio.lowlevel.checkpoint()
            raise BackendUnavailable(f"not connected to Redis at {self.where}", delivered=0)
        try:
            with trio.fail_after(self.command_timeout):
                # RESP3 allows commands on the pub/sub connection. Queued there
                # synchronously, publications leave in call order, on one connection.
                await self._pubsub.connection.create_request(b"PUBLISH", channel, data)
        except Exception as exc:
            self.counts["publish_failures"] += 1
            raise BackendUnavailable(
                f"publishing to Redis at {self.where} failed: {exc!r}", delivered=0
            ) from exc
        self.counts["published"] += 1

    async def script(self, source: str, keys: list[str], args: list[Any]) -> Any:
        """Run one of the history's scripts on the live session; its reply."""
        client = self._client
        if client is None or self._pubsub is None:
            await trio.lowlevel.checkpoint()
            raise BackendUnavailable(f"not connected to Redis at {self.where}", delivered=0)
        try:
            with trio.fail_after(self.command_timeout):
                # On the pub/sub connection, as PUBLISH: cheaper than a client call,
                # and this node's publications leave in call order on one connection.
                # Its server process' run_id: the script's last argument.
                args = [*args, self._run_id]
                return await _redis_history.run_script(self._pubsub.connection, source, keys, args)
        except Exception as exc:
            raise BackendUnavailable(
                f"channel history on Redis at {self.where} failed: {exc!r}", delivered=0
            ) from exc

    async def command(self, *args: bytes | str | int) -> object:
        """One command on the live session (in order with the publications); its raw reply."""
        pubsub = self._pubsub
        if pubsub is None:
            await trio.lowlevel.checkpoint()
            raise BackendUnavailable(f"not connected to Redis at {self.where}", delivered=0)
        reply: object = await pubsub.connection.create_request(*args)
        return reply

    async def change(self, topics: list[str], *, subscribe: bool) -> None:
        """(Un)subscribe on the live session, if any; on failure restart the session."""
        if not topics:
            await trio.lowlevel.checkpoint()
            return
        async with self._lock:
            pubsub, session = self._pubsub, self._session
            if pubsub is None or session is None:  # the next session subscribes to self.topics
                return
            channels = [self.prefix + topic for topic in topics]
            try:
                for start in range(0, len(channels), _SUBSCRIBE_BATCH):
                    batch = channels[start : start + _SUBSCRIBE_BATCH]
                    with trio.fail_after(self.command_timeout):
                        if subscribe:
                            await pubsub.subscribe(*batch)
                        else:
                            await pubsub.unsubscribe(*batch)
            except Exception as exc:
                logger.warning(
                    "Redis did not confirm a subscription change (%r); reconnecting", exc
                )
                session.cancel()  # this session only: a newer one restores everything
