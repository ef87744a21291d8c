"""trio_wsmgr: a complete WebSocket connection layer for Trio.

The public API is re-exported here; the ``_modules`` are private.
"""

from __future__ import annotations

from ._backoff import Backoff as Backoff
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
from .backends import Backend as Backend
from .backends import BackendStatistics as BackendStatistics
from .backends import MemoryBackend as MemoryBackend
from .backends import MemoryHub as MemoryHub
from .backends import RedisBackend as RedisBackend
from .backends import ShardStatistics as ShardStatistics
from .broadcast._broadcaster import Broadcaster as Broadcaster
from .broadcast._broadcaster import BroadcasterStatistics as BroadcasterStatistics
from .broadcast._broadcaster import Channel as Channel
from .broadcast._history import Publication as Publication
from .broadcast._history import StreamPosition as StreamPosition
from .broadcast._history import SubscribeResult as SubscribeResult
from .broadcast._presence import Presence as Presence
from .client._connection import PooledConnection as PooledConnection
from .client._health import HealthState as HealthState
from .client._health import HealthStatus as HealthStatus
from .client._health import PoolStatistics as PoolStatistics
from .client._pool import Acquisition as Acquisition
from .client._pool import WebSocketPool as WebSocketPool
from .protocol._compression import Compression as Compression
from .server._auth import Authenticator as Authenticator
from .server._auth import AuthResult as AuthResult
from .server._auth import HandshakeRequest as HandshakeRequest
from .server._auth import TokenAuth as TokenAuth
from .server._auth import extract_token as extract_token
from .server._auth import static_tokens as static_tokens
from .server._fanout import OnFull as OnFull
from .server._listen import Server as Server
from .server._manager import Handler as Handler
from .server._manager import WebSocketManager as WebSocketManager
from .server._socket import ManagedSocket as ManagedSocket
from .server._socket import SocketStatistics as SocketStatistics
from .server._statistics import ManagerStatistics as ManagerStatistics

__version__ = "0.1.0"

__all__ = [
    "Acquisition",
    "AuthResult",
    "Authenticator",
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
    "Handler",
    "HandshakeRequest",
    "HealthState",
    "HealthStatus",
    "InvalidChannelName",
    "ManagedSocket",
    "ManagerStatistics",
    "MemoryBackend",
    "MemoryHub",
    "MessageEncodingError",
    "OnFull",
    "PoolClosed",
    "PoolStatistics",
    "PoolTimeout",
    "PooledConnection",
    "Presence",
    "Publication",
    "RedisBackend",
    "RequestRejected",
    "Server",
    "ShardStatistics",
    "SocketStatistics",
    "StreamPosition",
    "SubscribeResult",
    "TokenAuth",
    "WebSocketManager",
    "WebSocketPool",
    "WsmgrError",
    "extract_token",
    "static_tokens",
]
