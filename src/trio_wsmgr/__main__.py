"""The ``trio-wsmgr`` command (also ``python -m trio_wsmgr``).

``trio-wsmgr demo [--host HOST] [--port PORT] [--redis URL] [--workers N]``
serves a live chat: the page at ``/``, its WebSocket at ``/ws``. Ctrl-C (or
SIGTERM) closes every socket with 1001 and exits with status 0; a second
Ctrl-C stops at once. ``--workers N`` (with ``--redis``) runs N processes on
the port, supervised by this one (see :mod:`trio_wsmgr._demo._workers`).
"""

from __future__ import annotations

import argparse
import logging
import os
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
    demo.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="run N processes on the port, one per core, tied by --redis (%(default)s)",
    )
    demo.add_argument(
        "--reuse-port",
        action="store_true",
        help="listen with SO_REUSEPORT, so other processes with it can share the port",
    )
    demo.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    return parser


async def serve_demo(
    host: str,
    port: int,
    redis_url: str | None,
    *,
    reuse_port: bool = False,
    worker: bool = False,
) -> None:
    """Run the demo until SIGINT/SIGTERM, then shut it down cleanly.

    What can fail on the user's input (a busy port, a bad Redis URL, coredis
    missing) fails here, before anything starts, as a plain exception. A
    ``worker`` also stops when its stdin (the supervisor's pipe) closes.
    """
    from ._demo import run_demo
    from .backends import RedisBackend
    from .server._listen import open_listeners

    backend = None if redis_url is None else RedisBackend(redis_url)
    listeners = await open_listeners(port, host=host, reuse_port=reuse_port)
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            demo = await nursery.start(partial(run_demo, listeners, backend=backend))
            print(f"trio-wsmgr demo: open {demo.url} in a browser (Ctrl-C to stop)", flush=True)
            stop = trio.Event()

            async def on_signals() -> None:
                async for _ in signals:
                    if stop.is_set():  # a second Ctrl-C: do not wait for peers
                        nursery.cancel_scope.cancel()
                    stop.set()

            nursery.start_soon(on_signals)
            if worker:
                nursery.start_soon(_stop_when_orphaned, stop)
            await stop.wait()
            print("stopping: closing every socket with 1001 (going away)", flush=True)
            await demo.close()
            nursery.cancel_scope.cancel()


async def _stop_when_orphaned(stop: trio.Event) -> None:
    """Set ``stop`` when stdin reaches its end: the supervisor is gone."""
    stdin = trio.lowlevel.FdStream(os.dup(sys.stdin.fileno()))
    async with stdin:
        while await stdin.receive_some(1024):
            pass
    stop.set()


def main(argv: Sequence[str] | None = None) -> int:
    """The console script: parse ``argv``, run the command, return the exit status."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.command == "demo":
        if not 0 <= args.port <= 65535:
            print(f"trio-wsmgr: --port must be 0 to 65535, not {args.port}", file=sys.stderr)
            return 2
        if args.workers < 1:
            print(f"trio-wsmgr: --workers must be >= 1, not {args.workers}", file=sys.stderr)
            return 2
        if args.workers > 1:
            return _supervise(args)
        try:
            trio.run(
                partial(
                    serve_demo,
                    args.host,
                    args.port,
                    args.redis,
                    reuse_port=args.reuse_port,
                    worker=args.worker,
                )
            )
        except (OSError, ImportError, ValueError) as exc:
            return _cannot_start(args, exc)
        print("stopped", flush=True)
    return 0


def _cannot_start(args: argparse.Namespace, exc: Exception) -> int:
    """Say in one line why the demo cannot start; the exit status (1: the address, 2: setup)."""
    if isinstance(exc, OSError):
        print(f"trio-wsmgr: cannot serve on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    print(f"trio-wsmgr: {exc}", file=sys.stderr)  # a bad option, or a missing extra
    return 2


def _supervise(args: argparse.Namespace) -> int:
    """``--workers N``: check what can be checked here, then run the supervisor."""
    from ._demo._workers import reserve_port, supervise
    from .backends import RedisBackend

    if args.redis is None:
        print(
            "trio-wsmgr: --workers needs --redis URL: the worker processes share rooms "
            "and rosters through Redis",
            file=sys.stderr,
        )
        return 2
    try:
        RedisBackend(args.redis)  # a bad URL or a missing coredis: one line, now
        reserved = reserve_port(args.host, args.port)
    except (OSError, ImportError, ValueError) as exc:
        return _cannot_start(args, exc)
    status = trio.run(supervise, args.host, reserved, args.redis, args.workers)
    print("stopped", flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
