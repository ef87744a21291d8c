"""trio_wsmgr: a complete WebSocket connection layer for Trio.

The public API is re-exported here; the ``_modules`` are private.
"""

from __future__ import annotations

from ._auth import HandshakeRequest as HandshakeRequest
from ._auth import TokenAuth as TokenAuth
from ._auth import extract_token as extract_token
from ._auth import static_tokens as static_tokens
from ._backoff import Backoff as Backoff
from ._broadcaster import Broadcaster as Broadcaster
from ._broadcaster import BroadcasterStatistics as BroadcasterStatistics
from ._broadcaster import Channel as Channel
from ._compression import Compression as Compression
from ._config import CloseCode as CloseCode
from ._exceptions import BackendUnavailable as BackendUnavailable
from ._exceptions import BroadcastError as BroadcastError
from ._exceptions import ConnectionClosed as ConnectionClosed
from ._exceptions import InvalidChannelName as InvalidChannelName
from ._exceptions import MessageEncodingError as MessageEncodingError
from ._exceptions import PoolClosed as PoolClosed
from ._exceptions import PoolTimeout as PoolTimeout
from ._exceptions import RequestRejected as RequestRejected
from ._exceptions import WsmgrError as WsmgrError
from ._health import HealthState as HealthState
from ._health import HealthStatus as HealthStatus
from ._health import PoolStatistics as PoolStatistics
from ._manager import ManagerStatistics as ManagerStatistics
from ._manager import Server as Server
from ._manager import WebSocketManager as WebSocketManager
from ._pool import WebSocketPool as WebSocketPool
from ._socket import ManagedSocket as ManagedSocket
from ._socket import SocketStatistics as SocketStatistics
from .backends import Backend as Backend
from .backends import BackendStatistics as BackendStatistics
from .backends import MemoryBackend as MemoryBackend
from .backends import MemoryHub as MemoryHub
from .backends import RedisBackend as RedisBackend

__version__ = "0.1.0"

__all__ = [
    "Backend",
    "BackendStatistics",
    "BackendUnavailable",
    "Backoff",
    "BroadcastError",
    "Broadcaster",
    "BroadcasterStatistics",
    "Channel",
    "CloseCode",
    "Compression",
    "ConnectionClosed",
    "HandshakeRequest",
    "HealthState",
    "HealthStatus",
    "InvalidChannelName",
    "ManagedSocket",
    "ManagerStatistics",
    "MemoryBackend",
    "MemoryHub",
    "MessageEncodingError",
    "PoolClosed",
    "PoolStatistics",
    "PoolTimeout",
    "RedisBackend",
    "RequestRejected",
    "Server",
    "SocketStatistics",
    "TokenAuth",
    "WebSocketManager",
    "WebSocketPool",
    "WsmgrError",
    "extract_token",
    "static_tokens",
]
