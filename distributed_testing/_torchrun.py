"""torchrun mode: each launched process is one rank and runs every test in place.

The ranks agree on each test's outcome through the launcher's store: each
posts its result, every rank folds all of them the same way, so a test that
failed anywhere fails everywhere, and every rank exits with the same code.
Rank 0 prints the full report; the others say where to find it.
"""

from __future__ import annotations

import atexit
import dataclasses
import faulthandler
import hashlib
import os
import pickle
import shutil
import tempfile
import time
import unittest
from datetime import timedelta
from typing import Any

from distributed_testing import _config, _outcomes, _rank, _run
from distributed_testing._protocol import RankResult
from distributed_testing._run import TestRun
from distributed_testing._world_sizes import class_world_size

__unittest = True

__all__ = ["LaunchedRun", "current", "drive", "prepare"]


class LaunchedRun:
    """This process's place in a launched run: its store, its tests' rendezvous files."""

    def __init__(self, launch: _config.Launch) -> None:
        import torch.distributed as dist

        self.launch = launch
        self.sequence = 0  # every rank runs the same tests in the same order
        base = dist.TCPStore(  # type: ignore[attr-defined]
            launch.master_addr,
            launch.master_port,
            launch.world_size,
            is_master=launch.rank == 0 and not launch.agent_store,
            timeout=timedelta(seconds=300),
            wait_for_workers=False,
        )
        self.store = dist.PrefixStore(f"distributed_testing/{launch.run_id}/", base)  # type: ignore[attr-defined]
        self.directory = os.path.join(tempfile.gettempdir(), f"dt-launch-{_safe(launch.run_id)}")
        os.makedirs(self.directory, exist_ok=True)
        atexit.register(self._finish)

    def next_test(self, test_id: str) -> str:
        """A key for the next test, the same on every rank."""
        self.sequence += 1
        return f"{self.sequence}:{test_id}"

    def rendezvous_file(self, key: str) -> str:
        """A per-test file every rank on this machine agrees on (``self.file_name``)."""
        return os.path.join(self.directory, hashlib.sha1(key.encode()).hexdigest()[:16])

    def test_store(self, key: str) -> Any:
        """A store namespace private to one test, for its default process group."""
        import torch.distributed as dist

        return dist.PrefixStore(f"pg/{key}/", self.store)  # type: ignore[attr-defined]

    def exchange(self, key: str, result: RankResult, timeout: float) -> list[_outcomes.RankView]:
        """Post this rank's result and read everyone's; a rank that never posts counts as hung."""
        me = self.launch.rank
        self.store.set(f"result/{key}/{me}", pickle.dumps(result))  # type: ignore[arg-type]
        keys = [f"result/{key}/{rank}" for rank in range(self.launch.world_size)]
        deadline = time.monotonic() + timeout
        views = []
        for rank, name in enumerate(keys):
            if not self._wait(name, deadline):
                views.append(_outcomes.RankView(rank, None, None, None, stopped="timeout"))
                continue
            theirs = pickle.loads(self.store.get(name))
            views.append(_outcomes.RankView(rank, theirs.pid, theirs, None))
        return views

    def _wait(self, name: str, deadline: float) -> bool:
        remaining = max(deadline - time.monotonic(), 0.001)
        try:
            self.store.wait([name], timedelta(seconds=remaining))
        except Exception:  # the store's timeout error
            return False
        return True

    def _finish(self) -> None:
        """At exit: wait for every rank (their files are in use until then), rank 0 cleans up."""
        try:
            self.store.set(f"done/{self.launch.rank}", "1")
            self.store.wait([f"done/{r}" for r in range(self.launch.world_size)], timedelta(seconds=60))
        except Exception:
            pass
        if self.launch.local_rank == 0:
            shutil.rmtree(self.directory, ignore_errors=True)


_current: LaunchedRun | None = None


def current() -> LaunchedRun | None:
    """The launched run of this process (started on first use), or None outside torchrun mode."""
    global _current
    launch = _config.launch_info()
    if launch is None:
        return None
    if _current is None:
        _current = LaunchedRun(launch)
    return _current


def prepare(run: TestRun, case: Any) -> None:
    """From ``setUp``: this process is one rank; the test will run here, in place."""
    launched = current()
    assert launched is not None
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
    here = type(case)(case._testMethodName)
    here.rank, here.file_name, here._dt_launch_key = case.rank, case.file_name, run.launch_key
    faulthandler.dump_traceback_later(run.timeout, exit=True)  # a hung rank leaves; the others report it
    try:
        result = _rank.run_in_rank(here, here.rank, here._rank_setup, here._rank_teardown)
    finally:
        faulthandler.cancel_dump_traceback_later()
        _rank.destroy_default_group()  # unblocks peers still inside a collective with this rank
    views = launched.exchange(run.launch_key, result, run.timeout)
    outcome = _outcomes.fold(
        views,
        test_id=case.id(),
        world_size=len(views),
        timed_out=any(v.stopped for v in views),
        timeout=run.timeout,
    )
    if case.rank != 0:
        outcome = dataclasses.replace(outcome, printed_by=0)
    _run.raise_outcome(case, outcome)


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)

