"""Write coalescing: back-to-back broadcasts reach each socket in one write.

A broadcast's cost is almost all system calls: one ``write`` per socket per
message (see ``docs/performance.rst``). When broadcasts come faster than one
of them takes to write out, the wire is the bottleneck, and joining the frames
each socket has waiting into one ``write`` is the only way to do more.

The rule, decided once per fan-out (:meth:`Coalescer.gather`):

* A broadcast is written at once, as before, unless broadcasts are coming
  back to back: it starts right after the previous write-out (a fan-out
  written at once, or a flush) ended, within an eighth of that write-out's
  duration, or frames are already gathered. So a paced producer (a
  dashboard tick, a chat message now and then, even one that keeps the
  server busy most of the time) pays nothing: its frames go to the kernel
  before ``broadcast`` returns. Gathering one message per socket would only
  add work; it pays when the producer is waiting on the wire.
* Otherwise the frames are queued on each socket (they count in its send
  buffer, so limits and ``on_full`` apply as ever) and the socket is marked.
  One task per trio run, started on first use, writes every marked socket's
  frames in one ``write`` after letting the scheduler run once more, so a
  producer that is still going adds its next broadcast first.

A message waits at most two scheduler passes more than it would have; under
load a socket gets two or more messages per system call. Order on the wire
is kept: every other write to a marked socket goes behind its queue.
"""

from __future__ import annotations

import logging
import math
from typing import Protocol

import trio

__all__ = ["TASK_NAME", "Coalescer", "coalescer"]

logger = logging.getLogger("trio_wsmgr")
#: a fan-out starting within this fraction of the previous write-out's duration after
#: it ended came "right away": the producer is not paced, it waits on the wire
BACK_TO_BACK = 1 / 8
#: the name of the coalescer's task (one per trio run, a system task)
TASK_NAME = "trio_wsmgr write coalescer"


class Gathered(Protocol):
    """What the coalescer flushes (a :class:`~._transport.BufferedStream`)."""

    def write_gathered(self) -> None: ...


class Coalescer:
    """Gathers broadcast frames per socket and writes them in one go (see module docs)."""

    __slots__ = ("_cost", "_ended", "_marked", "_parked", "_started")

    def __init__(self) -> None:
        self._marked: list[Gathered] = []
        self._parked: trio.lowlevel.Task | None = None
        self._started = False
        self._ended = -math.inf  # trio.current_time() when the last write-out ended
        self._cost = 0.0  # and how long it took

    def gather(self, now: float) -> bool:
        """Whether a fan-out starting ``now`` should gather its frames instead of writing."""
        return bool(self._marked) or now - self._ended < self._cost * BACK_TO_BACK

    def wrote(self, started: float, ended: float) -> None:
        """A fan-out wrote its frames at once from ``started`` to ``ended``."""
        self._ended = ended
        self._cost = ended - started

    def mark(self, stream: Gathered) -> None:
        """``stream`` has gathered frames: write them soon."""
        self._marked.append(stream)
        parked = self._parked
        if parked is not None:
            self._parked = None
            trio.lowlevel.reschedule(parked)
        elif not self._started:
            try:
                trio.lowlevel.spawn_system_task(self._run, name=TASK_NAME)
            except RuntimeError:  # the run is shutting down: no task to wait for
                self._write_marked()
            else:
                self._started = True

    async def _run(self) -> None:
        while True:
            if not self._marked:
                self._parked = trio.lowlevel.current_task()
                await trio.lowlevel.wait_task_rescheduled(self._abort)
            # One more scheduler pass: a producer still going adds its next broadcast.
            await trio.lowlevel.cancel_shielded_checkpoint()
            self._write_marked()

    def _write_marked(self) -> None:
        marked, self._marked = self._marked, []
        started = trio.current_time()
        for stream in marked:
            try:
                stream.write_gathered()
            except Exception:  # a bug here must cost one connection, never the run
                logger.exception("writing gathered frames to %r failed", stream)
        self._ended = trio.current_time()
        self._cost = self._ended - started

    def _abort(self, _: object) -> trio.lowlevel.Abort:
        self._parked = None
        return trio.lowlevel.Abort.SUCCEEDED


_current: trio.lowlevel.RunVar[Coalescer] = trio.lowlevel.RunVar("trio_wsmgr.coalescer")


def coalescer() -> Coalescer:
    """This trio run's coalescer (made on first use)."""
    try:
        return _current.get()
    except LookupError:
        found = Coalescer()
        _current.set(found)
        return found
