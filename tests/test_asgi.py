"""The manager under a real ASGI server: hypercorn's trio worker, started as users start it.

``hypercorn --worker-class trio module:app`` runs in a subprocess on a free port;
real ``websockets`` clients talk to it. The apps are the ones in ``examples/``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import attrs
import h11
import pytest
import trio
from websockets.exceptions import ConnectionClosed as WsClosed
from websockets.exceptions import InvalidStatus
from websockets.trio.client import connect

from conftest import require
from redis_server import free_port

EXAMPLES = Path(__file__).parent.parent / "examples"
WAIT = 10.0


@attrs.frozen
class Hypercorn:
    process: subprocess.Popen[str]
    port: int

    def url(self, path: str) -> str:
        return f"ws://127.0.0.1:{self.port}{path}"

    def stop(self) -> tuple[int, str]:
        """SIGINT, as Ctrl-C: hypercorn shuts down gracefully; return (status, its log)."""
        self.process.send_signal(signal.SIGINT)
        log, _ = self.process.communicate(timeout=WAIT)
        return self.process.returncode, log


@contextmanager
def hypercorn(app: str, *options: str, cwd: Path = EXAMPLES) -> Iterator[Hypercorn]:
    """``hypercorn --worker-class trio app`` from ``cwd`` (examples/), until the block ends."""
    binary = shutil.which("hypercorn", path=os.path.dirname(sys.executable))
    require(binary is not None, "hypercorn is not installed (it is in the tests group)")
    assert binary is not None
    port = free_port()
    process = subprocess.Popen(
        [binary, "--worker-class", "trio", "--bind", f"127.0.0.1:{port}", *options, app],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        start_new_session=True,  # its worker process too is ended with the group below
    )
    try:
        assert process.stdout is not None
        for line in process.stdout:  # hypercorn logs its address once it listens
            if re.search(r"Running on http://127\.0\.0\.1:\d+", line):
                break
        else:
            pytest.fail(f"hypercorn did not start: {process.communicate()[0]}")
        yield Hypercorn(process, port)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()


async def recv(ws: object) -> str | bytes:
    with trio.fail_after(WAIT):
        return await ws.recv()  # type: ignore[attr-defined,no-any-return]


async def drain(ws: object) -> None:
    """Read until the connection closes."""
    try:
        while True:
            await ws.recv()  # type: ignore[attr-defined]
    except WsClosed:
        return


async def test_hypercorn_runs_the_manager_through_accept_asgi() -> None:
    with hypercorn("asgi_chat:app") as server:
        async with (
            connect(server.url("/ws?name=alice"), subprotocols=["chat.v1"]) as alice,
            connect(server.url("/ws?name=bob")) as bob,
        ):
            assert alice.subprotocol == "chat.v1"  # negotiated by the manager
            assert bob.subprotocol is None
            assert await recv(alice) == "* bob joined"  # the Broadcaster, in the lifespan
            await alice.send("/who")
            assert await recv(alice) == "alice bob"  # the manager's user index
            await bob.send("hello")
            assert await recv(alice) == "bob: hello"
            assert await recv(bob) == "bob: hello"
            await bob.send(b"\x00binary")
            assert await recv(alice) == "bob: b'\\x00binary'"
        with pytest.raises(InvalidStatus) as refused:
            async with connect(server.url("/ws")):  # no name: the authenticator says no
                pass
        assert refused.value.response.status_code == 401  # the manager's own status
        status, log = server.stop()
    assert status == 0
    assert "Traceback" not in log


async def test_the_per_user_limit_holds_through_hypercorn() -> None:
    with hypercorn("asgi_chat:app") as server:
        async with connect(server.url("/ws?name=carol")) as carol:
            async with (  # max_connections_per_user=3
                connect(server.url("/ws?name=dave")),
                connect(server.url("/ws?name=dave")),
                connect(server.url("/ws?name=dave")),
            ):
                with pytest.raises(InvalidStatus) as refused:
                    async with connect(server.url("/ws?name=dave")):
                        pass
                assert refused.value.response.status_code == 429
            with trio.fail_after(WAIT):  # until the daves' closes have reached the manager
                said = ""
                while said != "carol":
                    await carol.send("/who")
                    while (said := await recv(carol)).startswith("* "):  # "* dave joined"
                        pass
        status, _ = server.stop()
    assert status == 0


async def test_hypercorn_shutdown_closes_every_socket_with_1001() -> None:
    with hypercorn("asgi_chat:app", "--graceful-timeout", "1") as server:
        async with connect(server.url("/ws?name=erin")) as erin:
            await erin.send("/who")
            assert await recv(erin) == "erin"
            server.process.send_signal(signal.SIGINT)
            with trio.fail_after(WAIT):
                await drain(erin)
            assert erin.close_code == 1001
        status, log = server.stop()
    assert status == 0
    assert "Traceback" not in log


async def http_get(port: int, path: str) -> tuple[int, bytes]:
    """One GET with h11 as the client; the response ends by its Content-Length."""
    conn = h11.Connection(h11.CLIENT)
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        request = h11.Request(method="GET", target=path, headers=[("Host", "127.0.0.1")])
        await stream.send_all(conn.send(request) + conn.send(h11.EndOfMessage()))
        status, body = 0, b""
        with trio.fail_after(WAIT):
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(await stream.receive_some(65536))
                elif isinstance(event, h11.Response):
                    status = event.status_code
                elif isinstance(event, h11.Data):
                    body += event.data
                elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                    return status, body


async def test_the_quart_trio_example_serves_http_and_chats_through_the_manager() -> None:
    with hypercorn("quart_trio_chat:app", "--graceful-timeout", "1") as server:
        status, body = await http_get(server.port, "/")
        assert (status, body) == (200, b"chat: connect a WebSocket to /ws?name=...\n")
        assert (await http_get(server.port, "/nowhere"))[0] == 404  # Quart's own 404
        async with (
            connect(server.url("/ws?name=ann"), subprotocols=["chat.v1"]) as ann,
            connect(server.url("/ws?name=ben")) as ben,
        ):
            assert ann.subprotocol == "chat.v1"
            await ben.send("hi all")
            assert await recv(ann) == "ben: hi all"  # through the Broadcaster
            assert await recv(ben) == "ben: hi all"
            status, body = await http_get(server.port, "/status")
            assert status == 200
            assert json.loads(body) == {"online": 2, "users": ["ann", "ben"], "accepted": 2}
            with pytest.raises(InvalidStatus) as refused:
                async with connect(server.url("/ws")):
                    pass
            assert refused.value.response.status_code == 401
            server.process.send_signal(signal.SIGINT)  # shutdown: 1001 for both
            with trio.fail_after(WAIT):
                await drain(ann)
                await drain(ben)
            assert (ann.close_code, ben.close_code) == (1001, 1001)
        status, log = server.stop()
    assert status == 0
    assert "Traceback" not in log


async def test_a_bare_asgi_app_answers_http_404_handles_lifespan_and_admits_websockets() -> None:
    with hypercorn(
        "asgi_plain:app", "--graceful-timeout", "1", cwd=Path(__file__).parent
    ) as server:
        assert (await http_get(server.port, "/"))[0] == 404  # no fallback: 404
        async with connect(server.url("/?user=zoe"), origin="http://good.example") as zoe:
            assert await recv(zoe) == "zoe from True"  # the scope's client is sock.remote
            await zoe.send("ping")
            assert await recv(zoe) == "ping"
        with pytest.raises(InvalidStatus) as refused:
            async with connect(server.url("/?user=eve"), origin="http://evil.example"):
                pass
        assert refused.value.response.status_code == 403  # the manager's origin check
        status, log = server.stop()  # lifespan.shutdown was answered here (manager.close)
    assert status == 0
    assert "Traceback" not in log
    assert "lifespan" not in log.lower()  # hypercorn logs a lifespan it could not run
