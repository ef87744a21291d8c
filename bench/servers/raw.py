"""The Python limit: one pre-encoded frame, a non-blocking ``socket.send`` per socket.

No WebSocket library after a hand-written handshake. Under Trio: the producer
sends straight to each socket; what the kernel refuses goes to the socket's
pending buffer, which a task per socket flushes when the socket is writable.
The producer waits while some socket has more than ``HIGH`` bytes pending.
Nothing is read from the clients (their close shows up as a send error).
"""

from __future__ import annotations

import base64
import hashlib
import socket
import sys
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).parent))
from _common import HOST, trio_control

HIGH = 256 * 1024
GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


class Conn:
    __slots__ = ("lot", "pending", "sock")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.pending = bytearray()
        self.lot = trio.lowlevel.ParkingLot()


connections: set[Conn] = set()


async def handle(sock: socket.socket) -> None:
    try:
        buf = b""
        while b"\r\n\r\n" not in buf:
            await trio.lowlevel.wait_readable(sock)
            try:
                data = sock.recv(4096)
            except BlockingIOError:
                continue
            if not data:
                return
            buf += data
        key = b""
        for line in buf.split(b"\r\n"):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"sec-websocket-key":
                key = value.strip()
        accept = base64.b64encode(hashlib.sha1(key + GUID).digest())
        sock.send(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n"
        )
        conn = Conn(sock)
        connections.add(conn)
        try:
            while True:
                await conn.lot.park()
                while conn.pending:
                    await trio.lowlevel.wait_writable(sock)
                    try:
                        sent = sock.send(conn.pending)
                    except BlockingIOError:
                        continue
                    del conn.pending[:sent]
        finally:
            connections.discard(conn)
    except OSError:
        pass
    finally:
        sock.close()


async def send(message: str) -> None:
    payload = message.encode()
    frame = bytes((0x81, len(payload))) + payload  # 64 bytes: the short form
    behind = []
    for conn in connections:
        if conn.pending:
            conn.pending += frame
        else:
            try:
                sent = conn.sock.send(frame)
            except BlockingIOError:
                sent = 0
            except OSError:
                continue
            if sent == len(frame):
                continue
            conn.pending += frame[sent:]
            conn.lot.unpark_all()
        behind.append(conn)
    await trio.lowlevel.checkpoint()
    for conn in behind:
        while len(conn.pending) > HIGH:
            await trio.sleep(0.001)


async def main() -> None:
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((HOST, 0))
    listener.listen(4096)
    listener.setblocking(False)

    async def accept_loop() -> None:
        while True:
            await trio.lowlevel.wait_readable(listener)
            while True:
                try:
                    sock, _ = listener.accept()
                except BlockingIOError:
                    break
                sock.setblocking(False)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                nursery.start_soon(handle, sock)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(accept_loop)
        await trio_control(send, lambda: len(connections), listener.getsockname()[1])
        nursery.cancel_scope.cancel()


if __name__ == "__main__":
    trio.run(main)
