"""Opening handshakes per second: N connections, at most K handshakes in flight.

    python bench/handshakes.py [--connections 2000] [--inflight 100] [--rounds 3]

The load client counts from its first connect to the last ``101`` response; the
connections stay open until all are done, then close. Each round uses a fresh
server; the figure is the median of ``--rounds``. Rounds are interleaved across
the variants (A B C A B C, not A A A B B B), so that a burst of load elsewhere on
a shared machine hits one round of every variant instead of all rounds of one;
``rounds`` keeps every round's figure, in order, for the spread.
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
    values: dict[str, list[float]] = {v: [] for v in variants}
    for round_ in range(rounds):
        for variant in variants:
            values[variant].append(once(variant, connections, inflight))
            if log:
                print(
                    f"  round {round_ + 1}: {variant:24} {values[variant][-1]:8,.0f} handshakes/s",
                    file=sys.stderr,
                )
    for variant, figures in values.items():
        results["variants"][variant] = {"per_s": median(figures), "rounds": figures}
        if log:
            print(
                f"  {variant:24} {median(figures):8,.0f} handshakes/s"
                f" (rounds {min(figures):,.0f} .. {max(figures):,.0f})",
                file=sys.stderr,
            )
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
