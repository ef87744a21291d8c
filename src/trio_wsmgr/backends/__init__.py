"""Backends: how a :class:`~trio_wsmgr.Broadcaster` reaches the other nodes.

:class:`Backend` is the interface (``run``, ``publish``, ``subscribe``,
``unsubscribe``, ``statistics``); :class:`MemoryBackend` connects Broadcasters
within one process through a :class:`MemoryHub`; :class:`RedisBackend` connects
processes through Redis pub/sub (or sharded pub/sub on Redis Cluster, over
connections of its own) and needs the ``redis`` extra (coredis) for a single
server, imported only when a RedisBackend is used.
"""

from __future__ import annotations

from ..broadcast._backend import Backend as Backend
from ..broadcast._backend import BackendStatistics as BackendStatistics
from ..broadcast._backend import Receiver as Receiver
from ..broadcast._backend import ShardStatistics as ShardStatistics
from ..broadcast._history import HistoryPage as HistoryPage
from ..broadcast._memory import MemoryBackend as MemoryBackend
from ..broadcast._memory import MemoryHub as MemoryHub
from ..broadcast._redis import RedisBackend as RedisBackend

__all__ = [
    "Backend",
    "BackendStatistics",
    "HistoryPage",
    "MemoryBackend",
    "MemoryHub",
    "Receiver",
    "RedisBackend",
    "ShardStatistics",
]
