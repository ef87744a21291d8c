"""Listening sockets, with SO_REUSEPORT when asked (several processes on one port).

:func:`trio.open_tcp_listeners` does not set SO_REUSEPORT, so this opens the
sockets the same way (one per address ``getaddrinfo`` gives for the host:
IPv4 and IPv6 for a wildcard host, IPv6 sockets IPv6-only, SO_REUSEADDR off
Windows) and adds the option. With SO_REUSEPORT on every socket, several
processes bind the same port and the kernel spreads new connections over them
(Linux hashes each connection's addresses; other systems may not balance).

:class:`Server` is what ``manager.serve`` reports once they listen; :func:`accept_loop`
hands each accepted stream to the manager.
"""

from __future__ import annotations

import errno
import logging
import sys
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import attrs
import trio

if TYPE_CHECKING:
    from ._socket import Handler

logger = logging.getLogger("trio_wsmgr")

#: the backlog trio uses (the kernel caps it at its own maximum)
_BACKLOG = 0xFFFF


@attrs.frozen
class Server:
    """What ``await nursery.start(manager.serve, ...)`` returns."""

    listeners: tuple[trio.SocketListener, ...]

    @property
    def port(self) -> int:
        """The bound port (useful with port 0)."""
        return int(self.listeners[0].socket.getsockname()[1])

    @property
    def host(self) -> str:
        return str(self.listeners[0].socket.getsockname()[0])


def reuse_port_option() -> int:
    """The SO_REUSEPORT constant, or OSError(ENOPROTOOPT) where the platform lacks it."""
    option = getattr(trio.socket, "SO_REUSEPORT", None)
    if option is None:
        raise OSError(
            errno.ENOPROTOOPT,
            f"reuse_port=True needs SO_REUSEPORT, which this platform ({sys.platform}) "
            "does not have: run one process per port instead",
        )
    return int(option)


async def open_listeners(
    port: int, *, host: str | None = None, reuse_port: bool = False
) -> list[trio.SocketListener]:
    """Like :func:`trio.open_tcp_listeners`, plus SO_REUSEPORT when ``reuse_port``.

    Port 0 picks a free port per address, as trio does. Raises :class:`OSError`
    when a socket cannot be bound (a busy port without ``reuse_port`` on both
    sides), or when ``reuse_port`` is asked for on a platform without it.
    """
    if not isinstance(port, int) or isinstance(port, bool):
        raise TypeError(f"port must be an int, not {port!r}")
    if not isinstance(reuse_port, bool):
        raise TypeError(f"reuse_port must be a bool, not {reuse_port!r}")
    if not reuse_port:
        return await trio.open_tcp_listeners(port, host=host)
    option = reuse_port_option()
    addresses = await trio.socket.getaddrinfo(
        host, port, type=trio.socket.SOCK_STREAM, flags=trio.socket.AI_PASSIVE
    )
    listeners: list[trio.SocketListener] = []
    unsupported: list[OSError] = []
    try:
        for family, kind, proto, _, address in addresses:
            try:
                sock = trio.socket.socket(family, kind, proto)
            except OSError as exc:
                if exc.errno != errno.EAFNOSUPPORT:
                    raise
                unsupported.append(exc)  # e.g. no IPv6 here: the other family will do
                continue
            try:
                if sys.platform != "win32":
                    sock.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_REUSEADDR, 1)
                sock.setsockopt(trio.socket.SOL_SOCKET, option, 1)
                if family == trio.socket.AF_INET6:
                    sock.setsockopt(trio.socket.IPPROTO_IPV6, trio.socket.IPV6_V6ONLY, 1)
                await sock.bind(address)
                sock.listen(_BACKLOG)
                listeners.append(trio.SocketListener(sock))
            except BaseException:
                sock.close()
                raise
    except BaseException:
        for listener in listeners:
            listener.socket.close()
        raise
    if not listeners:
        raise OSError(errno.EAFNOSUPPORT, f"no usable address family for host {host!r}") from (
            unsupported[0] if unsupported else None
        )
    return listeners


#: accept() errors that mean "out of resources for now": wait and retry (as trio.serve_listeners)
_ACCEPT_CAPACITY_ERRNOS = frozenset(
    code
    for code in (getattr(errno, name, None) for name in ("EMFILE", "ENFILE", "ENOMEM", "ENOBUFS"))
    if code is not None
)
#: how long to wait before accepting again after such an error
_ACCEPT_RETRY_DELAY = 0.1


async def accept_loop(
    listener: trio.abc.Listener[Any],
    connections: trio.Nursery,
    handler: Handler,
    serve_stream: Callable[[Handler, trio.abc.Stream], Awaitable[None]],
) -> None:
    """Accept for ever; ``serve_stream(handler, stream)`` serves each in ``connections``.

    What :func:`trio.serve_listeners` does, minus its wrapper coroutine around each
    connection (kept alive, and scanned by the garbage collector, for the
    connection's whole life) and its second close of each stream
    (``serve_stream`` always closes its stream).
    """
    start_soon = connections.start_soon
    async with listener:  # closed however the loop ends (a cancelled serve() too)
        while True:
            try:
                stream = await listener.accept()
            except OSError as exc:
                if exc.errno not in _ACCEPT_CAPACITY_ERRNOS:
                    raise
                logger.error(
                    "accept() failed with %s; retrying in %s s",
                    errno.errorcode.get(exc.errno or 0, exc.errno),
                    _ACCEPT_RETRY_DELAY,
                    exc_info=True,
                )
                await trio.sleep(_ACCEPT_RETRY_DELAY)
                continue
            start_soon(serve_stream, handler, stream)
