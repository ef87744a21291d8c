"""serve(reuse_port=True): several managers (processes) on one port, real sockets and clients."""

from __future__ import annotations

import errno
import math
import socket
import sys
from functools import partial

import pytest
import trio
from websockets.trio.client import connect

from trio_wsmgr import ManagedSocket, WebSocketManager
from trio_wsmgr.server._listen import open_listeners

#: connections tried before giving up on one manager ever getting one; with the
#: kernel hashing each connection's source port, all landing on one manager is
#: a (1/2)**MAX_TRIES event, not a timing bet
MAX_TRIES = 200

linux_only = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="only Linux balances SO_REUSEPORT listeners"
)


async def idle(sock: ManagedSocket) -> None:
    async for _ in sock:
        pass


@linux_only
async def test_two_managers_with_reuse_port_both_accept_on_one_port() -> None:
    one = WebSocketManager(heartbeat_interval=math.inf)
    two = WebSocketManager(heartbeat_interval=math.inf)
    async with trio.open_nursery() as nursery:
        first = await nursery.start(partial(one.serve, idle, "127.0.0.1", 0, reuse_port=True))
        second = await nursery.start(
            partial(two.serve, idle, "127.0.0.1", first.port, reuse_port=True)
        )
        assert second.port == first.port
        tries = 0
        while not (one.statistics().accepted and two.statistics().accepted):
            assert tries < MAX_TRIES, "every connection went to the same manager"
            tries += 1
            async with connect(f"ws://127.0.0.1:{first.port}/") as ws:
                await ws.ping()  # answered: the handshake is done and counted
        assert one.statistics().accepted + two.statistics().accepted == tries
        await one.close()
        await two.close()


async def test_without_reuse_port_a_second_manager_cannot_take_the_port() -> None:
    one = WebSocketManager(heartbeat_interval=math.inf)
    two = WebSocketManager(heartbeat_interval=math.inf)
    async with trio.open_nursery() as nursery:
        first = await nursery.start(partial(one.serve, idle, "127.0.0.1", 0, reuse_port=True))
        with pytest.raises(OSError) as caught:
            await nursery.start(partial(two.serve, idle, "127.0.0.1", first.port))
        assert caught.value.errno == errno.EADDRINUSE
        await one.close()


async def test_reuse_port_listeners_keep_port_zero_and_both_families() -> None:
    listeners = await open_listeners(0, host="127.0.0.1", reuse_port=True)
    try:
        [listener] = listeners
        assert listener.socket.getsockname()[1] != 0
        assert listener.socket.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) == 1
    finally:
        for listener in listeners:
            await listener.aclose()
    wildcard = await open_listeners(0, host=None, reuse_port=True)
    try:
        families = {listener.socket.family for listener in wildcard}
        assert socket.AF_INET in families
        for listener in wildcard:
            if listener.socket.family == socket.AF_INET6:
                assert listener.socket.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 1
    finally:
        for listener in wildcard:
            await listener.aclose()


async def test_reuse_port_where_the_platform_lacks_it_is_a_clear_oserror(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delattr(trio.socket, "SO_REUSEPORT")
    manager = WebSocketManager(heartbeat_interval=math.inf)
    with pytest.raises(OSError, match="reuse_port=True needs SO_REUSEPORT") as caught:
        await manager.serve(idle, "127.0.0.1", 0, reuse_port=True)
    assert caught.value.errno == errno.ENOPROTOOPT


async def test_reuse_port_must_be_a_bool() -> None:
    with pytest.raises(TypeError, match="reuse_port"):
        await open_listeners(0, host="127.0.0.1", reuse_port=1)  # type: ignore[arg-type]
