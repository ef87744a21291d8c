"""The ``trio-wsmgr demo`` chat: a server (:mod:`.server`) and a page (``static/``)."""

from __future__ import annotations

from .server import ChatServer as ChatServer
from .server import Demo as Demo
from .server import run_demo as run_demo

__all__ = ["ChatServer", "Demo", "run_demo"]
