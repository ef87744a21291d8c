"""Every script in ``examples/`` runs as is: started as a subprocess, talked to, stopped.

Servers are started on port 0 (they print their URL), driven with the
``websockets`` client, then stopped with SIGINT (Ctrl-C), which must close them
cleanly. Scripts that run to the end are checked by their exit status and output.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import ClientConnection, connect

from redis_server import RedisServer, redis_server_fixture  # noqa: F401

ROOT = Path(__file__).parent.parent
EXAMPLES = ROOT / "examples"
WAIT = 10.0


def run_to_end(name: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(EXAMPLES / name)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


@contextmanager
def serving(name: str) -> Iterator[str]:
    """Run a server example on a free port; yield the ws:// URL it printed."""
    process = subprocess.Popen(
        [sys.executable, str(EXAMPLES / name), "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        match = re.search(r"(ws://\S+?/)", line)
        if match is None:
            process.kill()
            pytest.fail(f"{name} did not start: {line!r} {process.communicate()[1]}")
        yield match.group(1)
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=WAIT)
        assert process.returncode == 0, stderr
        assert "Traceback" not in stderr
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()


def recv(ws: ClientConnection) -> str | bytes:
    return ws.recv(timeout=WAIT)


def test_echo_server_echoes_text_and_binary() -> None:
    with serving("echo_server.py") as url, connect(url) as ws:
        ws.send("hello")
        assert recv(ws) == "hello"
        ws.send(b"\x00\xff")
        assert recv(ws) == b"\x00\xff"


def test_chat_server_talks_to_the_room_and_knows_who_is_there() -> None:
    with serving("chat_server.py") as url, connect(url + "?name=alice") as alice:
        assert recv(alice) == "you are alice, in lobby"  # first, whatever else happens
        alice.send("/who")  # answered once alice's join (and its announcement) is done
        assert recv(alice) == "in the room: alice"
        with connect(url + "?name=bob") as bob:
            assert recv(bob) == "you are bob, in lobby"
            assert recv(alice) == "bob joined lobby"
            bob.send("hi all")
            assert recv(alice) == "bob: hi all"
            alice.send("/who")
            assert recv(alice) == "in the room: alice, bob"
            bob.send("/join garden")
            assert recv(bob) == "you are bob, in garden"
            assert recv(alice) == "bob left"
            alice.send("/who")
            assert recv(alice) == "in the room: alice"
            bob.send("/join not a room!")
            assert "cannot join" in str(recv(bob))


def test_chat_server_refuses_a_client_without_a_name() -> None:
    with serving("chat_server.py") as url, pytest.raises(InvalidStatus) as caught:
        connect(url, open_timeout=WAIT)
    assert caught.value.response.status_code == 401


def test_token_auth_server_takes_the_token_from_a_bearer_subprotocol() -> None:
    with serving("token_auth_server.py") as url:
        offer = ["chat.v1", "bearer.alice-secret-token"]
        with connect(url, subprotocols=offer) as ws:  # type: ignore[arg-type]
            assert ws.subprotocol == "chat.v1"  # the token is not echoed back
            assert recv(ws) == "hello alice, you speak chat.v1"
            ws.send("hi")
            assert recv(ws) == "alice said: hi"
        headers = {"Authorization": "Bearer bob-secret-token"}
        with connect(url, additional_headers=headers) as ws:
            assert recv(ws) == "hello bob, you speak None"
        for offer in [["chat.v1"], ["chat.v1", "bearer.wrong"]]:
            with pytest.raises(InvalidStatus) as caught:
                connect(url, subprotocols=offer, open_timeout=WAIT)  # type: ignore[arg-type]
            assert caught.value.response.status_code == 401


def test_pool_client_shares_three_connections_and_notices_the_backend_leave() -> None:
    result = run_to_end("pool_client.py")
    assert result.returncode == 0, result.stderr
    assert "20 replies" in result.stdout
    assert "PoolTimeout" in result.stdout


@pytest.mark.redis
def test_redis_fanout_reaches_a_client_of_the_other_node(redis_server: RedisServer) -> None:
    result = run_to_end("redis_fanout.py", {"REDIS_URL": redis_server.url})
    assert result.returncode == 0, result.stderr
    assert "bob, on node B, got: hello from node A" in result.stdout


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.py")), ids=lambda path: path.name)
def test_each_example_is_short_and_shown_in_the_docs(path: Path) -> None:
    assert len(path.read_text().splitlines()) <= 110
    docs = "\n".join(page.read_text() for page in (ROOT / "docs").rglob("*.rst"))
    assert f"examples/{path.name}" in docs


def test_the_recovery_client_gets_what_it_missed_after_a_drop_in_order_once() -> None:
    with serving("recovery_server.py") as url, connect(url) as publisher:
        for n in range(1, 4):
            publisher.send(f"m{n}")
        envelopes = [json.loads(publisher.recv(timeout=WAIT)) for _ in range(3)]
        epoch = envelopes[0]["epoch"]
        assert [e["offset"] for e in envelopes] == [1, 2, 3]
        argv = [sys.executable, str(EXAMPLES / "recovery_client.py"), url]
        client = subprocess.Popen(
            [*argv, "--count", "6", f"--since={epoch}:0"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert client.stdout is not None
            lines = [json.loads(client.stdout.readline()) for _ in range(3)]  # from history
            publisher.send("!drop")  # the server cuts the client's connection
            for n in range(4, 7):
                publisher.send(f"m{n}")  # while it is away (its back-off is >= 0.37 s)
            lines += [json.loads(line) for line in client.stdout]
            _, stderr = client.communicate(timeout=WAIT)
        finally:
            if client.poll() is None:
                client.kill()
                client.communicate()
    assert client.returncode == 0, stderr
    assert "connection lost" in stderr  # it did reconnect
    assert lines == [{"offset": n, "data": f"m{n}"} for n in range(1, 7)]
