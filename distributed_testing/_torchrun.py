"""torchrun mode: each launched process is one rank and runs every test in place.

The ranks agree on each test's outcome through the launcher's store: each
posts its result, every rank folds all of them the same way, so a test that
failed anywhere fails everywhere, and every rank exits with the same code.
Rank 0 prints the full report; the others say where to find it.
"""

from __future__ import annotations

import atexit
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

from distributed_testing import _config, _outcomes, _rank
from distributed_testing._protocol import FAILED, PASSED, SKIPPED, RankResult

__unittest = True

__all__ = ["LaunchedRun", "current"]


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


def run_in_place(case: Any, fn: Any, key: str, timeout: float) -> _outcomes.Outcome:
    """Run the test body here as this process's rank; fold every rank's result."""
    run = current()
    assert run is not None
    faulthandler.dump_traceback_later(timeout, exit=True)  # a hung rank leaves; the others report it
    try:
        result = _run_body(case, fn)
    finally:
        faulthandler.cancel_dump_traceback_later()
        _destroy_groups()  # unblocks peers still inside a collective with this rank
    views = run.exchange(key, result, timeout)
    timed_out = any(v.stopped for v in views)
    return _outcomes.fold(views, test_id=case.id(), world_size=len(views), timed_out=timed_out, timeout=timeout)


def _run_body(case: Any, fn: Any) -> RankResult:
    rank, pid = case.rank, os.getpid()
    start = time.monotonic()
    _rank.seed_all()
    phase = "setUp"
    try:
        case._rank_setup()
        phase = ""
        fn()
        phase = "tearDown"
        case._rank_teardown()
    except unittest.SkipTest as exc:
        return RankResult(rank, pid, SKIPPED, reason=str(exc), duration=time.monotonic() - start)
    except BaseException as exc:
        info = _rank.format_error(exc, phase, None)
        return RankResult(rank, pid, FAILED, (info,), exit_code=1, duration=time.monotonic() - start)
    return RankResult(rank, pid, PASSED, duration=time.monotonic() - start)


def _destroy_groups() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        try:
            dist.destroy_process_group()
        except Exception:
            pass


def printed_once(outcome: _outcomes.Outcome, rank: int) -> str:
    """The report rank 0 prints, or a pointer to it on the other ranks."""
    if rank == 0 or outcome.kind == _outcomes.SKIP:
        return outcome.message
    first = outcome.message.splitlines()[0] if outcome.message else ""
    return f"{first} (the full report is printed by rank 0)"


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)

