"""The ASGI 3 callables' types, as the manager's ASGI methods take and return them."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, TypeAlias

#: an ASGI connection scope (``type``: ``websocket``, ``http`` or ``lifespan``)
Scope: TypeAlias = MutableMapping[str, Any]
#: ``await receive()``: the next event from the server
ASGIReceive: TypeAlias = Callable[[], Awaitable[MutableMapping[str, Any]]]
#: ``await send(event)``: an event to the server
ASGISend: TypeAlias = Callable[[MutableMapping[str, Any]], Awaitable[None]]
#: an ASGI 3 application
ASGIApp: TypeAlias = Callable[[Scope, ASGIReceive, ASGISend], Awaitable[None]]
