"""An await that raises Cancelled did not happen; one that returns did (trio's channel rule).

``sock.send`` and ``manager.broadcast`` either queued the message and return, or
did not and raise :class:`trio.Cancelled`; a delivery count is never lost.
"""

from __future__ import annotations

import math
from typing import Any

import trio
import trio.testing

from trio_wsmgr import ManagedSocket, WebSocketManager
from trio_wsmgr.testing import open_client, open_peer


def quiet(**options: Any) -> WebSocketManager:
    options.setdefault("heartbeat_interval", math.inf)
    return WebSocketManager(**options)


async def test_a_send_cancelled_before_it_queued_sends_nothing() -> None:
    manager = quiet()
    outcome: list[object] = []

    async def handler(sock: ManagedSocket) -> None:
        with trio.CancelScope() as scope:
            scope.cancel()
            await sock.send("cancelled")
        outcome.append(scope.cancelled_caught)
        outcome.append(sock.statistics().messages_out)
        await sock.send("after")
        async for _ in sock:
            pass

    async with open_client(manager, handler) as conn:
        assert await conn.get_message() == "after"  # "cancelled" never went out
    assert outcome == [True, 0]


async def test_a_broadcast_cancelled_before_it_queued_reaches_nobody() -> None:
    manager = quiet()
    outcome: list[object] = []

    async def handler(sock: ManagedSocket) -> None:
        with trio.CancelScope() as scope:
            scope.cancel()
            outcome.append(await manager.broadcast("cancelled"))
        outcome.append(scope.cancelled_caught)
        outcome.append(manager.statistics().messages_out)
        await manager.broadcast("after")
        async for _ in sock:
            pass

    async with open_client(manager, handler) as conn:
        assert await conn.get_message() == "after"
    assert outcome == [True, 0]


async def test_a_send_that_returned_was_queued_even_if_cancelled_right_after() -> None:
    manager = quiet()
    outcome: list[object] = []

    async def handler(sock: ManagedSocket) -> None:
        with trio.CancelScope() as scope:
            await sock.send("sent")
            scope.cancel()
            outcome.append("returned")
            await trio.lowlevel.checkpoint()
        async for _ in sock:
            pass

    async with open_client(manager, handler) as conn:
        assert await conn.get_message() == "sent"
    assert outcome == ["returned"]


async def test_a_broadcast_cancelled_while_waiting_for_a_full_socket_returns_its_count(
    autojump_clock: Any,
) -> None:
    manager = quiet(send_buffer_size=1024, slow_consumer_timeout=math.inf)
    big = b"y" * 4096

    async def idle(sock: ManagedSocket) -> None:
        async for _ in sock:
            pass

    async with (
        open_peer(manager, idle, lockstep=True) as stuck,
        open_client(manager, idle) as healthy,
    ):
        await trio.testing.wait_all_tasks_blocked()
        assert manager.get_active_connections() == 2
        assert await manager.broadcast(big) == 2  # room on both: the stuck one is full now
        assert await healthy.get_message() == big
        delivered: int | None = None
        with trio.move_on_after(10) as scope:
            delivered = await manager.broadcast(big)  # waits for the stuck one, forever
        # The healthy socket got it, so the broadcast happened: its count comes back,
        # and the stuck socket's copy is counted as dropped.
        assert delivered == 1
        assert not scope.cancelled_caught  # no checkpoint after the return in the scope
        assert await healthy.get_message() == big
        assert manager.statistics().dropped == 1
        _ = stuck
