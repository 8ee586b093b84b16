"""One test's run as the parent sees it: its state, made in one place, and the edge
where a folded outcome becomes what unittest (and pytest) expect.

The drivers (``_oneshot`` for one-shot ranks, hypothesis examples and the debug
rank; ``_torchrun``; ``_pool``) fill a :class:`TestRun` and end with
:func:`raise_outcome`. Nothing here imports the unittest shells.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
import unittest
from dataclasses import dataclass, field
from typing import Any, Literal

from distributed_testing import _config, _expect, _hardware
from distributed_testing._errors import RankAssertionError, RankFailure
from distributed_testing._outcomes import Outcome, RankView
from distributed_testing._parsers import ENV_NODES
from distributed_testing._protocol import ERROR, FAILED, PASSED, SKIPPED

__unittest = True

__all__ = ["Mode", "TestRun", "raise_outcome", "rerun_command", "running_test"]

# How a test's ranks run: one-shot processes; one-shot processes per hypothesis
# example; in place under torchrun; not at all (a guard said skip; a setting the
# test made is wrong: both raised when the test runs, so tearDown still runs).
Mode = Literal["ranks", "examples", "torchrun", "skip", "error"]

running_test = ""  # the id of the test whose ranks the parent is waiting for (named on Ctrl-C)
entry_command = ""  # how the run was started when not ``python FILE``: "python -m distributed_testing ..."


@dataclass
class TestRun:
    """Everything one test's run needs in the parent."""

    test_id: str
    directory: str  # private to the test: rendezvous file, rank logs and stacks
    file_name: str  # the rendezvous file (``self.file_name``)
    settings: _config.Settings | None = None  # read when the ranks start (after the test's setUp)
    mode: Mode = "ranks"
    prepared: bool = False  # _spawn_processes ran: the mode is decided, one-shot ranks started
    skip_reason: str = ""
    error: Exception | None = None  # mode "error": raised when the test runs
    world_size: int = 0
    timeout: float = _config.DEFAULT_TIMEOUT
    start_method: str = ""
    rank_env: dict[str, str] = field(default_factory=dict)  # exported to every rank
    debug_rank: int | None = None  # run in the parent process, so pdb works in it
    debug_view: RankView | None = None
    handles: list[Any] = field(default_factory=list)  # _launcher.RankHandle, one per started rank
    example: Any = None  # hypothesis: the example the ranks run now
    run_dir: str | None = None  # hypothesis: this example's files, inside ``directory``
    launch_key: str | None = None  # torchrun mode: this test's key, the same on every rank
    lease: Any = None  # _lease_file.Lease: its ranks and devices under pytest-xdist, until the ranks stop

    @property
    def files_dir(self) -> str:
        return self.run_dir or self.directory


def raise_outcome(case: unittest.TestCase, outcome: Outcome, views: list[RankView] | None = None) -> None:
    """Turn a folded outcome into what unittest expects: return, skip, fail or error.

    With the ranks' ``views``, their assertExpectedInline values are compared
    (and, with EXPECTTEST_ACCEPT=1, accepted once, here). The outcome is kept on
    the case and on the exception, for the JSON record and pytest's sections.
    """
    __tracebackhide__ = True
    disagreement = _expect.settle(views, case.id()) if views else ""
    if disagreement:
        kind = FAILED if outcome.kind in (PASSED, SKIPPED) else outcome.kind
        outcome = dataclasses.replace(outcome, kind=kind, note=disagreement)
    case._dt_outcome = outcome  # type: ignore[attr-defined]
    error: BaseException
    if outcome.kind == SKIPPED:
        error = unittest.SkipTest(_hardware.outcome_reason(outcome))  # a rank's lack of hardware stays known
    elif outcome.kind == FAILED:
        error = RankAssertionError(outcome.message)
    elif outcome.kind == ERROR:
        error = RankFailure(outcome.message, outcome.failed_ranks, case.id(), outcome.timed_out)
    else:
        return
    error.outcome = outcome  # type: ignore[union-attr]
    raise error


def rerun_command(case: unittest.TestCase, settings: _config.Settings | None = None, world_size: int = 0) -> str:
    """The one line that re-runs just this test with its environment (none: rank threads)."""
    env = ""
    if settings is not None:
        env = f"BACKEND={settings.backend} WORLD_SIZE={world_size} "
        if settings.start_method:
            env += f"{_config.ENV_START_METHOD}={settings.start_method} "
        if settings.nodes > 1:  # simulated nodes: a test may fail only with them
            env += f"{ENV_NODES}={settings.nodes} "
    try:
        path = os.path.relpath(inspect.getsourcefile(type(case)) or "")
    except (TypeError, ValueError):
        path = _config.script_name()
    klass, method = type(case).__name__, case._testMethodName
    if _config.running_under_pytest():
        return f"{env}pytest {path}::{klass}::{method}"
    return f"{env}{entry_command or 'python'} {path} {klass}.{method}"
