"""MultiThreadedTestCase: a test's ranks as threads of this process, over PyTorch's threaded group.

PyTorch's API (``MultiThreadedTestCase``, ``spawn_threads_and_init_comms``,
``run_subtests``) with this library's outcomes: each rank thread runs the test
through the same rank-side function as a rank process (``_rank.run_in_rank``),
their results fold into one ``Outcome`` (``_outcomes.fold``) and
``_run.raise_outcome`` turns it into unittest's pass, skip, fail or error.

The collectives are PyTorch's in-process fake group
(``torch.testing._internal.distributed.multi_threaded_pg``, backend
``"threaded"``): every rank thread has its own world of groups, one store is
shared. When a rank thread fails or skips, the group's collectives are
cancelled (the peers blocked in one leave with ``SystemExit``) and those peers
are reported as stopped. At the deadline (class attribute ``timeout``, env
``DISTRIBUTED_TESTING_TIMEOUT``, else 300 s) each live rank thread's Python
stack is taken and reported; a thread cannot be killed, so those that do not
leave when their collective is cancelled are left running as daemon threads
(the process can still exit), the report says so, and the test's world of
groups is torn down all the same, so the next test starts clean.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import itertools
import os
import sys
import threading
import time
import types
import unittest
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

from distributed_testing import _config, _expect, _guards, _rank
from distributed_testing._assertions import TensorAssertions
from distributed_testing._guards import guard_reason
from distributed_testing._protocol import FAILED, PASSED, SKIPPED, RankResult
from distributed_testing._retry import Retrying
from distributed_testing._skips import not_spawned_reason
from distributed_testing._threaded_run import ThreadedRun, c10d_module, current_run, join_threads
from distributed_testing._world_sizes import checked_method_name, expand_world_sizes, required_world_size

__unittest = True  # hide these frames from user tracebacks

__all__ = ["MultiThreadedTestCase", "run_subtests", "spawn_threads_and_init_comms"]



_EXPANDED: set[type] = set()  # classes whose world-size marks are expanded (done once: it walks the class)


def _method_name(cls: type, method_name: str, methodName: str) -> str:  # noqa: N803
    """The test method to build (rank threads build one case each per test: kept cheap)."""
    if cls in _EXPANDED:
        name = methodName if methodName != "runTest" else method_name
        if name == "runTest" or hasattr(cls, name):
            return name
    name = checked_method_name(cls, method_name, methodName)
    _EXPANDED.add(cls)
    return name


class MultiThreadedTestCase(Retrying, TensorAssertions):
    """Runs each ``test_*`` method in ``world_size`` rank threads of this process.

    As PyTorch's: ``setUp`` must call ``self._spawn_threads()``; every thread has
    its own ``self.rank`` and a default group of the ``threaded`` backend, set up
    by ``perThreadSetUp`` and torn down by ``perThreadTearDown`` (``setUp`` and
    ``tearDown`` run in the main thread only). Class attribute ``timeout``
    (seconds; default env ``DISTRIBUTED_TESTING_TIMEOUT``, else 300).
    """

    MAIN_THREAD_RANK = -1
    timeout: ClassVar[float | None] = None
    global_store: ClassVar[Any] = None  # PyTorch's name: the running test's shared store
    _dt_unspawned_skips: ClassVar[bool] = False  # torch_compat: a setUp without _spawn_threads() skips

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        expand_world_sizes(cls)

    def __init__(self, method_name: str = "runTest", methodName: str = "runTest") -> None:  # noqa: N803
        method_name = _method_name(type(self), method_name, methodName)
        super().__init__(method_name)
        self.rank = self.MAIN_THREAD_RANK
        self.threads: list[Any] = []
        self._dt_skip_reason: str | None = None
        if hasattr(type(self), method_name):
            setattr(self, method_name, self.join_or_run(getattr(self, method_name)))

    @property
    def world_size(self) -> int:
        """Rank threads per test: ``requires_world_size(n)`` / ``world_sizes``, else PyTorch's default
        (4; on ROCm the GPU count clamped to 2..4). WORLD_SIZE is not read."""
        required = required_world_size(self)
        return int(required) if required is not None else _guards.DEFAULT_WORLD_SIZE

    @property
    def _current_test_name(self) -> str:
        return self.id().split(".")[-1]

    def join_or_run(self, fn: Callable[[], Any]) -> Callable[[], Any]:
        """Wrap a test method: join the rank threads in the main thread, run the body in a rank thread."""

        @functools.wraps(fn)
        def wrapper(self: MultiThreadedTestCase) -> Any:
            __tracebackhide__ = True
            if self.rank != self.MAIN_THREAD_RANK:
                return fn()
            if self._dt_skip_reason is not None:
                raise unittest.SkipTest(self._dt_skip_reason)
            if not self.threads:
                if self._dt_unspawned_skips:
                    raise unittest.SkipTest(not_spawned_reason("threads"))
                join_threads([], self)  # raises: no threads were spawned
            self._join_threads(self.threads, fn)
            return None

        return types.MethodType(wrapper, self)

    def perThreadSetUp(self) -> None:  # noqa: N802
        """Set-up in each rank thread, after its default group exists."""

    def perThreadTearDown(self) -> None:  # noqa: N802
        """Tear-down in each rank thread, after its default group is destroyed."""

    def setUp(self) -> None:
        """Main thread only: rank threads run ``perThreadSetUp``."""
        super().setUp()
        self.rank = self.MAIN_THREAD_RANK
        self.threads = []
        self._dt_skip_reason = None
        os.environ["TORCH_SHOW_CPP_STACKTRACES"] = "1"  # as PyTorch's: C++ stacks in errors

    def tearDown(self) -> None:
        """Main thread only: rank threads run ``perThreadTearDown``."""
        super().tearDown()
        self.threads = []

    def _spawn_threads(self) -> None:
        """Start the rank threads (call it in ``setUp``); they run the test at once."""
        cls = type(self)
        reason = guard_reason(self, getattr(cls, self._testMethodName, None))
        if reason is not None:  # skipped when the test runs, so tearDown still runs
            self._dt_skip_reason = reason
            return
        world_size = _config.parse_world_size(self.world_size, f"{cls.__name__}.world_size")
        timeout = _config.resolve_timeout(cls.timeout, _config.load())
        run = ThreadedRun.start(self, world_size, timeout)
        self.addCleanup(run.abandon)
        cls.global_store = run.store
        test_name = self._current_test_name
        self.threads = run.spawn(lambda rank: cls._run(test_name, rank, world_size))

    @classmethod
    def _run(cls, test_name: str, rank: int, world_size: int, **kwargs: Any) -> None:
        """A rank thread: build the test case and run it (PyTorch's entry point)."""
        self = cls(test_name)
        self.rank = rank
        if hasattr(self, "_tls"):  # PyTorch's TestCase keeps its tolerances per thread
            self._tls = threading.local()
            self._tls.precision = getattr(cls, "_precision", 0)
            self._tls.rel_tol = getattr(cls, "_rel_tol", 0)
        self.run_test_with_threaded_pg(test_name, rank, world_size)

    def run_test_with_threaded_pg(self, test_name: str, rank: int, world_size: int) -> None:
        """Run the test in this rank thread through unittest's machinery; record its result."""
        run = current_run()

        def set_up() -> None:
            run.init_group(rank)
            try:
                self.perThreadSetUp()
            except BaseException:
                run.destroy_group()
                raise

        def tear_down() -> None:
            try:
                run.destroy_group()
            finally:
                self.perThreadTearDown()

        _rank.stop_peers_on_expected_failure(self, run.stop_peers)
        result = _rank.run_in_rank(self, rank, set_up, tear_down, seed=False, on_stop=run.stop_peers)
        run.results.setdefault(rank, result)

    @classmethod
    def _join_threads(cls, threads: list[Any], fn: Any) -> None:
        """Wait for the rank threads (one deadline), fold their results, raise the outcome."""
        __tracebackhide__ = True
        join_threads(threads, None)


def spawn_threads_and_init_comms(
    func: Callable[..., Any] | None = None, timeout: float | None = None, world_size: int | None = None
) -> Any:
    """Decorate a test method to run its body in ``world_size`` rank threads, each with a
    default group of the ``threaded`` backend (works on any ``unittest.TestCase``).
    ``world_size`` defaults to PyTorch's (4; on ROCm the GPU count clamped to 2..4).

    ``timeout``: seconds (default: the class's ``timeout``, env
    ``DISTRIBUTED_TESTING_TIMEOUT``, else 300). The rank threads share ``self``.
    """
    if func is None:
        return functools.partial(spawn_threads_and_init_comms, timeout=timeout, world_size=world_size)
    chosen = _guards.DEFAULT_WORLD_SIZE if world_size is None else world_size
    size = _config.parse_world_size(chosen, "spawn_threads_and_init_comms(world_size=...)")

    @functools.wraps(func)
    def wrapper(self: unittest.TestCase, *args: Any, **kwargs: Any) -> None:
        __tracebackhide__ = True
        limit = timeout if timeout is not None else getattr(type(self), "timeout", None)
        run = ThreadedRun.start(self, size, _config.resolve_timeout(limit, _config.load()))
        with _expected_inline_recorded(self):
            try:
                threads = run.spawn(lambda rank: _call_in_rank(run, rank, lambda: func(self, *args, **kwargs)))
            except BaseException:
                run.abandon()
                raise
            join_threads(threads, self)

    return wrapper


@contextlib.contextmanager
def _expected_inline_recorded(case: unittest.TestCase) -> Iterator[None]:
    """While rank threads share ``case``, its assertExpectedInline records each thread's value,
    so that the main thread compares them and, with EXPECTTEST_ACCEPT=1, rewrites the file
    once (this library's own test classes do so already)."""
    original = getattr(case, "assertExpectedInline", None)
    if original is None or isinstance(case, TensorAssertions):
        yield
        return

    def assert_expected_inline(actual: Any, expect: str, skip: int = 0, **options: Any) -> None:
        actual, expect = _expect.normalized(case, actual, expect, options)
        if not _expect.record(case, actual, expect, skip + 1):
            original(actual, expect, skip=skip + 1, **options)

    case.assertExpectedInline = assert_expected_inline  # type: ignore[attr-defined]
    try:
        yield
    finally:
        del case.assertExpectedInline  # type: ignore[attr-defined]


def _call_in_rank(run: ThreadedRun, rank: int, fn: Callable[[], Any]) -> None:
    """A decorated method's body in one rank thread, with its default group around it."""
    pid = os.getpid()
    try:
        run.init_group(rank)
        try:
            fn()
        finally:
            run.destroy_group()
    except unittest.SkipTest as exc:
        run.results[rank] = RankResult(rank, pid, SKIPPED, reason=str(exc))
    except SystemExit as exc:
        run.results[rank] = _rank._exit_result(rank, exc)
    except BaseException as exc:
        info = _rank.format_error(exc, "", None)
        result = RankResult(rank, pid, FAILED, (info,), exit_code=_rank.TEST_ERROR_EXIT_CODE)
        run.results[rank] = dataclasses.replace(result, failed_at=time.monotonic())
    else:
        run.results[rank] = RankResult(rank, pid, PASSED)
        return
    if run.results[rank].status != PASSED:
        run.stop_peers()


def run_subtests(
    cls_inst: unittest.TestCase,
    subtest_config: dict[str, list[Any]],
    test_fn: Callable[..., Any],
    *test_args: Any,
    **test_kwargs: Any,
) -> None:
    """Run ``test_fn`` once per combination of ``subtest_config``'s values, each as a ``subTest``.

    As PyTorch's: the combination is passed as keyword arguments, dynamo is reset
    around each, and the ranks meet at a barrier after each (when a default group
    exists).
    """
    keys = list(subtest_config)
    for values in itertools.product(*(subtest_config[key] for key in keys)):
        subtest_kwargs = dict(zip(keys, values, strict=True))
        with cls_inst.subTest(**subtest_kwargs):
            _reset_dynamo()
            test_fn(*test_args, **test_kwargs, **subtest_kwargs)
            _reset_dynamo()
        c10d = c10d_module()
        if c10d.is_available() and c10d.is_initialized():
            c10d.barrier()


def _reset_dynamo() -> None:
    """``torch._dynamo.reset()``, if dynamo was ever imported (otherwise there is nothing to reset)."""
    dynamo = sys.modules.get("torch._dynamo")
    if dynamo is not None:
        dynamo.reset()
