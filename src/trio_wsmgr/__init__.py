"""trio_wsmgr: a complete WebSocket connection layer for Trio."""

from __future__ import annotations

from ._config import CloseCode as CloseCode
from ._exceptions import (
    BackendUnavailable as BackendUnavailable,
)
from ._exceptions import (
    BroadcastError as BroadcastError,
)
from ._exceptions import (
    ConnectionClosed as ConnectionClosed,
)
from ._exceptions import (
    InvalidChannelName as InvalidChannelName,
)
from ._exceptions import (
    MessageEncodingError as MessageEncodingError,
)
from ._exceptions import (
    PoolClosed as PoolClosed,
)
from ._exceptions import (
    PoolTimeout as PoolTimeout,
)
from ._exceptions import (
    RequestRejected as RequestRejected,
)
from ._exceptions import (
    WsmgrError as WsmgrError,
)

__version__ = "0.1.0"
