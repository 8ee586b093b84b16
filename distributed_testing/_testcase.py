"""MultiProcessTestCase and DistributedTestBase: PyTorch's API over our engine.

A thin unittest-shaped shell: launching lives in ``_launcher``, the rank side
in ``_rank``, folding outcomes in ``_outcomes``.
"""

from __future__ import annotations

import functools
import inspect
import os
import shutil
import sys
import tempfile
import types
import unittest
import warnings
from collections.abc import Callable
from typing import Any, ClassVar

import expecttest

from distributed_testing import _config, _devices, _expect, _janitor, _launcher, _outcomes, _rank
from distributed_testing._assertions import TensorAssertions
from distributed_testing._errors import ConfigError, RankAssertionError, RankFailure
from distributed_testing._guards import guard_reason
from distributed_testing._hypothesis import is_hypothesis_test, run_examples
from distributed_testing._protocol import PASSED, RankContext
from distributed_testing._world_sizes import expand_world_sizes

__unittest = True

__all__ = ["DistributedTestBase", "MultiProcessTestCase"]

DEFAULT_WORLD_SIZE = 4  # as PyTorch's MultiProcessTestCase
_warned_fallback = False
running_test = ""  # the id of the test whose ranks the parent is waiting for


class MultiProcessTestCase(TensorAssertions, expecttest.TestCase):
    """Runs each ``test_*`` method in ``world_size`` rank processes.

    ``setUp`` must call ``self._spawn_processes()``; the method then runs in
    every rank with ``self.rank`` set, and the parent folds the ranks' results
    into one outcome. Class attributes: ``start_method`` ("fork" or "spawn";
    default: env ``DISTRIBUTED_TESTING_START_METHOD``, else fork on Linux) and
    ``timeout`` (seconds; default: env ``DISTRIBUTED_TESTING_TIMEOUT``, else 300).
    """

    MAIN_PROCESS_RANK = -1
    TEST_ERROR_EXIT_CODE = _rank.TEST_ERROR_EXIT_CODE
    start_method: ClassVar[str | None] = None
    timeout: ClassVar[float | None] = None
    # Classes whose setUp spawns: if a mixin's setUp broke the super() chain,
    # spawn when the test runs instead of failing.
    _dt_spawns_in_setup: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        expand_world_sizes(cls)

    def __init__(self, method_name: str = "runTest", methodName: str = "runTest") -> None:  # noqa: N803
        method_name = checked_method_name(type(self), method_name, methodName)
        super().__init__(method_name)
        self.rank = self.MAIN_PROCESS_RANK
        self.file_name = ""
        self.processes: list[Any] = []
        self.pid_to_pipe: dict[int, Any] = {}
        self.skip_return_code_checks: list[Any] = []
        self.special_return_code_checks: dict[Any, int] = {}
        self._dt_handles: list[_launcher.RankHandle] = []
        self._dt_dir: str | None = None
        self._dt_debug_rank: int | None = None  # run in this process (pdb works there)
        self._dt_debug_view: _outcomes.RankView | None = None
        self._dt_launch_key: str | None = None  # set in torchrun mode: this process is a rank
        self._dt_skip_reason: str | None = None  # a guard said skip: raised when the test runs
        self._dt_examples = False  # a hypothesis test: ranks start once per drawn example
        self._dt_example: Any = None
        self._dt_run_dir: str | None = None  # per-example files, inside _dt_dir
        if hasattr(type(self), method_name):
            setattr(self, method_name, self.join_or_run(getattr(self, method_name)))

    # -- PyTorch's properties -------------------------------------------------

    @property
    def destroy_pg_upon_exit(self) -> bool:
        """Whether a rank destroys the default process group after the test."""
        return True

    @property
    def world_size(self) -> int:
        """Ranks per test: ``requires_world_size(n)``, env ``WORLD_SIZE``, else 4."""
        required = getattr(self._dt_method(), "_required_world_size", None)
        return int(required or _config.load().world_size or DEFAULT_WORLD_SIZE)

    @property
    def is_master(self) -> bool:
        return self.rank == 0

    def _current_test_name(self) -> str:
        return self.id().split(".")[-1]

    def _dt_method(self) -> Any:
        return getattr(type(self), self._testMethodName, None)

    # -- the parent side ------------------------------------------------------

    def join_or_run(self, fn: Callable[[], Any]) -> Callable[[], Any]:
        """Wrap a test method: join the ranks in the parent, run the body in a rank."""

        @functools.wraps(fn)
        def wrapper(self: MultiProcessTestCase) -> Any:
            __tracebackhide__ = True
            if self._dt_launch_key is not None:
                return self._dt_run_torchrun(fn)
            if self.rank == self.MAIN_PROCESS_RANK:
                return self._join_processes(fn)
            return fn()

        return types.MethodType(wrapper, self)

    def setUp(self) -> None:
        super().setUp()
        self.special_return_code_checks = {}
        self.skip_return_code_checks = []
        self.processes = []
        self.pid_to_pipe = {}
        self.rank = self.MAIN_PROCESS_RANK
        self._dt_dir = tempfile.mkdtemp(prefix=f"dt-{type(self).__name__}-")
        _janitor.register(self._dt_dir)
        self.addCleanup(self._dt_cleanup)
        self.file_name = os.path.join(self._dt_dir, "rendezvous")
        open(self.file_name, "w").close()

    def tearDown(self) -> None:
        super().tearDown()
        self._dt_stop()

    def _dt_stop(self) -> None:
        _launcher.stop_ranks(self._dt_handles)
        _launcher.close(self._dt_handles)
        self._dt_handles = []
        self.processes = []
        self.pid_to_pipe = {}

    def _dt_cleanup(self) -> None:
        self._dt_stop()
        if self._dt_dir is not None:
            shutil.rmtree(self._dt_dir, ignore_errors=True)
            _janitor.unregister(self._dt_dir)
            self._dt_dir = None

    def _spawn_processes(self) -> None:
        """Start the ranks with the class's start method (never from inside a rank)."""
        if self.rank != self.MAIN_PROCESS_RANK:
            return
        settings = _config.load()
        reason = guard_reason(self, self._dt_method())
        if reason is not None:
            # Skip when the test runs, not from setUp, so the class's tearDown still
            # cleans up what its setUp made; no rank is started either way.
            self._dt_skip_reason = reason
            return
        if _config.launch_info() is not None:
            self._dt_join_launch()
            return
        if is_hypothesis_test(self._dt_method()):
            self._dt_examples = True  # ranks start per example, once hypothesis has drawn it
            return
        self._dt_start_ranks(settings)

    def _dt_start_ranks(self, settings: _config.Settings) -> None:
        method = choose_start_method(_config.resolve_start_method(type(self).start_method, settings))
        self._start_processes(_launcher.process_class(method, type(self).__module__))

    def _dt_run_example(self, fn: Any, example: Any) -> None:
        """Run one hypothesis example on fresh ranks, in a fresh rendezvous."""
        __tracebackhide__ = True
        assert self._dt_dir is not None
        self._dt_example = example
        self._dt_run_dir = tempfile.mkdtemp(dir=self._dt_dir)
        self.file_name = os.path.join(self._dt_run_dir, "rendezvous")
        open(self.file_name, "w").close()
        self._dt_start_ranks(_config.load())
        self._dt_join_once(fn)

    def _dt_join_launch(self) -> None:
        """torchrun mode: this process is one rank; the test runs here, in place."""
        from distributed_testing import _torchrun

        run = _torchrun.current()
        assert run is not None
        wanted = _config.parse_world_size(self.world_size, f"{type(self).__name__}.world_size")
        if wanted != run.launch.world_size:
            raise unittest.SkipTest(f"needs world size {wanted}, launched with {run.launch.world_size}")
        self._dt_launch_key = run.next_test(self.id())
        self.rank = run.launch.rank
        self.file_name = run.rendezvous_file(self._dt_launch_key)

    def _dt_run_torchrun(self, fn: Any) -> None:
        __tracebackhide__ = True
        from distributed_testing import _torchrun

        assert self._dt_launch_key is not None
        timeout = _config.resolve_timeout(type(self).timeout, _config.load())
        outcome = _torchrun.run_in_place(self, fn, self._dt_launch_key, timeout)
        shown = _outcomes.Outcome(outcome.kind, _torchrun.printed_once(outcome, self.rank), outcome.failed_ranks)
        raise_outcome(self, shown, outcome.kind == _outcomes.ERROR and "timed out" in outcome.message)

    def _start_processes(self, proc: Any) -> None:
        """Start ``world_size`` ranks with ``proc``, a multiprocessing Process class."""
        name = f"{type(self).__name__}.world_size"
        world_size = _config.parse_world_size(self.world_size, name)
        if self._dt_dir is None:
            raise ConfigError(
                f"{type(self).__name__}.setUp must call super().setUp() before "
                "self._spawn_processes(). Example: def setUp(self): super().setUp(); "
                "self._spawn_processes()",
                "setUp",
            )
        self.processes, self._dt_handles = [], []
        # Once for all ranks: they must agree (e.g. on MASTER_PORT). WORLD_SIZE and
        # BACKEND are exported because PyTorch-style decorators read them.
        settings = _config.load()
        rank_env = {"WORLD_SIZE": str(world_size), "BACKEND": settings.backend, **self._rank_env()}
        self._dt_debug_rank = _debug_rank(settings, world_size)
        self._dt_rank_env = rank_env
        for rank in range(world_size):
            if rank == self._dt_debug_rank:
                continue
            ctx = RankContext(
                output_path=os.path.join(self._dt_run_dir or self._dt_dir, f"rank{rank}.out"),
                stacks_path=os.path.join(self._dt_run_dir or self._dt_dir, f"rank{rank}.stacks"),
                test_id=self.id(),
                stack_signal=int(_launcher.STACK_SIGNAL),
                extra_env=rank_env,
                example=self._dt_example,
            )
            args = (type(self), rank, self._current_test_name(), self.file_name)
            handle = _launcher.start_rank(proc, _rank.rank_main, args, rank, ctx)
            self._dt_handles.append(handle)
            self.processes.append(handle.process)
            self.pid_to_pipe[handle.process.pid] = handle.conn

    def _rank_env(self) -> dict[str, str]:
        """Environment variables every rank of this test gets."""
        return {}

    def _join_processes(self, fn: Any) -> None:
        """Wait for every rank, then fold their results into this test's outcome."""
        __tracebackhide__ = True
        if self._dt_skip_reason is not None:
            raise unittest.SkipTest(self._dt_skip_reason)
        if self._dt_examples:
            run_examples(self._dt_method(), self, functools.partial(self._dt_run_example, fn))
            return
        self._dt_join_once(fn)

    def _dt_join_once(self, fn: Any) -> None:
        __tracebackhide__ = True
        if not self._dt_handles and type(self)._dt_spawns_in_setup:
            if self._dt_dir is None:
                MultiProcessTestCase.setUp(self)
            self._spawn_processes()
        if not self._dt_handles and self._dt_debug_rank is None:
            raise ConfigError(
                f"{self.id()} started no rank processes: call self._spawn_processes() in "
                "setUp. Example: def setUp(self): super().setUp(); self._spawn_processes()",
                "setUp",
            )
        timeout = _config.resolve_timeout(type(self).timeout, _config.load())
        expected, ignore = self._dt_code_rules(fn)

        def is_failure(handle: _launcher.RankHandle) -> bool:
            return _outcomes.rank_failed(view(handle, with_output=False), expected, ignore)

        global running_test
        running_test = self.id()
        try:
            if self._dt_debug_rank is not None:
                self._dt_debug_view = self._dt_run_here(self._dt_debug_rank)
                if _outcomes.rank_failed(self._dt_debug_view, expected, ignore):
                    timeout = _launcher.FAILURE_GRACE  # the others need not wait for a peer that is done
            waited = _launcher.wait_for_ranks(self._dt_handles, timeout, is_failure)
            if waited.timed_out:
                _launcher.collect_stacks(self._dt_handles)
            _launcher.stop_ranks(self._dt_handles)
            _launcher.teach_server(self._dt_handles)
            self._dt_waited = waited
            self._dt_timeout = timeout
            self._check_return_codes(fn, waited.elapsed)
        except KeyboardInterrupt:
            # unittest skips cleanups on Ctrl-C: leave nothing behind ourselves.
            self._dt_cleanup()
            raise  # running_test still names this test for the runner's message
        except BaseException:
            running_test = ""
            raise
        else:
            running_test = ""
        finally:
            self._dt_stop()

    def _dt_run_here(self, rank: int) -> _outcomes.RankView:
        """Run one rank of this test in this process, so breakpoint() and pdb work in it."""
        case = type(self)(self._testMethodName)
        case.rank, case.file_name = rank, self.file_name
        with _config.environ_set(self._dt_rank_env):
            result = _rank.run_in_rank(case, rank, case._rank_setup, case._rank_teardown)
            if case.destroy_pg_upon_exit:
                _destroy_default_group()
        code = 0 if result.status == PASSED else result.exit_code
        return _outcomes.RankView(rank, os.getpid(), result, code)

    def _dt_code_rules(self, fn: Any) -> tuple[int | None, bool]:
        """PyTorch's per-test exit-code exceptions: (expected code, ignore codes)."""
        ignore = any(_same_test(entry, fn) for entry in self.skip_return_code_checks)
        expected = None
        for entry, code in self.special_return_code_checks.items():
            if _same_test(entry, fn):
                expected = int(code)
        return expected, ignore

    def _check_return_codes(self, fn: Any, elapsed_time: float) -> None:
        """Fold every rank's result and exit code; raise the test's outcome."""
        __tracebackhide__ = True
        settings = _config.load()
        waited = self._dt_waited
        expected, ignore = self._dt_code_rules(fn)
        views = [view(h, with_output=True) for h in self._dt_handles]
        if self._dt_debug_view is not None:
            views = sorted([*views, self._dt_debug_view], key=lambda v: v.rank)
        outcome = _outcomes.fold(
            views,
            test_id=self.id(),
            world_size=len(views),
            timed_out=waited.timed_out,
            timeout=self._dt_timeout,
            first_failure=waited.first_failure,
            expected_code=expected,
            ignore_codes=ignore,
            rerun=rerun_command(self, settings, len(views)),
        )
        if settings.show_output:
            _print_outputs(views)
        raise_outcome(self, outcome, waited.timed_out, views)

    # -- the rank side --------------------------------------------------------

    @classmethod
    def _run(cls, rank: int, test_name: str, file_name: str, parent_pipe: Any, **kwargs: Any) -> None:
        """Build the test case in a rank and run it (PyTorch's entry point)."""
        self = cls(test_name)
        self.rank = rank
        self.file_name = file_name
        self.run_test(test_name, parent_pipe)

    def run_test(self, test_name: str, parent_pipe: Any) -> None:
        """Run the test in this rank and send the one result to the parent."""
        result = _rank.run_in_rank(self, self.rank, self._rank_setup, self._rank_teardown)
        _rank.send_result(parent_pipe, result)  # first: destroying the group is what fails the peers
        if self.destroy_pg_upon_exit:
            _destroy_default_group()

    def _rank_setup(self) -> None:
        """Per-rank set-up before the test method (the parent ran ``setUp``)."""

    def _rank_teardown(self) -> None:
        """Per-rank tear-down after the test method."""


class DistributedTestBase(MultiProcessTestCase):
    """PyTorch's DistributedTestBase: spawns in setUp, makes a group per device."""

    _dt_spawns_in_setup = True

    def setUp(self) -> None:
        super().setUp()
        self._spawn_processes()

    def backend(self, device: str) -> str:
        """The c10d backend for a device string: nccl for cuda, gloo for cpu."""
        if "cuda" in device:
            return "nccl"
        if "hpu" in device:
            return "hccl"
        if "xpu" in device:
            return "xccl"
        return "gloo"

    def create_pg(self, device: str, world_size: int | None = None) -> Any:
        """Initialise the default process group for ``device`` from ``file_name``."""
        import torch
        import torch.distributed as dist

        size = self.world_size if world_size is None else world_size
        store = dist.FileStore(self.file_name, size)  # type: ignore[attr-defined]
        backend = self.backend(device)
        dist.init_process_group(backend=backend, world_size=size, rank=self.rank, store=store)
        if backend in ("nccl", "xccl"):
            count = torch.get_device_module(device).device_count()
            torch.get_device_module(device).set_device(self.rank % max(count, 1))
        return dist.distributed_c10d._get_default_group()

    def rank_to_device(self, device: str) -> dict[int, list[int]]:
        """Map each rank to the device it uses, round robin over visible devices."""
        import torch

        count = max(torch.get_device_module(device).device_count(), 1)
        return {i: [i % count] for i in range(self.world_size)}


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


def _destroy_default_group() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        try:
            dist.destroy_process_group()
        except (AssertionError, ValueError, RuntimeError):
            pass


def raise_outcome(
    case: unittest.TestCase,
    outcome: _outcomes.Outcome,
    timed_out: bool,
    views: list[_outcomes.RankView] | None = None,
) -> None:
    """Turn a folded outcome into what unittest expects: return, skip, fail or error.

    With the ranks' ``views``, their assertExpectedInline values are compared
    (and, with EXPECTTEST_ACCEPT=1, accepted once, here).
    """
    __tracebackhide__ = True
    disagreement = _expect.settle(views, case.id()) if views else ""
    if disagreement and outcome.kind in (_outcomes.PASS, _outcomes.SKIP):
        outcome = _outcomes.Outcome(_outcomes.FAIL, disagreement)
    elif disagreement:
        outcome = _outcomes.Outcome(outcome.kind, f"{outcome.message}\n\n{disagreement}", outcome.failed_ranks)
    if outcome.kind == _outcomes.SKIP:
        raise unittest.SkipTest(outcome.message)
    if outcome.kind == _outcomes.FAIL:
        raise RankAssertionError(outcome.message)
    if outcome.kind == _outcomes.ERROR:
        raise RankFailure(outcome.message, outcome.failed_ranks, case.id(), timed_out)


def rerun_command(case: unittest.TestCase, settings: _config.Settings, world_size: int) -> str:
    """The one line that re-runs just this test with its environment."""
    env = f"BACKEND={settings.backend} WORLD_SIZE={world_size}"
    if settings.start_method:
        env += f" {_config.ENV_START_METHOD}={settings.start_method}"
    try:
        path = os.path.relpath(inspect.getsourcefile(type(case)) or "")
    except (TypeError, ValueError):
        path = _config.script_name()
    klass, method = type(case).__name__, case._testMethodName
    if _config.running_under_pytest():
        return f"{env} pytest {path}::{klass}::{method}"
    return f"{env} python {path} {klass}.{method}"


def view(handle: _launcher.RankHandle, with_output: bool, offset: int = 0) -> _outcomes.RankView:
    return _outcomes.RankView(
        rank=handle.rank,
        pid=handle.process.pid,
        result=handle.result,
        exitcode=handle.exitcode,
        stopped=handle.stopped,
        finished_at=handle.finished_at,
        stacks=handle.stacks,
        output=_launcher.read_output(handle.output_path, offset=offset) if with_output else "",
    )


def _print_outputs(views: list[_outcomes.RankView]) -> None:
    for view in views:
        for line in view.output.splitlines():
            print(f"[rank {view.rank}] {line}", file=sys.stderr)


def _same_test(entry: Any, fn: Any) -> bool:
    """Whether an entry of skip/special_return_code_checks names the test ``fn``."""
    if entry is fn or entry == fn:
        return True
    target = getattr(fn, "__func__", fn)
    other = getattr(entry, "__func__", entry)
    other = getattr(other, "__wrapped__", other)
    return other is target or getattr(other, "__name__", None) == getattr(target, "__name__", "")


def choose_start_method(method: str) -> str:
    """fork unless CUDA is initialised here: then, most likely, importing the test
    module initialised it, and the fork server would hold it too. Spawn, said once."""
    global _warned_fallback
    if method != "fork" or not _devices.cuda_initialized():
        return method
    if not _warned_fallback:
        _warned_fallback = True
        warnings.warn(
            "distributed_testing: CUDA is initialised in this process, so ranks start "
            "with spawn instead of fork (a forked CUDA context is unusable)",
            RuntimeWarning,
            stacklevel=3,
        )
    return "spawn"


def checked_method_name(cls: type, method_name: str, methodName: str) -> str:  # noqa: N803
    """The test method to build, under either of PyTorch's argument names; it must exist."""
    name = methodName if methodName != "runTest" else method_name
    expand_world_sizes(cls)  # marks applied after the class was made
    if name != "runTest" and not hasattr(cls, name):
        raise ConfigError(no_such_test(cls, name), "test name", name)
    return name


def no_such_test(cls: type, name: str) -> str:
    tests = sorted(n for n in dir(cls) if n.startswith("test"))
    listed = ", ".join(tests) if tests else "no test methods"
    return f"{cls.__name__} has no test method {name!r}; it has: {listed}"

