"""MultiProcContinuousTest: PyTorch's class whose ranks and process group live across tests.

Ranks start lazily at the first test that runs (a class whose tests are all
filtered out or skipped starts nothing), once per world size. A failing test
fails alone: the pool survives a test that raised on every rank, and is
rebuilt after a rank died, hung, or the ranks may be out of step.
"""

from __future__ import annotations

import functools
import types
import unittest
from datetime import timedelta
from typing import Any, ClassVar

import expecttest

from distributed_testing import _config, _devices, _launcher, _pool, _rank
from distributed_testing._assertions import TensorAssertions
from distributed_testing._guards import guard_reason
from distributed_testing._hypothesis import is_hypothesis_test, run_examples
from distributed_testing._retry import Retrying
from distributed_testing._world_sizes import (
    checked_method_name,
    declared_world_size,
    expand_world_sizes,
    zero_world_size_reason,
)

__unittest = True

__all__ = ["MultiProcContinuousTest"]

DEFAULT_WORLD_SIZE = 2
_UNSET = -2  # PyTorch's "not set" value for world_size and rank


class MultiProcContinuousTest(Retrying, TensorAssertions, expecttest.TestCase):
    """Runs every test of a class on one warm pool of ``world_size`` ranks.

    Class attributes: ``world_size`` (default: env ``WORLD_SIZE``, else 2),
    ``timeout`` (seconds or a timedelta, per test), ``start_method``.
    Classmethods to override: ``backend_str()``, ``device_type()``, ``opts()``,
    ``_init_pg(rank, world_size, rdvz_file)``.
    """

    MAIN_PROCESS_RANK = -1
    world_size: ClassVar[int] = _UNSET
    rank: int = _UNSET
    timeout: ClassVar[float | timedelta | None] = None
    start_method: ClassVar[str | None] = None
    poison_pill: ClassVar[bool] = False  # PyTorch's; never set here: a failure does not poison
    rdvz_file: ClassVar[str | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        expand_world_sizes(cls)

    def __init__(self, method_name: str = "runTest", methodName: str = "runTest") -> None:  # noqa: N803
        method_name = checked_method_name(type(self), method_name, methodName)
        super().__init__(method_name)
        if hasattr(type(self), method_name):
            setattr(self, method_name, self._worker_run_main_wait(getattr(self, method_name)))

    # -- PyTorch's hooks ------------------------------------------------------

    @classmethod
    def backend_str(cls) -> str | None:
        """The backend of the pool's default group; None: ``BACKEND``, else the default."""
        return None

    @classmethod
    def device_type(cls) -> str:
        """The device the tests use: cuda when there is a GPU, else cpu."""
        return "cuda" if _devices.cuda_device_count() > 0 else "cpu"

    @classmethod
    def opts(cls, high_priority_stream: bool = False) -> Any:
        """Process group options passed to ``init_process_group`` (None: the defaults)."""
        return None

    @classmethod
    def _init_pg(cls, rank: int, world_size: int, rdvz_file: str) -> None:
        """Initialise the default process group in a pool rank (runs once per rank)."""
        import torch
        import torch.distributed as dist

        backend = cls.backend_str() or _config.load().backend
        if backend == "nccl":
            torch.cuda.set_device(rank % max(torch.cuda.device_count(), 1))
        store = dist.FileStore(rdvz_file, world_size)  # type: ignore[attr-defined]
        dist.init_process_group(
            backend=backend,
            world_size=world_size,
            rank=rank,
            store=store,
            pg_options=cls.opts(),
            timeout=_rank.group_timeout(_timeout_seconds(cls)),  # outlasts the deadline: stacks, not a timeout
        )
        cls.pg = dist.distributed_c10d._get_default_group()  # type: ignore[attr-defined]

    # -- the parent side ------------------------------------------------------

    def _worker_run_main_wait(self, fn: Any) -> Any:
        """Wrap a test method: dispatch to the pool in the parent, run the body in a rank."""

        @functools.wraps(fn)
        def wrapper(self: MultiProcContinuousTest) -> Any:
            __tracebackhide__ = True
            if _rank.in_rank:
                return fn()
            return self._dt_dispatch()

        return types.MethodType(wrapper, self)

    def setUp(self) -> None:
        super().setUp()
        if _config.launch_info() is not None:
            raise unittest.SkipTest(
                "MultiProcContinuousTest does not run under a launcher (torchrun) yet: run this class with "
                "python or pytest, which start its ranks themselves"
            )
        self.rank = self.MAIN_PROCESS_RANK
        method = getattr(type(self), self._testMethodName)
        size = pool_world_size(type(self), method)
        self._dt_size = size
        _try_set(self, "world_size", size)
        if size == 0:
            raise unittest.SkipTest(zero_world_size_reason(self))
        reason = guard_reason(self, method)
        if reason is None:  # a backend this machine cannot run skips, saying why, before a pool starts
            reason = _devices.gpu_shortfall(type(self).backend_str() or _config.load().backend, size)
        if reason is not None:
            raise unittest.SkipTest(reason)
        pool = _pool.get_pool(type(self), size, functools.partial(_start_pool, type(self), size))
        if pool.skip_reason is not None:
            raise unittest.SkipTest(pool.skip_reason)
        self._dt_pool = pool

    def _dt_fresh_ranks(self) -> None:
        """Before a retry: a fresh pool, whatever state the failed attempt left the last one in."""
        _pool.discard(type(self), getattr(self, "_dt_size", 0), f"{self.id()} is retried on fresh ranks")

    @classmethod
    def tearDownClass(cls) -> None:
        _pool.close_pools(cls)
        super().tearDownClass()

    def _dt_dispatch(self) -> None:
        __tracebackhide__ = True
        method = getattr(type(self), self._testMethodName)
        if is_hypothesis_test(method):
            run_examples(method, self, self._dt_dispatch_one)
        else:
            self._dt_dispatch_one(None)

    def _dt_dispatch_one(self, example: Any) -> None:
        """Run the test (or one hypothesis example of it) on the pool and raise its outcome."""
        __tracebackhide__ = True
        size = self._dt_size
        start = functools.partial(_start_pool, type(self), size)
        _pool.drive(self, size, start, _timeout_seconds(type(self)), example)


def pool_world_size(cls: type, method: Any) -> int:
    """The world size a test runs at: ``world_sizes``, the class's, ``WORLD_SIZE``, else 2."""
    required = getattr(method, "_required_world_size", None)
    if required is not None:
        return int(required)
    declared = declared_world_size(cls, _UNSET)
    if isinstance(declared, property):
        declared = declared.fget(object.__new__(cls)) if declared.fget else _UNSET
    if declared in (None, _UNSET):
        return _config.world_size_from_env() or DEFAULT_WORLD_SIZE
    if declared == 0 and not isinstance(declared, bool):
        return 0  # no rank can run here: the class's tests skip
    return _config.parse_world_size(declared, f"{cls.__name__}.world_size")


def _timeout_seconds(cls: type) -> float:
    value = getattr(cls, "timeout", None)
    if isinstance(value, timedelta):
        value = value.total_seconds()
    return _config.resolve_timeout(value, _config.load())


def _start_pool(cls: type, size: int) -> _pool.RankPool:
    settings = _config.load()
    method = _launcher.choose_start_method(_config.resolve_start_method(getattr(cls, "start_method", None), settings))
    env = {"WORLD_SIZE": str(size)}
    if not settings.backend_from_env:
        env.update(_config.defaulted_backend(settings.backend))
    return _pool.RankPool(cls, size, method, _timeout_seconds(cls), env)


def _try_set(obj: Any, name: str, value: Any) -> None:
    try:
        setattr(obj, name, value)
    except AttributeError:  # a read-only property
        pass
