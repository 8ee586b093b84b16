"""distributed_testing: test multi-rank PyTorch code with ordinary unittest or pytest classes.

A public, stable mirror of ``torch.testing._internal.common_distributed``:
each ``test_*`` method runs in ``world_size`` rank processes and the ranks'
results fold into one outcome that says which rank failed and why.
"""

from __future__ import annotations

from distributed_testing._backend_case import DistBackendTestCase
from distributed_testing._comms import DTensorTestBase, ShardedTensorTestBase, with_comms
from distributed_testing._continuous import MultiProcContinuousTest
from distributed_testing._errors import ConfigError, DistributedTestingError, RankFailure
from distributed_testing._guards import (
    requires_gloo,
    requires_mpi,
    requires_nccl,
    requires_nccl_version,
    requires_ucc,
    requires_world_size,
    skip_if_lt_x_gpu,
    skip_if_no_gpu,
    skip_if_odd_worldsize,
    skip_if_rocm_multiprocess,
    skip_if_small_worldsize,
    skip_if_win32,
    with_dist_debug_levels,
)
from distributed_testing._runner import run_tests
from distributed_testing._skips import TEST_SKIPS, TestSkip
from distributed_testing._testcase import DistributedTestBase, MultiProcessTestCase
from distributed_testing._world_sizes import world_sizes

__version__ = "0.1.0"

__all__ = [
    "TEST_SKIPS",
    "ConfigError",
    "DTensorTestBase",
    "DistBackendTestCase",
    "DistributedTestBase",
    "DistributedTestingError",
    "MultiProcContinuousTest",
    "MultiProcessTestCase",
    "RankFailure",
    "ShardedTensorTestBase",
    "TestSkip",
    "requires_gloo",
    "requires_mpi",
    "requires_nccl",
    "requires_nccl_version",
    "requires_ucc",
    "requires_world_size",
    "run_tests",
    "skip_if_lt_x_gpu",
    "skip_if_no_gpu",
    "skip_if_odd_worldsize",
    "skip_if_rocm_multiprocess",
    "skip_if_small_worldsize",
    "skip_if_win32",
    "with_comms",
    "with_dist_debug_levels",
    "world_sizes",
]
