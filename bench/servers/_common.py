"""What every server variant shares: the payload, the control protocol, the producer loops.

A variant is started as ``python bench/servers/<name>.py``, binds
127.0.0.1 on a free port, prints ``{"event": "ready", "port": P}`` and then obeys
one command per line on stdin, answering each with one JSON line on stdout:

``fanout N SECONDS``
    wait until N clients are connected, then broadcast as fast as the variant's
    broadcast lets it for SECONDS; answer ``{"sent": M, "elapsed": s}``.
``latency N SECONDS RATE``
    the same, paced at RATE broadcasts per second.
``rss``
    collect garbage, answer ``{"rss": bytes, "open": n}``.
``quit``
    exit.

Every variant keeps its library's defaults: heartbeats (pings every 20 s)
and permessage-deflate available, negotiated when the client offers it.

Each message is 64 bytes of text: its sequence number in the round and the
``time.monotonic()`` at which the producer made it (the clients compare that
with their own clock for latency; both run on this machine).
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import trio

#: message size; run.py's compressed fan-out sets 256 (compressible text, above thresholds)
SIZE = int(os.environ.get("BENCH_PAYLOAD_SIZE", "64"))
_FILLER = "the quick brown fox jumps over the lazy dog; " * 40
HOST = "127.0.0.1"
WAIT_CONNECTED = 60.0


def payload(seq: int, now: float) -> str:
    head = f"{seq:08d} {now:017.6f} "
    if SIZE <= 64:
        return head + "x" * (SIZE - len(head))
    return head + _FILLER[: SIZE - len(head)]


def emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def handle(line: bytes, count: Callable[[], int]) -> tuple[int, float, float] | str | None:
    """One control line, the same for every variant.

    ``rss`` is answered here (None: nothing more to do); ``quit`` is returned as
    is; ``fanout N S`` / ``latency N S RATE`` become ``(clients, seconds, rate)``.
    """
    words = line.decode().split()
    if not words:
        return None
    if words[0] == "quit":
        return "quit"
    if words[0] == "rss":
        gc.collect()
        emit({"rss": rss(), "open": count()})
        return None
    rate = float(words[3]) if words[0] == "latency" else 0.0
    return int(words[1]), float(words[2]), rate


# -- trio variants ------------------------------------------------------------------


async def trio_control(
    broadcast: Callable[[str], Awaitable[object]], count: Callable[[], int], port: int
) -> None:
    """Print ready and run the commands; returns on ``quit`` or end of input."""
    emit({"event": "ready", "port": port})
    stdin = trio.lowlevel.FdStream(os.dup(0))
    buf = b""
    while True:
        while b"\n" not in buf:
            chunk = await stdin.receive_some(4096)
            if not chunk:
                return
            buf += chunk
        line, buf = buf.split(b"\n", 1)
        command = handle(line, count)
        if command is None:
            continue
        if command == "quit":
            return
        clients, seconds, rate = command
        with trio.move_on_after(WAIT_CONNECTED):
            while count() < clients:
                await trio.sleep(0.05)
        emit(await produce(broadcast, seconds, rate, trio.sleep))


async def produce(
    broadcast: Callable[[str], Awaitable[object]],
    seconds: float,
    rate: float,
    sleep: Callable[[float], Awaitable[object]],
) -> dict[str, Any]:
    """Broadcast for ``seconds``, as fast as possible or at ``rate`` per second.

    ``sleep`` is the event loop's (``trio.sleep`` or ``asyncio.sleep``): the one
    loop serves every variant.
    """
    seq = 0
    start = time.monotonic()
    end = start + seconds
    while True:
        now = time.monotonic()
        if now >= end:
            break
        if rate:
            due = start + seq / rate
            if due > now:
                await sleep(due - now)
                now = time.monotonic()
        await broadcast(payload(seq, now))
        seq += 1
    return {"sent": seq, "elapsed": time.monotonic() - start}


# -- asyncio variants -----------------------------------------------------------------


async def asyncio_control(
    broadcast: Callable[[str], Awaitable[object]], count: Callable[[], int], port: int
) -> None:
    emit({"event": "ready", "port": port})
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(os.dup(0), "rb")
    )
    while True:
        line = await reader.readline()
        if not line:
            return
        command = handle(line, count)
        if command is None:
            continue
        if command == "quit":
            return
        clients, seconds, rate = command
        deadline = time.monotonic() + WAIT_CONNECTED
        while count() < clients and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        emit(await produce(broadcast, seconds, rate, asyncio.sleep))
