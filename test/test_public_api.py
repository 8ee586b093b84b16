"""Freezes the public API: ``distributed_testing.__all__`` and the private-module layout.

A change here is a change to what users may import: update the list on purpose.
"""

from __future__ import annotations

import pkgutil

import pytest

import distributed_testing

PUBLIC_NAMES = [
    "ConfigError",
    "DEFAULT_WORLD_SIZE",
    "DTensorTestBase",
    "DistBackendTestCase",
    "DistributedTestBase",
    "DistributedTestingError",
    "MultiProcContinuousTest",
    "MultiProcessTestCase",
    "MultiThreadedTestCase",
    "RankFailure",
    "ShardedTensorTestBase",
    "TEST_SKIPS",
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

# Submodules users may import by name (DESIGN.md plans ``torch_compat``); every
# other module is private and starts with ``_``.
PUBLIC_MODULES: set[str] = {"torch_compat"}


def test_all_is_frozen() -> None:
    assert sorted(distributed_testing.__all__) == PUBLIC_NAMES


def test_all_has_no_duplicates() -> None:
    assert len(distributed_testing.__all__) == len(set(distributed_testing.__all__))


@pytest.mark.parametrize("name", PUBLIC_NAMES)
def test_public_name_is_importable_from_the_package(name: str) -> None:
    namespace: dict[str, object] = {}
    exec(f"from distributed_testing import {name}", namespace)
    assert namespace[name] is getattr(distributed_testing, name)


def test_star_import_gives_exactly_all() -> None:
    namespace: dict[str, object] = {}
    exec("from distributed_testing import *", namespace)
    assert set(namespace) - {"__builtins__"} == set(PUBLIC_NAMES)


@pytest.mark.parametrize("name", PUBLIC_NAMES)
def test_public_object_is_defined_in_a_private_module(name: str) -> None:
    module = getattr(getattr(distributed_testing, name), "__module__", None)
    if module is None:  # a plain value such as the TEST_SKIPS dict
        return
    assert module.startswith("distributed_testing._"), f"{name} is defined in {module}"


def test_submodules_are_private() -> None:
    modules = {info.name for info in pkgutil.iter_modules(distributed_testing.__path__)}
    assert modules, "found no submodules: the package path is wrong"
    public = {name for name in modules if not name.startswith("_")}
    assert public == PUBLIC_MODULES


def test_package_has_a_version() -> None:
    assert isinstance(distributed_testing.__version__, str)
    assert distributed_testing.__version__.count(".") >= 1


def test_every_public_name_has_a_home_module() -> None:
    assert sorted(distributed_testing._EXPORTS) == sorted(distributed_testing.__all__)


def test_importing_the_package_does_not_import_torch() -> None:
    import subprocess
    import sys

    code = "import sys, distributed_testing; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
