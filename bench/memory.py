"""Idle memory per connection: server RSS growth for N idle clients, divided by N.

    python bench/memory.py [--connections 5000] [--variants NAME,NAME] [--rounds 3]

Heartbeats stay on (every variant's default: a ping every 20 s). Compression
off means the load client does not offer permessage-deflate; on means it does
(trio-websocket and the raw server cannot negotiate it, so they are left out).
RSS is read after a full garbage collection in the server, before the clients
connect and a second after they all have. Medians of ``--rounds`` fresh servers
(``run.py`` measures "compression on" in one round only, to stay within ten minutes),
with the rounds interleaved across the variants as in ``handshakes.py``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import VARIANTS, load, median, server

#: variants that can negotiate permessage-deflate
COMPRESSING = ["trio_wsmgr", "websockets asyncio", "websockets.trio"]
DEFAULT_VARIANTS = [v for v in VARIANTS if v != "trio_wsmgr channel"]


def once(variant: str, connections: int, compression: bool) -> float:
    """Bytes of server RSS per idle connection, one fresh server."""
    extra = ["--compression"] if compression else []  # the client offers permessage-deflate
    with server(variant) as (srv, port):
        before = srv.ask("rss", 30)["rss"]
        with load(port, connections, "idle", *extra) as client:
            connected = client.read(300)
            time.sleep(1.0)
            after = srv.ask("rss", 30)
            opened = min(connected["open"], after["open"])
            if opened < connections:
                print(f"  {variant}: only {opened} of {connections} open", file=sys.stderr)
    return (after["rss"] - before) / max(opened, 1)


def measure(
    variants: list[str], connections: int, rounds: int, log: bool = True, full_on: bool = False
) -> dict[str, Any]:
    results: dict[str, Any] = {"connections": connections, "off": {}, "on": {}}
    for compression in (False, True):
        key = "on" if compression else "off"
        names = [v for v in variants if not compression or v in COMPRESSING]
        # the target is about "off"; "on" is reported from one round to keep the run short
        times = 1 if compression and not full_on else rounds
        values: dict[str, list[float]] = {v: [] for v in names}
        for _ in range(times):  # interleaved: A B C A B C, see handshakes.py
            for variant in names:
                values[variant].append(once(variant, connections, compression))
        for variant, figures in values.items():
            results[key][variant] = {"bytes_per_connection": median(figures), "rounds": figures}
            if log:
                print(
                    f"  {variant:24} compression {key:3}: {median(figures) / 1024:6.1f} KiB"
                    f" per connection ({connections}; rounds"
                    f" {min(figures) / 1024:.1f} .. {max(figures) / 1024:.1f})",
                    file=sys.stderr,
                )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--variants", default=",".join(DEFAULT_VARIANTS))
    args = parser.parse_args()
    measure(args.variants.split(","), args.connections, args.rounds, full_on=True)


if __name__ == "__main__":
    main()
