"""Run the benchmarks side by side and write ``bench/results/``.

    python bench/run.py [--quick] [--only fanout,deflate,latency,memory,handshakes,redis]
                        [--variants NAME,NAME] [--clients 100,1000,5000]

What it measures (every server variant in its own process, the load client in
another, both on 127.0.0.1; see ``docs/performance.rst``):

fanout
    deliveries received per second, the producer broadcasting 64-byte text
    messages as fast as the variant's broadcast lets it; every client must get
    every message in order (else the figure is marked unhealthy).
latency
    1,000 clients, 100 broadcasts/s: from the producer's timestamp to the last
    client receiving the message, p50 / p99.
memory, handshakes
    see ``memory.py`` and ``handshakes.py``.
redis
    the Broadcaster across two nodes over a real ``redis-server``.

Figures are medians of 3 rounds (1 with ``--quick``). Outputs:
``latest.json``, ``latest.md`` (Markdown), ``latest.rst`` (included by the
docs) and ``fanout.png``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import sys
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import handshakes
import memory
from _harness import BENCH, EXTRA, PIN, VARIANTS, cpu_seconds, load, median, redis_server, server
from _provenance import provenance

RESULTS = BENCH / "results"
BASELINE = "websockets asyncio"
LIMIT = "raw send (limit)"
OURS = "trio_wsmgr"
CHANNEL = "trio_wsmgr channel"
REDIS = "trio_wsmgr channel over redis"
SIDE_BY_SIDE = [v for v in VARIANTS if v != REDIS]
FULL_COUNTS = "100,1000,5000"


def log(*parts: object) -> None:
    print(*parts, file=sys.stderr, flush=True)


# -- fan-out throughput and latency -----------------------------------------------------------


def rounds_side_by_side(
    variants: list[str],
    clients: int,
    rounds: int,
    command: str,
    mode: str,
    client_extra: tuple[str, ...] = (),
) -> dict[str, list[dict[str, Any]]]:
    """Every variant's server and load client up at once; rounds interleaved across variants.

    Interleaving keeps the ratios fair on a shared machine: a burst of load from
    elsewhere hits one round of every variant instead of all rounds of one.
    """
    results: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
    with contextlib.ExitStack() as stack:
        pairs = {}
        for variant in variants:
            srv, port = stack.enter_context(server(variant))
            client = stack.enter_context(load(port, clients, mode, *client_extra))
            connected = client.read(300)
            if connected["open"] != clients:
                log(f"  {variant}: only {connected['open']} of {clients} clients connected")
            pairs[variant] = (srv, client, connected["open"])
        for _ in range(rounds):
            for variant, (srv, client, opened) in pairs.items():
                cpu = cpu_seconds(srv.pid), cpu_seconds(client.pid)
                sent = srv.ask(f"{command.format(clients=opened)}", 300)
                result = client.ask(f"expect {sent['sent']}", 600)
                result["sent"] = sent["sent"]
                deliveries = max(result["deliveries"], 1)
                result["server_us_per_delivery"] = (
                    (cpu_seconds(srv.pid) - cpu[0]) / deliveries * 1e6
                )
                result["client_us_per_delivery"] = (
                    (cpu_seconds(client.pid) - cpu[1]) / deliveries * 1e6
                )
                result["healthy"] = (
                    result["complete_clients"] == clients
                    and not result["closed_clients"]
                    and not result["seq_errors"]
                )
                results[variant].append(result)
                log(describe(variant, clients, result))
    return results


def describe(variant: str, clients: int, result: dict[str, Any]) -> str:
    text = f"  {variant:22} {clients:5} clients: {result['deliveries_per_s']:9,.0f}/s"
    text += f" server {result['server_us_per_delivery']:5.2f} us/delivery"
    if "latency_ms" in result:
        lat = result["latency_ms"]
        text += f"  latency p50 {lat['p50']:6.1f} ms p99 {lat['p99']:6.1f} ms"
        first = result.get("first_latency_ms")
        if first:
            text += f" (first client p50 {first['p50']:5.2f} ms)"
    text += f"  ({result['sent']} messages)"
    if not result["healthy"]:
        text += (
            f" UNHEALTHY: {result['complete_clients']}/{clients} complete,"
            f" {result['closed_clients']} closed, {result['seq_errors']} out of order"
        )
    return text


def fanout(
    variants: list[str],
    clients: int,
    rounds: int,
    seconds: float,
    client_extra: tuple[str, ...] = (),
) -> dict[str, Any]:
    raw = rounds_side_by_side(
        variants, clients, rounds, f"fanout {{clients}} {seconds}", "fanout", client_extra
    )
    return {
        v: {
            "deliveries_per_s": median([r["deliveries_per_s"] for r in rs]),
            "rounds": [r["deliveries_per_s"] for r in rs],
            "server_us_per_delivery": median([r["server_us_per_delivery"] for r in rs]),
            "server_us_rounds": [r["server_us_per_delivery"] for r in rs],
            "client_us_per_delivery": median([r["client_us_per_delivery"] for r in rs]),
            "healthy": all(r["healthy"] for r in rs),
        }
        for v, rs in raw.items()
    }


def latency(
    variants: list[str], clients: int, rounds: int, seconds: float, rate: float
) -> dict[str, Any]:
    command = f"latency {{clients}} {seconds} {rate}"
    raw = rounds_side_by_side(variants, clients, rounds, command, "latency")
    out = {}
    for v, rs in raw.items():
        lat = [r.get("latency_ms", {}) for r in rs]
        out[v] = {
            "p50_ms": median([x.get("p50", math.nan) for x in lat]),
            "p99_ms": median([x.get("p99", math.nan) for x in lat]),
            # to the first client: what the producer and the first write cost, before fan-out
            "first_p50_ms": median(
                [r.get("first_latency_ms", {}).get("p50", math.nan) for r in rs]
            ),
            "rounds": lat,
            # the load client's CPU per delivery: near 1e6 / (deliveries/s) it is the bottleneck
            "client_us_per_delivery": median([r["client_us_per_delivery"] for r in rs]),
            "server_us_per_delivery": median([r["server_us_per_delivery"] for r in rs]),
            "healthy": all(r["healthy"] for r in rs),
        }
    return out


#: the compressed fan-out: every client negotiates permessage-deflate (as browsers do)
DEFLATE_VARIANTS = [OURS, BASELINE]
DEFLATE_SIZE = 256


def fanout_deflate(rounds: int, seconds: float) -> dict[str, Any]:
    """Fan-out to 1,000 clients that all negotiated compression; 256-byte text messages.

    The load client offers ``permessage-deflate; client_max_window_bits`` (what a
    browser offers) and counts the compressed frames; each server keeps its
    library's defaults.
    """
    os.environ["BENCH_PAYLOAD_SIZE"] = str(DEFLATE_SIZE)
    try:
        result = fanout(DEFLATE_VARIANTS, 1000, rounds, seconds, ("--compression",))
    finally:
        del os.environ["BENCH_PAYLOAD_SIZE"]
    return {"clients": 1000, "payload_bytes": DEFLATE_SIZE, "variants": result}


# -- main -----------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds and sizes (~2 min)")
    parser.add_argument("--only", default="fanout,deflate,latency,memory,handshakes,redis")
    parser.add_argument("--variants", default=",".join(SIDE_BY_SIDE))
    parser.add_argument("--clients", default=None, help="fan-out client counts")
    parser.add_argument("--no-pin", action="store_true", help="do not pin server and client")
    parser.add_argument("--output", default=str(RESULTS / "latest.json"))
    args = parser.parse_args()
    if not args.no_pin and (os.cpu_count() or 1) >= 2:
        PIN[:] = [0, 1]
    only = set(args.only.split(","))
    variants = [v.strip() for v in args.variants.split(",")]
    quick = args.quick
    rounds = 1 if quick else 3
    counts = [int(c) for c in (args.clients or ("100,1000" if quick else FULL_COUNTS)).split(",")]
    started = time.monotonic()
    results: dict[str, Any] = {"meta": meta(args)}
    if "fanout" in only:
        log("fan-out: deliveries/s, as fast as broadcast lets the producer go")
        seconds = 1.0 if quick else 2.0
        # rounds at many clients carry few messages each: make them longer
        by_count = {n: fanout(variants, n, rounds, seconds * max(1.0, n / 2500)) for n in counts}
        results["fanout"] = {v: {str(n): by_count[n][v] for n in counts} for v in variants}
    log(f"[{time.monotonic() - started:.0f} s]")
    if "deflate" in only:
        log("fan-out with permessage-deflate negotiated by every client (1,000 clients)")
        results["fanout_deflate"] = fanout_deflate(rounds, 1.0 if quick else 2.0)
    log(f"[{time.monotonic() - started:.0f} s]")
    if "latency" in only:
        log("latency: 1,000 clients, 100 broadcasts/s")
        seconds = 2.0 if quick else 4.0
        results["latency"] = latency(variants, 1000, rounds, seconds, 100.0)
    log(f"[{time.monotonic() - started:.0f} s]")
    if "memory" in only:
        log("memory: idle connections, heartbeats on")
        results["memory"] = memory.measure(
            [v for v in variants if v in memory.DEFAULT_VARIANTS],
            2000 if quick else 10_000,
            rounds,
        )
    log(f"[{time.monotonic() - started:.0f} s]")
    if "handshakes" in only:
        total = 2000 if quick else 4000
        log(f"handshakes: {total:,} connections, 100 in flight")
        results["handshakes"] = handshakes.measure(
            [v for v in variants if v in handshakes.DEFAULT_VARIANTS], total, 100, rounds
        )
    log(f"[{time.monotonic() - started:.0f} s]")
    if "redis" in only:
        results["redis"] = redis(rounds, quick)
    log(f"[{time.monotonic() - started:.0f} s]")
    results["meta"]["seconds"] = time.monotonic() - started
    results["targets"] = targets(results)
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(results, indent=2) + "\n")
    tables = report(results)
    output.with_suffix(".md").write_text(render_markdown(results, tables))
    output.with_suffix(".rst").write_text(render_rst(results, tables))
    if "fanout" in results:
        plot(results, output.parent / "fanout.png")
    log(render_markdown(results, tables))
    log(f"done in {results['meta']['seconds']:.0f} s; wrote {output} (.md, .rst) and fanout.png")


def redis(rounds: int, quick: bool) -> dict[str, Any]:
    """The Broadcaster across two nodes over Redis, next to the in-process channel."""
    with redis_server() as url:
        if url is None:
            log("redis: no redis-server binary, skipped")
            return {"skipped": "no redis-server binary (apt install redis-server)"}
        log(f"redis: cross-node broadcast through {url}")
        EXTRA[REDIS] = ["--redis", url]
        pair = [CHANNEL, REDIS]
        seconds = 1.0 if quick else 2.0
        out = fanout(pair, 1000, rounds, seconds)
        lat = latency(pair, 1000, rounds, 2.0 if quick else 4.0, 100.0)
    return {
        "fanout_1000": out,
        "latency_1000": lat,
        "added_latency_ms": {
            "p50": lat[REDIS]["p50_ms"] - lat[CHANNEL]["p50_ms"],
            "p99": lat[REDIS]["p99_ms"] - lat[CHANNEL]["p99_ms"],
        },
    }


def meta(args: argparse.Namespace) -> dict[str, Any]:
    origin = provenance()
    return {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "quick": args.quick,
        "provenance": origin,
        "git_commit": origin["git_commit"],
        "git_dirty": origin["git_dirty"],
        "python": platform.python_version(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "pinned": PIN,
        "versions": {
            name: version(name)
            for name in ["trio", "trio-websocket", "wsproto", "websockets", "trio-wsmgr"]
        },
    }


# -- targets and tables -------------------------------------------------------------------------


def _get(results: dict[str, Any], *keys: str) -> Any:
    for key in keys:
        if not isinstance(results, dict) or key not in results:
            return None
        results = results[key]
    return results


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or not b or math.isnan(a) or math.isnan(b):
        return None
    return a / b


def _rounds(results: dict[str, Any], *keys: str) -> list[float] | None:
    """A variant's per-round figures (``keys`` lead to its ``rounds`` list)."""
    found = _get(results, *keys)
    return [float(x) for x in found] if isinstance(found, list) else None


def _spread(ours: list[float] | None, theirs: list[float] | None) -> tuple[float, float] | None:
    """Min and max of the per-round ratios ours[i] / theirs[i].

    Round i of every variant ran next to the others' round i (the rounds are
    interleaved), so each pair saw about the same load from elsewhere; the
    spread says how far the machine's noise moves the ratio.
    """
    if not ours or not theirs or len(ours) != len(theirs):
        return None
    ratios = [r for r in map(_ratio, ours, theirs) if r is not None]
    return (min(ratios), max(ratios)) if ratios else None


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets, each with the measured figure, its spread and whether it holds.

    The figure is the ratio of the medians; ``spread`` is the lowest and
    highest ratio of the rounds paired in time (see :func:`_spread`).
    """
    out: list[dict[str, Any]] = []

    def check(
        name: str,
        value: float | None,
        goal: float,
        higher_is_better: bool = True,
        spread: tuple[float, float] | None = None,
    ) -> None:
        if value is None:
            return
        holds = value >= goal if higher_is_better else value <= goal
        entry = {
            "target": name,
            "value": value,
            "goal": (">= " if higher_is_better else "<= ") + f"{goal:g}",
            "holds": holds,
        }
        if spread is not None:
            entry["spread"] = list(spread)
            worst = spread[0] if higher_is_better else spread[1]
            entry["holds_every_round"] = worst >= goal if higher_is_better else worst <= goal
        out.append(entry)

    def fan_rounds(v: str) -> list[float] | None:
        return _rounds(results, "fanout", v, "1000", "rounds")

    rate = {v: _get(results, "fanout", v, "1000", "deliveries_per_s") for v in VARIANTS}
    cost = {v: _get(results, "fanout", v, "1000", "server_us_per_delivery") for v in VARIANTS}
    check(
        "fan-out 1,000: deliveries/s vs websockets asyncio",
        _ratio(rate[OURS], rate[BASELINE]),
        1.5,
        spread=_spread(fan_rounds(OURS), fan_rounds(BASELINE)),
    )
    check(
        "fan-out 1,000: deliveries/s vs the raw-send limit",
        _ratio(rate[OURS], rate[LIMIT]),
        0.8,
        spread=_spread(fan_rounds(OURS), fan_rounds(LIMIT)),
    )
    healthy = _get(results, "fanout", OURS)
    if healthy:
        check(
            "fan-out: every client healthy, every message (all sizes)",
            float(all(x["healthy"] for x in healthy.values())),
            1.0,
        )

    def p99_rounds(v: str) -> list[float] | None:
        found = _get(results, "latency", v, "rounds")
        return [x.get("p99", math.nan) for x in found] if isinstance(found, list) else None

    ours = _get(results, "latency", OURS, "p99_ms")
    theirs = _get(results, "latency", BASELINE, "p99_ms")
    check(
        "latency p99: ours / websockets asyncio",
        _ratio(ours, theirs),
        0.6,
        False,
        spread=_spread(p99_rounds(OURS), p99_rounds(BASELINE)),
    )
    for key in ("off", "on"):
        mem = {v: _get(results, "memory", key, v, "bytes_per_connection") for v in VARIANTS}
        check(
            f"idle memory per connection, compression {key}: ours / websockets asyncio",
            _ratio(mem[OURS], mem[BASELINE]),
            1.0,
            False,
            spread=_spread(
                _rounds(results, "memory", key, OURS, "rounds"),
                _rounds(results, "memory", key, BASELINE, "rounds"),
            ),
        )
    hs = {v: _get(results, "handshakes", "variants", v, "per_s") for v in VARIANTS}
    check(
        "handshakes/s: ours / websockets asyncio",
        _ratio(hs[OURS], hs[BASELINE]),
        1.0,
        spread=_spread(
            _rounds(results, "handshakes", "variants", OURS, "rounds"),
            _rounds(results, "handshakes", "variants", BASELINE, "rounds"),
        ),
    )
    deflate = {
        v: _get(results, "fanout_deflate", "variants", v, "deliveries_per_s") for v in VARIANTS
    }
    check(
        "fan-out 1,000, every client compressing: ours / websockets asyncio",
        _ratio(deflate[OURS], deflate[BASELINE]),
        2.0,
        spread=_spread(
            _rounds(results, "fanout_deflate", "variants", OURS, "rounds"),
            _rounds(results, "fanout_deflate", "variants", BASELINE, "rounds"),
        ),
    )
    check(
        "channel broadcast: server CPU per delivery, channel / manager.broadcast",
        _ratio(cost[CHANNEL], cost[OURS]),
        1.1,
        False,
        spread=_spread(
            _rounds(results, "fanout", CHANNEL, "1000", "server_us_rounds"),
            _rounds(results, "fanout", OURS, "1000", "server_us_rounds"),
        ),
    )
    return out


def report(results: dict[str, Any]) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, header, rows) for every table."""
    tables: list[tuple[str, list[str], list[list[str]]]] = []
    fan = results.get("fanout")
    if fan:
        counts = sorted({int(n) for v in fan.values() for n in v})
        base = {n: _get(fan, BASELINE, str(n), "deliveries_per_s") for n in counts}
        limit = {n: _get(fan, LIMIT, str(n), "deliveries_per_s") for n in counts}
        header = ["server"] + [f"{n:,} clients" for n in counts]
        header += ["vs websockets asyncio", "vs raw send", "server us/delivery", "healthy"]
        rows = []
        mid = 1000 if 1000 in counts else counts[-1]
        for variant, by_count in fan.items():
            row = [variant]
            for n in counts:
                figure = by_count.get(str(n), {}).get("deliveries_per_s")
                row.append(_num(figure))
            row.append(_x(_ratio(_get(by_count, str(mid), "deliveries_per_s"), base[mid])))
            row.append(_x(_ratio(_get(by_count, str(mid), "deliveries_per_s"), limit[mid])))
            row.append(_fmt(_get(by_count, str(mid), "server_us_per_delivery"), "{:.2f}"))
            row.append("yes" if all(x.get("healthy") for x in by_count.values()) else "NO")
            rows.append(row)
        tables.append((f"Fan-out, deliveries/s (ratios at {mid:,} clients)", header, rows))
    deflate = results.get("fanout_deflate")
    if deflate:
        header = [
            "server",
            "deliveries/s",
            "vs websockets asyncio",
            "server us/delivery",
            "healthy",
        ]
        base_rate = _get(deflate, "variants", BASELINE, "deliveries_per_s")
        rows = [
            [
                v,
                _num(x["deliveries_per_s"]),
                _x(_ratio(x["deliveries_per_s"], base_rate)),
                _fmt(x["server_us_per_delivery"], "{:.2f}"),
                "yes" if x["healthy"] else "NO",
            ]
            for v, x in deflate["variants"].items()
        ]
        title = (
            f"Fan-out with permessage-deflate negotiated by every client "
            f"({deflate['clients']:,} clients, {deflate['payload_bytes']}-byte text messages)"
        )
        tables.append((title, header, rows))
    lat = results.get("latency")
    if lat:
        header = [
            "server",
            "p50 ms",
            "p99 ms",
            "p99 per round",
            "first client p50 ms",
            "server us/delivery",
            "client us/delivery",
            "healthy",
        ]
        rows = [
            [
                v,
                _fmt(x["p50_ms"], "{:.1f}"),
                _fmt(x["p99_ms"], "{:.1f}"),
                ", ".join(_fmt(r.get("p99"), "{:.1f}") for r in x.get("rounds", [])),
                _fmt(x.get("first_p50_ms"), "{:.2f}"),
                _fmt(x.get("server_us_per_delivery"), "{:.2f}"),
                _fmt(x.get("client_us_per_delivery"), "{:.2f}"),
                "yes" if x["healthy"] else "NO",
            ]
            for v, x in lat.items()
        ]
        tables.append(("Latency to the last of 1,000 clients at 100 broadcasts/s", header, rows))
    mem = results.get("memory")
    if mem:
        header = ["server", "compression off, KiB", "compression on, KiB"]
        rows = []
        for v, x in mem["off"].items():
            on = _get(mem, "on", v, "bytes_per_connection")
            rows.append(
                [
                    v,
                    _fmt(x["bytes_per_connection"] / 1024, "{:.1f}"),
                    _fmt(on and on / 1024, "{:.1f}"),
                ]
            )
        tables.append(
            (
                f"Idle memory per connection ({mem['connections']:,} connections, heartbeats on)",
                header,
                rows,
            )
        )
    hs = results.get("handshakes")
    if hs:
        header = ["server", "handshakes/s", "rounds (in order)"]
        rows = [
            [v, _num(x["per_s"]), ", ".join(_num(r) for r in x.get("rounds", []))]
            for v, x in hs["variants"].items()
        ]
        title = (
            f"Opening handshakes ({hs['connections']:,} connections, {hs['inflight']} in flight)"
        )
        tables.append((title, header, rows))
    red = results.get("redis")
    if red and "skipped" not in red:
        header = ["path", "deliveries/s (1,000 clients)", "server us/delivery", "p50 ms", "p99 ms"]
        rows = []
        for v in (CHANNEL, REDIS):
            f, x = red["fanout_1000"][v], red["latency_1000"][v]
            rows.append(
                [
                    v,
                    _num(f["deliveries_per_s"]),
                    _fmt(f["server_us_per_delivery"], "{:.2f}"),
                    _fmt(x["p50_ms"], "{:.1f}"),
                    _fmt(x["p99_ms"], "{:.1f}"),
                ]
            )
        tables.append(
            ("Broadcaster: in-process channel and across two nodes over Redis", header, rows)
        )
    lean = _lean_core_table(results)
    if lean is not None:
        tables.append(lean)
    goals = results.get("targets")
    if goals:
        header = ["target", "measured", "per-round ratios", "goal", "holds", "in every round"]
        rows = [
            [
                t["target"],
                f"{t['value']:.2f}",
                f"{t['spread'][0]:.2f} .. {t['spread'][1]:.2f}" if "spread" in t else "-",
                t["goal"],
                "yes" if t["holds"] else "MISS",
                {True: "yes", False: "no"}.get(t.get("holds_every_round"), "-"),
            ]
            for t in goals
        ]
        title = (
            "Targets (ratio of the medians; per-round ratios: lowest and highest over"
            " the rounds paired in time)"
        )
        tables.append((title, header, rows))
    return tables


#: trio_wsmgr before the lean-core work (issue 10's figures, measured the same way:
#: 10,000 idle connections without compression, 4,000 handshakes with 100 in flight)
#: and its ratios to websockets asyncio in that run (15.6 KiB, 3,899 handshakes/s)
BEFORE_LEAN_CORE = {
    "bytes_per_connection": 30.8 * 1024,
    "memory_ratio": 1.97,
    "handshakes_per_s": 1404.0,
    "handshake_ratio": 0.36,
}


def _lean_core_table(
    results: dict[str, Any],
) -> tuple[str, list[str], list[list[str]]] | None:
    """Issue 10's table: idle memory and handshakes/s, with trio_wsmgr before and now."""
    mem = _get(results, "memory", "off")
    hs = _get(results, "handshakes", "variants")
    if not mem or not hs:
        return None
    base_mem = _get(mem, BASELINE, "bytes_per_connection")
    base_hs = _get(hs, BASELINE, "per_s")

    def row(
        name: str,
        memory: float | None,
        rate: float | None,
        ratios: tuple[float, float] | None = None,
    ) -> list[str]:
        return [
            name,
            _fmt(memory and memory / 1024, "{:.1f} KiB"),
            _x(ratios[0] if ratios else _ratio(memory, base_mem)),
            _num(rate),
            _x(ratios[1] if ratios else _ratio(rate, base_hs)),
        ]

    rows = [
        row(v, _get(mem, v, "bytes_per_connection"), _get(hs, v, "per_s"))
        for v in (BASELINE, "websockets.trio")
    ]
    rows.append(
        row(
            "trio_wsmgr before (issue 10's run)",
            BEFORE_LEAN_CORE["bytes_per_connection"],
            BEFORE_LEAN_CORE["handshakes_per_s"],
            (BEFORE_LEAN_CORE["memory_ratio"], BEFORE_LEAN_CORE["handshake_ratio"]),
        )
    )
    rows.append(
        row("trio_wsmgr now", _get(mem, OURS, "bytes_per_connection"), _get(hs, OURS, "per_s"))
    )
    header = [
        "server",
        "idle memory per connection",
        "vs websockets asyncio",
        "handshakes/s",
        "vs websockets asyncio",
    ]
    title = (
        f"The lean core (issue 10): {mem and results['memory']['connections']:,} idle"
        f" connections, no compression; {results['handshakes']['connections']:,} handshakes,"
        f" {results['handshakes']['inflight']} in flight (the 'before' row: the issue's figures"
        " and ratios, from its own side-by-side run)"
    )
    return title, header, rows


def _num(value: float | None) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:,.0f}"


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None or math.isnan(value) else spec.format(value)


def _x(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _caption(results: dict[str, Any]) -> str:
    m = results["meta"]
    versions = ", ".join(f"{k} {v}" for k, v in m["versions"].items())
    mode = "quick run, 1 round" if m["quick"] else "medians of 3 interleaved rounds"
    commit = m.get("git_commit", "")[:12] or "unknown"
    if m.get("git_dirty"):
        commit += " (with uncommitted changes)"
    return (
        f"{m['date']}, commit {commit}, {m['machine']}, Python {m['python']}, {mode}, "
        f"{m['seconds']:.0f} s; {versions}."
    )


def render_markdown(
    results: dict[str, Any], tables: list[tuple[str, list[str], list[list[str]]]]
) -> str:
    lines = ["# Benchmark results", "", _caption(results), ""]
    for title, header, rows in tables:
        lines += [f"## {title}", "", "| " + " | ".join(header) + " |"]
        lines.append("|" + "|".join("---" for _ in header) + "|")
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        lines.append("")
    return "\n".join(lines)


def render_rst(
    results: dict[str, Any], tables: list[tuple[str, list[str], list[list[str]]]]
) -> str:
    lines = [".. Generated by bench/run.py; do not edit.", "", _caption(results), ""]
    for title, header, rows in tables:
        lines += [f".. list-table:: {title}", "   :header-rows: 1", ""]
        for row in [header, *rows]:
            lines.append(f"   * - {row[0]}")
            lines += [f"     - {cell}" for cell in row[1:]]
        lines.append("")
    return "\n".join(lines)


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, ax = plt.subplots(figsize=(8, 4.8), dpi=100)
    for variant, by_count in results["fanout"].items():
        points = sorted((int(n), x["deliveries_per_s"]) for n, x in by_count.items())
        style = "-o" if variant.startswith("trio_wsmgr") else "--s"
        ax.plot([p[0] for p in points], [p[1] for p in points], style, label=variant)
    ax.set_xscale("log")
    ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda y, _: f"{y:,.0f}"))
    ax.set_xlabel("clients")
    ax.set_ylabel("deliveries received per second")
    ax.set_title("Fan-out of 64-byte messages (higher is better)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize="small")
    fig.text(0.01, 0.01, _caption(results), fontsize=6, wrap=True)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    fig.savefig(path)
    plt.close(fig)


if __name__ == "__main__":
    main()
