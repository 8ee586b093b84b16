"""distributed_testing: test multi-rank PyTorch code with ordinary unittest or pytest classes.

A public, stable mirror of ``torch.testing._internal.common_distributed``:
each ``test_*`` method runs in ``world_size`` rank processes and the ranks'
results fold into one outcome that says which rank failed and why.

Names are imported on first use, so importing the package (as the pytest
plugin does in every pytest run) costs nothing until a name is needed.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# Each public name and the private module that defines it.
_EXPORTS = {
    "ConfigError": "_errors",
    "DEFAULT_WORLD_SIZE": "_guards",
    "DTensorTestBase": "_comms",
    "DistBackendTestCase": "_backend_case",
    "DistributedTestBase": "_testcase",
    "DistributedTestingError": "_errors",
    "MultiProcContinuousTest": "_continuous",
    "MultiProcessTestCase": "_testcase",
    "MultiThreadedTestCase": "_threaded",
    "RankFailure": "_errors",
    "ShardedTensorTestBase": "_comms",
    "TEST_SKIPS": "_skips",
    "TestSkip": "_skips",
    "assert_same_on_all_ranks": "_assertions",
    "at_least_x_gpu": "_guards",
    "nccl_skip_if_lt_x_gpu": "_guards",
    "require_n_gpus_for_nccl_backend": "_guards",
    "requires_accelerator_dist_backend": "_guards",
    "requires_gloo": "_guards",
    "requires_mpi": "_guards",
    "requires_multicast_support": "_guards",
    "requires_nccl": "_guards",
    "requires_nccl_version": "_guards",
    "requires_ucc": "_guards",
    "requires_world_size": "_guards",
    "run_subtests": "_threaded",
    "run_tests": "_runner",
    "skip_if_lt_x_gpu": "_guards",
    "skip_if_no_gpu": "_guards",
    "skip_if_odd_worldsize": "_guards",
    "skip_if_rocm_arch_multiprocess": "_guards",
    "skip_if_rocm_multiprocess": "_guards",
    "skip_if_small_worldsize": "_guards",
    "skip_if_win32": "_guards",
    "spawn_threads_and_init_comms": "_threaded",
    "with_comms": "_comms",
    "with_dist_debug_levels": "_guards",
    "with_nccl_blocking_wait": "_guards",
    "world_sizes": "_world_sizes",
}

__all__ = [
    "DEFAULT_WORLD_SIZE",
    "TEST_SKIPS",
    "ConfigError",
    "DTensorTestBase",
    "DistBackendTestCase",
    "DistributedTestBase",
    "DistributedTestingError",
    "MultiProcContinuousTest",
    "MultiProcessTestCase",
    "MultiThreadedTestCase",
    "RankFailure",
    "ShardedTensorTestBase",
    "TestSkip",
    "assert_same_on_all_ranks",
    "at_least_x_gpu",
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
    "run_subtests",
    "run_tests",
    "skip_if_lt_x_gpu",
    "skip_if_no_gpu",
    "skip_if_odd_worldsize",
    "skip_if_rocm_arch_multiprocess",
    "skip_if_rocm_multiprocess",
    "skip_if_small_worldsize",
    "skip_if_win32",
    "spawn_threads_and_init_comms",
    "with_comms",
    "with_dist_debug_levels",
    "with_nccl_blocking_wait",
    "world_sizes",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'distributed_testing' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"distributed_testing.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])


if TYPE_CHECKING:
    from distributed_testing._assertions import assert_same_on_all_ranks
    from distributed_testing._backend_case import DistBackendTestCase
    from distributed_testing._comms import DTensorTestBase, ShardedTensorTestBase, with_comms
    from distributed_testing._continuous import MultiProcContinuousTest
    from distributed_testing._errors import ConfigError, DistributedTestingError, RankFailure
    from distributed_testing._guards import (
        DEFAULT_WORLD_SIZE,
        at_least_x_gpu,
        nccl_skip_if_lt_x_gpu,
        require_n_gpus_for_nccl_backend,
        requires_accelerator_dist_backend,
        requires_gloo,
        requires_mpi,
        requires_multicast_support,
        requires_nccl,
        requires_nccl_version,
        requires_ucc,
        requires_world_size,
        skip_if_lt_x_gpu,
        skip_if_no_gpu,
        skip_if_odd_worldsize,
        skip_if_rocm_arch_multiprocess,
        skip_if_rocm_multiprocess,
        skip_if_small_worldsize,
        skip_if_win32,
        with_dist_debug_levels,
        with_nccl_blocking_wait,
    )
    from distributed_testing._runner import run_tests
    from distributed_testing._skips import TEST_SKIPS, TestSkip
    from distributed_testing._testcase import DistributedTestBase, MultiProcessTestCase
    from distributed_testing._threaded import MultiThreadedTestCase, run_subtests, spawn_threads_and_init_comms
    from distributed_testing._world_sizes import world_sizes
