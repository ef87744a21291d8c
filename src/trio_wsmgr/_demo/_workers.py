"""``trio-wsmgr demo --workers N``: N demo processes on one port, tied by Redis.

A Trio process uses one core. The supervisor (this module, in the parent
process) starts N worker processes, ``trio-wsmgr demo --reuse-port --worker``,
each a complete demo serving the same port with SO_REUSEPORT (the kernel
spreads new connections over them) and sharing rooms and rosters through the
Redis backend, exactly as demos on different machines would. The parent serves
nothing itself.

* The port: the parent binds it (SO_REUSEPORT, not listening) before starting
  the workers, so ``--port 0`` gives one free port for all of them and nobody
  else can take it while a worker restarts.
* Start: each worker prints its URL once it listens; the parent prints its own
  one line when all are up. A worker that exits before that stops everything
  (its error is on the shared stderr) and the parent exits with its status.
* Supervision: a worker that exits while serving is restarted after a pause
  (``RESTART_DELAY``), with its output prefixed ``[worker i]``.
* Stop: SIGINT or SIGTERM to the parent sends SIGTERM to every worker, which
  closes its sockets with 1001 and exits 0; the parent exits 0 when all did. A
  second signal kills the workers. Workers run in their own session, so a
  terminal's Ctrl-C reaches only the parent, and each worker stops by itself
  when its stdin (a pipe from the parent) closes, so a killed parent leaves no
  orphans.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Sequence
from typing import Final

import attrs
import trio

from .._util import unwrap_single_group
from ..server._listen import reuse_port_option

#: seconds between a worker's unexpected exit and its restart
RESTART_DELAY: Final = 1.0
#: seconds the workers get to close their sockets after SIGTERM before being killed
STOP_TIMEOUT: Final = 10.0
_READY = "in a browser"


@attrs.define(eq=False)
class Worker:
    index: int
    argv: list[str]
    process: trio.Process | None = None
    url: str | None = None
    restarts: int = 0
    #: set when the parent stops: no more restarts
    stopping: bool = False


class WorkerFailed(Exception):
    """A worker exited before it was serving (its status is ``.status``)."""

    def __init__(self, index: int, status: int) -> None:
        super().__init__(f"worker {index} exited with status {status} before serving")
        self.status = status


def reserve_port(host: str, port: int) -> socket.socket:
    """A bound (not listening) SO_REUSEPORT socket holding ``host:port`` for the workers.

    Called before the event loop starts (it resolves ``host`` synchronously).
    """
    option = reuse_port_option()
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, option, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(address)  # never listens: no connection ever waits on it
    except BaseException:
        sock.close()
        raise
    return sock


def worker_argv(host: str, port: int, redis_url: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "trio_wsmgr",
        "demo",
        "--host",
        host,
        "--port",
        str(port),
        "--redis",
        redis_url,
        "--reuse-port",
        "--worker",
    ]


async def _run_worker(
    worker: Worker, *, ready: trio.Event | None, task_status: trio.TaskStatus[None]
) -> None:
    """Run one worker process once: start it, pass its output on, return when it exits."""
    process = await trio.lowlevel.open_process(
        worker.argv,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        start_new_session=True,  # a terminal's Ctrl-C goes to the parent only
    )
    worker.process = process
    task_status.started()
    assert process.stdout is not None
    pending = b""
    try:
        while True:
            chunk = await process.stdout.receive_some(4096)
            if not chunk:
                break
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for raw in lines:
                line = raw.decode("utf-8", "replace")
                if worker.url is None and _READY in line:
                    worker.url = line.split("open ", 1)[1].split(" ", 1)[0]
                    if ready is not None:
                        ready.set()
                else:
                    print(f"[worker {worker.index}] {line}", flush=True)
        await process.wait()
    finally:
        with trio.CancelScope(shield=True):
            await process.stdout.aclose()
            if process.stdin is not None:
                await process.stdin.aclose()


async def _keep_running(worker: Worker, *, task_status: trio.TaskStatus[None]) -> None:
    """Start ``worker``, and start it again whenever it exits, until cancelled."""
    ready = trio.Event()
    async with trio.open_nursery() as nursery:
        done = trio.Event()

        async def once() -> None:
            try:
                await _run_worker(worker, ready=ready, task_status=trio.TASK_STATUS_IGNORED)
            finally:
                done.set()

        nursery.start_soon(once)
        with trio.CancelScope() as waiting:
            nursery.start_soon(_cancel_on, done, waiting)
            await ready.wait()
        if not ready.is_set():
            status = worker.process.returncode if worker.process is not None else None
            raise WorkerFailed(worker.index, 1 if status is None else status)
        task_status.started()
    while not worker.stopping:
        status = worker.process.returncode if worker.process is not None else None
        print(f"[worker {worker.index}] exited with status {status}; restarting", flush=True)
        await trio.sleep(RESTART_DELAY)
        if worker.stopping:
            return
        worker.restarts += 1
        await _run_worker(worker, ready=None, task_status=trio.TASK_STATUS_IGNORED)


async def _cancel_on(event: trio.Event, scope: trio.CancelScope) -> None:
    await event.wait()
    scope.cancel()


async def supervise(host: str, reserved: socket.socket, redis_url: str, workers: int) -> int:
    """Run ``workers`` demo processes on ``reserved``'s port until SIGINT/SIGTERM.

    Returns the exit status: 0 when every worker stopped cleanly.
    """
    port = int(reserved.getsockname()[1])
    argv = worker_argv(host, port, redis_url)
    crew = [Worker(index, argv) for index in range(1, workers + 1)]
    with reserved, trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            running = trio.CancelScope()

            async def run_all(task_status: trio.TaskStatus[None]) -> None:
                with running:
                    async with trio.open_nursery() as crew_nursery:
                        for worker in crew:
                            await crew_nursery.start(_keep_running, worker)
                        task_status.started()

            try:
                with unwrap_single_group():
                    await nursery.start(run_all)
            except WorkerFailed as exc:
                await _stop(crew, signals)
                return exc.status
            print(
                f"trio-wsmgr demo: open {crew[0].url} in a browser (Ctrl-C to stop); "
                f"{workers} worker processes on port {port}",
                flush=True,
            )
            async for _ in signals:
                break
            print("stopping: every worker closes its sockets with 1001 (going away)", flush=True)
            status = await _stop(crew, signals)
            running.cancel()  # the workers have exited (their output was read to the end)
    return status


async def _stop(crew: Sequence[Worker], signals: AsyncIterator[int]) -> int:
    """SIGTERM every worker and wait; a second signal (or STOP_TIMEOUT) kills them."""
    for worker in crew:
        worker.stopping = True
    processes = [w.process for w in crew if w.process is not None]
    for process in processes:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
    async with trio.open_nursery() as nursery:

        async def kill_on_second_signal() -> None:
            async for _ in signals:
                break
            for process in processes:
                if process.returncode is None:
                    process.kill()

        nursery.start_soon(kill_on_second_signal)
        with trio.move_on_after(STOP_TIMEOUT):
            for process in processes:
                await process.wait()
        for process in processes:
            if process.returncode is None:
                process.kill()
                await process.wait()
        nursery.cancel_scope.cancel()
    return 0 if all(p.returncode == 0 for p in processes) else 1
