"""The one-shot driver: fresh rank processes per test (or per hypothesis example).

``prepare`` decides how the test runs and starts its ranks (from ``setUp``, as
PyTorch's ``_spawn_processes``); ``drive`` waits for them when the test method
runs in the parent and raises the folded outcome. The debug rank runs in this
process through the same rank-side function as every other rank.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import shutil
import tempfile
import unittest
from typing import Any

from distributed_testing import _config, _janitor, _launcher, _lease_file, _nodes, _outcomes, _output, _rank, _run
from distributed_testing._errors import ConfigError
from distributed_testing._guards import guard_reason
from distributed_testing._hypothesis import is_hypothesis_test, run_examples
from distributed_testing._protocol import ERROR, FAILED, PASSED, RankContext
from distributed_testing._run import TestRun
from distributed_testing._skips import not_spawned_reason
from distributed_testing._world_sizes import class_world_size, zero_world_size_reason

__unittest = True

__all__ = ["cleanup", "drive", "new_run", "prepare", "start_processes", "start_ranks", "stop"]

logger = logging.getLogger(__name__)


def new_run(case: Any) -> TestRun:
    """A test's run state, with its private directory and rendezvous file (from ``setUp``)."""
    directory = tempfile.mkdtemp(prefix=f"dt-{type(case).__name__}-")
    _janitor.register(directory)
    file_name = os.path.join(directory, "rendezvous")
    open(file_name, "w").close()
    return TestRun(case.id(), directory, file_name)  # settings: when the ranks start, after the test's setUp


def prepare(run: TestRun, case: Any) -> None:
    """Decide how the test runs and, for one-shot ranks, start them now.

    A skip (a guard's, a world size of 0, a backend the test set that this build
    lacks) or a bad setting the test made is raised when the test runs, not from
    setUp, so the class's tearDown still cleans up what its setUp made.
    """
    run.prepared = True
    method = getattr(type(case), case._testMethodName, None)
    try:
        reason = guard_reason(case, method)
        if reason is None and class_world_size(case) == 0:
            reason = zero_world_size_reason(case)
        if reason is None:
            run.settings, reason = _config.load_for_test(type(case)._dt_reads_backend)
    except ConfigError as exc:
        run.mode, run.error = "error", exc
        return
    if reason:
        run.mode, run.skip_reason = "skip", reason
        return
    if _config.launch_info() is not None:
        from distributed_testing import _torchrun

        run.mode = "torchrun"
        _torchrun.prepare(run, case)
        return
    if is_hypothesis_test(method):
        run.mode = "examples"  # ranks start per example, once hypothesis has drawn it
        return
    start_ranks(run, case)


def start_ranks(run: TestRun, case: Any) -> None:
    """Start ``world_size`` ranks of ``case`` (all but the debug rank) as processes."""
    cls = type(case)
    method = _launcher.choose_start_method(_config.resolve_start_method(cls.start_method, _settings(run, case)))
    start_processes(run, case, _launcher.process_class(method, cls.__module__))


def start_processes(run: TestRun, case: Any, proc: Any) -> None:
    """Start the ranks with ``proc``, a multiprocessing Process class (PyTorch's ``_start_processes``)."""
    cls = type(case)
    run.world_size = class_world_size(case)
    settings = _settings(run, case)
    run.timeout = _config.resolve_timeout(cls.timeout, settings)
    # Once for all ranks: they must agree (e.g. on MASTER_PORT). WORLD_SIZE and
    # BACKEND are exported because PyTorch-style decorators read them.
    run.rank_env = {"WORLD_SIZE": str(run.world_size), **case._rank_env()}
    if not os.environ.get("BACKEND"):  # else the ranks see the BACKEND the test process has
        run.rank_env.update(_config.defaulted_backend(settings.backend))
    run.debug_rank = _debug_rank(settings, run.world_size)
    _lease_file.hold_for_test(run, case, settings)  # under pytest-xdist: wait for its ranks and devices
    run.handles = []
    for rank in range(run.world_size):
        if rank == run.debug_rank:
            continue
        ctx = RankContext(
            output_path=os.path.join(run.files_dir, f"rank{rank}.out"),
            stacks_path=os.path.join(run.files_dir, f"rank{rank}.stacks"),
            test_id=run.test_id,
            stack_signal=int(_launcher.STACK_SIGNAL),
            extra_env=_nodes.rank_env(run.rank_env, rank, run.world_size, settings.nodes),
            example=run.example,
        )
        args = (cls, rank, case._current_test_name(), run.file_name)
        run.handles.append(_launcher.start_rank(proc, _rank.rank_main, args, rank, ctx))
    case.processes = [h.process for h in run.handles]
    case.pid_to_pipe = {h.process.pid: h.conn for h in run.handles}


def drive(run: TestRun, case: Any, fn: Any) -> None:
    """The test method in the parent: wait for the ranks, raise their folded outcome."""
    __tracebackhide__ = True
    if run.mode == "skip":
        raise unittest.SkipTest(run.skip_reason)
    if run.mode == "error" and run.error is not None:
        raise run.error.with_traceback(None)  # where setUp found it is the framework's business
    if run.mode == "torchrun":
        from distributed_testing import _torchrun

        _torchrun.drive(run, case, fn)
    elif run.mode == "examples":
        method = getattr(type(case), case._testMethodName)
        run_examples(method, case, functools.partial(_run_example, run, case, fn))
    else:
        _join_once(run, case, fn)


def _run_example(run: TestRun, case: Any, fn: Any, example: Any) -> None:
    """Run one hypothesis example on fresh ranks, in a fresh rendezvous."""
    __tracebackhide__ = True
    run.example = example
    run.run_dir = tempfile.mkdtemp(dir=run.directory)
    run.file_name = case.file_name = os.path.join(run.run_dir, "rendezvous")
    open(run.file_name, "w").close()
    start_ranks(run, case)
    _join_once(run, case, fn)


def _join_once(run: TestRun, case: Any, fn: Any) -> None:
    __tracebackhide__ = True
    if not run.handles and run.debug_rank is None:
        if case._dt_unspawned_skips:
            raise unittest.SkipTest(not_spawned_reason("processes"))
        raise ConfigError(
            f"{case.id()} started no rank processes: call self._spawn_processes() in "
            "setUp. Example: def setUp(self): super().setUp(); self._spawn_processes()",
            "setUp",
        )
    timeout = run.timeout
    expected, ignore = code_rules(case, fn)

    def is_failure(handle: _launcher.RankHandle) -> bool:
        return _outcomes.rank_failed(_launcher.view(handle, with_output=False), expected, ignore)

    settings = _settings(run, case)
    live = settings.show_output == _config.SHOW_LIVE

    def folded(kept: dict[int, str]) -> tuple[list[_outcomes.RankView], _outcomes.Outcome]:
        views = [_launcher.view(h, with_output=True, full_log=kept.get(h.rank)) for h in run.handles]
        if run.debug_view is not None:
            views = sorted([*views, run.debug_view], key=lambda v: v.rank)
        outcome = _outcomes.fold(
            views,
            test_id=run.test_id,
            world_size=len(views),
            timed_out=waited.timed_out,
            timeout=timeout,
            first_failure=waited.first_failure,
            expected_code=expected,
            ignore_codes=ignore,
            rerun=_run.rerun_command(case, settings, len(views)),
        )
        return views, outcome

    _run.running_test = run.test_id
    try:
        with _output.LiveOutput(run.handles) if live else contextlib.nullcontext():
            if run.debug_rank is not None:
                run.debug_view = _run_here(run, case, run.debug_rank)
                if _outcomes.rank_failed(run.debug_view, expected, ignore):
                    timeout = _launcher.FAILURE_GRACE  # the others need not wait for a peer that is done
            waited = _launcher.wait_for_ranks(run.handles, timeout, is_failure)
            if waited.timed_out:
                _launcher.collect_stacks(run.handles)
            _launcher.stop_ranks(run.handles)
        _launcher.teach_server(run.handles)
        views, outcome = folded({})
        if settings.log_dir is not None and _config.keeps_logs(settings, outcome.kind in (FAILED, ERROR)):
            views, outcome = folded(_output.keep_logs(run.handles, settings.log_dir, run.test_id))
        if settings.show_output == _config.SHOW_AFTER:
            _output.print_outputs(views)
        _run.raise_outcome(case, outcome, views)
    except KeyboardInterrupt:
        cleanup(run)  # unittest skips cleanups on Ctrl-C: leave nothing behind ourselves
        raise  # running_test still names this test for the runner's message
    except BaseException:
        _run.running_test = ""
        raise
    else:
        _run.running_test = ""
    finally:
        stop(run)


def _run_here(run: TestRun, case: Any, rank: int) -> _outcomes.RankView:
    """Run one rank of this test in this process, so breakpoint() and pdb work in it."""
    here = type(case)(case._testMethodName)
    here.rank, here.file_name = rank, run.file_name
    with _config.environ_set(_nodes.rank_env(run.rank_env, rank, run.world_size, _settings(run, case).nodes)):
        result = _rank.run_in_rank(here, rank, here._rank_setup, here._rank_teardown)
        if here.destroy_pg_upon_exit:
            _rank.destroy_default_group()
    code = 0 if result.status == PASSED else result.exit_code
    return _outcomes.RankView(rank, os.getpid(), result, code)


def code_rules(case: Any, fn: Any) -> tuple[int | None, bool]:
    """PyTorch's per-test exit-code exceptions: (expected code, ignore codes)."""
    ignore = any(_same_test(entry, fn) for entry in case.skip_return_code_checks)
    expected = None
    for entry, code in case.special_return_code_checks.items():
        if _same_test(entry, fn):
            expected = int(code)
    return expected, ignore


def _same_test(entry: Any, fn: Any) -> bool:
    """Whether an entry of skip/special_return_code_checks names the test ``fn``."""
    if entry is fn or entry == fn:
        return True
    target = getattr(fn, "__func__", fn)
    other = getattr(entry, "__func__", entry)
    other = getattr(other, "__wrapped__", other)
    return other is target or getattr(other, "__name__", None) == getattr(target, "__name__", "")


def stop(run: TestRun) -> None:
    """Stop and release every rank process of the run."""
    _launcher.stop_ranks(run.handles)
    _launcher.close(run.handles)
    run.handles = []
    _lease_file.release(run.lease)  # the ranks are reaped: another test may have them
    run.lease = None


def cleanup(run: TestRun) -> None:
    """Stop the ranks and remove the test's directory."""
    stop(run)
    if os.path.isdir(run.directory):
        shutil.rmtree(run.directory, ignore_errors=True)
    _janitor.unregister(run.directory)


def _settings(run: TestRun, case: Any) -> _config.Settings:
    """The run's settings, read when its ranks start (PyTorch's ``_start_processes(proc)``
    may be called without ``_spawn_processes``)."""
    if run.settings is None:
        run.settings = _config.load_for_test(type(case)._dt_reads_backend)[0]
    return run.settings


def _debug_rank(settings: _config.Settings, world_size: int) -> int | None:
    rank = settings.debug_rank
    if rank is not None and rank >= world_size:
        raise ConfigError(
            f"{_config.ENV_DEBUG_RANK}={rank} is not a rank of this test, whose world size is {world_size}. "
            f"Example: {_config.ENV_DEBUG_RANK}={world_size - 1}",
            _config.ENV_DEBUG_RANK,
            rank,
        )
    return rank

