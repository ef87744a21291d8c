"""The ``trio-wsmgr demo`` chat, driven by real websockets clients on 127.0.0.1.

In-process tests run the demo with :func:`run_demo`; the command-line tests start
``python -m trio_wsmgr demo`` as a subprocess (:func:`demo_process`, also used by
the browser test) and stop it with SIGINT, as a user's Ctrl-C would.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from functools import partial
from typing import Any

import attrs
import pytest
import trio
import trio.testing
from websockets.exceptions import ConnectionClosed as WsClosed
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect as sync_connect
from websockets.trio.client import ClientConnection, connect

from redis_server import RedisServer, redis_server_fixture  # noqa: F401
from trio_wsmgr import HandshakeRequest, RequestRejected, WebSocketManager
from trio_wsmgr._demo import Demo, run_demo
from trio_wsmgr._demo.server import (
    ChatServer,
    authenticate,
    build_manager,
    parse_request,
    room_name,
)
from trio_wsmgr.backends import Backend, RedisBackend
from trio_wsmgr.broadcast._broadcaster import Broadcaster
from trio_wsmgr.testing import open_peer

WAIT = 10.0  # real-clock ceiling for things that normally take milliseconds


# -- the demo as a subprocess (shared with test_e2e_browser.py) -------------------------


@attrs.frozen
class DemoProcess:
    process: subprocess.Popen[str]
    url: str

    @property
    def ws_url(self) -> str:
        return "ws" + self.url.removeprefix("http").rstrip("/") + "/ws"

    def interrupt(self) -> tuple[int, str]:
        """Ctrl-C: SIGINT, then wait; return (exit status, stderr)."""
        self.process.send_signal(signal.SIGINT)
        _, stderr = self.process.communicate(timeout=WAIT)
        return self.process.returncode, stderr


@contextmanager
def demo_process(*arguments: str) -> Iterator[DemoProcess]:
    """``python -m trio_wsmgr demo --port 0 ...``, running until the block ends."""
    process = subprocess.Popen(
        [sys.executable, "-m", "trio_wsmgr", "demo", "--port", "0", *arguments],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()  # the demo prints its URL once it listens
        match = re.search(r"open (http://\S+) in a browser", line)
        if match is None:
            process.kill()
            _, stderr = process.communicate()
            pytest.fail(f"the demo did not start: {line!r} {stderr}")
        yield DemoProcess(process, match.group(1))
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.communicate(timeout=WAIT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.communicate()


# -- in-process helpers -------------------------------------------------------------------


@asynccontextmanager
async def running_demo(
    backend: Backend | None = None, manager: WebSocketManager | None = None
) -> AsyncIterator[Demo]:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    async with trio.open_nursery() as nursery:
        demo: Demo = await nursery.start(
            partial(run_demo, listeners, backend=backend, manager=manager)
        )
        try:
            yield demo
        finally:
            with trio.CancelScope(shield=True):
                await demo.close()


def ws_url(demo: Demo, name: str | None = None) -> str:
    url = demo.url.replace("http://", "ws://") + "ws"
    return url if name is None else f"{url}?name={name}"


def unwrap(raw: str | bytes) -> dict[str, Any]:
    """A message from the demo; a room's messages come in a history envelope (unwrapped)."""
    message = json.loads(raw)
    if "type" not in message and {"epoch", "offset", "data"} <= message.keys():
        return dict(message["data"])
    return dict(message)


async def expect(ws: ClientConnection, kind: str, **fields: Any) -> dict[str, Any]:
    """Read until a message of type ``kind`` with ``fields`` arrives (others are skipped)."""
    with trio.fail_after(WAIT):
        while True:
            message = unwrap(await ws.recv())
            if message["type"] == kind and all(message.get(k) == v for k, v in fields.items()):
                return dict(message)


async def roster_of(ws: ClientConnection, room: str, *names: str) -> dict[str, Any]:
    """Wait for a presence message for ``room`` listing exactly ``names``."""
    with trio.fail_after(WAIT):
        while True:
            message = await expect(ws, "presence", room=room)
            if sorted(user["name"] for user in message["users"]) == sorted(names):
                return message


@asynccontextmanager
async def chatter(demo: Demo, name: str, room: str) -> AsyncIterator[ClientConnection]:
    """A websockets client named ``name`` that has joined ``room``."""
    async with connect(ws_url(demo, name), open_timeout=WAIT) as ws:
        welcome = await expect(ws, "welcome")
        assert welcome["user"] == name
        await ws.send(json.dumps({"type": "join", "room": room}))
        await expect(ws, "joined", room=room)
        yield ws


async def close_code_of(ws: ClientConnection) -> int | None:
    """Read (and drop) messages until the connection closes; its close code."""
    with trio.fail_after(WAIT), contextlib.suppress(WsClosed):
        while True:
            await ws.recv()
    return ws.close_code


# -- plain synchronous parts ----------------------------------------------------------------


def request(path: str = "/ws", **headers: str) -> HandshakeRequest:
    from trio_wsmgr.server._auth import parse_query

    return HandshakeRequest(
        path=path,
        headers=tuple((k.lower().replace("_", "-"), v) for k, v in headers.items()),
        subprotocols=(),
        remote=None,
        query=parse_query(path),
    )


def test_a_valid_name_in_the_query_names_the_user() -> None:
    assert authenticate(request("/ws?name=alice", host="h:1")) == "alice"


@pytest.mark.parametrize("query", ["", "?name=", "?name=%3Cscript%3E", "?name=" + "a" * 21])
def test_a_missing_or_invalid_name_gets_a_guest_name(query: str) -> None:
    assert re.fullmatch(r"guest-[0-9a-f]{4}", authenticate(request("/ws" + query, host="h:1")))


def test_a_page_from_another_origin_is_refused_with_403() -> None:
    with pytest.raises(RequestRejected) as caught:
        authenticate(request("/ws", host="chat.example:8000", origin="https://evil.example"))
    assert caught.value.status_code == 403


def test_the_same_origin_and_clients_without_origin_are_let_in() -> None:
    same = request("/ws?name=a", host="127.0.0.1:8000", origin="http://127.0.0.1:8000")
    assert authenticate(same) == "a"
    assert authenticate(request("/ws?name=b", host="127.0.0.1:8000")) == "b"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("lobby", "lobby"),
        (" Trio-2 ", "trio-2"),
        ("", None),
        ("-x", None),
        ("a b", None),
        (7, None),
    ],
)
def test_room_names_are_checked_and_lower_cased(value: object, expected: str | None) -> None:
    assert room_name(value) == expected


@pytest.mark.parametrize("raw", ["not json", "[1, 2]", '"join"', b'{"type": "join"}'])
def test_anything_but_a_json_object_in_text_is_an_empty_request(raw: str | bytes) -> None:
    assert parse_request(raw) == {}


# -- the chat, in process ----------------------------------------------------------------------


async def test_a_message_reaches_everyone_in_the_room_and_no_one_else() -> None:
    async with (
        running_demo() as demo,
        chatter(demo, "alice", "lobby") as alice,
        chatter(demo, "bob", "lobby") as bob,
        chatter(demo, "carol", "random") as carol,
    ):
        await alice.send(json.dumps({"type": "say", "text": "  hello, room  "}))
        for ws in (alice, bob):
            message = await expect(ws, "message")
            assert message["room"] == "lobby"
            assert message["user"] == "alice"
            assert message["text"] == "hello, room"
        await carol.send(json.dumps({"type": "say", "text": "elsewhere"}))
        assert (await expect(carol, "message"))["text"] == "elsewhere"
        await alice.send(json.dumps({"type": "say", "text": "second"}))
        assert (await expect(bob, "message"))["text"] == "second"  # not "elsewhere"


async def envelopes_until_joined(ws: ClientConnection) -> tuple[list[Any], dict[str, Any]]:
    """The envelopes (the replay) that arrive before ``joined``, and ``joined``."""
    replay = []
    with trio.fail_after(WAIT):
        while True:
            message = json.loads(await ws.recv())
            if message.get("type") == "joined":
                return replay, message
            if "offset" in message:
                replay.append(message)


async def test_a_page_that_comes_back_gets_what_it_missed_in_order_once() -> None:
    async with running_demo() as demo, chatter(demo, "alice", "lobby") as alice:
        async with chatter(demo, "bob", "lobby") as bob:
            await alice.send(json.dumps({"type": "say", "text": "before"}))
            while "offset" not in (seen := json.loads(await bob.recv())):
                pass
            assert seen["data"]["text"] == "before"
        for n in range(3):  # bob is away
            await alice.send(json.dumps({"type": "say", "text": f"missed {n}"}))
            await expect(alice, "message", text=f"missed {n}")
        since = {"epoch": seen["epoch"], "offset": seen["offset"]}
        async with connect(ws_url(demo, "bob"), open_timeout=WAIT) as bob:
            await expect(bob, "welcome")
            await bob.send(json.dumps({"type": "join", "room": "lobby", "since": since}))
            replay, joined = await envelopes_until_joined(bob)
            assert [m["data"]["text"] for m in replay] == [f"missed {n}" for n in range(3)]
            assert [m["offset"] for m in replay] == [seen["offset"] + n for n in (1, 2, 3)]
            assert joined["recovered"] is True
            assert joined["offset"] == seen["offset"] + 3


async def test_a_page_whose_position_is_gone_is_told_so() -> None:
    async with running_demo() as demo, connect(ws_url(demo, "eve"), open_timeout=WAIT) as eve:
        await expect(eve, "welcome")
        since = {"epoch": "from-another-life", "offset": 7}
        await eve.send(json.dumps({"type": "join", "room": "lobby", "since": since}))
        replay, joined = await envelopes_until_joined(eve)
        assert (replay, joined["recovered"]) == ([], False)
        assert joined["epoch"] != "from-another-life"
        await eve.send(json.dumps({"type": "join", "room": "trio", "since": "junk"}))
        assert (await expect(eve, "joined"))["room"] == "trio"  # a bad since is ignored


async def test_the_welcome_names_the_user_and_says_whether_compression_is_on() -> None:
    async with (
        running_demo() as demo,
        connect(ws_url(demo, "dora"), compression=None) as plain,
        connect(ws_url(demo, "erin")) as deflate,
    ):
        plain_welcome = await expect(plain, "welcome")
        assert plain_welcome["user"] == "dora"
        assert plain_welcome["compressed"] is False
        assert plain_welcome["rooms"] == ["lobby", "random", "trio"]
        assert (await expect(deflate, "welcome"))["compressed"] is True


async def test_the_roster_follows_joins_closes_and_room_changes() -> None:
    async with running_demo() as demo, chatter(demo, "alice", "lobby") as alice:
        await roster_of(alice, "lobby", "alice")
        async with chatter(demo, "bob", "lobby") as bob:
            message = await roster_of(alice, "lobby", "alice", "bob")
            assert {"name": "bob", "sockets": 1} in message["users"]
            await roster_of(bob, "lobby", "alice", "bob")
            async with chatter(demo, "bob", "lobby"):  # bob's second tab
                message = await roster_of(alice, "lobby", "alice", "bob")
                while {"name": "bob", "sockets": 2} not in message["users"]:
                    message = await roster_of(alice, "lobby", "alice", "bob")
            await bob.send(json.dumps({"type": "join", "room": "trio"}))
            await roster_of(alice, "lobby", "alice")
            await roster_of(bob, "trio", "bob")
            await alice.send(json.dumps({"type": "join", "room": "trio"}))
            await roster_of(bob, "trio", "alice", "bob")
        await roster_of(alice, "trio", "alice")  # bob closed


async def test_stats_carry_the_counts_and_the_heartbeat_round_trip() -> None:
    # Real sockets, so the real clock: heartbeats every 50 ms instead of the demo's 2 s.
    quick = attrs.evolve(build_manager(), heartbeat_interval=0.05)
    async with (
        running_demo(manager=quick) as demo,
        chatter(demo, "alice", "lobby") as alice,
        chatter(demo, "bob", "lobby"),
    ):
        stats = await expect(alice, "stats")
        assert stats["node_sockets"] == 2
        assert stats["node_users"] == 2
        assert stats["room_sockets"] == 2
        assert stats["node"] == demo.chat.node
        while stats["rtt_ms"] is None:  # until the first heartbeat's pong came back
            stats = await expect(alice, "stats")
        assert isinstance(stats["rtt_ms"], float)
        assert math.isfinite(stats["rtt_ms"])
        assert stats["rtt_ms"] >= 0


async def test_bad_requests_get_an_error_and_the_socket_stays_open() -> None:
    async with running_demo() as demo, connect(ws_url(demo, "mallory")) as ws:
        await expect(ws, "welcome")
        for bad in [
            "not json",
            json.dumps({"type": "say", "text": "not in a room yet"}),
            json.dumps({"type": "join", "room": "Bad Room!"}),
            json.dumps({"type": "dance"}),
        ]:
            await ws.send(bad)
            await expect(ws, "error")
        await ws.send(json.dumps({"type": "join", "room": "lobby"}))
        await ws.send(json.dumps({"type": "say", "text": "x" * 501}))
        await expect(ws, "error")
        await ws.send(json.dumps({"type": "say", "text": "x" * 500}))
        assert len((await expect(ws, "message"))["text"]) == 500


async def test_a_cross_origin_page_is_refused() -> None:
    async with running_demo() as demo:
        with pytest.raises(InvalidStatus) as caught:
            async with connect(ws_url(demo), origin="http://evil.example"):  # type: ignore[arg-type]
                pass
        assert caught.value.response.status_code == 403
        assert demo.manager.statistics().rejected == {"forbidden": 1}


async def test_closing_the_demo_closes_every_socket_with_1001() -> None:
    async with running_demo() as demo, chatter(demo, "alice", "lobby") as alice:
        await demo.close()
        assert await close_code_of(alice) == 1001


async def test_a_page_that_leaves_mid_conversation_is_not_an_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    manager = build_manager()
    async with Broadcaster() as broadcaster:
        chat = ChatServer(manager, broadcaster)
        async with open_peer(manager, chat.handle) as peer:
            assert json.loads(await peer.receive())["type"] == "welcome"
            await peer.send(json.dumps({"type": "join", "room": "lobby"}))
            await peer.abort()  # gone before the answer
            await trio.testing.wait_all_tasks_blocked()
        await manager.close()
    assert manager.statistics().accepted == 1
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


@pytest.mark.redis
async def test_two_nodes_on_one_redis_share_rooms_and_rosters(redis_server: RedisServer) -> None:
    async with (
        running_demo(RedisBackend(redis_server.url)) as one,
        running_demo(RedisBackend(redis_server.url)) as two,
        chatter(one, "alice", "lobby") as alice,
        chatter(two, "bob", "lobby") as bob,
    ):
        assert one.server.port != two.server.port
        await alice.send(json.dumps({"type": "say", "text": "across nodes"}))
        assert (await expect(bob, "message"))["text"] == "across nodes"
        # one roster of the room over both nodes, from the broadcasters' presence,
        # whichever node sends it
        await roster_of(bob, "lobby", "alice", "bob")
        await roster_of(alice, "lobby", "alice", "bob")


# -- the command line ---------------------------------------------------------------------------


def test_ctrl_c_closes_sockets_with_1001_and_exits_cleanly() -> None:
    with demo_process() as demo, sync_connect(demo.ws_url + "?name=zoe") as ws:
        assert json.loads(ws.recv(timeout=WAIT))["type"] == "welcome"
        status, stderr = demo.interrupt()
        with contextlib.suppress(WsClosed):
            while ws.recv(timeout=WAIT):
                pass  # a last stats message may come before the close frame
        assert ws.close_code == 1001
        assert status == 0
        assert "Traceback" not in stderr


def test_the_page_and_its_files_are_served_on_the_websocket_port() -> None:
    import urllib.request

    with demo_process() as demo:
        with urllib.request.urlopen(demo.url, timeout=WAIT) as response:
            assert response.headers["Content-Type"] == "text/html; charset=utf-8"
            page = response.read().decode()
        assert '<script src="/app.js" defer></script>' in page
        for path, kind in [("app.js", "text/javascript"), ("style.css", "text/css")]:
            with urllib.request.urlopen(demo.url + path, timeout=WAIT) as response:
                assert response.headers["Content-Type"].startswith(kind)
                assert response.headers["X-Content-Type-Options"] == "nosniff"
        status, stderr = demo.interrupt()
        assert status == 0
        assert "Traceback" not in stderr


def test_a_busy_port_is_a_one_line_error_without_traceback() -> None:
    with demo_process() as demo:
        port = demo.url.rsplit(":", 1)[1].strip("/")
        busy = subprocess.run(
            [sys.executable, "-m", "trio_wsmgr", "demo", "--port", port],
            capture_output=True,
            text=True,
            timeout=WAIT,
        )
    assert busy.returncode == 1
    assert "cannot serve on 127.0.0.1:" in busy.stderr
    assert "Traceback" not in busy.stderr


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--port", "70000"], "--port must be 0 to 65535"),
        (["--redis", "http://nope"], "must be a redis://"),
    ],
)
def test_bad_arguments_are_one_line_errors(arguments: list[str], message: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "trio_wsmgr", "demo", *arguments],
        capture_output=True,
        text=True,
        timeout=WAIT,
    )
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_the_console_script_entry_point_prints_its_usage() -> None:
    from trio_wsmgr.__main__ import main

    with pytest.raises(SystemExit) as caught:
        main(["--help"])
    assert caught.value.code == 0


@pytest.mark.redis
def test_two_demo_processes_share_rooms_through_redis(redis_server: RedisServer) -> None:
    with (
        demo_process("--redis", redis_server.url) as one,
        demo_process("--redis", redis_server.url) as two,
        sync_connect(one.ws_url + "?name=alice") as alice,
        sync_connect(two.ws_url + "?name=bob") as bob,
    ):
        for ws in (alice, bob):
            ws.send(json.dumps({"type": "join", "room": "shared"}))
        for ws in (alice, bob):
            while json.loads(ws.recv(timeout=WAIT)).get("type") != "joined":
                pass
        alice.send(json.dumps({"type": "say", "text": "from process one"}))
        while (message := unwrap(bob.recv(timeout=WAIT)))["type"] != "message":
            pass
        assert message["text"] == "from process one"
        assert message["user"] == "alice"


#: connections tried before giving up on reaching the second worker; the kernel spreads
#: them by source port, so all landing on one worker is a (1/2)**MAX_TRIES event
MAX_TRIES = 100


def next_of(ws: Any, kind: str, **fields: Any) -> dict[str, Any]:
    """Read (sync client) until a message of type ``kind`` with ``fields``."""
    while True:
        message = unwrap(ws.recv(timeout=WAIT))
        if message["type"] == kind and all(message.get(k) == v for k, v in fields.items()):
            return dict(message)


@pytest.mark.redis
def test_two_workers_on_one_port_share_rooms_and_stop_with_1001(
    redis_server: RedisServer,
) -> None:
    with (
        demo_process("--workers", "2", "--redis", redis_server.url) as demo,
        contextlib.ExitStack() as clients,
    ):
        opened = []
        by_node: dict[str, tuple[str, Any]] = {}
        while len(by_node) < 2:
            assert len(opened) < MAX_TRIES, "every connection went to the same worker"
            name = f"user{len(opened)}"
            ws = clients.enter_context(sync_connect(f"{demo.ws_url}?name={name}"))
            opened.append(ws)
            by_node.setdefault(next_of(ws, "welcome")["node"], (name, ws))
        (one_name, one), (two_name, two) = by_node.values()
        for ws in (one, two):
            ws.send(json.dumps({"type": "join", "room": "shared"}))
            next_of(ws, "joined")
        one.send(json.dumps({"type": "say", "text": "from worker one"}))
        assert next_of(two, "message", text="from worker one")["user"] == one_name
        two.send(json.dumps({"type": "say", "text": "from worker two"}))
        assert next_of(one, "message", text="from worker two")["user"] == two_name
        # the roster of the room covers both workers (presence through Redis)
        while sorted(u["name"] for u in next_of(one, "presence")["users"]) != sorted(
            [one_name, two_name]
        ):
            pass

        status, stderr = demo.interrupt()
        for ws in opened:
            with contextlib.suppress(WsClosed):
                while ws.recv(timeout=WAIT):
                    pass
            assert ws.close_code == 1001
        assert status == 0
        assert "Traceback" not in stderr


def test_workers_without_redis_is_a_one_line_error() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "trio_wsmgr", "demo", "--workers", "2"],
        capture_output=True,
        text=True,
        timeout=WAIT,
    )
    assert result.returncode == 2
    assert "--workers needs --redis" in result.stderr
    assert "Traceback" not in result.stderr


def children_of(pid: int) -> set[int]:
    """Child processes of ``pid``, over all its threads (trio starts them from a thread)."""
    found: set[int] = set()
    for task in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(FileNotFoundError), open(f"/proc/{pid}/task/{task}/children") as f:
            found.update(int(child) for child in f.read().split())
    return found


@pytest.mark.redis
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_worker_that_dies_is_restarted_and_serves_again(redis_server: RedisServer) -> None:
    import time

    with demo_process("--workers", "2", "--redis", redis_server.url) as demo:
        workers = children_of(demo.process.pid)
        assert len(workers) == 2
        victim = min(workers)
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + WAIT
        while len((now := children_of(demo.process.pid)) - workers) < 1:  # bounded poll
            assert time.monotonic() < deadline, "the dead worker was not restarted"
            time.sleep(0.05)
        assert victim not in now
        # the new worker serves once it listens: connections reach two nodes again
        # (bounded: until the deadline; the kernel spreads them once both listen)
        nodes = set()
        deadline = time.monotonic() + WAIT
        tries = 0
        while len(nodes) < 2 and time.monotonic() < deadline:
            tries += 1
            with sync_connect(f"{demo.ws_url}?name=probe{tries}") as ws:
                nodes.add(next_of(ws, "welcome")["node"])
        assert len(nodes) == 2, "connections reached only one worker after the restart"
        status, stderr = demo.interrupt()
        assert status == 0
        assert "Traceback" not in stderr


@pytest.mark.redis
def test_a_killed_demo_process_leaves_the_rosters_within_its_presence_ttl(
    redis_server: RedisServer,
) -> None:
    import time

    from trio_wsmgr._demo.server import PRESENCE_TTL

    with (
        demo_process("--redis", redis_server.url) as one,
        demo_process("--redis", redis_server.url) as two,
        sync_connect(one.ws_url + "?name=alice") as alice,
        sync_connect(two.ws_url + "?name=bob") as bob,
    ):
        for ws in (alice, bob):
            ws.send(json.dumps({"type": "join", "room": "shared"}))
            next_of(ws, "joined")

        def roster() -> list[str]:
            return sorted(user["name"] for user in next_of(alice, "presence")["users"])

        while roster() != ["alice", "bob"]:
            pass
        two.process.kill()  # SIGKILL: bob's node cannot clean up
        two.process.communicate(timeout=WAIT)  # reaped, its pipes closed
        # alice's node refreshes its pages' rosters every 2 s; bob's entry goes once his
        # node's lease (PRESENCE_TTL) runs out: bounded by that plus a margin
        deadline = time.monotonic() + PRESENCE_TTL + WAIT
        while roster() != ["alice"]:
            assert time.monotonic() < deadline, "bob stayed in the roster"
