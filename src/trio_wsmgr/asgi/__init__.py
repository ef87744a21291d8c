"""ASGI: the manager's sockets under an ASGI server (hypercorn's trio worker, Quart-Trio).

Use :meth:`WebSocketManager.asgi_app <trio_wsmgr.WebSocketManager.asgi_app>` and
:meth:`WebSocketManager.accept_asgi <trio_wsmgr.WebSocketManager.accept_asgi>`; the
bridge here joins an ASGI connection to the manager through an in-memory stream.
"""

from __future__ import annotations

from ._types import ASGIApp as ASGIApp
from ._types import ASGIReceive as ASGIReceive
from ._types import ASGISend as ASGISend
from ._types import Scope as Scope

__all__ = ["ASGIApp", "ASGIReceive", "ASGISend", "Scope"]
