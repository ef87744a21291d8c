"""The heartbeat policy (synchronous, no event loop) and the close watch on real sockets."""

from __future__ import annotations

import math
from typing import Any

import trio
import trio.testing
import trio_websocket
from wsproto.events import CloseConnection

from trio_wsmgr import ManagedSocket, WebSocketManager
from trio_wsmgr.server._heartbeat import Action, HeartbeatPolicy
from trio_wsmgr.testing import Peer, open_peer

# -- the policy, without an event loop ---------------------------------------------------


def test_first_ping_is_due_one_interval_after_the_start() -> None:
    policy = HeartbeatPolicy(interval=5, timeout=3, close_timeout=2, now=100)
    assert policy.next_wake() == 105
    assert policy.on_wake(104) is Action.WAIT
    assert policy.on_wake(105) is Action.PING
    assert policy.next_wake() == 108  # the pong's deadline


def test_a_prompt_pong_keeps_the_interval_and_records_the_round_trip() -> None:
    policy = HeartbeatPolicy(interval=5, timeout=3, close_timeout=2, now=0)
    assert policy.on_wake(5) is Action.PING
    policy.pong(5.25)
    assert policy.rtt == 0.25
    assert policy.next_wake() == 10
    assert policy.on_wake(10) is Action.PING


def test_a_late_pong_is_a_timeout() -> None:
    policy = HeartbeatPolicy(interval=5, timeout=3, close_timeout=2, now=0)
    assert policy.on_wake(5) is Action.PING
    assert policy.on_wake(7.9) is Action.WAIT
    assert policy.on_wake(8) is Action.TIMEOUT


def test_no_second_ping_while_one_is_in_flight() -> None:
    policy = HeartbeatPolicy(interval=2, timeout=5, close_timeout=2, now=0)
    assert policy.on_wake(2) is Action.PING
    assert policy.next_wake() == 7  # not 4: the next ping waits for this one's verdict
    assert policy.on_wake(7) is Action.TIMEOUT


def test_a_backlog_skips_the_ping_and_the_verdict() -> None:
    policy = HeartbeatPolicy(interval=2, timeout=2, close_timeout=2, now=0)
    assert policy.on_wake(2, backlog=True) is Action.WAIT  # skipped, next one in an interval
    assert policy.next_wake() == 4
    assert policy.on_wake(4) is Action.PING
    assert policy.on_wake(6, backlog=True) is Action.WAIT  # its pong may sit unread: no verdict
    assert policy.next_wake() == 8
    assert policy.on_wake(8) is Action.PING  # ...and heartbeats go on


def test_infinite_interval_never_pings_but_the_close_watch_still_runs() -> None:
    policy = HeartbeatPolicy(interval=math.inf, timeout=math.inf, close_timeout=5, now=0)
    assert policy.next_wake() == math.inf
    policy.close_started(10)
    assert policy.closing
    assert policy.next_wake() == 15
    assert policy.on_wake(14) is Action.WAIT
    assert policy.on_wake(15) is Action.CLOSE_TIMEOUT


def test_a_close_replaces_the_heartbeat_and_starts_once() -> None:
    policy = HeartbeatPolicy(interval=5, timeout=5, close_timeout=2, now=0)
    assert policy.on_wake(5) is Action.PING
    policy.close_started(6)
    policy.close_started(7)  # idempotent: the first start counts
    assert policy.next_wake() == 8
    assert policy.on_wake(10) is Action.CLOSE_TIMEOUT  # not a heartbeat timeout


def test_the_ping_that_could_not_go_out_is_forgotten() -> None:
    policy = HeartbeatPolicy(interval=5, timeout=5, close_timeout=2, now=0)
    assert policy.on_wake(5) is Action.PING
    policy.ping_not_sent()
    assert policy.next_wake() == 10


# -- the close watch, whatever heartbeat_interval is -----------------------------------------


async def idle(sock: ManagedSocket) -> None:
    async for _ in sock:
        pass


async def test_a_peer_that_closes_and_stops_reading_is_dropped_without_heartbeats(
    autojump_clock: Any,
) -> None:
    """heartbeat_interval=inf: the connection still ends within close_timeout, not at close()."""
    manager = WebSocketManager(heartbeat_interval=math.inf, close_timeout=5)

    async def busy_elsewhere(sock: ManagedSocket) -> None:
        await sock.wait_closed()  # a handler that does not read: only the close watch can end it

    async with open_peer(manager, busy_elsewhere, lockstep=True) as peer:
        await peer.send_raw(peer.ws.send(CloseConnection(code=1000)))  # ...and never reads
        start = trio.current_time()
        with trio.fail_after(60):
            while manager.get_active_connections() or manager._connection_scopes:
                await trio.sleep(0.5)
        assert trio.current_time() - start <= 5 + 1


async def test_accept_sockets_get_the_close_watch_without_heartbeats_too(
    autojump_clock: Any,
) -> None:
    manager = WebSocketManager(heartbeat_interval=math.inf, close_timeout=5)
    client_stream, server_stream = trio.testing.lockstep_stream_pair()
    ended = trio.Event()

    async def serve_one() -> None:
        request = await trio_websocket.wrap_server_stream(nursery, server_stream)
        async with manager.accept(request) as sock:
            await sock.wait_closed()  # does not read: only the close watch can end it
        ended.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve_one)
        peer = Peer(client_stream)
        assert await peer.handshake() == 101
        await peer.send_raw(peer.ws.send(CloseConnection(code=1000)))  # ...and never reads
        start = trio.current_time()
        with trio.fail_after(60):
            await ended.wait()
        assert trio.current_time() - start <= 5 + 1
        nursery.cancel_scope.cancel()
