"""WebSocketPool: the synchronous core on its own, then the pool against real servers.

Backends are trio-websocket servers on 127.0.0.1 started in the test. A small TCP proxy sits
in front of one when a test needs the network to misbehave: ``freeze()`` black-holes the
flows open so far (a middlebox dropping idle connections without a word), ``gate`` holds
new flows (a slow connect).
"""

from __future__ import annotations

import math
import random
import shutil
import ssl
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
import trio.testing
import trio_websocket
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import require
from trio_wsmgr import _border
from trio_wsmgr._backoff import Backoff
from trio_wsmgr._exceptions import ConnectionClosed, PoolClosed, PoolTimeout
from trio_wsmgr.client._health import HealthState, HealthTracker, PoolCore, Slot, SlotState, Waiter
from trio_wsmgr.client._pool import WebSocketPool

# -- helpers ----------------------------------------------------------------------------------


class Backend:
    """An echo server; replies "close" with a server-side close (1001) and records clients."""

    def __init__(self, ssl_context: ssl.SSLContext | None = None) -> None:
        self.port = 0
        self.ssl_context = ssl_context
        self.requests: list[trio_websocket.WebSocketRequest] = []
        self.close_codes: list[int] = []
        self._scope = trio.CancelScope()

    async def run(
        self, *, task_status: trio.TaskStatus[Backend] = trio.TASK_STATUS_IGNORED
    ) -> None:
        with trio.CancelScope() as self._scope:
            async with trio.open_nursery() as nursery:
                serve = partial(
                    trio_websocket.serve_websocket,
                    self._handle,
                    "127.0.0.1",
                    self.port,
                    self.ssl_context,
                    connect_timeout=math.inf,  # no server-side timer fires during a test
                    disconnect_timeout=math.inf,
                )
                server = await nursery.start(serve)
                self.port = server.port
                task_status.started(self)

    def kill(self) -> None:
        """Stop listening and drop every connection without a close frame."""
        self._scope.cancel()

    @property
    def url(self) -> str:
        scheme = "ws" if self.ssl_context is None else "wss"
        return f"{scheme}://127.0.0.1:{self.port}/rpc"

    async def _handle(self, request: trio_websocket.WebSocketRequest) -> None:
        self.requests.append(request)
        offered = request.proposed_subprotocols
        ws = await request.accept(subprotocol=offered[0] if offered else None)
        try:
            while True:
                message = await ws.get_message()
                if message == "close":
                    await ws.aclose(1001)
                    return
                await ws.send_message(message)
        except trio_websocket.ConnectionClosed as exc:
            self.close_codes.append(exc.reason.code if exc.reason else -1)


@attrs.define
class Flow:
    frozen: bool = False


class Proxy:
    """A TCP proxy to ``upstream``: ``freeze()`` black-holes open flows, ``gate`` holds new ones."""

    def __init__(self, upstream: Backend) -> None:
        self.upstream = upstream
        self.port = 0
        self.flows: list[Flow] = []
        self.gate = trio.Event()
        self.gate.set()

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/rpc"

    def freeze(self) -> None:
        for flow in self.flows:
            flow.frozen = True

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started()
        await trio.serve_listeners(self._handle, listeners)

    async def _handle(self, client: trio.SocketStream) -> None:
        await self.gate.wait()
        upstream = await trio.open_tcp_stream("127.0.0.1", self.upstream.port)
        flow = Flow()
        self.flows.append(flow)
        async with client, upstream, trio.open_nursery() as nursery:
            nursery.start_soon(self._pump, client, upstream, flow, nursery.cancel_scope)
            nursery.start_soon(self._pump, upstream, client, flow, nursery.cancel_scope)

    @staticmethod
    async def _pump(
        source: trio.SocketStream, sink: trio.SocketStream, flow: Flow, scope: trio.CancelScope
    ) -> None:
        try:
            while data := await source.receive_some():
                if not flow.frozen:
                    await sink.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        scope.cancel()


@pytest.fixture
async def backend(nursery: trio.Nursery) -> Backend:
    started: Backend = await nursery.start(Backend().run)
    return started


@pytest.fixture
async def proxy(nursery: trio.Nursery, backend: Backend) -> Proxy:
    proxy = Proxy(backend)
    await nursery.start(proxy.run)
    return proxy


def make_pool(url: str, **options: Any) -> WebSocketPool:
    """A pool with timeouts short enough for tests (real clock) unless overridden."""
    settings: dict[str, Any] = {
        "max_connections": 3,
        "min_connections": 1,
        "acquire_timeout": 5.0,
        "connect_timeout": 5.0,
        "ping_timeout": 1.0,
        "close_timeout": 0.5,
        "health_check_interval": math.inf,
        "rng": random.Random(7),
    }
    settings.update(options)
    return WebSocketPool(url, **settings)


async def eventually(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    """Wait (real clock, bounded) for I/O elsewhere to make ``predicate`` true."""
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.002)


def consistent(pool: WebSocketPool) -> None:
    pool._core.check_invariants()
    assert pool.get_active_count() + pool.get_idle_count() <= pool.max_connections


# -- the synchronous core, no event loop ------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def make_core(
    clock: FakeClock, *, max_connections: int = 2, min_connections: int = 0, **kw: Any
) -> PoolCore:
    tracker = HealthTracker(
        kw.pop("failure_threshold", 3), Backoff(initial=1.0, maximum=8.0), random.Random(1)
    )
    core = PoolCore(
        max_connections=max_connections,
        min_connections=min_connections,
        idle_timeout=kw.pop("idle_timeout", 60.0),
        check_interval=kw.pop("check_interval", math.inf),
        health=tracker,
        clock=clock,
        alive=kw.pop("alive", lambda owner: True),
    )
    core.start()
    return core


def connect_all(core: PoolCore) -> list[Slot]:
    """Play the shell: every planned connect succeeds."""
    slots, core.to_start = core.to_start, []
    for slot in slots:
        core.connected(slot, object())  # type: ignore[arg-type]
    return slots


def granted(waiter: Waiter) -> Slot | None:
    try:
        return waiter.receive.receive_nowait()
    except trio.WouldBlock:
        return None


def test_core_serves_the_last_used_idle_connection_first() -> None:
    clock = FakeClock()
    core = make_core(clock, min_connections=2)
    first, second = connect_all(core)
    assert core.idle == [first, second]
    got = core.checkout("a")
    assert got is second
    clock.now = 1.0
    core.checkin(second, reusable=True)
    assert core.checkout("b") is second
    core.check_invariants()


def test_core_queues_waiters_and_serves_them_in_fifo_order() -> None:
    core = make_core(FakeClock(), max_connections=1)
    waiter = core.checkout("first")
    assert isinstance(waiter, Waiter)
    (slot,) = connect_all(core)
    assert granted(waiter) is slot
    later = [core.checkout(name) for name in ("second", "third")]
    assert all(isinstance(w, Waiter) for w in later)
    assert core.to_start == []  # at the cap: nobody connects
    core.checkin(slot, reusable=True)
    assert granted(later[0]) is slot  # type: ignore[arg-type]
    assert slot.owner == "second"
    assert granted(later[1]) is None  # type: ignore[arg-type]
    core.check_invariants()


def test_core_cancelled_waiter_passes_its_granted_connection_to_the_next() -> None:
    core = make_core(FakeClock(), max_connections=1, min_connections=1)
    (slot,) = connect_all(core)
    assert core.checkout("holder") is slot
    first, second = core.checkout("w1"), core.checkout("w2")
    assert isinstance(first, Waiter)
    assert isinstance(second, Waiter)
    core.checkin(slot, reusable=True)  # handed to w1, who is cancelled before it resumes
    core.cancel_wait(first)
    assert granted(second) is slot
    assert slot.owner == "w2"
    core.check_invariants()


def test_core_discards_an_unreusable_connection_and_replaces_it_for_a_waiter() -> None:
    core = make_core(FakeClock(), max_connections=1, min_connections=1)
    (slot,) = connect_all(core)
    core.checkout("holder")
    waiter = core.checkout("waiter")
    core.checkin(slot, reusable=False)
    assert core.to_close == [slot]
    assert slot.state is SlotState.CLOSING
    assert core.to_start == []  # the closing connection still holds the only token
    core.ended(slot, None)
    (fresh,) = connect_all(core)
    assert granted(waiter) is fresh  # type: ignore[arg-type]
    assert core.statistics().discarded == 1
    core.check_invariants()


def test_core_backs_off_after_failed_connects_and_probes_one_at_a_time() -> None:
    clock = FakeClock()
    core = make_core(clock, max_connections=4, failure_threshold=2)
    waiters = [core.checkout(n) for n in range(3)]
    attempts, core.to_start = core.to_start, []
    assert len(attempts) == 3
    for slot in attempts:  # three parallel failures are one failure
        core.ended(slot, ConnectionRefusedError("refused"))
    health = core.health
    assert health.consecutive_failures == 1
    assert health.state is HealthState.DEGRADED
    assert core.to_start == []  # backing off
    assert core.needs_wake
    assert 0.5 <= health.next_attempt_at <= 1.0
    clock.now = health.next_attempt_at
    core.tick()
    (probe,) = core.to_start  # half open: one attempt
    core.to_start = []
    core.ended(probe, ConnectionRefusedError("refused"))
    assert health.state is HealthState.DOWN
    assert not health.status(active=0, idle=0, waiting=3).healthy
    clock.now = health.next_attempt_at
    core.tick()
    connect_all(core)
    assert health.state is HealthState.UP
    assert health.last_connect_at == clock.now
    assert len(core.to_start) == 2  # the circuit is closed: the other waiters get connects
    connect_all(core)
    assert [granted(w) is not None for w in waiters] == [True, True, True]  # type: ignore[arg-type]


def test_core_reaps_idle_connections_down_to_min_connections() -> None:
    clock = FakeClock()
    core = make_core(clock, max_connections=3, min_connections=1, idle_timeout=10.0)
    first = core.checkout("a")
    second = core.checkout("b")
    third = core.checkout("c")
    slots = connect_all(core)
    assert {granted(w) for w in (first, second, third)} == set(slots)  # type: ignore[arg-type]
    for slot in slots:
        core.checkin(slot, reusable=True)
        clock.now += 1
    core.tick()
    assert core.wake_at == 10.0  # the oldest idle connection expires first
    clock.now = 11.5
    core.tick()
    assert [s.state for s in slots] == [SlotState.CLOSING, SlotState.CLOSING, SlotState.IDLE]
    assert core.statistics().reaped == 2
    assert core.wake_at == math.inf  # at the minimum: nothing more to reap


def test_core_reclaims_a_connection_whose_owner_task_exited() -> None:
    finished: set[str] = set()
    core = make_core(FakeClock(), max_connections=1, alive=lambda owner: owner not in finished)
    waiter = core.checkout("leaky")
    (slot,) = connect_all(core)
    assert granted(waiter) is slot  # type: ignore[arg-type]
    finished.add("leaky")
    core.checkout("next")
    assert slot.state is SlotState.CLOSING
    assert core.statistics().reclaimed == 1


def test_core_close_fails_waiters_and_closes_every_connection() -> None:
    core = make_core(FakeClock(), max_connections=1, min_connections=1)
    (slot,) = connect_all(core)
    core.checkout("holder")
    waiter = core.checkout("waiter")
    core.close()
    assert isinstance(waiter, Waiter)
    assert waiter.receive.receive_nowait() is None
    assert core.to_close == [slot]
    with pytest.raises(PoolClosed):
        core.checkout("late")
    core.checkin(slot, reusable=True)  # releasing after close is harmless


_OPS = st.lists(st.tuples(st.integers(0, 7), st.integers(0, 50)), max_size=120)


@settings(max_examples=150, deadline=None)
@given(ops=_OPS, max_connections=st.integers(1, 4), min_connections=st.integers(0, 4))
def test_core_counts_stay_exact_under_any_interleaving(
    ops: list[tuple[int, int]], max_connections: int, min_connections: int
) -> None:
    """Random checkouts, releases, connects, failures, losses, cancellations and ticks."""
    clock = FakeClock()
    core = make_core(
        clock,
        max_connections=max_connections,
        min_connections=min(min_connections, max_connections),
        idle_timeout=5.0,
        check_interval=3.0,
    )
    held: list[Slot] = []
    waiting: list[Waiter] = []
    connecting: list[Slot] = []
    for op, arg in ops:
        connecting += core.to_start
        core.to_start = []
        closing = [s for s in core.to_close if s.state is SlotState.CLOSING]
        core.to_close = []
        for waiter in list(waiting):
            if (slot := granted(waiter)) is not None:
                waiting.remove(waiter)
                held.append(slot)
        if op == 0:
            got = core.checkout(arg)
            (waiting if isinstance(got, Waiter) else held).append(got)  # type: ignore[arg-type]
        elif op == 1 and held:
            core.checkin(held.pop(arg % len(held)), reusable=arg % 3 != 0)
        elif op == 2 and connecting:
            core.connected(connecting.pop(arg % len(connecting)), object())  # type: ignore[arg-type]
        elif op == 3 and connecting:
            core.ended(connecting.pop(arg % len(connecting)), OSError("refused"))
        elif op == 4 and waiting:
            waiter = waiting.pop(arg % len(waiting))
            core.cancel_wait(waiter)
            assert granted(waiter) is None
        elif op == 5:
            live = [s for s in core.slots if s.state in (SlotState.IDLE, SlotState.ACTIVE)]
            if live:  # the peer drops a connection, maybe one a task holds
                core.ended(live[arg % len(live)], None)
        elif op == 6:
            clock.now += arg / 10
            core.tick()
        for slot in closing:
            core.ended(slot, None)
        core.check_invariants()
        counts = core.counts
        assert counts[SlotState.ACTIVE] + counts[SlotState.IDLE] <= max_connections
        assert all(s.state is SlotState.ACTIVE for s in held)
    for slot in held:
        core.checkin(slot, reusable=True)
    core.close()
    core.check_invariants()


@given(failures=st.integers(1, 10_000), seed=st.integers(0, 2**32))
def test_backoff_delay_stays_within_its_jittered_ceiling(failures: int, seed: int) -> None:
    backoff = Backoff(initial=0.1, maximum=30.0, jitter=0.5)
    ceiling = backoff.ceiling(failures)
    assert ceiling == min(30.0, 0.1 * 2 ** min(failures - 1, 64))
    assert ceiling / 2 <= backoff.delay(failures, random.Random(seed)) <= ceiling


def test_backoff_jitter_spreads_a_fleet_of_pools() -> None:
    backoff = Backoff(initial=1.0, maximum=1.0, jitter=1.0)
    delays = {round(backoff.delay(1, random.Random(seed)), 3) for seed in range(50)}
    assert len(delays) > 40


@pytest.mark.parametrize(
    ("options", "error", "name"),
    [
        ({"max_connections": 0}, ValueError, "max_connections"),
        ({"max_connections": 2.5}, TypeError, "max_connections"),
        ({"min_connections": 4, "max_connections": 3}, ValueError, "min_connections"),
        ({"acquire_timeout": 0}, ValueError, "acquire_timeout"),
        ({"idle_timeout": math.nan}, ValueError, "idle_timeout"),
        ({"ping_timeout": "1"}, TypeError, "ping_timeout"),
        ({"validate_on_checkout": 1}, TypeError, "validate_on_checkout"),
        ({"backoff": 3}, TypeError, "backoff"),
        ({"subprotocols": "rpc"}, TypeError, "subprotocols"),
        ({"extra_headers": [("x", 1)]}, TypeError, "extra_headers"),
        ({"failure_threshold": 0}, ValueError, "failure_threshold"),
    ],
)
def test_pool_options_are_validated_at_construction(
    options: dict[str, Any], error: type[Exception], name: str
) -> None:
    with pytest.raises(error, match=name):
        WebSocketPool("ws://127.0.0.1:1/", **options)


def test_pool_rejects_a_non_websocket_url_and_ssl_context_for_ws() -> None:
    with pytest.raises(ValueError, match="url"):
        WebSocketPool("http://127.0.0.1/")
    with pytest.raises(ValueError, match="ssl_context"):
        WebSocketPool("ws://127.0.0.1/", ssl_context=ssl.create_default_context())
    with pytest.raises(TypeError, match="positional"):
        WebSocketPool("ws://127.0.0.1/", 3)  # type: ignore[misc]
    with pytest.raises(ValueError, match="maximum"):
        Backoff(initial=2.0, maximum=1.0)


def test_health_status_is_frozen_with_a_readable_repr() -> None:
    tracker = HealthTracker(3, Backoff(), random.Random(0))
    tracker.record_rtt(0.002)
    status = tracker.status(active=1, idle=2, waiting=0)
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        status.healthy = False  # type: ignore[misc]
    assert repr(status) == (
        "<HealthStatus up healthy failures=0 active=1 idle=2 waiting=0 rtt=2.00ms p99=2.00ms>"
    )


# -- the pool against real servers ------------------------------------------------------------


async def test_pool_warms_up_min_connections_and_echoes(backend: Backend) -> None:
    async with make_pool(backend.url, min_connections=2) as pool:
        assert (pool.get_active_count(), pool.get_idle_count()) == (0, 2)
        async with pool.acquire() as conn:
            assert pool.get_active_count() == 1
            await conn.send_message("hello")
            assert await conn.get_message() == "hello"
        assert (pool.get_active_count(), pool.get_idle_count()) == (0, 2)
        status = pool.get_health_status()
        assert status.healthy
        assert status.state is HealthState.UP
        assert status.ping_rtt is not None  # validate_on_checkout pinged
        assert status.ping_rtt_p99 is not None
        consistent(pool)


async def test_pool_reuses_idle_connections_without_new_connects(backend: Backend) -> None:
    async with make_pool(backend.url, min_connections=1) as pool:
        for _ in range(50):
            conn = await pool.acquire()
            await conn.send_message("x")
            assert await conn.get_message() == "x"
            await pool.release(conn)
        assert pool.statistics().opened == 1
        assert len(backend.requests) == 1


async def test_pool_sends_headers_and_subprotocols_of_the_options(backend: Backend) -> None:
    pool = make_pool(
        backend.url, extra_headers={"Authorization": "Bearer t0k"}, subprotocols=["rpc.v2", "rpc"]
    )
    async with pool, pool.acquire() as conn:
        assert conn.subprotocol == "rpc.v2"
    assert (b"authorization", b"Bearer t0k") in backend.requests[0].headers


async def test_pool_connects_over_tls_to_a_wss_backend(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    require(shutil.which("openssl"), "the openssl command, to make a throwaway certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    await trio.run_process(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        capture_stdout=True, capture_stderr=True,
    )  # fmt: skip
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert, key)
    backend: Backend = await nursery.start(Backend(server_context).run)
    client_context = ssl.create_default_context(cafile=str(cert))
    async with make_pool(backend.url, ssl_context=client_context) as pool:
        async with pool.acquire() as conn:
            await conn.send_message("over tls")
            assert await conn.get_message() == "over tls"
        assert pool.get_health_status().state is HealthState.UP
    untrusted = make_pool(backend.url, acquire_timeout=0.3, min_connections=0)
    async with untrusted:  # the system's default context does not trust our certificate
        with pytest.raises(PoolTimeout) as info:
            await untrusted.acquire()
        error = info.value.__cause__
        assert isinstance(error, ConnectionError)
        assert "certificate verify failed" in str(error)


async def test_pool_acquire_times_out_when_all_connections_are_checked_out(
    backend: Backend,
) -> None:
    # Real sockets, so the real clock: the timeout is short and its length is
    # not asserted (the core's timer arithmetic is tested without a loop above).
    async with make_pool(backend.url, max_connections=1, acquire_timeout=0.1) as pool:
        held = await pool.acquire()
        with pytest.raises(PoolTimeout, match=r"acquire_timeout=0\.1") as info:
            await pool.acquire()
        assert isinstance(info.value, trio.TooSlowError)
        assert info.value.__cause__ is None  # the backend is fine, the pool is just full
        assert pool.statistics().waiting == 0
        await pool.release(held)
        consistent(pool)


async def test_pool_reaps_idle_connections_down_to_min_connections(backend: Backend) -> None:
    # When reaping is due is the core's business (test_core_reaps_idle_... above);
    # here: that the pool really closes the reaped connections, cleanly, over TCP.
    pool = make_pool(backend.url, max_connections=3, min_connections=1, idle_timeout=0.05)
    async with pool:
        conns = [await pool.acquire() for _ in range(3)]
        for conn in conns:
            await pool.release(conn)
        await eventually(lambda: pool.statistics().reaped == 2)
        await eventually(lambda: pool.statistics().closing == 0)
        assert (pool.get_idle_count(), pool.get_active_count()) == (1, 0)
        await eventually(lambda: len(backend.close_codes) == 2)
        assert backend.close_codes == [1000, 1000]
        consistent(pool)


async def test_pool_times_out_chained_from_the_connect_error_when_backend_is_down() -> None:
    with trio.socket.socket() as sock:  # a port with nobody listening
        await sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    pool = make_pool(f"ws://127.0.0.1:{port}/", acquire_timeout=0.3, min_connections=0)
    async with pool:
        start = trio.current_time()
        with pytest.raises(PoolTimeout) as info:
            await pool.acquire()
        assert trio.current_time() - start < 1.0
        assert isinstance(info.value.__cause__, OSError)
        status = pool.get_health_status()
        assert status.consecutive_failures >= 1
        assert isinstance(status.last_error, OSError)
        assert status.next_attempt_at is not None


async def test_pool_discards_the_connection_when_the_block_raises_a_connection_error(
    backend: Backend,
) -> None:
    async with make_pool(backend.url, max_connections=1) as pool:

        async def ask_to_be_closed() -> None:
            async with pool.acquire() as conn:
                seen.append(conn)
                await conn.send_message("close")  # the server closes it
                await conn.get_message()

        seen: list[trio_websocket.WebSocketConnection] = []
        with pytest.raises(ConnectionClosed) as closed:  # trio_wsmgr's, as on a managed socket
            await ask_to_be_closed()
        assert closed.value.code == 1001
        assert isinstance(closed.value.__cause__, trio_websocket.ConnectionClosed)
        (conn,) = seen
        assert pool.statistics().discarded + pool.statistics().lost == 1
        async with pool.acquire() as fresh:
            assert fresh is not conn
            await fresh.send_message("still here")
            assert await fresh.get_message() == "still here"
        consistent(pool)


async def test_pool_keeps_the_connection_when_the_block_raises_an_application_error(
    backend: Backend,
) -> None:
    async with make_pool(backend.url) as pool:
        with pytest.raises(KeyError):
            async with pool.acquire() as conn:
                raise KeyError("not a connection problem")
        async with pool.acquire() as again:
            assert again is conn


async def test_pool_release_discards_a_connection_with_unread_replies(backend: Backend) -> None:
    async with make_pool(backend.url, max_connections=1, message_queue_size=4) as pool:
        conn = await pool.acquire()
        await conn.send_message("late reply")
        await eventually(lambda: _border.pending_messages(conn) == 1)
        await pool.release(conn)
        assert pool.statistics().discarded == 1
        async with pool.acquire() as fresh:
            assert fresh is not conn


async def test_pool_drops_an_idle_connection_the_server_closed(backend: Backend) -> None:
    async with make_pool(backend.url, min_connections=1, max_connections=2) as pool:
        conn = await pool.acquire()
        await conn.send_message("close")
        with pytest.raises(ConnectionClosed):
            await conn.get_message()
        await pool.release(conn)  # closed: discarded, never handed out again
        await eventually(lambda: pool.get_idle_count() == 1)  # min_connections restored
        async with pool.acquire() as fresh:
            assert fresh is not conn
            assert fresh.closed is None
        assert pool.get_health_status().last_error is None  # 1001 is a clean close


async def test_pool_validation_replaces_idle_connections_the_network_dropped(
    proxy: Proxy,
) -> None:
    pool = make_pool(proxy.url, min_connections=2, ping_timeout=0.2, close_timeout=0.2)
    async with pool:
        dead = {id(await pool.acquire()), id(await pool.acquire())}
        for conn in list(pool._core.by_conn):
            await pool.release(conn)  # type: ignore[arg-type]
        proxy.freeze()  # both idle connections now go nowhere, and nobody says so
        async with pool.acquire() as conn:
            assert id(conn) not in dead
            await conn.send_message("through a new flow")
            assert await conn.get_message() == "through a new flow"
        stats = pool.statistics()
        assert stats.failed_checks == 2
        assert stats.discarded == 2
        assert isinstance(pool.get_health_status().last_error, TimeoutError)
        consistent(pool)


async def test_pool_health_pings_find_a_silently_dropped_idle_connection(proxy: Proxy) -> None:
    pool = make_pool(proxy.url, min_connections=1, health_check_interval=0.05, ping_timeout=0.1)
    async with pool:
        await eventually(lambda: pool.get_health_status().ping_rtt is not None)
        proxy.freeze()
        await eventually(lambda: pool.statistics().failed_checks >= 1)
        await eventually(lambda: pool.get_idle_count() == 1)  # replaced through a new flow
        assert pool.statistics().opened >= 2


async def test_pool_health_goes_down_with_the_backend_and_recovers_by_itself(
    nursery: trio.Nursery, backend: Backend
) -> None:
    pool = make_pool(
        backend.url,
        min_connections=2,
        failure_threshold=2,
        backoff=Backoff(initial=0.02, maximum=0.1),
        acquire_timeout=0.3,
    )
    async with pool:
        assert pool.get_idle_count() == 2
        backend.kill()
        await eventually(lambda: not pool.get_health_status().healthy)
        status = pool.get_health_status()
        assert status.state is HealthState.DOWN
        assert status.idle == 0
        assert isinstance(status.last_error, OSError)
        assert status.last_error_at is not None
        with pytest.raises(PoolTimeout) as info:
            await pool.acquire()
        assert isinstance(info.value.__cause__, OSError)

        await nursery.start(backend.run)  # the same port again
        await eventually(lambda: pool.get_health_status().healthy)
        await eventually(lambda: pool.get_idle_count() == 2)
        status = pool.get_health_status()
        assert status.state is HealthState.UP
        assert status.consecutive_failures == 0
        assert status.last_connect_at is not None
        assert status.last_error_at is not None
        assert status.last_connect_at > status.last_error_at
        async with pool.acquire() as conn:
            await conn.send_message("back")
            assert await conn.get_message() == "back"
        consistent(pool)


async def test_pool_exit_closes_connections_with_1000_and_fails_waiters(
    backend: Backend,
) -> None:
    errors: list[BaseException] = []

    async def wait_for_one(pool: WebSocketPool) -> None:
        try:
            await pool.acquire()
        except PoolClosed as exc:
            errors.append(exc)

    pool = make_pool(backend.url, max_connections=2, min_connections=2)
    async with trio.open_nursery() as outer, pool:
        await pool.acquire()
        await pool.acquire()
        outer.start_soon(wait_for_one, pool)
        await trio.testing.wait_all_tasks_blocked()
        assert pool.statistics().waiting == 1
    assert len(errors) == 1
    assert isinstance(errors[0], trio.ClosedResourceError)
    await eventually(lambda: len(backend.close_codes) == 2)
    assert backend.close_codes == [1000, 1000]
    assert pool.statistics().active + pool.statistics().idle == 0
    with pytest.raises(PoolClosed):
        await pool.acquire()


async def test_pool_exit_lets_the_body_error_out_unwrapped(backend: Backend) -> None:
    async def body() -> None:
        async with make_pool(backend.url):
            try:
                raise ValueError("while handling this")
            except ValueError:
                raise KeyError("mine")  # noqa: B904 - its context is what we check

    with pytest.raises(KeyError) as info:
        await body()
    assert isinstance(info.value.__context__, ValueError)  # not the nursery's ExceptionGroup
    assert not info.value.__suppress_context__
    await eventually(lambda: backend.close_codes == [1000])


async def test_pool_release_refuses_foreign_and_twice_released_connections(
    backend: Backend,
) -> None:
    async with make_pool(backend.url) as pool:
        conn = await pool.acquire()
        await pool.release(conn)
        with pytest.raises(ValueError, match="released twice"):
            await pool.release(conn)
        async with trio_websocket.open_websocket_url(backend.url) as foreign:
            with pytest.raises(ValueError, match="not a connection of this pool"):
                await pool.release(foreign)


async def test_pool_must_be_entered_before_acquiring_and_only_once(backend: Backend) -> None:
    pool = make_pool(backend.url)
    with pytest.raises(RuntimeError, match="async with pool"):
        await pool.acquire()
    async with pool:
        pass
    with pytest.raises(RuntimeError, match="only once"):
        async with pool:
            pass


async def test_pool_reclaims_a_connection_left_behind_by_an_exited_task(
    nursery: trio.Nursery, backend: Backend
) -> None:
    async with make_pool(backend.url, max_connections=1) as pool:

        async def forgetful() -> None:
            await pool.acquire()

        async with trio.open_nursery() as inner:
            inner.start_soon(forgetful)
        assert pool.get_active_count() == 1
        async with pool.acquire():
            pass
        assert pool.statistics().reclaimed == 1
        consistent(pool)


# -- cancellation at every await point ---------------------------------------------------------


async def test_cancelled_before_acquire_takes_nothing(backend: Backend) -> None:
    async with make_pool(backend.url) as pool:
        with trio.CancelScope() as scope:
            scope.cancel()
            await pool.acquire()
        assert (pool.get_active_count(), pool.get_idle_count()) == (0, 1)
        assert pool.statistics().waiting == 0
        consistent(pool)


async def test_cancelled_while_waiting_leaves_the_queue(backend: Backend) -> None:
    async with make_pool(backend.url, max_connections=1) as pool:
        held = await pool.acquire()
        with trio.move_on_after(0.05):
            await pool.acquire()
        assert pool.statistics().waiting == 0
        await pool.release(held)
        assert pool.get_idle_count() == 1
        consistent(pool)


@pytest.mark.parametrize("cancel_first", [True, False])
async def test_cancelled_waiter_handed_a_connection_gives_it_back(
    nursery: trio.Nursery, backend: Backend, cancel_first: bool
) -> None:
    got: list[object] = []
    async with make_pool(backend.url, max_connections=1, validate_on_checkout=False) as pool:

        async def waiter(*, task_status: trio.TaskStatus[trio.CancelScope]) -> None:
            with trio.CancelScope() as scope:
                task_status.started(scope)
                got.append(await pool.acquire())

        held = await pool.acquire()
        scope = await nursery.start(waiter)
        await trio.testing.wait_all_tasks_blocked()
        if cancel_first:  # the grant lands in the channel of a waiter already cancelled
            scope.cancel()
            pool.release_nowait(held)
        else:  # the grant is delivered, then the waiter is cancelled before it runs
            pool.release_nowait(held)
            scope.cancel()
        await trio.testing.wait_all_tasks_blocked()
        if got:  # the acquire had completed: trio lets it win over the late cancel
            assert not cancel_first
            assert pool.get_active_count() == 1
            await pool.release(got[0])  # type: ignore[arg-type]
        assert (pool.get_active_count(), pool.get_idle_count()) == (0, 1)
        consistent(pool)


async def test_cancelled_during_validation_discards_the_connection(proxy: Proxy) -> None:
    async with make_pool(proxy.url, max_connections=1, ping_timeout=30.0) as pool:
        proxy.freeze()  # the ping never gets its pong
        with trio.move_on_after(0.1) as scope:
            await pool.acquire()
        assert scope.cancelled_caught
        assert pool.get_active_count() == 0
        assert pool.statistics().discarded == 1
        await eventually(lambda: pool.get_idle_count() == 1)  # replaced, min_connections
        consistent(pool)


async def test_cancelled_while_its_connect_is_in_flight_keeps_the_connection(
    proxy: Proxy,
) -> None:
    proxy.gate = trio.Event()  # new flows wait: a slow connect
    async with make_pool(proxy.url, min_connections=0, max_connections=1) as pool:
        with trio.move_on_after(0.05):
            await pool.acquire()
        assert pool.statistics().connecting == 1
        proxy.gate.set()
        await eventually(lambda: pool.get_idle_count() == 1)
        assert pool.get_active_count() == 0
        consistent(pool)


async def test_cancelled_release_still_releases(backend: Backend) -> None:
    async with make_pool(backend.url) as pool:
        conn = await pool.acquire()
        with trio.CancelScope() as scope:
            scope.cancel()
            await pool.release(conn)
        assert (pool.get_active_count(), pool.get_idle_count()) == (0, 1)


async def test_cancelled_inside_the_acquire_block_discards_the_connection(
    backend: Backend,
) -> None:
    async with make_pool(backend.url) as pool:
        with trio.move_on_after(0.05):
            async with pool.acquire() as conn:
                await conn.send_message("a request whose reply nobody will read")
                await trio.sleep_forever()
        assert pool.get_active_count() == 0
        assert pool.statistics().discarded == 1
        consistent(pool)


async def test_cancelled_during_warm_up_leaves_nothing_running(proxy: Proxy) -> None:
    proxy.gate = trio.Event()
    pool = make_pool(proxy.url, min_connections=2)
    with trio.move_on_after(0.05) as scope:
        async with pool:
            pytest.fail("the warm-up cannot finish")
    assert scope.cancelled_caught
    stats = pool.statistics()
    assert stats.connecting + stats.idle + stats.closing == 0
    consistent(pool)


# -- many tasks ---------------------------------------------------------------------------------


async def test_hundreds_of_acquirers_are_served_in_fifo_order_within_the_cap(
    backend: Backend,
) -> None:
    served: list[int] = []
    most_active = 0
    pool = make_pool(backend.url, max_connections=3, min_connections=3, validate_on_checkout=False)
    async with pool, trio.open_nursery() as nursery:
        held = [await pool.acquire() for _ in range(3)]

        async def client(number: int) -> None:
            nonlocal most_active
            async with pool.acquire() as conn:
                served.append(number)
                most_active = max(most_active, pool.get_active_count())
                consistent(pool)
                await conn.send_message(str(number))
                assert await conn.get_message() == str(number)

        for number in range(300):
            nursery.start_soon(client, number)
            await trio.testing.wait_all_tasks_blocked()  # it is queued before the next starts
        assert pool.statistics().waiting == 300
        for conn in held:
            await pool.release(conn)
    assert served == list(range(300))
    assert most_active == 3
    assert pool.statistics().opened == 3


async def test_hundreds_of_acquirers_with_cancellations_never_exceed_the_cap(
    backend: Backend,
) -> None:
    rng = random.Random(3)
    done = 0
    pool = make_pool(backend.url, max_connections=4, min_connections=1, acquire_timeout=2.0)
    async with pool, trio.open_nursery() as nursery:

        async def client(patience: float, misbehave: bool) -> None:
            nonlocal done
            with trio.move_on_after(patience):
                async with pool.acquire() as conn:
                    consistent(pool)
                    await conn.send_message("close" if misbehave else "ping")
                    try:
                        await conn.get_message()
                    except ConnectionClosed:
                        return
                    done += 1

        for _ in range(300):
            nursery.start_soon(client, rng.choice([0.0005, 0.005, 0.05, 1.0]), rng.random() < 0.1)
            if rng.random() < 0.3:
                await trio.lowlevel.checkpoint()
                consistent(pool)
    assert done > 0
    await eventually(lambda: pool.statistics().closing == 0)
    stats = pool.statistics()
    assert (stats.active, stats.waiting, stats.connecting) == (0, 0, 0)
    assert stats.idle <= 4


async def test_pool_negotiates_compression_with_a_trio_wsmgr_server() -> None:
    from trio_wsmgr import Compression, ManagedSocket, WebSocketManager

    manager = WebSocketManager(heartbeat_interval=math.inf)
    seen: list[ManagedSocket] = []

    async def echo(sock: ManagedSocket) -> None:
        seen.append(sock)
        async for message in sock:
            await sock.send(message)

    async with trio.open_nursery() as nursery:
        server = await nursery.start(manager.serve, echo, "127.0.0.1", 0)
        url = f"ws://127.0.0.1:{server.port}/rpc"
        for compression, expected in ((Compression(), True), (None, False)):
            pool = WebSocketPool(url, min_connections=0, compression=compression)
            async with pool, pool.acquire() as conn:
                text = "squeeze " * 400
                await conn.send_message(text)
                assert await conn.get_message() == text
                assert seen[-1].statistics().compressed is expected
        await manager.close()
