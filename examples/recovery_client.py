"""Follow a channel with history and miss nothing across reconnects (the websockets client).

    python examples/recovery_client.py ws://127.0.0.1:8000/            # follow forever
    python examples/recovery_client.py ws://127.0.0.1:8000/ --count 5  # stop after 5
    python examples/recovery_client.py ws://127.0.0.1:8000/ --since 5f1c0a9e2b7d:17

It prints one JSON line per message (offset and data), in order, each once. After
a drop it reconnects with jittered exponential back-off and asks for everything
after the last offset it printed (``?epoch=...&offset=...``); the server replays
what was missed before the live messages. If the history no longer reaches back
(or was lost: another epoch), it prints a ``gap`` line: a real client would refetch
its state there.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from typing import Any

import trio
from websockets.exceptions import ConnectionClosed
from websockets.trio.client import connect


class Follower:
    """The last position seen, and what to do with each envelope."""

    def __init__(self) -> None:
        self.epoch: str | None = None
        self.offset = 0
        self.shown = 0

    def url(self, base: str) -> str:
        if self.epoch is None:
            return base
        return f"{base}?epoch={self.epoch}&offset={self.offset}"

    def take(self, envelope: dict[str, Any]) -> None:
        epoch, offset = envelope["epoch"], envelope["offset"]
        if epoch == self.epoch and offset <= self.offset:
            return  # already shown
        if self.epoch is not None and (epoch != self.epoch or offset != self.offset + 1):
            print(json.dumps({"gap": {"after": self.offset, "next": offset}}), flush=True)
        self.epoch, self.offset = epoch, offset
        self.shown += 1
        print(json.dumps({"offset": offset, "data": envelope["data"]}), flush=True)


async def follow(base: str, count: float, since: str | None = None) -> None:
    follower = Follower()
    if since is not None:  # resume from a saved position: "epoch:offset"
        epoch, _, offset = since.rpartition(":")
        follower.epoch, follower.offset = epoch, int(offset)
    failures = 0
    while follower.shown < count:
        try:
            async with connect(follower.url(base)) as ws:
                failures = 0
                while follower.shown < count:
                    follower.take(json.loads(await ws.recv()))
        except (ConnectionClosed, OSError) as exc:
            failures += 1
            delay = min(10.0, 0.25 * 2**failures) * random.uniform(0.75, 1.25)
            print(f"connection lost ({exc}); back in {delay:.2f} s", file=sys.stderr, flush=True)
            await trio.sleep(delay)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url", help="the server, e.g. ws://127.0.0.1:8000/")
    parser.add_argument("--count", type=int, help="stop after this many messages")
    parser.add_argument("--since", metavar="EPOCH:OFFSET", help="start after this position")
    args = parser.parse_args()
    count = float("inf") if args.count is None else args.count
    trio.run(follow, args.url, count, args.since)


if __name__ == "__main__":
    main()
