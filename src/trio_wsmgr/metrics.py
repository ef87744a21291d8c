"""Prometheus metrics for managers, pools and broadcasters (the ``metrics`` extra).

:class:`WsmgrCollector` is a :mod:`prometheus_client` custom collector: it reads the
``statistics()`` snapshots of the objects you add, at scrape time, and exports them
under ``wsmgr_`` names. Nothing is counted twice and nothing runs between scrapes::

    import prometheus_client
    from trio_wsmgr.metrics import WsmgrCollector

    collector = WsmgrCollector()
    collector.add_manager(manager)
    collector.add_pool(pool, name="users-api")
    collector.add_broadcaster(broadcaster)
    prometheus_client.REGISTRY.register(collector)

Each object gets a label naming it (``manager``, ``pool``, ``broadcaster``), so one
collector can carry several of each. See :doc:`/howto/metrics` for the list of
metrics and a scrape endpoint.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TypeVar

try:
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
    from prometheus_client.registry import Collector
except ImportError as exc:  # the extra is not installed
    if exc.name is None or exc.name.partition(".")[0] != "prometheus_client":
        raise
    raise ImportError(
        "trio_wsmgr.metrics needs prometheus-client: pip install 'trio-wsmgr[metrics]'",
        name="prometheus_client",
    ) from exc

from .broadcast._broadcaster import Broadcaster
from .client._health import HealthState
from .client._pool import WebSocketPool
from .server._manager import WebSocketManager

__all__ = ["WsmgrCollector"]

T = TypeVar("T")

#: manager counters: (statistics field, metric name without ``wsmgr_`` and ``_total``, help)
_MANAGER_COUNTERS = (
    ("accepted", "accepted", "WebSocket handshakes accepted"),
    ("messages_in", "messages_in", "messages received from peers"),
    ("messages_out", "messages_out", "messages queued for peers"),
    ("bytes_in", "bytes_in", "message bytes received from peers"),
    ("bytes_out", "bytes_out", "frame bytes queued for peers"),
    ("dropped", "dropped", "broadcast deliveries skipped because a send buffer was full"),
    ("slow_consumer_closes", "slow_consumer_closes", "sockets closed 1008 as slow consumers"),
    ("heartbeat_timeouts", "heartbeat_timeouts", "sockets closed 1011 for a missed pong"),
    ("rate_limited", "rate_limited", "sockets closed 1008 above max_messages_per_second"),
)
_POOL_COUNTERS = (
    ("opened", "pool_opened", "connections the pool opened"),
    ("connect_failures", "pool_connect_failures", "connect attempts that failed"),
    ("lost", "pool_lost", "open connections that ended on their own"),
    ("discarded", "pool_discarded", "connections closed as broken or in an unknown state"),
    ("reaped", "pool_reaped", "idle connections closed after idle_timeout"),
    ("failed_checks", "pool_failed_checks", "validation or health pings that failed"),
)
_POOL_GAUGES = (
    ("active", "pool_active", "connections checked out by tasks"),
    ("idle", "pool_idle", "open connections waiting in the pool"),
    ("connecting", "pool_connecting", "connects in flight"),
    ("closing", "pool_closing", "closes in flight"),
    ("waiting", "pool_waiting", "tasks blocked in acquire()"),
    ("max_connections", "pool_max_connections", "the pool's max_connections"),
)
_BROADCASTER_COUNTERS = (
    ("broadcasts", "broadcasts", "broadcast and send_to_user calls"),
    ("local_deliveries", "local_deliveries", "messages queued on local sockets by those calls"),
    ("published", "broadcaster_published", "messages handed to the backend"),
    ("publish_failures", "broadcaster_publish_failures", "calls that raised BackendUnavailable"),
    ("received", "broadcaster_received", "messages received from other nodes"),
    ("remote_deliveries", "remote_deliveries", "messages queued on local sockets for others"),
    ("inbox_dropped", "inbox_dropped", "messages from other nodes dropped: inbox full"),
    ("malformed", "malformed", "backend messages not in the wire format, ignored"),
)
_BACKEND_COUNTERS = (
    ("published", "backend_published", "messages the backend handed to its engine"),
    ("publish_failures", "backend_publish_failures", "publications the engine did not take"),
    ("received", "backend_received", "messages the backend received (own ones included)"),
    ("reconnects", "backend_reconnects", "successful connections after the first one"),
    ("connection_failures", "backend_connection_failures", "failed or lost connections"),
)


class WsmgrCollector(Collector):
    """Exports the statistics of the managers, pools and broadcasters added to it.

    Add each object once, with a ``name`` that tells it apart (the label value);
    remove it with :meth:`remove` when it is gone. Collecting is synchronous and
    cheap: one ``statistics()`` call per object per scrape.
    """

    def __init__(self) -> None:
        self._managers: dict[str, WebSocketManager] = {}
        self._pools: dict[str, WebSocketPool] = {}
        self._broadcasters: dict[str, Broadcaster] = {}

    def add_manager(self, manager: WebSocketManager, *, name: str = "default") -> None:
        """Export ``manager``'s statistics with the label ``manager=name``."""
        _add(self._managers, "manager", name, manager)

    def add_pool(self, pool: WebSocketPool, *, name: str | None = None) -> None:
        """Export ``pool``'s statistics with the label ``pool=name`` (default: its URL)."""
        _add(self._pools, "pool", pool.url if name is None else name, pool)

    def add_broadcaster(self, broadcaster: Broadcaster, *, name: str = "default") -> None:
        """Export ``broadcaster``'s (and its backend's) statistics, label ``broadcaster=name``."""
        _add(self._broadcasters, "broadcaster", name, broadcaster)

    def remove(self, item: WebSocketManager | WebSocketPool | Broadcaster) -> None:
        """Stop exporting ``item`` (no error if it was not added)."""
        for table in (self._managers, self._pools, self._broadcasters):
            for key, value in list(table.items()):
                if value is item:
                    del table[key]

    def describe(self) -> list[Metric]:
        # Nothing to describe up front: the families depend on what is added later.
        return []

    def collect(self) -> Iterator[Metric]:
        yield from self._collect_managers()
        yield from self._collect_pools()
        yield from self._collect_broadcasters()

    def _collect_managers(self) -> Iterator[Metric]:
        labels = ["manager"]
        open_sockets = _gauge("open_sockets", "open WebSocket connections", labels)
        handshaking = _gauge("handshaking", "handshakes in progress", labels)
        rejected = _counter("rejected", "refused handshakes, by cause", [*labels, "cause"])
        counters = {f: _counter(n, h, labels) for f, n, h in _MANAGER_COUNTERS}
        for name, manager in self._managers.items():
            stats = manager.statistics()
            open_sockets.add_metric([name], stats.open_sockets)
            handshaking.add_metric([name], stats.handshaking)
            for cause, value in sorted(stats.rejected.items()):
                rejected.add_metric([name, cause], value)
            for field, family in counters.items():
                family.add_metric([name], getattr(stats, field))
        yield from (open_sockets, handshaking, rejected, *counters.values())

    def _collect_pools(self) -> Iterator[Metric]:
        labels = ["pool"]
        gauges = {f: _gauge(n, h, labels) for f, n, h in _POOL_GAUGES}
        counters = {f: _counter(n, h, labels) for f, n, h in _POOL_COUNTERS}
        healthy = _gauge("pool_healthy", "1 unless the backend is DOWN", labels)
        state = _gauge("pool_state", "1 for the backend's health state", [*labels, "state"])
        rtt = _gauge("pool_ping_rtt_seconds", "the last ping round trip (NaN before)", labels)
        for name, pool in self._pools.items():
            stats = pool.statistics()
            health = pool.get_health_status()
            for field, gauge in gauges.items():
                gauge.add_metric([name], getattr(stats, field))
            for field, counter in counters.items():
                counter.add_metric([name], getattr(stats, field))
            healthy.add_metric([name], 1 if health.healthy else 0)
            for value in HealthState:
                state.add_metric([name, value.value], 1 if health.state is value else 0)
            rtt.add_metric([name], float("nan") if health.ping_rtt is None else health.ping_rtt)
        yield from (*gauges.values(), *counters.values(), healthy, state, rtt)

    def _collect_broadcasters(self) -> Iterator[Metric]:
        labels = ["broadcaster"]
        channels = _gauge("channels", "channels with a local subscriber", labels)
        subscriptions = _gauge("subscriptions", "(socket, channel) subscriptions", labels)
        inbox = _gauge("inbox", "messages from other nodes waiting for delivery", labels)
        counters = {f: _counter(n, h, labels) for f, n, h in _BROADCASTER_COUNTERS}
        connected = _gauge("backend_connected", "1 if the backend is connected now", labels)
        topics = _gauge("backend_topics", "topics the backend is subscribed to", labels)
        backend = {f: _counter(n, h, labels) for f, n, h in _BACKEND_COUNTERS}
        for name, broadcaster in self._broadcasters.items():
            stats = broadcaster.statistics()
            channels.add_metric([name], stats.channels)
            subscriptions.add_metric([name], stats.subscriptions)
            inbox.add_metric([name], stats.inbox)
            for field, family in counters.items():
                family.add_metric([name], getattr(stats, field))
            own = stats.backend
            if own is None:  # the backend does not report: export nothing rather than guess
                continue
            connected.add_metric([name], 1 if own.connected else 0)
            topics.add_metric([name], own.topics)
            for field, family in backend.items():
                family.add_metric([name], getattr(own, field))
        yield from (channels, subscriptions, inbox, *counters.values())
        yield from (connected, topics, *backend.values())


def _add(table: dict[str, T], kind: str, name: str, item: T) -> None:
    if not isinstance(name, str) or not name:
        raise TypeError(f"name must be a non-empty string, not {name!r}")
    if name in table and table[name] is not item:
        raise ValueError(f"a {kind} named {name!r} is already exported; give this one a name")
    table[name] = item


def _gauge(name: str, documentation: str, labels: list[str]) -> GaugeMetricFamily:
    return GaugeMetricFamily(f"wsmgr_{name}", documentation, labels=labels)


def _counter(name: str, documentation: str, labels: list[str]) -> CounterMetricFamily:
    return CounterMetricFamily(f"wsmgr_{name}", documentation, labels=labels)
