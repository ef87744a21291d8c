"""Fan-out through the stacks users run: manager.serve() plain, over TLS, and under hypercorn.

    python bench/stack_fanout.py [--clients 200] [--messages 200] [--rounds 3]

For each variant a server process runs one handler: sockets at ``/`` only
receive; the socket at ``/control`` takes ``go M`` (broadcast M messages of 64
bytes to every other socket, one ``manager.broadcast`` each) and ``stat`` (the
server's CPU seconds and wall time since ``go``). A client process (trio, one
task per client, frames counted from raw bytes: no WebSocket library work) says
when every client has all M messages. Reported per variant: deliveries per
second of wall time (go to the last frame received) and the server's CPU
microseconds per delivery. Variants:

``serve``      ``manager.serve(handler, host, port)``
``serve-tls``  the same with ``ssl_context=`` (a trustme certificate)
``hypercorn``  ``hypercorn --worker-class trio stack_fanout:app``, the same handler
               through ``manager.asgi_app`` (plain TCP)

Needs trustme and hypercorn (both in the bench dependency group: ``nox -s bench --
bench/stack_fanout.py`` runs it). Loopback only; every process started here is stopped here.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

import trio

from trio_wsmgr import ManagedSocket, WebSocketManager

HERE = Path(__file__).parent
PAYLOAD = "x" * 64
manager = WebSocketManager(max_connections=100_000, heartbeat_interval=math.inf)


async def handler(sock: ManagedSocket) -> None:
    if not sock.path.startswith("/control"):
        async for _ in sock:
            pass
        return
    started = cpu = 0.0
    async for command in sock:
        verb, _, argument = str(command).partition(" ")
        if verb == "go":
            started, cpu = time.monotonic(), time.process_time()
            for _ in range(int(argument)):
                await manager.broadcast(PAYLOAD, lambda other: other is not sock)
            await sock.send("queued")
        elif verb == "stat":
            wall = time.monotonic() - started
            await sock.send(json.dumps({"cpu": time.process_time() - cpu, "wall": wall}))


app = manager.asgi_app(handler)  # for the hypercorn variant


async def serve(port: int, cert: str | None) -> None:
    context = None
    if cert is not None:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert)
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(
                partial(manager.serve, handler, "127.0.0.1", port, ssl_context=context)
            )
            async for _ in signals:
                break
            await manager.close()
            nursery.cancel_scope.cancel()


# -- the clients -------------------------------------------------------------------------------


def upgrade(path: str) -> bytes:
    return (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n"
    ).encode()


def masked_text(text: str) -> bytes:
    data = text.encode()
    return bytes((0x81, 0x80 | len(data))) + b"\0\0\0\0" + data  # zero mask: payload as is


async def open_ws(port: int, path: str, context: ssl.SSLContext | None) -> Any:
    if context is None:
        stream: Any = await trio.open_tcp_stream("127.0.0.1", port)
    else:
        stream = await trio.open_ssl_over_tcp_stream("127.0.0.1", port, ssl_context=context)
    await stream.send_all(upgrade(path))
    head = b""
    while b"\r\n\r\n" not in head:
        head += await stream.receive_some(4096)
    assert head.startswith(b"HTTP/1.1 101"), head[:80]
    return stream, head.partition(b"\r\n\r\n")[2]


class Counter:
    def __init__(self, clients: int) -> None:
        self.counts = [0] * clients
        self.target = 0
        self.reached = trio.Event()
        self.behind = clients

    def add(self, index: int, frames: int) -> None:
        before = self.counts[index]
        self.counts[index] = before + frames
        if before < self.target <= self.counts[index]:
            self.behind -= 1
            if self.behind == 0:
                self.reached.set()


async def reader(stream: Any, rest: bytes, index: int, counter: Counter) -> None:
    buffer = rest
    while True:
        frames = 0
        while len(buffer) >= 2:
            size = buffer[1] & 0x7F  # server frames: unmasked, short in this bench
            if len(buffer) < 2 + size:
                break
            frames += 1
            buffer = buffer[2 + size :]
        if frames:
            counter.add(index, frames)
        data = await stream.receive_some(1 << 16)
        if not data:
            return
        buffer += data


async def drive(port: int, tls: bool, clients: int, messages: int, rounds: int) -> list[Any]:
    context = None
    if tls:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE  # a benchmark on loopback; the tests check trust
    counter = Counter(clients)
    results = []
    async with trio.open_nursery() as nursery:
        for index in range(clients):
            stream, rest = await open_ws(port, "/", context)
            nursery.start_soon(reader, stream, rest, index, counter)
        control, _ = await open_ws(port, "/control", context)
        for _ in range(rounds):
            counter.target = counter.counts[0] + messages
            counter.behind, counter.reached = clients, trio.Event()
            started = time.monotonic()
            await control.send_all(masked_text(f"go {messages}"))
            with trio.fail_after(120):
                await counter.reached.wait()
            wall = time.monotonic() - started
            await control.send_all(masked_text("stat"))
            reply = b""
            while b"}" not in reply:  # skip "queued", read the JSON
                reply += await control.receive_some(4096)
            server = json.loads(reply[reply.index(b"{") : reply.rindex(b"}") + 1])
            deliveries = clients * messages
            results.append(
                {
                    "deliveries_per_s": deliveries / wall,
                    "server_cpu_us_per_delivery": server["cpu"] * 1e6 / deliveries,
                }
            )
        nursery.cancel_scope.cancel()
    return results


# -- the parent ----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_listening(port: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("server did not listen")


def run_variant(name: str, args: argparse.Namespace, cert: str) -> dict[str, Any]:
    port = free_port()
    if name == "hypercorn":
        binary = shutil.which("hypercorn", path=os.path.dirname(sys.executable)) or "hypercorn"
        command = [binary, "--worker-class", "trio", "--bind", f"127.0.0.1:{port}"]
        command += ["--log-level", "warning", "stack_fanout:app"]
    else:
        command = [sys.executable, __file__, "--serve", str(port)]
        command += ["--cert", cert] if name == "serve-tls" else []
    process = subprocess.Popen(command, cwd=HERE, start_new_session=True)
    try:
        wait_listening(port, process)
        rounds = trio.run(
            drive, port, name == "serve-tls", args.clients, args.messages, args.rounds
        )
    finally:
        os.killpg(process.pid, signal.SIGINT)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    best = max(rounds, key=lambda r: r["deliveries_per_s"])
    return {"variant": name, **{k: round(v, 3) for k, v in best.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--messages", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--variants", default="serve,serve-tls,hypercorn")
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--cert", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve is not None:
        trio.run(serve, args.serve, args.cert)
        return
    import trustme

    with tempfile.TemporaryDirectory() as folder:
        cert = os.path.join(folder, "server.pem")
        trustme.CA().issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(cert)
        print(json.dumps(provenance(args)), flush=True)
        for name in args.variants.split(","):
            print(json.dumps(run_variant(name, args, cert)), flush=True)


def provenance(args: argparse.Namespace) -> dict[str, Any]:
    """What these figures were made with: the commit, the versions (``_provenance``), the sizes."""
    from importlib.metadata import version

    from _provenance import provenance as origin

    return {
        **origin(),
        "hypercorn": version("hypercorn"),
        "clients": args.clients,
        "messages": args.messages,
    }


if __name__ == "__main__":
    main()
