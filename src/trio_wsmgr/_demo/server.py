"""The demo chat server: rooms over a Broadcaster, rosters from its presence.

The page (``static/``) and the server speak JSON objects with a ``type``:

=========  ==========================================================================
client     ``{"type": "join", "room": "lobby", "since": null}``, ``{"type": "say", "text": "hi"}``
server     ``welcome`` (your name, this node, default rooms, compression on or not),
           ``joined`` (room, recovered, epoch, offset), ``message`` (room, user,
           text, time: inside a history envelope), ``presence`` (a room's
           roster over every node), ``stats`` (counts and your heartbeat RTT),
           ``error``
=========  ==========================================================================

Each socket is in at most one room; room ``x`` is Broadcaster channel ``room:x``
(rosters) plus ``chat:x``, a channel with history for the messages, so with a
Redis backend every node running the demo shares the rooms. The page resumes
after a reconnect: it joins with ``since``, its last ``{"epoch", "offset"}``,
and gets the messages it missed before the live ones (``joined`` says whether
that was possible: ``recovered``). Rosters come from
``broadcaster.presence("room:x")`` (every node's subscribers, a dead node's
gone within ``presence_ttl``): when a page joins or leaves a room, its node
broadcasts the room's new roster to every node; every ``presence_interval``
each node also sends the rosters of its rooms to its own pages, which catches
up with changes made elsewhere.
"""

from __future__ import annotations

import json
import math
import re
import secrets
import ssl
import time
from collections import Counter
from collections.abc import Sequence
from contextlib import suppress
from functools import partial
from importlib import resources
from typing import Any, Final
from urllib.parse import urlsplit

import attrs
import trio

from .._exceptions import BackendUnavailable, ConnectionClosed, RequestRejected
from ..backends import Backend
from ..broadcast._broadcaster import Broadcaster
from ..broadcast._history import StreamPosition
from ..server._auth import HandshakeRequest
from ..server._listen import Server
from ..server._manager import WebSocketManager
from ..server._socket import ManagedSocket
from ._http import HttpFront, Resource, Route

DEFAULT_ROOMS: Final = ("lobby", "random", "trio")
#: messages each room keeps for pages that reconnect
ROOM_HISTORY: Final = 200
MAX_TEXT: Final = 500
#: a demo process killed without cleaning up leaves the rosters within this many seconds
PRESENCE_TTL: Final = 6.0
_NAME = re.compile(r"[\w.-]{1,20}")
_ROOM = re.compile(r"[a-z0-9][a-z0-9-]{0,31}")
_STATIC: Final = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/style.css": ("style.css", "text/css; charset=utf-8"),
}


def static_routes() -> dict[str, Route]:
    """The page's files, read once from the package."""
    folder = resources.files(__package__) / "static"
    return {
        path: Resource((folder / name).read_bytes(), content_type)
        for path, (name, content_type) in _STATIC.items()
    }


def metrics_route(manager: WebSocketManager, broadcaster: Broadcaster) -> Route | None:
    """``GET /metrics``: the manager's and broadcaster's counters for Prometheus.

    None when prometheus-client (the ``metrics`` extra) is not installed.
    """
    try:
        from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

        from ..metrics import WsmgrCollector
    except ImportError:
        return None
    collector = WsmgrCollector()
    collector.add_manager(manager, name="demo")
    collector.add_broadcaster(broadcaster, name="demo")
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)

    def page() -> Resource:
        return Resource(generate_latest(registry), CONTENT_TYPE_LATEST, "no-store")

    return page


def authenticate(request: HandshakeRequest) -> str:
    """Name the user: ``?name=`` if it is a valid name, else a random guest name.

    Refuses (403) a page from another origin: a browser sends cookies and
    credentials with a cross-site WebSocket, so any site could otherwise use
    a visitor's session here (cross-site WebSocket hijacking).
    """
    origin = request.header("origin")
    if origin is not None and urlsplit(origin).netloc != request.header("host"):
        raise RequestRejected(403, "cross-origin WebSocket refused")
    name = request.query.get("name", "").strip()
    if _NAME.fullmatch(name):
        return name
    return f"guest-{secrets.token_hex(2)}"


def room_name(value: object) -> str | None:
    """A valid room name (lower-cased), or None."""
    if not isinstance(value, str):
        return None
    name = value.strip().lower()
    return name if _ROOM.fullmatch(name) else None


def parse_request(raw: str | bytes) -> dict[str, Any]:
    """A message from the page as a dict; empty if it is not a JSON object in a text frame."""
    try:
        request = json.loads(raw) if isinstance(raw, str) else None
    except ValueError:
        request = None
    return request if isinstance(request, dict) else {}


def channel_of(room: str) -> str:
    return f"room:{room}"


def chat_of(room: str) -> str:
    """The channel with history that carries a room's messages."""
    return f"chat:{room}"


def position_of(value: object) -> StreamPosition | None:
    """A ``since`` from the page: ``{"epoch": str, "offset": int}``, else None."""
    if not isinstance(value, dict):
        return None
    epoch, offset = value.get("epoch"), value.get("offset")
    if not isinstance(epoch, str) or not 0 < len(epoch) <= 64:
        return None
    if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
        return None
    return StreamPosition(epoch, offset)


def _ms(seconds: float) -> float | None:
    return None if math.isnan(seconds) else round(seconds * 1000, 1)


@attrs.define(eq=False)
class ChatServer:
    """The chat: ``handle`` is the manager's handler, ``run`` the background loops."""

    manager: WebSocketManager
    broadcaster: Broadcaster
    #: seconds between pushes of the counters and RTT to every page
    stats_interval: float = 1.0
    #: seconds between roster refreshes to this node's pages (changes go out at once)
    presence_interval: float = 2.0

    _dirty: set[str] = attrs.field(init=False, factory=set)
    _wake: trio.lowlevel.ParkingLot = attrs.field(init=False, factory=trio.lowlevel.ParkingLot)

    @property
    def node(self) -> str:
        return self.broadcaster.node_id[:6]

    # -- decisions (sync) --------------------------------------------------------------

    async def roster(self, room: str) -> dict[str, Any]:
        """The ``presence`` message of ``room``: its users over every node."""
        presence = await self.broadcaster.presence(channel_of(room))
        return {
            "type": "presence",
            "room": room,
            "node": self.node,
            "users": [{"name": name, "sockets": n} for name, n in sorted(presence.users.items())],
            "total": presence.total,
        }

    def local_rooms(self) -> set[str]:
        return {room for sock in self.manager.sockets() if (room := sock.metadata.get("room"))}

    def _changed(self, room: str | None) -> None:
        if room is not None:
            self._dirty.add(room)
            self._wake.unpark_all()

    def _on_close(self, sock: ManagedSocket) -> None:
        self._changed(sock.metadata.get("room"))

    def push_stats(self) -> None:
        """Queue each page's counters without waiting (a full buffer skips a beat)."""
        stats = self.manager.statistics()
        sockets = self.manager.sockets()
        per_room = Counter(sock.metadata.get("room") for sock in sockets)
        common = {
            "type": "stats",
            "node": self.node,
            "node_sockets": stats.open_sockets,
            "node_users": len(self.manager.users()),
            "messages_in": stats.messages_in,
            "messages_out": stats.messages_out,
        }
        for sock in sockets:
            room = sock.metadata.get("room")
            own = sock.statistics()
            message = {
                **common,
                "room_sockets": per_room[room] if room else 0,
                "rtt_ms": _ms(own.ping_rtt),
            }
            with suppress(trio.WouldBlock, ConnectionClosed):
                sock.send_nowait(message)

    # -- the handler -------------------------------------------------------------------

    async def handle(self, sock: ManagedSocket) -> None:
        sock.metadata["room"] = None
        sock.add_close_callback(self._on_close)
        with suppress(ConnectionClosed):  # the page left while we answered: not an error
            await self._converse(sock)

    async def _converse(self, sock: ManagedSocket) -> None:
        await sock.send(
            {
                "type": "welcome",
                "user": sock.user_id,
                "node": self.node,
                "rooms": list(DEFAULT_ROOMS),
                "compressed": sock.statistics().compressed,
                "heartbeat_interval": self.manager.heartbeat_interval,
            }
        )
        async for raw in sock:
            request = parse_request(raw)
            kind = request.get("type")
            if kind == "join":
                await self._join(sock, request.get("room"), position_of(request.get("since")))
            elif kind == "say":
                await self._say(sock, request.get("text"))
            else:
                await sock.send({"type": "error", "message": "expected a join or say object"})

    async def _join(
        self, sock: ManagedSocket, value: object, since: StreamPosition | None = None
    ) -> None:
        room = room_name(value)
        if room is None:
            await sock.send({"type": "error", "message": "room names: a-z, 0-9 and -, 1 to 32"})
            return
        old = sock.metadata.get("room")
        chat = self.broadcaster.create_channel(chat_of(room), history_size=ROOM_HISTORY)
        if old != room:
            sock.metadata["room"] = None  # in neither roster while (un)subscribing
            if old is not None:
                await self.broadcaster.unsubscribe(sock, channel_of(old))
                await self.broadcaster.unsubscribe(sock, chat_of(old))
            await self.broadcaster.subscribe(sock, channel_of(room))
            # sends what the page missed since its last position, then the live ones
            result = await self.broadcaster.subscribe(sock, chat, since=since)
            sock.metadata["room"] = room
            self._changed(old)  # after the (un)subscriptions: rosters come from them
            self._changed(room)
        else:
            result = await self.broadcaster.subscribe(sock, chat)
        position = result.position
        await sock.send(
            {
                "type": "joined",
                "room": room,
                "recovered": result.recovered,
                "epoch": None if position is None else position.epoch,
                "offset": None if position is None else position.offset,
            }
        )

    async def _say(self, sock: ManagedSocket, value: object) -> None:
        room = sock.metadata.get("room")
        text = value.strip() if isinstance(value, str) else ""
        if room is None or not text or len(text) > MAX_TEXT:
            await sock.send({"type": "error", "message": f"join a room; 1 to {MAX_TEXT} chars"})
            return
        message = {
            "type": "message",
            "room": room,
            "user": sock.user_id,
            "text": text,
            "time": time.time(),
        }
        try:
            await self.broadcaster.broadcast(chat_of(room), message)
        except BackendUnavailable:
            await sock.send({"type": "error", "message": "other nodes were not reached"})

    # -- background loops ----------------------------------------------------------------

    async def run(self) -> None:
        """Push stats and rosters until cancelled."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._run_stats)
            nursery.start_soon(self._run_presence)

    async def _run_stats(self) -> None:
        while True:
            await trio.sleep(self.stats_interval)
            self.push_stats()

    async def _run_presence(self) -> None:
        while True:
            with trio.move_on_after(self.presence_interval) as timer:
                while not self._dirty:
                    await self._wake.park()
            changed, self._dirty = self._dirty, set()
            refresh = self.local_rooms() - changed if timer.cancelled_caught else set()
            for room in sorted(changed | refresh):
                # a change goes to every node's pages, a refresh to this node's
                await self._publish_presence(room, local_only=room not in changed)

    async def _publish_presence(self, room: str, *, local_only: bool) -> None:
        with suppress(BackendUnavailable):  # the next refresh tries again
            message = await self.roster(room)
            await self.broadcaster.broadcast(
                channel_of(room), message, on_full="drop", local_only=local_only
            )


@attrs.frozen
class Demo:
    """A running demo (what ``await nursery.start(run_demo, ...)`` returns)."""

    manager: WebSocketManager
    broadcaster: Broadcaster
    chat: ChatServer
    server: Server
    _scope: trio.CancelScope

    @property
    def url(self) -> str:
        """The page's URL (a wildcard host is shown as 127.0.0.1)."""
        host = self.server.host
        if host in ("0.0.0.0", "::"):
            host = "127.0.0.1"
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.server.port}/"

    async def close(self) -> None:
        """Close every socket with 1001 (going away), then stop serving."""
        await self.manager.close()
        self._scope.cancel()


def build_manager() -> WebSocketManager:
    """The demo's manager: quick heartbeats (so the page shows an RTT soon), small limits."""
    return WebSocketManager(
        authentication=authenticate,
        max_connections=1000,
        heartbeat_interval=2.0,
        heartbeat_timeout=10.0,
        max_message_size=16 * 1024,
        max_messages_per_second=20,
        close_timeout=2.0,
    )


async def run_demo(
    listeners: Sequence[trio.SocketListener],
    *,
    backend: Backend | None = None,
    manager: WebSocketManager | None = None,
    ssl_context: ssl.SSLContext | None = None,
    task_status: trio.TaskStatus[Demo] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the chat page at ``/`` and its WebSocket at ``/ws`` until :meth:`Demo.close`.

    ``listeners`` come from :func:`trio.open_tcp_listeners` (opened first, so a
    busy port is an ``OSError`` before anything starts). Use with
    ``demo = await nursery.start(run_demo, listeners)``. A ``backend`` (e.g. a
    :class:`~trio_wsmgr.backends.RedisBackend`) shares the rooms with every
    demo using it. ``ssl_context`` serves the page over HTTPS and the socket over
    ``wss://``. ``manager`` replaces :func:`build_manager`'s (tests use quicker timers).
    """
    routes = static_routes()
    if manager is None:
        manager = build_manager()
    broadcaster = Broadcaster(presence_ttl=PRESENCE_TTL)
    if backend is not None:
        broadcaster = Broadcaster(backend=backend, presence_ttl=PRESENCE_TTL)
    with trio.CancelScope() as scope:
        async with broadcaster, trio.open_nursery() as nursery:
            chat = ChatServer(manager, broadcaster)
            metrics = metrics_route(manager, broadcaster)
            if metrics is not None:
                routes["/metrics"] = metrics
            front = HttpFront(manager=manager, handler=chat.handle, routes=routes)
            nursery.start_soon(chat.run)
            server = await nursery.start(
                partial(front.serve_listeners, listeners, ssl_context=ssl_context)
            )
            task_status.started(Demo(manager, broadcaster, chat, server, scope))
