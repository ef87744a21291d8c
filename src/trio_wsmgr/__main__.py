"""The ``trio-wsmgr`` command (also ``python -m trio_wsmgr``).

``trio-wsmgr demo [--host HOST] [--port PORT] [--redis URL]`` serves a live chat:
the page at ``/``, its WebSocket at ``/ws``. Ctrl-C (or SIGTERM) closes every
socket with 1001 and exits with status 0; a second Ctrl-C stops at once.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Sequence
from functools import partial

import trio

from . import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="trio-wsmgr", description="trio_wsmgr: a WebSocket layer for Trio."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo = commands.add_parser(
        "demo",
        help="serve a live chat in the browser",
        description="Serve a chat page at / and its WebSocket endpoint at /ws on one port.",
    )
    demo.add_argument("--host", default="127.0.0.1", help="address to listen on (%(default)s)")
    demo.add_argument(
        "--port", type=int, default=8000, help="port to listen on, 0 for any free one (%(default)s)"
    )
    demo.add_argument(
        "--redis",
        metavar="URL",
        help="share rooms with other demo processes through Redis, e.g. redis://127.0.0.1:6379/0",
    )
    return parser


async def serve_demo(host: str, port: int, redis_url: str | None) -> None:
    """Run the demo until SIGINT/SIGTERM, then shut it down cleanly.

    What can fail on the user's input (a busy port, a bad Redis URL, coredis
    missing) fails here, before anything starts, as a plain exception.
    """
    from ._demo import run_demo
    from .backends import RedisBackend

    backend = None if redis_url is None else RedisBackend(redis_url)
    listeners = await trio.open_tcp_listeners(port, host=host)
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            demo = await nursery.start(partial(run_demo, listeners, backend=backend))
            print(f"trio-wsmgr demo: open {demo.url} in a browser (Ctrl-C to stop)", flush=True)
            async for _ in signals:
                break
            print("stopping: closing every socket with 1001 (going away)", flush=True)
            async with trio.open_nursery() as stopping:

                async def stop_at_once() -> None:  # a second Ctrl-C: do not wait for peers
                    async for _ in signals:
                        nursery.cancel_scope.cancel()

                stopping.start_soon(stop_at_once)
                await demo.close()
                stopping.cancel_scope.cancel()


def main(argv: Sequence[str] | None = None) -> int:
    """The console script: parse ``argv``, run the command, return the exit status."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.command == "demo":
        if not 0 <= args.port <= 65535:
            print(f"trio-wsmgr: --port must be 0 to 65535, not {args.port}", file=sys.stderr)
            return 2
        try:
            trio.run(serve_demo, args.host, args.port, args.redis)
        except OSError as exc:
            print(f"trio-wsmgr: cannot serve on {args.host}:{args.port}: {exc}", file=sys.stderr)
            return 1
        except (ImportError, ValueError) as exc:
            print(f"trio-wsmgr: {exc}", file=sys.stderr)
            return 2
        print("stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
