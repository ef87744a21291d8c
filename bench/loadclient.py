"""The load client: many raw-socket WebSocket clients in one process, kept cheap.

It must never be the bottleneck, so it does no WebSocket library work: a
handshake written by hand, then frames are counted straight from the receive
buffer. Server-to-client frames are unmasked and the benchmark payloads are
ASCII, so a chunk of back-to-back benchmark frames is checked by looking at the
first and last frame only (header byte and embedded sequence number); anything
else (pings, close frames, other sizes) goes through a general frame parser.
Every read lands in one preallocated buffer. In ``latency`` mode, where each
read usually holds exactly one frame, that frame is accounted straight from the
buffer (its sequence number compared as bytes, no copy): the client then costs
4 to 5 us per delivery, about what the raw-send server spends and less than any
library, and keeps up, so the latency figures measure the server and not the
client (at about 10 us per delivery it used to saturate its core at 100,000
deliveries/s and set the latency itself).

Payload layout (64 bytes of text, see ``bench/servers/_common.py``)::

    SSSSSSSS TTTTTTTTTT.TTTTTT xxxx...
    sequence number in the round, then time.monotonic() at send

Controlled over stdin/stdout by ``bench/run.py``, one JSON object per line out::

    python bench/loadclient.py --port P --clients N [--mode fanout|latency|idle|handshake]

``fanout`` / ``latency``: connect, print ``{"event": "connected"}``, then for
each ``expect M`` line on stdin wait until every client has M frames (or
progress stalls), print the round's figures and reset. ``idle``: connect, print,
answer pings until ``quit``. ``handshake``: open ``--clients`` connections with
``--inflight`` handshakes in progress at a time, print the rate, then close.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import errno
import json
import os
import select
import socket
import sys
import time
from typing import Any

#: the sequence numbers as they appear in a benchmark payload, for a check without parsing
SEQS = [b"%08d" % i for i in range(200_000)]
KEY = base64.b64encode(b"trio_wsmgr-bench").decode()
RECV = 1 << 18
FIN_TEXT = 0x81
ZERO_MASK = b"\0\0\0\0"  # a client must mask; a zero key leaves the payload as it is
CLOSE_MASKED = bytes((0x88, 0x82)) + ZERO_MASK + (1000).to_bytes(2, "big")


class Client:
    __slots__ = ("buf", "closed", "count", "sock", "state")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""
        self.count = 0  # data frames this round
        self.state = 0  # 0 connecting, 1 handshake sent, 2 open
        self.closed = False


class Load:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.addr = (args.host, args.port)
        self.request = (
            f"GET / HTTP/1.1\r\nHost: {args.host}:{args.port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {KEY}\r\n"
            "Sec-WebSocket-Version: 13\r\n"
            + (
                "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
                if args.compression
                else ""
            )
            + "\r\n"
        ).encode()
        self.ep = select.epoll()
        self.rbuf = bytearray(RECV)  # every read lands here: no allocation per read
        self.rview = memoryview(self.rbuf)
        self.latency = args.mode == "latency"
        self.clients: dict[int, Client] = {}
        self.open = 0
        self.failed = 0
        self.frame = 0  # the size of a benchmark frame, learned from the first one
        self.connected = 0  # clients open when the rounds began
        self.reset()

    def reset(self) -> None:
        self.total = 0
        self.first = 0.0
        self.last = 0.0
        self.seq_errors = 0
        self.closed_in_round = 0
        self.sent_at: dict[int, float] = {}
        self.last_seen: list[float] = []
        self.first_seen: dict[int, float] = {}  # when the first client had each message
        for client in self.clients.values():
            client.count = 0

    # -- connecting ----------------------------------------------------------------

    def start_connect(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        err = sock.connect_ex(self.addr)
        if err not in (0, errno.EINPROGRESS):
            sock.close()
            self.failed += 1
            return
        client = Client(sock)
        self.clients[sock.fileno()] = client
        self.ep.register(sock.fileno(), select.EPOLLOUT | select.EPOLLIN)

    def connect_all(self, total: int, inflight: int) -> float:
        """Open ``total`` connections, ``inflight`` handshakes at a time; return seconds."""
        started = time.monotonic()
        launched = 0
        pending = 0
        deadline = started + 120
        while self.open + self.failed < total:
            while launched < total and pending < inflight:
                self.start_connect()
                launched += 1
                pending += 1
            for fd, events in self.ep.poll(1.0):
                client = self.clients.get(fd)
                if client is None or client.state == 2:
                    if client is not None:
                        self.on_readable(client, time.monotonic())
                    continue
                if events & (select.EPOLLERR | select.EPOLLHUP) and client.state == 0:
                    self.drop(client)
                    self.failed += 1
                    pending -= 1
                    continue
                if client.state == 0 and events & select.EPOLLOUT:
                    client.sock.send(self.request)
                    client.state = 1
                    self.ep.modify(fd, select.EPOLLIN)
                    continue
                if client.state == 1 and events & select.EPOLLIN and self.read_handshake(client):
                    pending -= 1
            if time.monotonic() > deadline:
                break
        return time.monotonic() - started

    def read_handshake(self, client: Client) -> bool:
        """Read the 101 response; True once the handshake finished (either way)."""
        try:
            data = client.sock.recv(65536)
        except BlockingIOError:
            return False
        except OSError:
            data = b""
        if not data:
            self.drop(client)
            self.failed += 1
            return True
        client.buf += data
        end = client.buf.find(b"\r\n\r\n")
        if end < 0:
            return False
        head, client.buf = client.buf[:end], client.buf[end + 4 :]
        if not head.startswith(b"HTTP/1.1 101"):
            self.drop(client)
            self.failed += 1
            return True
        client.state = 2
        self.open += 1
        if client.buf:
            data, client.buf = client.buf, b""
            self.consume(client, data, time.monotonic())
        return True

    def drop(self, client: Client) -> None:
        fd = client.sock.fileno()
        if fd >= 0:
            self.ep.unregister(fd)
            self.clients.pop(fd, None)
        client.sock.close()
        if client.state == 2 and not client.closed:
            self.open -= 1
        client.closed = True

    # -- receiving -----------------------------------------------------------------

    def on_readable(self, client: Client, now: float) -> None:
        try:
            n = client.sock.recv_into(self.rbuf)
        except BlockingIOError:
            return
        except OSError:
            n = 0
        if not n:
            self.closed_in_round += 1
            self.drop(client)
            return
        rbuf = self.rbuf
        if self.latency and n == self.frame and not client.buf and rbuf[0] == FIN_TEXT:
            # Latency's common case: one benchmark frame per read (no copy, no parse
            # beyond the sequence number, which must be the next one).
            seq = client.count
            if seq < len(SEQS) and rbuf[2:10] == SEQS[seq]:
                self.frames(client, rbuf, 0, 1, seq, now)
                return
        self.consume(client, bytes(self.rview[:n]), now)

    def consume(self, client: Client, data: bytes, now: float) -> None:
        if client.buf:
            data = client.buf + data
            client.buf = b""
        size = self.frame
        n = len(data)
        # Fast path: whole benchmark frames only, checked at both ends.
        if size and n % size == 0 and data[0] == FIN_TEXT and data[n - size] == FIN_TEXT:
            k = n // size
            seq = int(data[n - size + 2 : n - size + 10])
            if seq == client.count + k - 1:
                self.frames(client, data, 0, k, seq - k + 1, now)
                return
        self.parse(client, data, now)

    def frames(
        self, client: Client, data: bytes | bytearray, pos: int, k: int, first: int, now: float
    ) -> None:
        """Account ``k`` benchmark frames starting at ``data[pos]`` with sequence ``first``."""
        client.count += k
        self.total += k
        if not self.first:
            self.first = now
        self.last = now
        if self.args.mode == "latency":
            size = self.frame
            seen = self.last_seen
            top = first + k
            if len(seen) < top:
                seen.extend([0.0] * (top - len(seen)))
            sent_at = self.sent_at
            for i in range(k):
                seq = first + i
                seen[seq] = now
                if seq not in sent_at:
                    p = pos + i * size
                    sent_at[seq] = float(data[p + 11 : p + 28])
                    self.first_seen[seq] = now

    def parse(self, client: Client, data: bytes, now: float) -> None:
        pos = 0
        n = len(data)
        while n - pos >= 2:
            b0 = data[pos]
            length = data[pos + 1] & 0x7F
            head = 2
            if length == 126:
                if n - pos < 4:
                    break
                length = int.from_bytes(data[pos + 2 : pos + 4], "big")
                head = 4
            elif length == 127:
                if n - pos < 10:
                    break
                length = int.from_bytes(data[pos + 2 : pos + 10], "big")
                head = 10
            end = pos + head + length
            if end > n:
                break
            opcode = b0 & 0x0F
            if opcode in (1, 2, 0):
                if b0 & 0x80:
                    if not self.frame and length == 64:
                        self.frame = head + length
                    first = client.count
                    if length >= 10 and opcode == 1 and not b0 & 0x40:  # RSV1: compressed
                        try:
                            seq = int(data[pos + head : pos + head + 8])
                        except ValueError:
                            seq = first
                        if seq != first:
                            self.seq_errors += 1
                    if head + length == self.frame:
                        self.frames(client, data, pos, 1, first, now)
                    else:  # another size (a compressed frame): counted, and timed too
                        client.count += 1
                        self.total += 1
                        if not self.first:
                            self.first = now
                        self.last = now
            elif opcode == 9:  # the pong must echo the ping's payload
                payload = data[pos + head : end]
                self.send(client, bytes((0x8A, 0x80 | len(payload))) + ZERO_MASK + payload)
            elif opcode == 8:
                self.send(client, CLOSE_MASKED)
                self.closed_in_round += 1
                self.drop(client)
                return
            pos = end
        if pos < n:
            client.buf = data[pos:]

    def send(self, client: Client, data: bytes) -> None:
        with contextlib.suppress(OSError):
            client.sock.send(data)

    # -- the control loop ----------------------------------------------------------

    def serve(self) -> None:
        self.ep.register(0, select.EPOLLIN)
        self.connected = self.open
        clients = self.clients
        stdin = b""
        expect: int | None = None
        progress_at = 0.0
        progress_total = 0
        pause = self.args.batch_ms / 1000 if self.args.mode == "fanout" else 0.0
        while True:
            if pause:
                time.sleep(pause)  # let frames pile up: one recv then reads many
            events = self.ep.poll(0.2)
            now = time.monotonic()
            for fd, _ in events:
                if fd == 0:
                    chunk = os.read(0, 4096)
                    if not chunk:
                        return
                    stdin += chunk
                    continue
                client = clients.get(fd)
                if client is not None:
                    self.on_readable(client, now)
            while b"\n" in stdin:
                line, stdin = stdin.split(b"\n", 1)
                words = line.decode().split()
                if not words:
                    continue
                if words[0] == "quit":
                    return
                if words[0] == "expect":
                    expect = int(words[1])
                    progress_at, progress_total = time.monotonic(), self.total
                if words[0] == "status":
                    emit({"event": "status", "open": self.open})
            if expect is None:
                continue
            if self.total != progress_total:
                progress_at, progress_total = now, self.total
            complete = self.total >= expect * self.connected
            stalled = now - progress_at > self.args.stall
            if complete or stalled:
                self.report(expect)
                expect = None
                self.reset()

    def report(self, expect: int) -> None:
        counts = [c.count for c in self.clients.values()]
        full = sum(1 for c in counts if c == expect)
        span = self.last - self.first
        out: dict[str, Any] = {
            "event": "round",
            "expected": expect,
            "clients": len(counts),
            "complete_clients": full,
            "closed_clients": self.closed_in_round,
            "seq_errors": self.seq_errors,
            "deliveries": self.total,
            "seconds": span,
            "deliveries_per_s": self.total / span if span > 0 else 0.0,
        }
        if self.args.mode == "latency" and self.sent_at:
            lat = sorted(
                (self.last_seen[s] - t) * 1000 for s, t in self.sent_at.items() if self.last_seen[s]
            )
            first = sorted((self.first_seen[s] - t) * 1000 for s, t in self.sent_at.items())
            out["first_latency_ms"] = {"p50": percentile(first, 50), "p99": percentile(first, 99)}
            out["latency_ms"] = {
                "p50": percentile(lat, 50),
                "p90": percentile(lat, 90),
                "p99": percentile(lat, 99),
                "max": lat[-1],
                "samples": len(lat),
            }
        emit(out)

    def close_all(self) -> None:
        for client in list(self.clients.values()):
            if client.state == 2:
                self.send(client, CLOSE_MASKED)
            self.drop(client)


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    k = min(len(values) - 1, max(0, round(p / 100 * (len(values) - 1))))
    return values[k]


def emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--mode", choices=["fanout", "latency", "idle", "handshake"])
    parser.add_argument("--inflight", type=int, default=100)
    parser.add_argument("--compression", action="store_true", help="offer permessage-deflate")
    parser.add_argument(
        "--batch-ms",
        type=float,
        default=20.0,
        help="fanout mode: pause between polls so each recv reads many frames",
    )
    parser.add_argument("--stall", type=float, default=5.0, help="give up after this long idle")
    args = parser.parse_args()
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        parser.error("the load client only talks to the loopback interface")
    load = Load(args)
    inflight = args.inflight if args.mode == "handshake" else max(args.inflight, 200)
    seconds = load.connect_all(args.clients, inflight)
    emit(
        {
            "event": "connected",
            "open": load.open,
            "failed": load.failed,
            "seconds": seconds,
            "handshakes_per_s": load.open / seconds if seconds > 0 else 0.0,
        }
    )
    if args.mode != "handshake":
        load.serve()
    load.close_all()


if __name__ == "__main__":
    main()
