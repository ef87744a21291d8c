"""Opening handshakes per second: N connections, at most K handshakes in flight.

    python bench/handshakes.py [--connections 2000] [--inflight 100] [--rounds 3]

The load client counts from its first connect to the last ``101`` response; the
connections stay open until all are done, then close. Each round uses a fresh
server; the figure is the median of ``--rounds``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import VARIANTS, load, median, server

DEFAULT_VARIANTS = [v for v in VARIANTS if v != "trio_wsmgr channel"]


def once(variant: str, connections: int, inflight: int) -> float:
    with server(variant) as (_, port):
        argv = ["--inflight", str(inflight)]
        with load(port, connections, "handshake", *argv) as client:
            result = client.read(300)
    if result["open"] < connections:
        print(f"  {variant}: {result['failed']} handshakes failed", file=sys.stderr)
    return float(result["handshakes_per_s"])


def measure(
    variants: list[str], connections: int, inflight: int, rounds: int, log: bool = True
) -> dict[str, Any]:
    results: dict[str, Any] = {"connections": connections, "inflight": inflight, "variants": {}}
    for variant in variants:
        values = [once(variant, connections, inflight) for _ in range(rounds)]
        results["variants"][variant] = {"per_s": median(values), "rounds": values}
        if log:
            print(f"  {variant:24} {median(values):8,.0f} handshakes/s", file=sys.stderr)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=2000)
    parser.add_argument("--inflight", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--variants", default=",".join(DEFAULT_VARIANTS))
    args = parser.parse_args()
    measure(args.variants.split(","), args.connections, args.inflight, args.rounds)


if __name__ == "__main__":
    main()
