"""Skip guards: decorators that skip a test, with what was needed and what was found.

A guard whose condition is known at import (a backend compiled in, a GPU
count) is a plain ``unittest.skipIf``, so the runner skips before starting any
process. A guard that depends on the test's world size or backend records a
check that the parent evaluates before spawning ranks, and that the rank
evaluates again if the method is called directly. A guard that must ask a GPU
(multicast support, a ROCm architecture) asks it when the test is about to run,
in a fresh interpreter unless this process is a rank, so the parent and the fork
server never initialise CUDA; with no GPU it is a plain skip.
"""

from __future__ import annotations

import functools
import os
import sys
import unittest
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from distributed_testing import _config, _devices, _hardware
from distributed_testing._device_query import ask_device
from distributed_testing._errors import ConfigError
from distributed_testing._leases import GPUS_ATTR

__unittest = True

F = TypeVar("F", bound=Callable[..., Any])
# A check takes the test case and returns a skip reason, or None to run.
Check = Callable[[Any], "str | None"]
GUARDS_ATTR = "_dt_guards"

#: The guards, by PyTorch's names (``torch_compat`` replaces PyTorch's with these).
GUARDS = (
    "nccl_skip_if_lt_x_gpu",
    "require_n_gpus_for_nccl_backend",
    "requires_accelerator_dist_backend",
    "requires_gloo",
    "requires_mpi",
    "requires_multicast_support",
    "requires_nccl",
    "requires_nccl_version",
    "requires_ucc",
    "requires_world_size",
    "skip_if_lt_x_gpu",
    "skip_if_no_gpu",
    "skip_if_odd_worldsize",
    "skip_if_rocm_arch_multiprocess",
    "skip_if_rocm_multiprocess",
    "skip_if_small_worldsize",
    "skip_if_win32",
    "with_dist_debug_levels",
)
#: Other names of PyTorch's ``common_distributed`` defined here (``torch_compat`` replaces them too).
HELPERS = ("DEFAULT_WORLD_SIZE", "at_least_x_gpu", "with_nccl_blocking_wait")

__all__ = ["GUARDS", "HELPERS", "guard_reason", *GUARDS, *HELPERS]

# The c10d backends PyTorch's requires_accelerator_dist_backend counts; no other name does.
_ACCELERATOR_BACKENDS = ("nccl", "xccl", "hccl")

if TYPE_CHECKING:
    #: PyTorch's default world size: 4; on ROCm, the GPU count clamped to 2..4.
    #: Computed on first use, so importing this module does not import torch.
    DEFAULT_WORLD_SIZE: int
else:

    def __getattr__(name: str) -> Any:
        if name == "DEFAULT_WORLD_SIZE":
            value = globals()[name] = _default_world_size()
            return value
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _default_world_size() -> int:
    if _devices.is_rocm():
        return min(4, max(2, _devices.cuda_device_count()))
    return 4


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'s' * (count != 1)}"


def _backend_guard(name: str) -> Callable[[F], F]:
    have = ", ".join(_devices.available_backends()) or "none"
    return unittest.skipUnless(
        _devices.backend_available(name),
        _hardware.note(f"needs the {name} backend, which this torch build does not have (it has: {have})",
                       f"needs backend {name}"),
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


def _accelerator_counts() -> dict[str, int]:
    """Devices per accelerator PyTorch's guards count: CUDA always; HPU and XPU where present.

    Counted without initialising a device runtime (CUDA through NVML), so the
    process can still fork ranks.
    """
    import torch

    counts = {"CUDA": _devices.cuda_device_count()}
    others: tuple[tuple[str, Any], ...] = (("HPU", getattr(torch, "hpu", None)), ("XPU", getattr(torch, "xpu", None)))
    for kind, module in others:
        try:
            if module is not None and module.is_available():
                counts[kind] = int(module.device_count())
        except Exception:  # a broken plugin or driver counts as no device
            continue
    return counts


def _enough_devices(counts: dict[str, int], x: int) -> bool:
    return any(0 < found >= x for found in counts.values())


def _lt_x_gpu_reason(x: int, counts: dict[str, int]) -> str:
    if list(counts) == ["CUDA"]:
        return f"needs {_plural(x, 'CUDA device')}, found {counts['CUDA']}"
    kinds = ", ".join(counts)
    found = ", ".join(f"{count} {kind}" for kind, count in counts.items())
    return f"needs {x} devices of one accelerator ({kinds}), found {found}"


def at_least_x_gpu(x: int) -> bool:
    """Whether one accelerator (CUDA, HPU or XPU) has at least ``x`` devices, as PyTorch's."""
    return _enough_devices(_accelerator_counts(), x)


def skip_if_lt_x_gpu(x: int, *, allow_cpu: bool = False) -> Callable[[F], F]:
    """Skip unless one accelerator (CUDA, HPU or XPU) has at least ``x`` devices.

    ``allow_cpu=True`` also runs the test on a machine with no accelerator at all
    (where it runs on CPU), as PyTorch's; a machine with too few still skips.
    """
    counts = _accelerator_counts()
    runs = _enough_devices(counts, x) or (allow_cpu and not any(counts.values()))
    reason = _lt_x_gpu_reason(x, counts)
    if allow_cpu and not runs:
        reason += " (allow_cpu runs it only where there is no accelerator)"
    need = _hardware.gpus(x) if list(counts) == ["CUDA"] else _hardware.gpus(x, "accelerator")
    skip = unittest.skipIf(not runs, _hardware.note(reason, need))

    def decorate(func: F) -> F:
        guarded = skip(func)
        setattr(guarded, GPUS_ATTR, max(x, getattr(guarded, GPUS_ATTR, 0)))  # its device lease under xdist
        return guarded

    return decorate


def _nccl_gpus_guard(backend: str, x: int) -> Callable[[F], F]:
    found = _devices.cuda_device_count()
    return unittest.skipIf(
        backend == "nccl" and found < x,
        _hardware.note(f"needs {_plural(x, 'CUDA device')} for the nccl backend, found {found}", _hardware.gpus(x)),
    )


def nccl_skip_if_lt_x_gpu(backend: str, x: int) -> Callable[[F], F]:
    """Skip when ``backend`` is nccl and there are fewer than ``x`` CUDA devices."""
    return _nccl_gpus_guard(backend, x)


def require_n_gpus_for_nccl_backend(n: int, backend: str) -> Callable[[F], F]:
    """Skip when ``backend`` is nccl and there are fewer than ``n`` CUDA devices."""
    return _nccl_gpus_guard(backend, n)


def _accelerator_backend_available(name: str) -> bool:
    if name == "hccl":  # PyTorch's test: an HPU is there (the backend comes with its plugin)
        return "HPU" in _accelerator_counts()
    return name in ("nccl", "xccl") and _devices.backend_available(name)


def requires_accelerator_dist_backend(backends: Sequence[str] | None = None) -> Callable[[F], F]:
    """Skip unless one of ``backends`` (default nccl, xccl, hccl) is an available accelerator backend.

    As PyTorch's, only nccl, xccl and hccl count: any other name (gloo) never does.
    """
    wanted = list(_ACCELERATOR_BACKENDS if backends is None else backends)
    if any(_accelerator_backend_available(name) for name in wanted):
        return unittest.skipIf(False, "")
    found = []
    others = [name for name in wanted if name not in _ACCELERATOR_BACKENDS]
    if others:
        verb = "is not one" if len(others) == 1 else "are not"
        found.append(f"{', '.join(others)} {verb} (those are {', '.join(_ACCELERATOR_BACKENDS)})")
    if {"nccl", "xccl"} & set(wanted):
        found.append(f"this torch build has {', '.join(_devices.available_backends()) or 'no backend'}")
    if "hccl" in wanted:
        found.append("hccl needs an HPU, found none")
    among = ", ".join(wanted) or "no name given"
    why = f"needs an accelerator communication backend among {among}, found none: {'; '.join(found)}"
    return unittest.skipIf(True, _hardware.note(why, "needs an accelerator communication backend"))


# -- guards that ask device 0, in a fresh interpreter unless CUDA is safe here ---------



def _device_guard(reason: Callable[[], str | None]) -> Callable[[F], F]:
    """A guard asked of device 0 when a test would run (in the parent, before ranks start).

    On a class it is asked now and marks the class as unittest's skips do, so
    it holds for any TestCase.
    """

    def decorate(target: F) -> F:
        if isinstance(target, type):
            why = reason()
            return unittest.skipIf(why is not None, why or "")(target)
        return _dynamic_guard(lambda case: reason())(target)

    return decorate


def _multicast_reason() -> str | None:
    if ask_device("_device0_multicast") == "1":
        return None
    return _hardware.note("needs CUDA multicast support, which device 0 does not have", "needs CUDA multicast")


def requires_multicast_support() -> Callable[[F], F]:
    """Skip unless CUDA device 0 supports multicast (symmetric memory), as PyTorch's."""
    found = _devices.cuda_device_count()
    if found == 0:
        return unittest.skipIf(True, _hardware.note("needs CUDA multicast support, found no CUDA device",
                                                    "needs CUDA multicast"))
    return _device_guard(_multicast_reason)


def skip_if_rocm_arch_multiprocess(arch: Iterable[str]) -> Callable[[F], F]:
    """Skip on ROCm when device 0's architecture (``gfx942``, ...) is one of ``arch``."""
    archs = tuple(arch)
    if not _devices.is_rocm() or _devices.cuda_device_count() == 0:
        return lambda func: func

    def reason() -> str | None:
        found = ask_device("_device0_arch")
        if found not in archs:
            return None
        return f"skipped on ROCm architecture {found} (skipped on: {', '.join(archs)})"

    return _device_guard(reason)


def skip_if_win32() -> Callable[[F], F]:
    """Skip on Windows."""
    return unittest.skipIf(sys.platform == "win32", "not supported on Windows")


def skip_if_rocm_multiprocess(func: F) -> F:
    """Skip on ROCm builds of torch."""
    return unittest.skipIf(_devices.is_rocm(), "skipped on ROCm")(func)


def _world_size_of(case: Any) -> int:
    return int(case.world_size)


def _backend_of(case: Any) -> str:
    try:
        return _config.current_backend()
    except ConfigError:  # a BACKEND the test set that this build lacks: compare names, as PyTorch does
        return os.environ.get("BACKEND", "").strip().lower()


def _no_gpu_reason(case: Any) -> str | None:
    found, needed = _devices.cuda_device_count(), _world_size_of(case)
    if found >= needed:
        return None
    return _hardware.note(f"needs a CUDA device per rank: {needed} for world size {needed}, found {found}",
                          _hardware.gpus(needed))


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
        return _hardware.note(f"needs {size} CUDA devices for nccl at world size {size}, found {found}",
                              _hardware.gpus(size))

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


def with_nccl_blocking_wait(func: F) -> F:
    """Run the test with ``TORCH_NCCL_BLOCKING_WAIT=1`` and without
    ``TORCH_NCCL_ASYNC_ERROR_HANDLING``; both are restored afterwards."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with _config.environ_set({"TORCH_NCCL_BLOCKING_WAIT": "1"}, unset=("TORCH_NCCL_ASYNC_ERROR_HANDLING",)):
            return func(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


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
