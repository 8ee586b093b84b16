"""torchrun mode: each launched process is one rank and runs every test in place.

``prepare`` (from setUp) gives the test its key in the launch store
(``_launch_store``); ``drive`` runs it through ``_rank.run_in_rank`` under the
watchdog (``_launch_watch``), exchanges every rank's result through the store
and folds them the same way on every rank; the lowest rank still running prints
the full report.
"""

from __future__ import annotations

import dataclasses
import time
import unittest
from typing import Any

from distributed_testing import _config, _outcomes, _rank, _run
from distributed_testing._errors import DistributedTestingError
from distributed_testing._launch_store import (
    EXCHANGE_MARGIN,
    STOP_FAILED,
    STUCK_GRACE,
    Deadline,
    LaunchedRun,
    PeerStopped,
    Stop,
    current,
)
from distributed_testing._launch_watch import Watch, end_default_group
from distributed_testing._protocol import EXITED, FAILED, PASSED, SKIPPED, STOPPED, RankResult
from distributed_testing._run import TestRun
from distributed_testing._world_sizes import class_world_size

__unittest = True

__all__ = ["Deadline", "LaunchedRun", "PeerStopped", "Stop", "current", "drive", "end_default_group", "prepare"]


def prepare(run: TestRun, case: Any) -> None:
    """From ``setUp``: this process is one rank; the test will run here, in place."""
    launched = current()
    assert launched is not None
    if launched.broken:
        launched.not_run.append(case.id())
        raise unittest.SkipTest(f"not run: {launched.broken}")
    wanted = class_world_size(case)
    if wanted != launched.launch.world_size:
        raise unittest.SkipTest(f"needs world size {wanted}, launched with {launched.launch.world_size}")
    run.world_size = wanted
    run.settings = run.settings or _config.load()
    run.timeout = _config.resolve_timeout(type(case).timeout, run.settings)
    run.launch_key = launched.next_test(case.id())
    case.rank = launched.launch.rank
    case.file_name = run.file_name = launched.rendezvous_file(run.launch_key)


def drive(run: TestRun, case: Any, fn: Any) -> None:
    """Run the test here as this process's rank, through unittest's machinery as every
    rank does; fold every rank's result; rank 0 prints the report, the others point to it."""
    __tracebackhide__ = True
    launched = current()
    assert launched is not None and run.launch_key is not None
    key = run.launch_key
    here = type(case)(case._testMethodName)
    here.rank, here.file_name, here._dt_launch_key = case.rank, case.file_name, key
    watch = Watch(launched, key, case.id(), run.timeout)
    watch.start()
    result = None
    _run.running_test = case.id()  # named if the launcher stops this rank
    try:
        set_up, tear_down = watch.hook("setUp", here._rank_setup), watch.hook("tearDown", here._rank_teardown)
        result = _rank.run_in_rank(here, here.rank, set_up, tear_down, on_stop=watch.on_stop)
    except KeyboardInterrupt:
        _interrupted(launched, run)
        raise
    finally:
        watch.end()
        # Unblocks peers still inside a collective with this rank.
        end_default_group(abort=result is None or result.status != PASSED or watch.stop_seen is not None)
    until = max(watch.deadline + STUCK_GRACE, time.monotonic()) + EXCHANGE_MARGIN
    try:
        results = launched.exchange(key, result, until)
        stop, stacks = launched.stop_of(key), launched.stacks_of(key)
        launched.note_gone()
        _run.running_test = ""
    except KeyboardInterrupt:
        _interrupted(launched, run)
        raise
    except Exception as exc:  # the store is gone: no later test can run either
        launched.broken = launched.broken or f"the launch's store failed: {exc}"
        raise DistributedTestingError(f"{case.id()}: could not exchange results with the other ranks: {exc}") from None
    missing = [r for r, res in results.items() if res is None and r not in stacks]
    for rank in missing:
        launched.declare_gone(rank, f"rank {rank} posted no result for {case.id()}")
    views, cancelled = _views(results, stacks, stop)
    timed_out = bool(stacks) or bool(missing)
    outcome = _outcomes.fold(
        views,
        test_id=case.id(),
        world_size=len(views),
        timed_out=timed_out,
        timeout=run.timeout,
        first_failure=stop.rank if stop is not None and stop.kind == STOP_FAILED else None,
    )
    if timed_out and cancelled and stop is not None:
        why = f"stopped when {stop}"
        ranks = tuple(
            dataclasses.replace(r, outcome=STOPPED, summary=why) if r.rank in cancelled else r for r in outcome.ranks
        )
        outcome = dataclasses.replace(outcome, ranks=ranks)
    if launched.gone and timed_out:
        note = f"{launched.broken[:1].upper()}{launched.broken[1:]}: the remaining tests are not run."
        outcome = dataclasses.replace(outcome, note=note)
    if case.rank != launched.printer:
        outcome = dataclasses.replace(outcome, printed_by=launched.printer)
    _run.raise_outcome(case, outcome)


def _interrupted(launched: LaunchedRun, run: TestRun) -> None:
    """Ctrl-C, or the launcher's SIGTERM: unittest skips cleanups then, so remove the
    test's directory here; at exit, wait for no peer (the launcher stops them all)."""
    from distributed_testing import _oneshot

    launched.interrupted = True
    _oneshot.cleanup(run)


def _views(
    results: dict[int, RankResult | None], stacks: dict[int, str], stop: Stop | None
) -> tuple[list[_outcomes.RankView], set[int]]:
    """Each rank's view for the fold, and the ranks stopped because a peer stopped first.

    A rank with stacks was still running at the deadline: hung. A rank whose only
    errors are a peer's going (PeerStopped, "connection closed by peer") after
    another rank stopped first was stopped by it: a skip if that rank skipped.
    """
    timed_out = bool(stacks) or any(r is None for r in results.values())
    first = results.get(stop.rank) if stop is not None else None
    cancelled = {
        rank
        for rank, res in results.items()
        if stop is not None and rank != stop.rank and rank not in stacks and res is not None and _only_peer_gone(res)
    }
    real_failure = any(
        res is not None and res.status in (FAILED, EXITED) for r, res in results.items() if r not in cancelled
    )
    views = []
    for rank, res in sorted(results.items()):
        if rank in stacks:
            views.append(_outcomes.RankView(rank, res.pid if res else None, None, None, stacks=stacks[rank]))
        elif res is None:
            views.append(_outcomes.RankView(rank, None, None, None, stopped="timeout"))
        elif rank in cancelled:
            if first is not None and first.status == SKIPPED and not real_failure and not timed_out:
                skip = RankResult(rank, res.pid, SKIPPED, reason=first.reason)
                views.append(_outcomes.RankView(rank, res.pid, skip, None))
            elif timed_out:  # relabelled "stopped" after the fold
                views.append(_outcomes.RankView(rank, res.pid, RankResult(rank, res.pid, PASSED), None))
            else:
                views.append(_outcomes.RankView(rank, res.pid, None, None, stopped="cancelled"))
        else:
            views.append(_outcomes.RankView(rank, res.pid, res, None))
    return views, cancelled


def _only_peer_gone(result: RankResult) -> bool:
    """Whether a rank failed only because a peer went: stopped by us, or its collectives cut off."""
    return (
        result.status == FAILED
        and bool(result.errors)
        and all(e.exc_type == PeerStopped.__name__ or _outcomes.says_peer_gone(e.message) for e in result.errors)
    )
