"""The exceptions trio_wsmgr raises, named by whose fault it is.

::

    WsmgrError                      base of everything raised here
    ├── RequestRejected             a handshake we refused (carries .status_code)
    ├── ConnectionClosed            I/O on a socket that is closed or closing
    │                               (carries .code and .reason)
    ├── PoolTimeout                 also a trio.TooSlowError: acquire() ran out of time
    ├── PoolClosed                  also a trio.ClosedResourceError: the pool is shut down
    └── BroadcastError
        ├── InvalidChannelName      also a ValueError
        ├── MessageEncodingError    also a TypeError: the message cannot be sent
        └── BackendUnavailable      local delivery happened, other nodes were not reached
                                    (carries .delivered, the local count)

Configuration mistakes raise plain :class:`ValueError` / :class:`TypeError`
naming the option, at construction time.
"""

from __future__ import annotations

import trio


class WsmgrError(Exception):
    """Base class of every exception trio_wsmgr raises on purpose."""


class RequestRejected(WsmgrError):
    """A WebSocket handshake was refused; the peer got an HTTP response.

    ``status_code`` is the HTTP status that was sent (401, 403, 400, 503 ...).
    """

    def __init__(self, status_code: int, reason: str) -> None:
        super().__init__(f"{status_code} {reason}")
        self.status_code = status_code
        self.reason = reason


class ConnectionClosed(WsmgrError):
    """The socket is closed (or closing); ``code`` and ``reason`` say why."""

    def __init__(self, code: int | None, reason: str = "") -> None:
        super().__init__(f"connection closed: code={code} reason={reason!r}")
        self.code = code
        self.reason = reason


class PoolTimeout(WsmgrError, trio.TooSlowError):
    """``WebSocketPool.acquire()`` did not get a connection within ``acquire_timeout``."""


class PoolClosed(WsmgrError, trio.ClosedResourceError):
    """The pool is closed (or closing); no connection can be acquired."""


class BroadcastError(WsmgrError):
    """Base class of the Broadcaster's errors."""


class InvalidChannelName(BroadcastError, ValueError):
    """A channel name is empty, too long, or uses characters outside the allowed set."""


class MessageEncodingError(BroadcastError, TypeError):
    """A message is neither str, bytes nor JSON-serialisable."""


class BackendUnavailable(BroadcastError):
    """Local subscribers got the message but the backend (e.g. Redis) did not.

    ``delivered`` is the number of local sockets the message was queued for.
    """

    def __init__(self, message: str, *, delivered: int) -> None:
        super().__init__(message)
        self.delivered = delivered
