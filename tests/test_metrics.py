"""trio_wsmgr.metrics: the Prometheus collector, scraped and parsed as Prometheus would.

Every scrape is parsed with prometheus-client's own text parser; the demo's
``GET /metrics`` is fetched over a real TCP socket.
"""

from __future__ import annotations

import math
import subprocess
import sys
from collections.abc import Iterable
from typing import Any

import pytest
import trio
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from websockets.exceptions import InvalidStatus
from websockets.trio.client import connect

from test_demo import running_demo, ws_url
from trio_wsmgr import (
    Broadcaster,
    ManagedSocket,
    MemoryBackend,
    MemoryHub,
    WebSocketManager,
    WebSocketPool,
)
from trio_wsmgr.backends import Backend, Receiver
from trio_wsmgr.metrics import WsmgrCollector

WAIT = 10.0


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """{(sample name, sorted labels): value} of an exposition, via prometheus-client's parser."""
    found: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    return found


def scrape(collector: WsmgrCollector) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return samples(generate_latest(registry).decode())


def value(found: dict[Any, float], name: str, **labels: str) -> float:
    return found[name, tuple(sorted(labels.items()))]


async def echo(sock: ManagedSocket) -> None:
    async for message in sock:
        await sock.send(message)


def deny_eve(request: Any) -> str | None:
    user = request.query.get("user")
    return None if user == "eve" else user


def test_without_the_metrics_extra_the_import_says_what_to_install() -> None:
    blocked = "import sys; sys.modules['prometheus_client'] = None; import trio_wsmgr.metrics"
    result = subprocess.run(
        [sys.executable, "-c", blocked], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 1
    assert "ImportError: trio_wsmgr.metrics needs prometheus-client" in result.stderr
    assert "pip install 'trio-wsmgr[metrics]'" in result.stderr


async def test_manager_counters_are_exported_under_wsmgr_names() -> None:
    manager = WebSocketManager(authentication=deny_eve, heartbeat_interval=math.inf)
    collector = WsmgrCollector()
    collector.add_manager(manager, name="chat")
    async with trio.open_nursery() as nursery:
        server = await nursery.start(manager.serve, echo, "127.0.0.1", 0)
        url = f"ws://127.0.0.1:{server.port}/"
        async with connect(url + "?user=alice") as alice:
            for text in ("one", "two", "three"):
                await alice.send(text)
                assert await alice.recv() == text
            with pytest.raises(InvalidStatus):
                async with connect(url + "?user=eve"):
                    pass
            found = scrape(collector)
            assert value(found, "wsmgr_open_sockets", manager="chat") == 1
            assert value(found, "wsmgr_accepted_total", manager="chat") == 1
            assert (
                value(found, "wsmgr_rejected_total", manager="chat", cause="unauthenticated") == 1
            )
            assert value(found, "wsmgr_messages_in_total", manager="chat") == 3
            assert value(found, "wsmgr_messages_out_total", manager="chat") == 3
            assert value(found, "wsmgr_bytes_in_total", manager="chat") == len("onetwothree")
            assert value(found, "wsmgr_bytes_out_total", manager="chat") > len("onetwothree")
            for name in ("dropped", "slow_consumer_closes", "heartbeat_timeouts", "rate_limited"):
                assert value(found, f"wsmgr_{name}_total", manager="chat") == 0
        await manager.close()
        nursery.cancel_scope.cancel()
    assert value(scrape(collector), "wsmgr_open_sockets", manager="chat") == 0


async def test_pool_gauges_and_health_are_exported() -> None:
    manager = WebSocketManager(heartbeat_interval=math.inf)
    collector = WsmgrCollector()
    async with trio.open_nursery() as nursery:
        server = await nursery.start(manager.serve, echo, "127.0.0.1", 0)
        pool = WebSocketPool(f"ws://127.0.0.1:{server.port}/", min_connections=2)
        collector.add_pool(pool, name="echo")
        async with pool:
            async with pool.acquire():
                found = scrape(collector)
                assert value(found, "wsmgr_pool_active", pool="echo") == 1
                assert value(found, "wsmgr_pool_idle", pool="echo") == 1
                assert value(found, "wsmgr_pool_waiting", pool="echo") == 0
                assert value(found, "wsmgr_pool_opened_total", pool="echo") == 2
                assert value(found, "wsmgr_pool_healthy", pool="echo") == 1
                assert value(found, "wsmgr_pool_state", pool="echo", state="up") == 1
                assert value(found, "wsmgr_pool_state", pool="echo", state="down") == 0
            found = scrape(collector)
            assert value(found, "wsmgr_pool_active", pool="echo") == 0
            assert value(found, "wsmgr_pool_idle", pool="echo") == 2
        await manager.close()
        nursery.cancel_scope.cancel()


class SilentBackend(Backend):
    """A backend that keeps the interface's default statistics() (it cannot tell)."""

    async def run(
        self, receive: Receiver, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        task_status.started()
        await trio.sleep_forever()

    async def publish(self, topic: str, data: bytes) -> None:
        await trio.lowlevel.checkpoint()

    async def subscribe(self, topics: Iterable[str]) -> None:  # type: ignore[override]
        await trio.lowlevel.checkpoint()

    async def unsubscribe(self, topics: Iterable[str]) -> None:  # type: ignore[override]
        await trio.lowlevel.checkpoint()


async def test_broadcaster_and_backend_counters_are_exported() -> None:
    collector = WsmgrCollector()
    hub = MemoryHub()
    async with (
        Broadcaster(backend=MemoryBackend(hub=hub)) as reporting,
        Broadcaster(backend=SilentBackend()) as silent,
    ):
        collector.add_broadcaster(reporting, name="memory")
        collector.add_broadcaster(silent, name="silent")
        await reporting.broadcast("news", "hello")
        await reporting.broadcast("news", "again")
        found = scrape(collector)
        assert value(found, "wsmgr_broadcasts_total", broadcaster="memory") == 2
        assert value(found, "wsmgr_broadcaster_published_total", broadcaster="memory") == 2
        assert value(found, "wsmgr_backend_connected", broadcaster="memory") == 1
        assert value(found, "wsmgr_backend_published_total", broadcaster="memory") == 2
        assert ("wsmgr_backend_received_total", (("broadcaster", "memory"),)) in found
        # a backend that cannot tell: its broadcaster's own counters, and no backend guess
        assert value(found, "wsmgr_broadcasts_total", broadcaster="silent") == 0
        assert ("wsmgr_backend_connected", (("broadcaster", "silent"),)) not in found


def test_names_must_tell_objects_apart() -> None:
    collector = WsmgrCollector()
    first, second = WebSocketManager(), WebSocketManager()
    collector.add_manager(first)
    collector.add_manager(first)  # the same object again: fine
    with pytest.raises(ValueError, match="already exported"):
        collector.add_manager(second)
    collector.add_manager(second, name="second")
    collector.remove(first)
    assert {labels for (name, labels) in scrape(collector) if name == "wsmgr_open_sockets"} == {
        (("manager", "second"),)
    }


async def http_get(port: int, path: str) -> tuple[int, dict[str, str], bytes]:
    """A plain HTTP/1.1 GET over a real socket; the demo closes after answering."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        raw = b""
        with trio.fail_after(WAIT):
            while data := await stream.receive_some(65536):
                raw += data
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    return int(status_line.split()[1]), headers, body


async def test_the_demo_serves_its_metrics_at_slash_metrics() -> None:
    async with running_demo() as demo:
        port = demo.server.port
        async with connect(ws_url(demo, "alice")), connect(ws_url(demo, "bob")) as bob:
            await bob.send('{"type": "join", "room": "lobby"}')
            with trio.fail_after(WAIT):
                while demo.manager.statistics().messages_in < 1:
                    await trio.sleep(0.01)
            status, headers, body = await http_get(port, "/metrics")
            assert status == 200
            assert headers["content-type"].startswith("text/plain")
            found = samples(body.decode())
            assert value(found, "wsmgr_open_sockets", manager="demo") == 2
            assert value(found, "wsmgr_accepted_total", manager="demo") == 2
            assert value(found, "wsmgr_messages_in_total", manager="demo") >= 1
            assert value(found, "wsmgr_backend_connected", broadcaster="demo") == 1
        with pytest.raises(InvalidStatus):  # another site's page: refused (403)
            async with connect(ws_url(demo, "mallory"), origin="http://evil.example"):
                pass
        with trio.fail_after(WAIT):
            while demo.manager.get_active_connections():
                await trio.sleep(0.01)
        _, _, body = await http_get(port, "/metrics")
        found = samples(body.decode())
        assert value(found, "wsmgr_open_sockets", manager="demo") == 0
        assert value(found, "wsmgr_rejected_total", manager="demo", cause="forbidden") == 1
