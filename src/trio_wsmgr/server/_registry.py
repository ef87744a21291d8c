"""The registry of open sockets and its indexes. Plain synchronous code, no awaits."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, Protocol, TypeVar


class _Registrable(Protocol):
    @property
    def id(self) -> int: ...
    @property
    def user_id(self) -> str | None: ...


S = TypeVar("S", bound=_Registrable)


class Registry(Generic[S]):
    """Open sockets by id, by user and by remote address; slots reserved for handshakes.

    ``reserve``/``release`` count handshakes in progress against the limits, so
    that N concurrent handshakes cannot overshoot ``max_connections``.
    """

    def __init__(self) -> None:
        self._sockets: dict[int, S] = {}
        self._by_user: dict[str, dict[int, S]] = {}
        self._per_address: dict[str, int] = {}
        self._per_user: dict[str, int] = {}
        self._address_of: dict[int, str] = {}
        self.reserved = 0

    def __len__(self) -> int:
        return len(self._sockets)

    def __iter__(self) -> Iterator[S]:
        return iter(list(self._sockets.values()))

    def __contains__(self, sock: object) -> bool:
        return getattr(sock, "id", None) in self._sockets

    @property
    def in_use(self) -> int:
        """Open sockets plus handshakes holding a reservation."""
        return len(self._sockets) + self.reserved

    def address_count(self, address: str) -> int:
        return self._per_address.get(address, 0)

    def user_count(self, user_id: str) -> int:
        return self._per_user.get(user_id, 0)

    def reserve(self, address: str | None) -> None:
        self.reserved += 1
        if address is not None:
            self._per_address[address] = self._per_address.get(address, 0) + 1

    def release(self, address: str | None) -> None:
        self.reserved -= 1
        if address is not None:
            self._decrement(self._per_address, address)

    def reserve_user(self, user_id: str) -> None:
        """Count a handshake of ``user_id`` against the per-user limit (before it awaits)."""
        self._per_user[user_id] = self._per_user.get(user_id, 0) + 1

    def release_user(self, user_id: str) -> None:
        """Undo :meth:`reserve_user` for a handshake that did not end registered."""
        self._decrement(self._per_user, user_id)

    def add(self, sock: S, address: str | None) -> None:
        """Register an open socket; its handshake's reservation becomes the socket."""
        self.reserved -= 1
        self._sockets[sock.id] = sock
        if address is not None:
            self._address_of[sock.id] = address
        user = sock.user_id
        if user is not None:  # its per-user count was taken by reserve_user()
            self._by_user.setdefault(user, {})[sock.id] = sock

    def remove(self, sock: S) -> bool:
        """Unregister; False if it was not registered. O(1)."""
        if self._sockets.pop(sock.id, None) is None:
            return False
        address = self._address_of.pop(sock.id, None)
        if address is not None:
            self._decrement(self._per_address, address)
        user = sock.user_id
        if user is not None:
            self._decrement(self._per_user, user)
            mine = self._by_user.get(user)
            if mine is not None:
                mine.pop(sock.id, None)
                if not mine:
                    del self._by_user[user]
        return True

    def user_sockets(self, user_id: str) -> list[S]:
        """The user's open sockets, O(number of them)."""
        mine = self._by_user.get(user_id)
        return list(mine.values()) if mine else []

    def users(self) -> list[str]:
        return list(self._by_user)

    def select(self, predicate: Callable[[S], bool] | None) -> list[S]:
        if predicate is None:
            return list(self._sockets.values())
        return [sock for sock in self._sockets.values() if predicate(sock)]

    @staticmethod
    def _decrement(counts: dict[str, int], key: str) -> None:
        left = counts.get(key, 0) - 1
        if left > 0:
            counts[key] = left
        else:
            counts.pop(key, None)
