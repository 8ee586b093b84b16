"""MultiProcessTestCase and DistributedTestBase: PyTorch's API over our engine.

A thin unittest-shaped shell: what a test's run needs lives in one
``_run.TestRun``; the one-shot driver (``_oneshot``) starts and joins the
ranks, ``_rank`` runs the test in them, ``_outcomes`` folds their results.
"""

from __future__ import annotations

import functools
import types
from collections.abc import Callable
from typing import Any, ClassVar

import expecttest

from distributed_testing import _config, _oneshot, _rank
from distributed_testing._assertions import TensorAssertions
from distributed_testing._errors import ConfigError
from distributed_testing._retry import Retrying
from distributed_testing._run import TestRun
from distributed_testing._world_sizes import checked_method_name, expand_world_sizes

__unittest = True

__all__ = ["DistributedTestBase", "MultiProcessTestCase"]

DEFAULT_WORLD_SIZE = 4  # as PyTorch's MultiProcessTestCase


class MultiProcessTestCase(Retrying, TensorAssertions, expecttest.TestCase):
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
    # Classes whose setUp spawns the ranks (DistributedTestBase and the rest); if a
    # mixin's setUp broke the super() chain, they spawn when the test runs instead.
    _dt_spawns_in_setup: ClassVar[bool] = False
    _dt_default_world_size: ClassVar[int] = DEFAULT_WORLD_SIZE
    _dt_reads_world_size: ClassVar[bool] = True  # WORLD_SIZE overrides the default
    _dt_reads_backend: ClassVar[bool] = True  # False: BACKEND is the test's own business (PyTorch's class)
    _dt_unspawned_skips: ClassVar[bool] = False  # True: a setUp that starts no rank skips (PyTorch's class)

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
        self._dt: TestRun | None = None  # the parent's run of this test (None in a rank)
        self._dt_launch_key: str | None = None  # a rank under torchrun: the test's key in the store
        if hasattr(type(self), method_name):
            setattr(self, method_name, self.join_or_run(getattr(self, method_name)))

    def __getstate__(self) -> dict[str, Any]:
        """What pickles of a test case: RPC suites send methods bound to it to peers
        (``rpc.rpc_async(..., self._trainer_func)``); unittest's running state, the
        rank hooks set on the instance and the parent's run state stay behind."""
        state = dict(self.__dict__)
        for name in ("_outcome", "setUp", "tearDown", "_dt", "_dt_outcome"):
            state.pop(name, None)
        return state

    # -- PyTorch's properties -------------------------------------------------

    @property
    def destroy_pg_upon_exit(self) -> bool:
        """Whether a rank destroys the default process group after the test."""
        return True

    @property
    def world_size(self) -> int:
        """Ranks per test: ``requires_world_size(n)``, env ``WORLD_SIZE``, else the class default."""
        required = getattr(self._dt_method(), "_required_world_size", None)
        from_env = _config.world_size_from_env() if self._dt_reads_world_size else None
        return int(required or from_env or self._dt_default_world_size)

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
            if self.rank != self.MAIN_PROCESS_RANK and self._dt is None:
                return fn()  # in a rank
            return self._join_processes(fn)

        return types.MethodType(wrapper, self)

    def setUp(self) -> None:
        super().setUp()
        self.special_return_code_checks = {}
        self.skip_return_code_checks = []
        self.processes = []
        self.pid_to_pipe = {}
        self.rank = self.MAIN_PROCESS_RANK
        self._dt = _oneshot.new_run(self)
        self.addCleanup(self._dt_cleanup)
        self.file_name = self._dt.file_name
        if type(self)._dt_spawns_in_setup:
            self._spawn_processes()

    def tearDown(self) -> None:
        super().tearDown()
        self._dt_stop()

    def _dt_stop(self) -> None:
        if self._dt is not None:
            _oneshot.stop(self._dt)
        self.processes = []
        self.pid_to_pipe = {}

    def _dt_cleanup(self) -> None:
        self._dt_stop()
        if self._dt is not None:
            _oneshot.cleanup(self._dt)

    def _spawn_processes(self) -> None:
        """Start the ranks with the class's start method (never from inside a rank)."""
        if self.rank != self.MAIN_PROCESS_RANK:
            return
        _oneshot.prepare(self._dt_checked_run(), self)

    def _start_processes(self, proc: Any) -> None:
        """Start ``world_size`` ranks with ``proc``, a multiprocessing Process class."""
        _oneshot.start_processes(self._dt_checked_run(), self, proc)

    def _dt_checked_run(self) -> TestRun:
        if self._dt is None:
            raise ConfigError(
                f"{type(self).__name__}.setUp must call super().setUp() before "
                "self._spawn_processes(). Example: def setUp(self): super().setUp(); "
                "self._spawn_processes()",
                "setUp",
            )
        return self._dt

    def _rank_env(self) -> dict[str, str]:
        """Environment variables every rank of this test gets."""
        return {}

    def _join_processes(self, fn: Any) -> None:
        """Wait for every rank, then fold their results into this test's outcome."""
        __tracebackhide__ = True
        if type(self)._dt_spawns_in_setup and (self._dt is None or not self._dt.prepared):
            if self._dt is None:
                MultiProcessTestCase.setUp(self)
            else:
                self._spawn_processes()
        _oneshot.drive(self._dt_checked_run(), self, fn)

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
            _rank.destroy_default_group()

    def _rank_setup(self) -> None:
        """Per-rank set-up before the test method (the parent ran ``setUp``)."""

    def _rank_teardown(self) -> None:
        """Per-rank tear-down after the test method."""


class DistributedTestBase(MultiProcessTestCase):
    """PyTorch's DistributedTestBase: spawns in setUp, makes a group per device."""

    _dt_spawns_in_setup = True

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
