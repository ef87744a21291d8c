"""wss:// with certificates from trustme: the websockets client and the pool over TLS.

(The browser over TLS is in test_e2e_browser.py.)
"""

from __future__ import annotations

import math
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio
import trustme
from websockets.exceptions import ConnectionClosed as WsClosed
from websockets.exceptions import InvalidMessage
from websockets.trio.client import connect

from trio_wsmgr import ManagedSocket, Server, WebSocketManager, WebSocketPool

WAIT = 10.0


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def server_context(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    return context


@pytest.fixture(scope="module")
def client_context(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


async def echo(sock: ManagedSocket) -> None:
    await sock.send(f"hello {sock.remote is not None} {sock.statistics().compressed}")
    async for message in sock:
        await sock.send(message)


@asynccontextmanager
async def serving(manager: WebSocketManager, context: ssl.SSLContext) -> AsyncIterator[Server]:
    async with trio.open_nursery() as nursery:
        server: Server = await nursery.start(
            lambda task_status: manager.serve(
                echo, "127.0.0.1", 0, ssl_context=context, task_status=task_status
            )
        )
        yield server
        await manager.close()
        nursery.cancel_scope.cancel()


async def test_a_websockets_client_talks_wss_to_the_manager(
    server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> None:
    manager = WebSocketManager(heartbeat_interval=math.inf)
    async with serving(manager, server_context) as server:
        url = f"wss://127.0.0.1:{server.port}/"
        async with connect(url, ssl=client_context) as ws:
            with trio.fail_after(WAIT):
                # the peer's address is known under TLS; compression is negotiated
                assert await ws.recv() == "hello True True"
                big = "x" * 200_000  # many TLS records, both ways
                await ws.send(big)
                assert await ws.recv() == big
            assert manager.broadcast_nowait("to all") == 1
            assert await ws.recv() == "to all"
        assert manager.statistics().accepted == 1


async def test_clients_that_fail_tls_take_nothing_down(
    server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> None:
    manager = WebSocketManager(heartbeat_interval=math.inf, connection_timeout=5)
    async with serving(manager, server_context) as server:
        url = f"wss://127.0.0.1:{server.port}/"
        async with connect(url, ssl=client_context) as bystander:
            assert await bystander.recv() == "hello True True"
            with pytest.raises(trio.BrokenResourceError) as untrusted:
                async with connect(url, ssl=ssl.create_default_context()):  # CA not trusted
                    pass
            assert isinstance(untrusted.value.__cause__, ssl.SSLCertVerificationError)
            with pytest.raises(InvalidMessage):  # plain HTTP to the TLS port: no HTTP answer
                async with connect(f"ws://127.0.0.1:{server.port}/", open_timeout=WAIT):
                    pass
            await bystander.send("still here")
            assert await bystander.recv() == "still here"
        assert manager.statistics().accepted == 1


async def test_the_pool_connects_over_wss_with_its_ssl_context(
    server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> None:
    manager = WebSocketManager(heartbeat_interval=math.inf)
    async with serving(manager, server_context) as server:
        pool = WebSocketPool(
            f"wss://localhost:{server.port}/", ssl_context=client_context, min_connections=1
        )
        async with pool, pool.acquire() as conn:
            assert await conn.get_message() == "hello True False"  # the pool offers no deflate
            await conn.send_message("via the pool")
            assert await conn.get_message() == "via the pool"


def test_serve_refuses_an_ssl_context_of_the_wrong_type() -> None:
    manager = WebSocketManager()
    with pytest.raises(TypeError, match="ssl_context"):
        trio.run(manager.serve, echo, "127.0.0.1", 0, ssl_context="cert.pem")  # type: ignore[arg-type]


async def test_manager_close_sends_1001_over_tls(
    server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> None:
    manager = WebSocketManager(heartbeat_interval=math.inf)
    async with (
        serving(manager, server_context) as server,
        connect(f"wss://127.0.0.1:{server.port}/", ssl=client_context) as ws,
    ):
        assert await ws.recv() == "hello True True"
        async with trio.open_nursery() as nursery:
            nursery.start_soon(manager.close)
            with trio.fail_after(WAIT):
                try:
                    while True:
                        await ws.recv()
                except WsClosed:
                    pass
        assert ws.close_code == 1001


async def test_cancelling_serve_closes_tls_sockets_with_1001(
    server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> None:
    manager = WebSocketManager(heartbeat_interval=math.inf, close_timeout=2)
    async with trio.open_nursery() as nursery:
        serving_scope = trio.CancelScope()

        async def run(task_status: trio.TaskStatus[Server]) -> None:
            with serving_scope:
                await manager.serve(
                    echo, "127.0.0.1", 0, ssl_context=server_context, task_status=task_status
                )

        server: Server = await nursery.start(run)
        async with connect(f"wss://127.0.0.1:{server.port}/", ssl=client_context) as ws:
            assert await ws.recv() == "hello True True"
            serving_scope.cancel()  # as a server's shutdown does
            with trio.fail_after(WAIT):
                try:
                    while True:
                        await ws.recv()
                except WsClosed:
                    pass
            assert ws.close_code == 1001
