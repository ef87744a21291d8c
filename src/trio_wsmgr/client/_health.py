"""The pool's synchronous model: its connections, its waiters, and its backend's health.

Everything here decides and nothing awaits, so it is testable without an event loop;
``_pool.py`` does the I/O it decides on. :class:`PoolCore` keeps every connection's state, the
idle stack and the FIFO of waiting acquirers, and plans connects, closes and pings;
:class:`HealthTracker` is its circuit breaker, and :class:`HealthStatus` the frozen snapshot
:meth:`WebSocketPool.get_health_status() <trio_wsmgr.WebSocketPool.get_health_status>` returns.

Health states::

    UP ──connect fails──▶ DEGRADED ──failure_threshold consecutive failures──▶ DOWN
     ▲                        │                                                 │
     └──────────── any connect succeeds (from either state) ◀───────────────────┘

While a connect has failed (DEGRADED or DOWN) the pool makes one attempt at a time ("half
open"), each after a :class:`~trio_wsmgr.Backoff` delay; the first success closes the circuit.
"""

from __future__ import annotations

import enum
import itertools
import math
import random
from collections import Counter, deque
from collections.abc import Callable

import attrs
import trio

from .._backoff import Backoff
from .._exceptions import PoolClosed
from ._connection import PooledConnection

Connection = PooledConnection


class HealthState(enum.Enum):
    """Where the pool's circuit breaker stands."""

    #: the last connect attempt succeeded (or none has failed yet)
    UP = "up"
    #: connects are failing, fewer than ``failure_threshold`` in a row; still healthy
    DEGRADED = "degraded"
    #: ``failure_threshold`` or more connects failed in a row; unhealthy
    DOWN = "down"


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.2f}ms"


@attrs.frozen(repr=False)
class HealthStatus:
    """A snapshot of the backend's health as the pool sees it.

    Times are on the Trio clock (:func:`trio.current_time`); ``None`` means "not yet".
    """

    #: ``state is not HealthState.DOWN``
    healthy: bool
    state: HealthState
    #: connect attempts that failed in a row (a burst of parallel failures counts once)
    consecutive_failures: int
    #: the last connect error, failed ping, or abnormal loss of an open connection
    last_error: BaseException | None = attrs.field(eq=False)
    last_error_at: float | None
    #: when a connect last succeeded
    last_connect_at: float | None
    #: when the next reconnect attempt may start, while backing off
    next_attempt_at: float | None
    #: the most recent ping round trip, in seconds
    ping_rtt: float | None
    #: the 99th percentile of the recent ping round trips, in seconds
    ping_rtt_p99: float | None
    #: connections checked out by tasks
    active: int
    #: open connections waiting in the pool
    idle: int
    #: tasks blocked in ``acquire()``
    waiting: int

    def __repr__(self) -> str:
        error = "" if self.last_error is None else f" last_error={self.last_error!r}"
        return (
            f"<HealthStatus {self.state.value} {'healthy' if self.healthy else 'UNHEALTHY'}"
            f" failures={self.consecutive_failures} active={self.active} idle={self.idle}"
            f" waiting={self.waiting} rtt={_ms(self.ping_rtt)} p99={_ms(self.ping_rtt_p99)}"
            f"{error}>"
        )


@attrs.define(eq=False)
class HealthTracker:
    """Connect outcomes, back-off gating and ping round trips; see the module docstring."""

    failure_threshold: int
    backoff: Backoff
    rng: random.Random = attrs.field(factory=random.Random)
    #: how many recent round trips the percentile is computed over
    window: int = 256
    consecutive_failures: int = 0
    last_error: BaseException | None = None
    last_error_at: float | None = None
    last_connect_at: float | None = None
    #: no connect may start before this (``-inf`` when not backing off)
    next_attempt_at: float = -math.inf
    _rtts: deque[float] = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self._rtts = deque(maxlen=self.window)

    @property
    def state(self) -> HealthState:
        if self.consecutive_failures == 0:
            return HealthState.UP
        if self.consecutive_failures < self.failure_threshold:
            return HealthState.DEGRADED
        return HealthState.DOWN

    def allowance(self, now: float, connecting: int) -> float:
        """How many new connects may start now: unlimited when UP, else one probe at a time."""
        if self.consecutive_failures == 0:
            return math.inf
        return 1 if connecting == 0 and now >= self.next_attempt_at else 0

    def connect_succeeded(self, now: float) -> None:
        self.consecutive_failures = 0
        self.next_attempt_at = -math.inf
        self.last_connect_at = now

    def connect_failed(self, error: BaseException, now: float, *, epoch: int) -> None:
        """Record a failed attempt that started when ``consecutive_failures`` was ``epoch``.

        Attempts that were already in flight when another one failed do not count again, so
        ten parallel connects refused by a dead backend are one failure, not ten.
        """
        self.record_error(error, now)
        if epoch != self.consecutive_failures:
            return
        self.consecutive_failures += 1
        self.next_attempt_at = now + self.backoff.delay(self.consecutive_failures, self.rng)

    def record_error(self, error: BaseException, now: float) -> None:
        """Remember ``error`` (a failed ping, an abnormal close) without changing the state."""
        self.last_error = error
        self.last_error_at = now

    def record_rtt(self, rtt: float) -> None:
        self._rtts.append(rtt)

    def percentile(self, fraction: float) -> float | None:
        if not self._rtts:
            return None
        ordered = sorted(self._rtts)
        return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]

    def status(self, *, active: int, idle: int, waiting: int) -> HealthStatus:
        state = self.state
        return HealthStatus(
            healthy=state is not HealthState.DOWN,
            state=state,
            consecutive_failures=self.consecutive_failures,
            last_error=self.last_error,
            last_error_at=self.last_error_at,
            last_connect_at=self.last_connect_at,
            next_attempt_at=None if self.consecutive_failures == 0 else self.next_attempt_at,
            ping_rtt=self._rtts[-1] if self._rtts else None,
            ping_rtt_p99=self.percentile(0.99),
            active=active,
            idle=idle,
            waiting=waiting,
        )


# -- the pool's connections and waiters ----------------------------------------------------


class SlotState(enum.Enum):
    CONNECTING = "connecting"
    IDLE = "idle"
    ACTIVE = "active"
    CLOSING = "closing"
    #: forgotten: its token is back, it is counted nowhere
    GONE = "gone"

    __hash__ = object.__hash__  # members are singletons; Enum's hash(name) is slow


@attrs.define(eq=False, repr=False)
class Slot:
    """One connection of the pool, from the connect attempt until its token is given back."""

    id: int
    #: ``health.consecutive_failures`` when the connect started (see HealthTracker)
    epoch: int
    state: SlotState = SlotState.CONNECTING
    conn: Connection | None = None
    #: when it last went idle (or connected)
    since: float = 0.0
    #: when the pool last pinged it
    checked_at: float = -math.inf
    #: the task it is checked out to (only while ACTIVE)
    owner: object = None
    #: the socket is gone but a task still holds it
    dead: bool = False
    #: a ping failed while a task held it: discard it on release
    suspect: bool = False
    scope: trio.CancelScope = attrs.field(factory=trio.CancelScope)
    close_requested: trio.Event = attrs.field(factory=trio.Event)
    #: the cancel scopes of pings in flight, cancelled when the connection ends
    pings: set[trio.CancelScope] = attrs.field(factory=set)

    def __repr__(self) -> str:
        return f"<slot {self.id} {self.state.value}{' dead' if self.dead else ''}>"


@attrs.define(eq=False)
class Waiter:
    """A task blocked in ``acquire()``; it is handed a slot, or ``None`` when the pool closes."""

    owner: object
    send: trio.MemorySendChannel[Slot | None]
    receive: trio.MemoryReceiveChannel[Slot | None]

    @classmethod
    def new(cls, owner: object) -> Waiter:
        send, receive = trio.open_memory_channel[Slot | None](1)
        return cls(owner, send, receive)


@attrs.frozen
class PoolStatistics:
    """A snapshot of the pool's counts and counters (``pool.statistics()``)."""

    max_connections: int
    min_connections: int
    active: int
    idle: int
    connecting: int
    closing: int
    waiting: int
    #: connects that succeeded / failed
    opened: int
    connect_failures: int
    #: open connections that ended on their own (closed by the peer, network gone)
    lost: int
    #: connections the pool closed because they were broken or in an unknown state
    discarded: int
    #: idle connections above ``min_connections`` closed after ``idle_timeout``
    reaped: int
    #: validation or health pings that failed
    failed_checks: int
    #: connections still checked out by a task that had exited (also counted as discarded)
    reclaimed: int


@attrs.define(eq=False)
class PoolCore:
    """The pool's state machine; synchronous, so it can be tested without an event loop."""

    max_connections: int
    min_connections: int
    idle_timeout: float
    check_interval: float
    health: HealthTracker
    clock: Callable[[], float]
    #: whether a slot's owner task is still running
    alive: Callable[[object], bool]
    limiter: trio.CapacityLimiter = attrs.field(init=False)
    counts: Counter[SlotState] = attrs.field(init=False, factory=Counter)
    slots: set[Slot] = attrs.field(init=False, factory=set)
    by_conn: dict[object, Slot] = attrs.field(init=False, factory=dict)
    #: oldest first; acquire pops from the end, so the last used goes out first
    idle: list[Slot] = attrs.field(init=False, factory=list)
    waiters: deque[Waiter] = attrs.field(init=False, factory=deque)
    started: bool = attrs.field(init=False, default=False)
    closed: bool = attrs.field(init=False, default=False)
    #: the I/O decided on: the shell drains these
    to_start: list[Slot] = attrs.field(init=False, factory=list)
    to_close: list[Slot] = attrs.field(init=False, factory=list)
    #: when the maintainer will next call tick(), and whether it must wake sooner
    wake_at: float = attrs.field(init=False, default=math.inf)
    needs_wake: bool = attrs.field(init=False, default=False)
    stats: Counter[str] = attrs.field(init=False, factory=Counter)
    _ids: itertools.count[int] = attrs.field(init=False, factory=lambda: itertools.count(1))

    def __attrs_post_init__(self) -> None:
        self.limiter = trio.CapacityLimiter(self.max_connections)

    # -- acquiring and releasing ---------------------------------------------------------------

    def start(self) -> None:
        self.started = True
        self._plan()

    def checkout(self, owner: object, *, front: bool = False) -> Slot | Waiter:
        """Hand out the last used idle connection, or queue ``owner`` as a waiter."""
        if self.closed:
            raise PoolClosed("the pool is closed")
        if self.idle:  # never with waiters: _give() serves waiters first
            slot = self.idle.pop()
            self._move(slot, SlotState.ACTIVE)
            slot.owner = owner
            return slot
        self._reclaim_leaked()
        waiter = Waiter.new(owner)
        if front:  # back after a failed validation: it keeps its turn
            self.waiters.appendleft(waiter)
        else:
            self.waiters.append(waiter)
        self._plan()
        return waiter

    def cancel_wait(self, waiter: Waiter) -> None:
        """``waiter`` gave up; if it was handed a connection meanwhile, pass that on."""
        try:
            self.waiters.remove(waiter)
        except ValueError:
            try:
                slot = waiter.receive.receive_nowait()
            except trio.WouldBlock:  # pragma: no cover - a removed waiter always holds a grant
                return
            if slot is not None:
                self.checkin(slot, reusable=True)

    def checkin(self, slot: Slot, *, reusable: bool) -> None:
        """A task gives ``slot`` back: reuse it if ``reusable``, else close it."""
        if slot.state is not SlotState.ACTIVE:
            if self.closed:
                return  # the pool closed it already
            raise ValueError("the connection is not checked out (released twice?)")
        slot.owner = None
        if reusable and not slot.dead and not slot.suspect and not self.closed:
            self._give(slot)  # wants no new connect: no need to plan
            return
        if slot.dead:
            self._forget(slot)
        else:
            self.stats["discarded"] += 1
            self._close(slot)
        self._plan()

    # -- what the connection tasks report -------------------------------------------------------

    def connected(self, slot: Slot, conn: Connection) -> None:
        now = self.clock()
        self.health.connect_succeeded(now)
        self.stats["opened"] += 1
        slot.conn, slot.since, slot.checked_at = conn, now, now
        self.by_conn[conn] = slot
        if slot.state is SlotState.CONNECTING:
            self._give(slot)
            self._plan()

    def ended(self, slot: Slot, error: BaseException | None) -> None:
        """The slot's task is over: the connect failed, or the connection is closed."""
        now = self.clock()
        state = slot.state
        if state is SlotState.CONNECTING and error is not None:
            self.stats["connect_failures"] += 1
            self.health.connect_failed(error, now, epoch=slot.epoch)
            self._wake(self.health.next_attempt_at)
        elif state in (SlotState.IDLE, SlotState.ACTIVE):
            self.stats["lost"] += 1
            if error is not None:
                self.health.record_error(error, now)
            if state is SlotState.IDLE:
                self.idle.remove(slot)
        if state is SlotState.ACTIVE:
            slot.dead = True  # forgotten when its owner releases it
        else:
            self._forget(slot)
        self._plan()

    def pinged(self, slot: Slot, error: BaseException | None, rtt: float) -> None:
        """A validation or health ping finished."""
        if slot.state not in (SlotState.IDLE, SlotState.ACTIVE):
            return  # going away anyway: the ping says nothing about the backend
        if error is None:
            self.health.record_rtt(rtt)
            return
        self.stats["failed_checks"] += 1
        self.health.record_error(error, self.clock())
        if slot.state is SlotState.IDLE:
            self.idle.remove(slot)
            self.stats["discarded"] += 1
            self._close(slot)
            self._plan()
        elif slot.state is SlotState.ACTIVE:
            slot.suspect = True

    # -- time ---------------------------------------------------------------------------------

    def tick(self) -> list[Slot]:
        """Reap, reclaim and reconnect what is due; return the idle slots to ping now."""
        now = self.clock()
        while (
            self.idle
            and self.counts[SlotState.IDLE] + self.counts[SlotState.ACTIVE] > self.min_connections
            and now - self.idle[0].since >= self.idle_timeout
        ):
            self.stats["reaped"] += 1
            self._close(self.idle.pop(0))
        self._reclaim_leaked()
        due = [s for s in self.idle if max(s.since, s.checked_at) + self.check_interval <= now]
        for slot in due:
            slot.checked_at = now
        self._plan()
        self.wake_at, self.needs_wake = self._next_deadline(now), False
        return due

    def _next_deadline(self, now: float) -> float:
        deadline = math.inf
        open_ = self.counts[SlotState.IDLE] + self.counts[SlotState.ACTIVE]
        if self.idle and open_ > self.min_connections:
            deadline = self.idle[0].since + self.idle_timeout
        for slot in self.idle:
            deadline = min(deadline, max(slot.since, slot.checked_at) + self.check_interval)
        if self.counts[SlotState.ACTIVE]:  # look for connections leaked by exited tasks
            deadline = min(deadline, now + self.check_interval)
        retry = self.health.next_attempt_at
        if retry > now and self._demand() > 0:  # past: an attempt in flight will report
            deadline = min(deadline, retry)
        return deadline

    def _wake(self, when: float) -> None:
        if when < self.wake_at:
            self.wake_at, self.needs_wake = when, True

    # -- closing ------------------------------------------------------------------------------

    def close(self) -> None:
        """Fail every waiter with PoolClosed and close every connection."""
        self.closed = True
        while self.waiters:
            self.waiters.popleft().send.send_nowait(None)
        self.idle.clear()
        for slot in list(self.slots):
            if not slot.dead:
                self._close(slot)

    # -- internals ------------------------------------------------------------------------------

    def _move(self, slot: Slot, state: SlotState) -> None:
        self.counts[slot.state] -= 1
        self.counts[state] += 1
        slot.state = state

    def _give(self, slot: Slot) -> None:
        """An open, healthy connection becomes free: to the first waiter, else to the stack."""
        slot.since = self.clock()
        if self.waiters:
            waiter = self.waiters.popleft()
            self._move(slot, SlotState.ACTIVE)
            slot.owner = waiter.owner
            waiter.send.send_nowait(slot)
            return
        self._move(slot, SlotState.IDLE)
        self.idle.append(slot)
        self._wake(slot.since + min(self.idle_timeout, self.check_interval))

    def _close(self, slot: Slot) -> None:
        if slot.state is not SlotState.CLOSING:
            self._move(slot, SlotState.CLOSING)
            self.to_close.append(slot)

    def _forget(self, slot: Slot) -> None:
        self.counts[slot.state] -= 1
        slot.state = SlotState.GONE
        self.slots.discard(slot)
        if slot.conn is not None:
            self.by_conn.pop(slot.conn, None)
        self.limiter.release_on_behalf_of(slot)

    def _reclaim_leaked(self) -> None:
        for slot in [s for s in self.slots if s.state is SlotState.ACTIVE]:
            if not self.alive(slot.owner):
                self.stats["reclaimed"] += 1
                self.checkin(slot, reusable=False)

    def _demand(self) -> int:
        """How many more connects are wanted: one per unserved waiter, and up to the minimum."""
        open_ = self.counts[SlotState.IDLE] + self.counts[SlotState.ACTIVE]
        connecting = self.counts[SlotState.CONNECTING]
        return max(len(self.waiters) - connecting, self.min_connections - open_ - connecting, 0)

    def _plan(self) -> None:
        """Decide the connects to start now, within the cap and the back-off."""
        if not self.started or self.closed:
            return
        demand = self._demand()
        if demand == 0:
            return
        now = self.clock()
        room = self.max_connections - self.limiter.borrowed_tokens
        allowed = self.health.allowance(now, self.counts[SlotState.CONNECTING])
        if allowed == 0 and self.counts[SlotState.CONNECTING] == 0:
            self._wake(self.health.next_attempt_at)
        for _ in range(int(min(demand, room, allowed))):
            slot = Slot(next(self._ids), self.health.consecutive_failures)
            self.limiter.acquire_on_behalf_of_nowait(slot)
            self.slots.add(slot)
            self.counts[SlotState.CONNECTING] += 1
            self.to_start.append(slot)

    def statistics(self) -> PoolStatistics:
        c, s = self.counts, self.stats
        return PoolStatistics(
            max_connections=self.max_connections,
            min_connections=self.min_connections,
            active=c[SlotState.ACTIVE],
            idle=c[SlotState.IDLE],
            connecting=c[SlotState.CONNECTING],
            closing=c[SlotState.CLOSING],
            waiting=len(self.waiters),
            opened=s["opened"],
            connect_failures=s["connect_failures"],
            lost=s["lost"],
            discarded=s["discarded"],
            reaped=s["reaped"],
            failed_checks=s["failed_checks"],
            reclaimed=s["reclaimed"],
        )

    def check_invariants(self) -> None:
        """Assert the bookkeeping is consistent (used by the tests)."""
        for state in SlotState:
            if state is SlotState.GONE:
                continue
            assert self.counts[state] == sum(s.state is state for s in self.slots), state
        assert self.limiter.borrowed_tokens == len(self.slots) <= self.max_connections
        assert len(self.idle) == self.counts[SlotState.IDLE]
        assert not (self.idle and self.waiters)
