"""Skip guards: decorators that skip a test, with what was needed and what was found.

A guard whose condition is known at import (a backend compiled in, a GPU
count) is a plain ``unittest.skipIf``, so the runner skips before starting any
process. A guard that depends on the test's world size or backend records a
check that the parent evaluates before spawning ranks, and that the rank
evaluates again if the method is called directly.
"""

from __future__ import annotations

import functools
import os
import sys
import unittest
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from distributed_testing import _config, _devices

__unittest = True

F = TypeVar("F", bound=Callable[..., Any])
# A check takes the test case and returns a skip reason, or None to run.
Check = Callable[[Any], "str | None"]
GUARDS_ATTR = "_dt_guards"

#: The guards, by PyTorch's names (``torch_compat`` replaces PyTorch's with these).
GUARDS = (
    "requires_gloo",
    "requires_mpi",
    "requires_nccl",
    "requires_nccl_version",
    "requires_ucc",
    "requires_world_size",
    "skip_if_lt_x_gpu",
    "skip_if_no_gpu",
    "skip_if_odd_worldsize",
    "skip_if_rocm_multiprocess",
    "skip_if_small_worldsize",
    "skip_if_win32",
    "with_dist_debug_levels",
)

__all__ = ["GUARDS", "guard_reason", *GUARDS]


def _backend_guard(name: str) -> Callable[[F], F]:
    have = ", ".join(_devices.available_backends()) or "none"
    return unittest.skipUnless(
        _devices.backend_available(name),
        f"needs the {name} backend, which this torch build does not have (it has: {have})",
    )


def requires_gloo() -> Callable[[F], F]:
    """Skip unless torch was built with the gloo backend."""
    return _backend_guard("gloo")


def requires_nccl() -> Callable[[F], F]:
    """Skip unless torch was built with the NCCL backend."""
    return _backend_guard("nccl")


def requires_mpi() -> Callable[[F], F]:
    """Skip unless torch was built with the MPI backend."""
    return _backend_guard("mpi")


def requires_ucc() -> Callable[[F], F]:
    """Skip unless torch was built with the UCC backend."""
    return _backend_guard("ucc")


def requires_nccl_version(version: tuple[int, ...], msg: str) -> Callable[[F], F]:
    """Skip unless NCCL is at least ``version``; a no-op without CUDA, as in PyTorch."""
    if _devices.cuda_device_count() == 0:
        return lambda func: func
    if not _devices.backend_available("nccl"):
        return _backend_guard("nccl")
    found = _devices.nccl_version() or (0,)
    return unittest.skipIf(
        tuple(found) < tuple(version),
        f"needs NCCL >= {'.'.join(map(str, version))}, found "
        f"{'.'.join(map(str, found))}: {msg}",
    )


def skip_if_lt_x_gpu(x: int, *, allow_cpu: bool = False) -> Callable[[F], F]:
    """Skip unless there are at least ``x`` CUDA devices.

    ``allow_cpu=True`` runs the test on a machine with no GPU at all, as PyTorch's.
    """
    found = _devices.cuda_device_count()
    skip = found < x and not (allow_cpu and found == 0)
    return unittest.skipIf(skip, f"needs {x} CUDA device{'s' * (x != 1)}, found {found}")


def skip_if_win32() -> Callable[[F], F]:
    """Skip on Windows."""
    return unittest.skipIf(sys.platform == "win32", "not supported on Windows")


def skip_if_rocm_multiprocess(func: F) -> F:
    """Skip on ROCm builds of torch."""
    return unittest.skipIf(_devices.is_rocm(), "skipped on ROCm")(func)


def _world_size_of(case: Any) -> int:
    return int(case.world_size)


def _backend_of(case: Any) -> str:
    return _config.current_backend()


def _no_gpu_reason(case: Any) -> str | None:
    found, needed = _devices.cuda_device_count(), _world_size_of(case)
    if found >= needed:
        return None
    return f"needs a CUDA device per rank: {needed} for world size {needed}, found {found}"


def _small_world_reason(case: Any) -> str | None:
    size = _world_size_of(case)
    if _backend_of(case) == "mpi" or size >= 8:
        return None
    return f"needs world size >= 8, got {size}"


def _odd_world_reason(case: Any) -> str | None:
    size = _world_size_of(case)
    if _backend_of(case) == "mpi" or size % 2 == 0:
        return None
    return f"needs an even world size, got {size}"


def skip_if_no_gpu(func: F) -> F:
    """Skip unless every rank can have its own CUDA device."""
    return _dynamic_guard(_no_gpu_reason)(func)


def skip_if_small_worldsize(func: F) -> F:
    """Skip when the world size is below 8 (not for MPI), as PyTorch does."""
    return _dynamic_guard(_small_world_reason)(func)


def skip_if_odd_worldsize(func: F) -> F:
    """Skip when the world size is odd (not for MPI)."""
    return _dynamic_guard(_odd_world_reason)(func)


def requires_world_size(n: int) -> Callable[[F], F]:
    """Run the test with ``n`` ranks; with nccl, skip unless there are ``n`` GPUs."""
    size = _config.parse_world_size(n, "requires_world_size(n)")

    def reason(case: Any) -> str | None:
        found = _devices.cuda_device_count()
        if _backend_of(case) != "nccl" or found >= size:
            return None
        return f"needs {size} CUDA devices for nccl at world size {size}, found {found}"

    def decorate(func: F) -> F:
        guarded = _dynamic_guard(reason)(func)
        guarded._required_world_size = size  # type: ignore[attr-defined]
        return guarded

    return decorate


def with_dist_debug_levels(levels: Iterable[str]) -> Callable[[F], F]:
    """Run the test once per ``TORCH_DISTRIBUTED_DEBUG`` level, restoring it after."""
    chosen = list(levels)

    def decorate(func: F) -> F:
        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            import torch.distributed as dist

            old = os.environ.get("TORCH_DISTRIBUTED_DEBUG")
            result = None
            try:
                for level in chosen:
                    os.environ["TORCH_DISTRIBUTED_DEBUG"] = level
                    dist.set_debug_level_from_env()  # type: ignore[attr-defined]
                    result = func(*args, **kwargs)
                    if dist.is_initialized():
                        dist.barrier()
            finally:
                if old is None:
                    os.environ.pop("TORCH_DISTRIBUTED_DEBUG", None)
                else:
                    os.environ["TORCH_DISTRIBUTED_DEBUG"] = old
                dist.set_debug_level_from_env()  # type: ignore[attr-defined]
            return result

        return wrapper  # type: ignore[return-value]

    return decorate


def _dynamic_guard(check: Check) -> Callable[[F], F]:
    """A guard on a method or class that depends on the test case's settings."""

    def decorate(target: F) -> F:
        if isinstance(target, type):
            existing = target.__dict__.get(GUARDS_ATTR, ())
            setattr(target, GUARDS_ATTR, (*existing, check))
            return target

        @functools.wraps(target)
        def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
            why = check(self)
            if why is not None:
                raise unittest.SkipTest(why)
            return target(self, *args, **kwargs)

        setattr(wrapper, GUARDS_ATTR, (*getattr(target, GUARDS_ATTR, ()), check))
        return wrapper  # type: ignore[return-value]

    return decorate


def guard_reason(case: Any, method: Any) -> str | None:
    """The first skip reason of the guards on ``case``'s class and ``method``."""
    checks: list[Check] = []
    for klass in reversed(type(case).__mro__):
        checks.extend(klass.__dict__.get(GUARDS_ATTR, ()))
    checks.extend(getattr(method, GUARDS_ATTR, ()))
    for check in checks:
        why = check(case)
        if why is not None:
            return why
    return None
