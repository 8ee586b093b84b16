"""The parent side of the warm pool: ranks and their process group that outlive tests.

A pool is started lazily, once per class and world size, and dispatches each
test by name to every rank. A pool whose ranks died, hung, or may be out of
step (some failed a test while others passed) is closed; the next test builds
a new one.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import multiprocessing.connection
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from typing import Any

from distributed_testing import (
    _config,
    _janitor,
    _launcher,
    _lease_file,
    _nodes,
    _outcomes,
    _output,
    _pool_worker,
    _run,
)
from distributed_testing._errors import RankFailure
from distributed_testing._launcher import RankHandle, WaitOutcome
from distributed_testing._outcomes import RankView, signal_name
from distributed_testing._protocol import ERROR, FAILED, PoolReady, RankContext

__unittest = True

__all__ = ["RankPool", "close_pools", "drive", "get_pool"]

logger = logging.getLogger(__name__)

STOP_GRACE = 2.0  # seconds a stopped pool's ranks may take to leave on their own


class RankPool:
    """``world_size`` ranks of one test class, each in the class's process group."""

    def __init__(self, cls: type, world_size: int, method: str, timeout: float, env: dict[str, str]) -> None:
        self.cls = cls
        self.world_size = world_size
        self.healthy = True
        self.skip_reason: str | None = None
        env = dict(env)  # under pytest-xdist: wait for the pool's ranks and devices, held until it closes
        self.handles: list[RankHandle] = []
        self.offsets: list[int] = []  # where each rank's output of the last test begins
        self.dir = ""
        self.lease = _lease_file.hold_for_pool(cls, world_size, env, _make_room)
        try:
            self.dir = tempfile.mkdtemp(prefix=f"dt-pool-{cls.__name__}-")
            _janitor.register(self.dir)
            file_name = os.path.join(self.dir, "rendezvous")
            proc = _launcher.process_class(method, cls.__module__)
            nodes = _config.load().nodes  # simulated nodes: each rank's LOCAL_RANK, GROUP_RANK, ...
            for rank in range(world_size):
                ctx = RankContext(
                    output_path=os.path.join(self.dir, f"rank{rank}.out"),
                    stacks_path=os.path.join(self.dir, f"rank{rank}.stacks"),
                    test_id=f"{cls.__qualname__} pool",
                    stack_signal=int(_launcher.STACK_SIGNAL),
                    extra_env=_nodes.rank_env(env, rank, world_size, nodes),
                )
                args = (cls, rank, world_size, file_name)
                self.handles.append(_launcher.start_rank(proc, _pool_worker.pool_main, args, rank, ctx))
            self._await_ready(timeout)
        except BaseException:  # a rank that could not start, or Ctrl-C: nothing of the pool may stay
            self.close()
            raise

    @property
    def pids(self) -> list[int]:
        return [h.process.pid for h in self.handles]

    def _await_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        pending = list(self.handles)
        while pending and time.monotonic() < deadline:
            waitables = [h.conn for h in pending if not h.conn.closed] + [h.process.sentinel for h in pending]
            multiprocessing.connection.wait(waitables, timeout=deadline - time.monotonic())
            for handle in pending:
                handle.receive()
            pending = [h for h in pending if not _ready_of(h) and h.exitcode is None]
            if pending and any(_ready_of(h) is None and h.exitcode is not None for h in self.handles):
                # A rank died starting: the others wait for it in the rendezvous; a moment, then stop.
                deadline = min(deadline, time.monotonic() + _launcher.FAILURE_GRACE)
        problems = self._start_problems(timeout)
        if problems:
            raise RankFailure(
                f"the {self.cls.__name__} pool of {self.world_size} ranks did not start:\n" + "\n".join(problems)
            )
        reasons = {r.skip_reason for r in map(_ready_of, self.handles) if r is not None and r.skip_reason}
        self.skip_reason = "; ".join(sorted(reasons)) if reasons else None

    def _start_problems(self, timeout: float) -> list[str]:
        problems = []
        for handle in self.handles:
            ready = _ready_of(handle)
            if ready is not None and ready.error is not None:
                error = ready.error
                problems.append(f"rank {handle.rank}: {error.exc_type}: {error.message}\n{error.traceback}")
            elif ready is None and handle.exitcode is not None:
                code = handle.exitcode
                how = f"died with {signal_name(code)}" if code < 0 else f"exited with code {code}"
                output = _launcher.read_output(handle.output_path, rank=handle.rank).rstrip()
                problems.append(f"rank {handle.rank} {how} while starting" + (f":\n{output}" if output else ""))
            elif ready is None:
                died = any(_ready_of(h) is None and h.exitcode is not None for h in self.handles)
                why = "stopped while it waited for its peers" if died else f"was not ready after {timeout:g} s"
                problems.append(f"rank {handle.rank} {why}")
        return problems

    def run(
        self,
        test_name: str,
        timeout: float,
        is_failure: Callable[[RankHandle], bool],
        example: Any = None,
        live: bool = False,
    ) -> tuple[list[RankView], WaitOutcome]:
        """Run one test on every rank; return each rank's view and how waiting ended.

        ``live``: the ranks' lines go to stderr as they write them.
        """
        self.offsets = [_launcher.file_size(h.output_path) for h in self.handles]
        for handle in self.handles:
            handle.result, handle.finished_at, handle.stacks = None, None, ""
            handle.conn.send((test_name, example))
        with _output.LiveOutput(self.handles, self.offsets) if live else contextlib.nullcontext():
            waited = _launcher.wait_for_ranks(self.handles, timeout, is_failure, until_exit=False)
            if waited.timed_out:
                _launcher.collect_stacks(self.handles)
            self.healthy = self._fit_for_more()
            if not self.healthy:
                _launcher.stop_ranks([h for h in self.handles if h.result is None])
        return self.views(), waited

    def views(self, kept: dict[int, str] | None = None) -> list[RankView]:
        """Each rank's view of the last test, its output from where the test began (naming the
        kept logs)."""
        kept = kept or {}
        return [
            _launcher.view(h, with_output=True, offset=o, full_log=kept.get(h.rank))
            for h, o in zip(self.handles, self.offsets, strict=True)
        ]

    def keep_logs(self, log_dir: str, test_id: str) -> dict[int, str]:
        """Keep the last test's part of each rank's log in ``log_dir``."""
        return _output.keep_logs(self.handles, log_dir, test_id, self.offsets)

    def _fit_for_more(self) -> bool:
        """Whether every rank answered, is alive, and the ranks stayed in step.

        In step: their default groups ran the same number of collectives, so no
        rank is left with a half-done one. Where the backend does not count,
        ranks that failed while others passed are taken as out of step.
        """
        results = [h.result for h in self.handles]
        if any(r is None for r in results) or any(h.exitcode is not None for h in self.handles):
            return False
        done = [r for r in results if r is not None]
        if not all(r.healthy for r in done):
            return False
        sequences = {r.sequence for r in done}
        if -1 not in sequences:
            return len(sequences) == 1
        return len({r.status == FAILED for r in done}) == 1

    def close(self) -> None:
        """Ask the ranks to leave, stop those that do not, and remove the pool's files."""
        for handle in self.handles:
            if handle.exitcode is None:
                try:
                    handle.conn.send(_pool_worker.STOP)
                except (OSError, ValueError):
                    pass
        deadline = time.monotonic() + STOP_GRACE
        for handle in self.handles:
            handle.process.join(max(0.0, deadline - time.monotonic()))
        _launcher.stop_ranks(self.handles)
        _launcher.close(self.handles)
        self.handles = []
        _lease_file.release(self.lease)
        if self.dir:
            shutil.rmtree(self.dir, ignore_errors=True)
            _janitor.unregister(self.dir)



def _make_room() -> None:
    """Close this process's warm pools (idle: a test is starting another), so that a new pool
    need not wait for them under the rank budget."""
    for key in [k for k, pool in _pools.items() if isinstance(pool, RankPool)]:
        discard(*key, why="another pool needs its ranks under the rank budget")


def _ready_of(handle: RankHandle) -> PoolReady | None:
    return next((m for m in handle.messages if isinstance(m, PoolReady)), None)


_pools: dict[tuple[type, int], RankPool | RankFailure] = {}


def get_pool(cls: type, world_size: int, start: Callable[[], RankPool]) -> RankPool:
    """The live pool of ``cls`` at ``world_size``; started by ``start`` if there is none.

    A pool that failed to start is remembered: later tests fail at once with
    the same report instead of paying for another failed start.
    """
    key = (cls, world_size)
    pool = _pools.get(key)
    if isinstance(pool, RankFailure):
        raise pool
    if pool is not None and pool.healthy:
        return pool
    if pool is not None:
        pool.close()
    logger.debug("starting a pool of %d ranks for %s", world_size, cls.__qualname__)
    try:
        pool = start()
    except RankFailure as failure:
        _pools[key] = failure
        raise
    _pools[key] = pool
    return pool


def discard(cls: type, world_size: int, why: str = "the class is done") -> None:
    """Close and forget the pool of ``cls`` at ``world_size``."""
    pool = _pools.pop((cls, world_size), None)
    if isinstance(pool, RankPool):
        logger.debug("closing the pool of %s at world size %d: %s", cls.__qualname__, world_size, why)
        pool.close()


def close_pools(cls: type | None = None) -> None:
    """Close the pools of ``cls`` (all pools when None)."""
    for key in [k for k in _pools if cls is None or k[0] is cls]:
        discard(*key, why="the class is done" if cls is not None else "the run is over")


atexit.register(close_pools)


def drive(case: Any, size: int, start: Callable[[], RankPool], timeout: float, example: Any = None) -> None:
    """The pool driver: run ``case``'s test (or one hypothesis example) on the class's warm
    pool of ``size`` ranks, discard the pool if it is no longer fit, raise the folded outcome."""
    __tracebackhide__ = True
    cls = type(case)
    pool = get_pool(cls, size, start)

    def is_failure(handle: RankHandle) -> bool:
        return _outcomes.rank_failed(_launcher.view(handle, with_output=False), None, False)

    settings = _config.load()

    def folded(views: list[RankView]) -> _outcomes.Outcome:
        return _outcomes.fold(
            views,
            test_id=case.id(),
            world_size=size,
            timed_out=waited.timed_out,
            timeout=timeout,
            first_failure=waited.first_failure,
            rerun=_run.rerun_command(case, settings, size),
        )

    try:
        live = settings.show_output == _config.SHOW_LIVE
        views, waited = pool.run(case._testMethodName, timeout, is_failure, example, live)
        outcome = folded(views)
        if settings.log_dir is not None and _config.keeps_logs(settings, outcome.kind in (FAILED, ERROR)):
            views = pool.views(pool.keep_logs(settings.log_dir, case.id()))  # before a discard removes them
            outcome = folded(views)
    except BaseException:
        discard(cls, size, "the parent was interrupted while the pool ran a test")
        raise
    if not pool.healthy:
        discard(cls, size, f"{case.id()} left it unfit (a rank died, hung or the ranks are out of step)")
    if settings.show_output == _config.SHOW_AFTER:
        _output.print_outputs(views)
    _run.raise_outcome(case, outcome, views)
