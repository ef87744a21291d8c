"""A chat server with rooms: the tutorial's end result (docs: Tutorial).

    python examples/chat_server.py [PORT]       # ws://127.0.0.1:8765/?name=alice
    python -m websockets "ws://127.0.0.1:8765/?name=alice"

Everyone starts in room "lobby". Send text to talk to the room, or a command:
``/join ROOM`` moves you, ``/who`` lists who is in your room.
"""

from __future__ import annotations

import re
import signal
import sys

import trio

from trio_wsmgr import (
    Broadcaster,
    HandshakeRequest,
    InvalidChannelName,
    ManagedSocket,
    WebSocketManager,
)

NAME = re.compile(r"[\w.-]{1,20}")


def name_of(request: HandshakeRequest) -> str | None:
    """The authenticator: ``?name=`` becomes ``sock.user_id``; None refuses (HTTP 401)."""
    name = request.query.get("name", "")
    return name if NAME.fullmatch(name) else None


class Chat:
    def __init__(self, manager: WebSocketManager, broadcaster: Broadcaster) -> None:
        self.manager = manager
        self.broadcaster = broadcaster

    async def handle(self, sock: ManagedSocket) -> None:
        await self.join(sock, "lobby")
        async for message in sock:
            text = message.strip() if isinstance(message, str) else ""
            if text.startswith("/join "):
                await self.join(sock, text.removeprefix("/join ").strip())
            elif text == "/who":
                await sock.send("in the room: " + ", ".join(self.who(sock.metadata["room"])))
            elif text:
                await self.broadcaster.broadcast(
                    sock.metadata["room"], f"{sock.user_id}: {text}", exclude=sock
                )

    async def join(self, sock: ManagedSocket, room: str) -> None:
        old = sock.metadata.get("room")
        try:
            self.broadcaster.create_channel(room)  # checks the name
        except InvalidChannelName:
            await sock.send(f"cannot join {room!r}: use letters, digits and _-.:/@")
            return
        # The welcome goes first: once subscribed, the room's messages (someone
        # else joining, say) can reach the socket at any moment.
        await sock.send(f"you are {sock.user_id}, in {room}")
        await self.broadcaster.subscribe(sock, room)
        sock.metadata["room"] = room
        if old is not None and old != room:
            await self.broadcaster.unsubscribe(sock, old)
            await self.broadcaster.broadcast(old, f"{sock.user_id} left")
        await self.broadcaster.broadcast(room, f"{sock.user_id} joined {room}", exclude=sock)

    def who(self, room: str) -> list[str]:
        """The users in ``room``, from the manager's user index."""
        return [
            user
            for user in sorted(self.manager.users())
            if any(s.metadata.get("room") == room for s in self.manager.get_user_sockets(user))
        ]


async def main(port: int) -> None:
    manager = WebSocketManager(authentication=name_of, max_message_size=64 * 1024)
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with Broadcaster() as broadcaster, trio.open_nursery() as nursery:
            chat = Chat(manager, broadcaster)
            server = await nursery.start(manager.serve, chat.handle, "127.0.0.1", port)
            print(f"chat server on ws://127.0.0.1:{server.port}/?name=YOUR_NAME", flush=True)
            async for _ in signals:
                break
            await manager.close()


if __name__ == "__main__":
    trio.run(main, int(sys.argv[1]) if len(sys.argv) > 1 else 8765)
