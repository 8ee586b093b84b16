"""Pure tests of distributed_testing._guards and _skips: skip decorators and PyTorch's skip table."""

from __future__ import annotations

import contextlib
import os
import sys
import types
import unittest
from typing import Any

import pytest
import torch
import torch.distributed as dist
from conftest import outcomes, wait_gone

import distributed_testing
from distributed_testing import (
    DEFAULT_WORLD_SIZE,
    TEST_SKIPS,
    ConfigError,
    _device_query,
    _devices,
    _guards,
    _skips,
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
from distributed_testing._guards import guard_reason
from distributed_testing._skips import reason_for_exit_code, skip_exit_code

_ENV_VARS = (
    "BACKEND",
    "WORLD_SIZE",
    "TEMP_DIR",
    "INIT_METHOD",
    "DISTRIBUTED_TESTING_START_METHOD",
    "DISTRIBUTED_TESTING_TIMEOUT",
    "TORCH_DISTRIBUTED_DEBUG",
    "TORCH_NCCL_BLOCKING_WAIT",
    "TORCH_NCCL_ASYNC_ERROR_HANDLING",
)


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Dynamic guards read BACKEND through _config: keep the outer run's settings out."""
    for name in _ENV_VARS:
        monkeypatch.delenv(name, raising=False)


def _body(self: Any) -> str:
    return "ran"


class FakeCase:
    """Just what a dynamic guard looks at: a ``world_size``."""

    def __init__(self, world_size: int) -> None:
        self.world_size = world_size


def guarded_case(world_size: int, guard: Any) -> tuple[FakeCase, Any]:
    """A fake case whose class has ``test_m`` decorated with ``guard``."""
    klass: Any = type("Case", (FakeCase,), {"test_m": guard(_body)})
    return klass(world_size), klass.test_m


def skip_reason_of(func: Any) -> str | None:
    """The reason a static (unittest) skip marker gives, or None if it does not skip."""
    if getattr(func, "__unittest_skip__", False):
        return str(func.__unittest_skip_why__)
    return None


def run_unittest(case: unittest.TestCase) -> unittest.TestResult:
    result = unittest.TestResult()
    case.run(result)
    return result


def no_op() -> None:
    pass


# -- static guards: unittest skip markers -------------------------------------


def test_skip_if_lt_x_gpu_reason_counts_devices() -> None:
    assert skip_reason_of(skip_if_lt_x_gpu(2)(no_op)) == "needs 2 CUDA devices, found 0"


def test_skip_if_lt_x_gpu_reason_singular() -> None:
    assert skip_reason_of(skip_if_lt_x_gpu(1)(no_op)) == "needs 1 CUDA device, found 0"


def test_skip_if_lt_x_gpu_does_not_skip_with_enough_devices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert skip_reason_of(skip_if_lt_x_gpu(2)(no_op)) is None


def test_requires_nccl_reason_names_backend_and_what_the_build_has() -> None:
    assert skip_reason_of(requires_nccl()(no_op)) == (
        "needs the nccl backend, which this torch build does not have (it has: gloo)"
    )


@pytest.mark.parametrize(("guard", "backend"), [(requires_mpi, "mpi"), (requires_ucc, "ucc")])
def test_requires_other_unbuilt_backends_skip(guard: Any, backend: str) -> None:
    assert skip_reason_of(guard()(no_op)) == (
        f"needs the {backend} backend, which this torch build does not have (it has: gloo)"
    )


def test_requires_gloo_does_not_skip_here() -> None:
    assert skip_reason_of(requires_gloo()(no_op)) is None


def test_requires_nccl_version_is_a_no_op_without_cuda() -> None:
    assert requires_nccl_version((2, 10), "needs NCCL 2.10")(no_op) is no_op


def test_requires_nccl_version_with_gpus_but_no_nccl_skips_for_the_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    reason = skip_reason_of(requires_nccl_version((2, 10), "needs NCCL 2.10")(no_op))
    assert reason == "needs the nccl backend, which this torch build does not have (it has: gloo)"


def test_skip_if_win32_does_not_skip_on_linux() -> None:
    assert sys.platform.startswith("linux")
    assert skip_reason_of(skip_if_win32()(no_op)) is None


def test_skip_if_rocm_multiprocess_does_not_skip_on_a_cpu_build() -> None:
    assert skip_reason_of(skip_if_rocm_multiprocess(no_op)) is None


def test_static_guard_on_a_class_skips_every_test_before_running_it() -> None:
    ran = []

    @skip_if_lt_x_gpu(2)
    class Case(unittest.TestCase):
        def test_a(self) -> None:
            ran.append("a")

    result = run_unittest(Case("test_a"))
    assert result.skipped == [(result.skipped[0][0], "needs 2 CUDA devices, found 0")]
    assert ran == []


def test_static_guard_on_a_method_is_reported_by_unittest() -> None:
    class Case(unittest.TestCase):
        @requires_nccl()
        def test_a(self) -> None:
            pass

    (skip,) = run_unittest(Case("test_a")).skipped
    assert skip[1] == "needs the nccl backend, which this torch build does not have (it has: gloo)"


# -- dynamic guards: evaluated against the test case ---------------------------


@pytest.mark.parametrize(("world_size", "reason"), [(3, "needs an even world size, got 3"), (1, "needs an even world size, got 1"), (2, None), (4, None)])
def test_skip_if_odd_worldsize(world_size: int, reason: str | None) -> None:
    assert guard_reason(*guarded_case(world_size, skip_if_odd_worldsize)) == reason


@pytest.mark.parametrize(("world_size", "reason"), [(2, "needs world size >= 8, got 2"), (7, "needs world size >= 8, got 7"), (8, None), (16, None)])
def test_skip_if_small_worldsize(world_size: int, reason: str | None) -> None:
    assert guard_reason(*guarded_case(world_size, skip_if_small_worldsize)) == reason


@pytest.mark.parametrize("guard", [skip_if_odd_worldsize, skip_if_small_worldsize])
def test_world_size_guards_do_not_apply_to_mpi(guard: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dist, "is_mpi_available", lambda: True)
    monkeypatch.setenv("BACKEND", "mpi")
    assert guard_reason(*guarded_case(3, guard)) is None


def test_skip_if_no_gpu_reason() -> None:
    reason = guard_reason(*guarded_case(2, skip_if_no_gpu))
    assert reason == "needs a CUDA device per rank: 2 for world size 2, found 0"


def test_skip_if_no_gpu_with_a_device_per_rank(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert guard_reason(*guarded_case(2, skip_if_no_gpu)) is None


def test_unguarded_method_has_no_reason() -> None:
    assert guard_reason(*guarded_case(3, lambda f: f)) is None


def test_dynamic_guard_wrapper_raises_skip_test_when_called_directly() -> None:
    case, _ = guarded_case(3, skip_if_odd_worldsize)
    with pytest.raises(unittest.SkipTest, match="^needs an even world size, got 3$"):
        case.test_m()  # type: ignore[attr-defined]


def test_dynamic_guard_wrapper_runs_the_test_when_the_check_passes() -> None:
    case, _ = guarded_case(4, skip_if_odd_worldsize)
    assert case.test_m() == "ran"  # type: ignore[attr-defined]


def test_dynamic_guard_keeps_the_method_name() -> None:
    _, method = guarded_case(4, skip_if_odd_worldsize)
    assert method.__name__ == "_body"


def test_stacked_dynamic_guards_report_the_first_failing_check() -> None:
    def both(func: Any) -> Any:
        return skip_if_odd_worldsize(skip_if_small_worldsize(func))

    assert guard_reason(*guarded_case(3, both)) == "needs world size >= 8, got 3"
    assert guard_reason(*guarded_case(4, both)) == "needs world size >= 8, got 4"
    assert guard_reason(*guarded_case(9, both)) == "needs an even world size, got 9"
    assert guard_reason(*guarded_case(8, both)) is None


def test_dynamic_guard_skip_reaches_unittest() -> None:
    class Case(unittest.TestCase):
        world_size = 3

        @skip_if_odd_worldsize
        def test_a(self) -> None:
            pass

    (skip,) = run_unittest(Case("test_a")).skipped
    assert skip[1] == "needs an even world size, got 3"


def test_class_level_dynamic_guard_applies_to_every_method() -> None:
    @skip_if_odd_worldsize
    class Case(FakeCase):
        def test_m(self) -> None:
            pass

    assert guard_reason(Case(3), Case.test_m) == "needs an even world size, got 3"
    assert guard_reason(Case(4), Case.test_m) is None


def test_class_level_dynamic_guard_is_inherited() -> None:
    @skip_if_small_worldsize
    class Base(FakeCase):
        pass

    class Case(Base):
        def test_m(self) -> None:
            pass

    assert guard_reason(Case(2), Case.test_m) == "needs world size >= 8, got 2"


def test_class_level_guard_is_checked_before_the_method_guard() -> None:
    @skip_if_small_worldsize
    class Case(FakeCase):
        @skip_if_odd_worldsize
        def test_m(self) -> None:
            pass

    assert guard_reason(Case(3), Case.test_m) == "needs world size >= 8, got 3"


def test_class_level_guard_does_not_leak_to_the_parent_class() -> None:
    class Base(FakeCase):
        def test_m(self) -> None:
            pass

    skip_if_odd_worldsize(type("Child", (Base,), {}))
    assert guard_reason(Base(3), Base.test_m) is None


# -- requires_world_size ------------------------------------------------------


def test_requires_world_size_records_the_size() -> None:
    _, method = guarded_case(2, requires_world_size(3))
    assert method._required_world_size == 3


def test_requires_world_size_survives_another_guard_on_top() -> None:
    def both(func: Any) -> Any:
        return skip_if_odd_worldsize(requires_world_size(4)(func))

    _, method = guarded_case(4, both)
    assert method._required_world_size == 4


def test_requires_world_size_does_not_skip_with_gloo() -> None:
    assert guard_reason(*guarded_case(3, requires_world_size(3))) is None


def test_requires_world_size_skips_nccl_without_enough_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dist, "is_nccl_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setenv("BACKEND", "nccl")
    reason = guard_reason(*guarded_case(3, requires_world_size(3)))
    assert reason == "needs 3 CUDA devices for nccl at world size 3, found 1"


@pytest.mark.parametrize("n", [0, -2, True])
def test_requires_world_size_rejects_bad_sizes(n: object) -> None:
    with pytest.raises(ConfigError, match=r"^requires_world_size\(n\) must be an integer >= 1"):
        requires_world_size(n)  # type: ignore[arg-type]


# -- with_dist_debug_levels ---------------------------------------------------


def _record_levels(seen: list[str | None]) -> Any:
    def test_m() -> str:
        seen.append(os.environ.get("TORCH_DISTRIBUTED_DEBUG"))
        return "done"

    return test_m


def test_with_dist_debug_levels_restores_an_unset_variable() -> None:
    wrapped = with_dist_debug_levels(["OFF", "DETAIL"])(_record_levels([]))
    with contextlib.suppress(Exception):
        wrapped()
    assert "TORCH_DISTRIBUTED_DEBUG" not in os.environ


def test_with_dist_debug_levels_restores_a_set_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_DISTRIBUTED_DEBUG", "INFO")
    wrapped = with_dist_debug_levels(["OFF", "DETAIL"])(_record_levels([]))
    with contextlib.suppress(Exception):
        wrapped()
    assert os.environ["TORCH_DISTRIBUTED_DEBUG"] == "INFO"


def test_with_dist_debug_levels_runs_once_per_level_then_restores(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_DISTRIBUTED_DEBUG", "INFO")
    seen: list[str | None] = []
    wrapped = with_dist_debug_levels(["OFF", "DETAIL"])(_record_levels(seen))
    assert wrapped() == "done"
    assert seen == ["OFF", "DETAIL"]
    assert os.environ["TORCH_DISTRIBUTED_DEBUG"] == "INFO"
    assert dist.get_debug_level() == dist.DebugLevel.INFO


def test_with_dist_debug_levels_lets_the_test_exception_through() -> None:
    def test_m() -> None:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        with_dist_debug_levels(["DETAIL"])(test_m)()
    assert "TORCH_DISTRIBUTED_DEBUG" not in os.environ


# -- skip_if_lt_x_gpu(x, allow_cpu=...): CUDA, HPU and XPU, as PyTorch 2.13 ----------


def _with_xpus(monkeypatch: pytest.MonkeyPatch, count: int) -> None:
    monkeypatch.setattr(torch.xpu, "is_available", lambda: count > 0)
    monkeypatch.setattr(torch.xpu, "device_count", lambda: count)


def test_skip_if_lt_x_gpu_allow_cpu_runs_on_a_machine_without_accelerators() -> None:
    assert skip_reason_of(skip_if_lt_x_gpu(2, allow_cpu=True)(no_op)) is None
    assert skip_reason_of(skip_if_lt_x_gpu(8, allow_cpu=True)(no_op)) is None


def test_skip_if_lt_x_gpu_allow_cpu_still_skips_with_too_few_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert skip_reason_of(skip_if_lt_x_gpu(2, allow_cpu=True)(no_op)) == (
        "needs 2 CUDA devices, found 1 (allow_cpu runs it only where there is no accelerator)"
    )
    assert skip_reason_of(skip_if_lt_x_gpu(1, allow_cpu=True)(no_op)) is None


def test_skip_if_lt_x_gpu_allow_cpu_false_is_the_default() -> None:
    assert skip_reason_of(skip_if_lt_x_gpu(2, allow_cpu=False)(no_op)) == "needs 2 CUDA devices, found 0"
    with pytest.raises(TypeError):
        skip_if_lt_x_gpu(2, True)  # type: ignore[misc]  # keyword-only, as PyTorch's


def test_skip_if_lt_x_gpu_counts_xpu_devices(monkeypatch: pytest.MonkeyPatch) -> None:
    _with_xpus(monkeypatch, 2)
    assert skip_reason_of(skip_if_lt_x_gpu(2)(no_op)) is None
    assert skip_reason_of(skip_if_lt_x_gpu(3)(no_op)) == "needs 3 devices of one accelerator (CUDA, XPU), found 0 CUDA, 2 XPU"
    # an XPU is an accelerator: allow_cpu does not run a test that needs more of them
    assert skip_reason_of(skip_if_lt_x_gpu(3, allow_cpu=True)(no_op)) is not None


def test_skip_if_lt_x_gpu_counts_hpu_devices(monkeypatch: pytest.MonkeyPatch) -> None:
    hpu = types.SimpleNamespace(is_available=lambda: True, device_count=lambda: 4)
    monkeypatch.setattr(torch, "hpu", hpu, raising=False)
    assert skip_reason_of(skip_if_lt_x_gpu(4)(no_op)) is None
    assert at_least_x_gpu(4) and not at_least_x_gpu(5)


def test_skip_if_lt_x_gpu_does_not_add_devices_of_different_kinds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    _with_xpus(monkeypatch, 1)
    assert skip_reason_of(skip_if_lt_x_gpu(2)(no_op)) == "needs 2 devices of one accelerator (CUDA, XPU), found 1 CUDA, 1 XPU"


# -- at_least_x_gpu -------------------------------------------------------------


@pytest.mark.parametrize("x", [0, 1, 2])
def test_at_least_x_gpu_is_false_without_accelerators(x: int) -> None:
    assert at_least_x_gpu(x) is False


def test_at_least_x_gpu_counts_cuda_devices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert (at_least_x_gpu(1), at_least_x_gpu(2), at_least_x_gpu(3)) == (True, True, False)


# -- nccl_skip_if_lt_x_gpu, require_n_gpus_for_nccl_backend ----------------------


def test_nccl_skip_if_lt_x_gpu_skips_nccl_without_gpus() -> None:
    assert skip_reason_of(nccl_skip_if_lt_x_gpu("nccl", 2)(no_op)) == "needs 2 CUDA devices for the nccl backend, found 0"


def test_nccl_skip_if_lt_x_gpu_runs_other_backends() -> None:
    assert skip_reason_of(nccl_skip_if_lt_x_gpu("gloo", 2)(no_op)) is None


def test_nccl_skip_if_lt_x_gpu_runs_nccl_with_enough_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert skip_reason_of(nccl_skip_if_lt_x_gpu("nccl", 2)(no_op)) is None
    assert skip_reason_of(nccl_skip_if_lt_x_gpu("nccl", 3)(no_op)) == "needs 3 CUDA devices for the nccl backend, found 2"


def test_require_n_gpus_for_nccl_backend_takes_n_first() -> None:
    assert skip_reason_of(require_n_gpus_for_nccl_backend(1, "nccl")(no_op)) == (
        "needs 1 CUDA device for the nccl backend, found 0"
    )
    assert skip_reason_of(require_n_gpus_for_nccl_backend(2, "gloo")(no_op)) is None


# -- requires_accelerator_dist_backend --------------------------------------------


def test_requires_accelerator_dist_backend_skips_without_one() -> None:
    assert skip_reason_of(requires_accelerator_dist_backend()(no_op)) == (
        "needs an accelerator communication backend among nccl, xccl, hccl, found none: "
        "this torch build has gloo; hccl needs an HPU, found none"
    )


def test_requires_accelerator_dist_backend_never_counts_gloo() -> None:
    # PyTorch's counts only nccl, xccl and hccl: a list of gloo skips there too.
    assert skip_reason_of(requires_accelerator_dist_backend(["gloo"])(no_op)) == (
        "needs an accelerator communication backend among gloo, found none: "
        "gloo is not one (those are nccl, xccl, hccl)"
    )


@pytest.mark.parametrize("backends", [None, ["nccl"], ["gloo", "nccl"]])
def test_requires_accelerator_dist_backend_runs_with_nccl(backends: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dist, "is_nccl_available", lambda: True)
    assert skip_reason_of(requires_accelerator_dist_backend(backends)(no_op)) is None
    assert skip_reason_of(requires_accelerator_dist_backend(["xccl"])(no_op)) is not None


def test_requires_accelerator_dist_backend_hccl_needs_an_hpu(monkeypatch: pytest.MonkeyPatch) -> None:
    assert skip_reason_of(requires_accelerator_dist_backend(["hccl"])(no_op)) == (
        "needs an accelerator communication backend among hccl, found none: hccl needs an HPU, found none"
    )
    hpu = types.SimpleNamespace(is_available=lambda: True, device_count=lambda: 1)
    monkeypatch.setattr(torch, "hpu", hpu, raising=False)
    assert skip_reason_of(requires_accelerator_dist_backend(["hccl"])(no_op)) is None


# -- guards that ask device 0: requires_multicast_support, skip_if_rocm_arch_multiprocess --


def test_requires_multicast_support_skips_without_cuda() -> None:
    assert skip_reason_of(requires_multicast_support()(no_op)) == "needs CUDA multicast support, found no CUDA device"


@pytest.mark.parametrize(("answer", "reason"), [("1", None), ("0", "needs CUDA multicast support, which device 0 does not have")])
def test_requires_multicast_support_with_a_gpu_asks_device_0_when_the_test_runs(
    answer: str, reason: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    asked: list[str] = []
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(_guards, "ask_device", lambda query: asked.append(query) or answer)
    case, method = guarded_case(2, requires_multicast_support())
    assert asked == []  # not at import
    assert guard_reason(case, method) == reason
    assert asked == ["_device0_multicast"]


def test_requires_multicast_support_on_a_class_decides_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(_guards, "ask_device", lambda query: "0")

    @requires_multicast_support()
    class Case(unittest.TestCase):
        def test_a(self) -> None:
            pass

    (skip,) = run_unittest(Case("test_a")).skipped
    assert skip[1] == "needs CUDA multicast support, which device 0 does not have"


def test_skip_if_rocm_arch_multiprocess_is_a_no_op_on_a_cuda_or_cpu_build() -> None:
    assert skip_if_rocm_arch_multiprocess(("gfx942", "gfx950"))(no_op) is no_op


@pytest.mark.parametrize(("arch", "reason"), [("gfx942", "skipped on ROCm architecture gfx942 (skipped on: gfx942, gfx950)"), ("gfx90a", None)])
def test_skip_if_rocm_arch_multiprocess_on_rocm(arch: str, reason: str | None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_devices, "is_rocm", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(_guards, "ask_device", lambda query: arch if query == "_device0_arch" else "")
    assert guard_reason(*guarded_case(2, skip_if_rocm_arch_multiprocess(("gfx942", "gfx950")))) == reason


def test_ask_device_asks_a_fresh_interpreter_and_leaves_cuda_alone() -> None:
    assert _device_query.ask_device.__wrapped__("_device0_multicast") == "0"  # this machine has no GPU
    assert _device_query.ask_device.__wrapped__("_device0_arch") == ""  # a failed question is ""
    assert not torch.cuda.is_initialized()  # type: ignore[no-untyped-call]


def test_ask_device_asks_in_process_in_a_rank(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_device_query, "_cuda_safe_here", lambda: True)
    monkeypatch.setitem(_device_query._DEVICE_QUERIES, "_device0_arch", lambda: "gfx942")
    assert _device_query.ask_device.__wrapped__("_device0_arch") == "gfx942"


# -- with_nccl_blocking_wait, DEFAULT_WORLD_SIZE -----------------------------------


def _nccl_env() -> tuple[str | None, str | None]:
    return os.environ.get("TORCH_NCCL_BLOCKING_WAIT"), os.environ.get("TORCH_NCCL_ASYNC_ERROR_HANDLING")


def test_with_nccl_blocking_wait_sets_blocking_wait_and_unsets_async_handling(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_NCCL_ASYNC_ERROR_HANDLING", "3")
    monkeypatch.setenv("TORCH_NCCL_BLOCKING_WAIT", "0")
    assert with_nccl_blocking_wait(_nccl_env)() == ("1", None)
    assert _nccl_env() == ("0", "3")


def test_with_nccl_blocking_wait_restores_unset_variables_even_on_error() -> None:
    def boom() -> None:
        assert _nccl_env() == ("1", None)
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        with_nccl_blocking_wait(boom)()
    assert _nccl_env() == (None, None)


def test_with_nccl_blocking_wait_keeps_the_guards_beneath_it() -> None:
    static = with_nccl_blocking_wait(skip_if_lt_x_gpu(2)(_body))
    assert skip_reason_of(static) == "needs 2 CUDA devices, found 0"
    assert guard_reason(*guarded_case(3, lambda f: with_nccl_blocking_wait(skip_if_odd_worldsize(f)))) == (
        "needs an even world size, got 3"
    )


def test_default_world_size_is_pytorchs() -> None:
    from torch.testing._internal import common_distributed

    assert DEFAULT_WORLD_SIZE == common_distributed.DEFAULT_WORLD_SIZE == 4


# -- outcome for outcome: PyTorch's guards and ours, on this machine --------------

# Each applies a guard of a module (ours or PyTorch's common_distributed) to a test body.
_SAME_OUTCOME = {
    "skip_if_lt_x_gpu(1)": lambda m: m.skip_if_lt_x_gpu(1),
    "skip_if_lt_x_gpu(2)": lambda m: m.skip_if_lt_x_gpu(2),
    "skip_if_lt_x_gpu(2, allow_cpu=True)": lambda m: m.skip_if_lt_x_gpu(2, allow_cpu=True),
    "nccl_skip_if_lt_x_gpu('nccl', 2)": lambda m: m.nccl_skip_if_lt_x_gpu("nccl", 2),
    "nccl_skip_if_lt_x_gpu('gloo', 2)": lambda m: m.nccl_skip_if_lt_x_gpu("gloo", 2),
    "require_n_gpus_for_nccl_backend(2, 'nccl')": lambda m: m.require_n_gpus_for_nccl_backend(2, "nccl"),
    "require_n_gpus_for_nccl_backend(2, 'gloo')": lambda m: m.require_n_gpus_for_nccl_backend(2, "gloo"),
    "requires_accelerator_dist_backend()": lambda m: m.requires_accelerator_dist_backend(),
    "requires_accelerator_dist_backend(['gloo'])": lambda m: m.requires_accelerator_dist_backend(["gloo"]),
    "requires_accelerator_dist_backend(['nccl', 'hccl'])": lambda m: m.requires_accelerator_dist_backend(["nccl", "hccl"]),
    "requires_multicast_support()": lambda m: m.requires_multicast_support(),
    "skip_if_rocm_arch_multiprocess(('gfx942',))": lambda m: m.skip_if_rocm_arch_multiprocess(("gfx942",)),
    "with_nccl_blocking_wait": lambda m: m.with_nccl_blocking_wait,
}


def _outcome_of(func: Any) -> str:
    """skip or run, whichever way a guard says it: unittest's marker, SkipTest, a TEST_SKIPS exit."""
    if getattr(func, "__unittest_skip__", False):
        return "skip"
    try:
        func(FakeCase(2))
    except unittest.SkipTest:
        return "skip"
    except SystemExit as exc:
        return "skip" if reason_for_exit_code(int(exc.code or 0)) else f"exit {exc.code}"
    return "run"


@pytest.mark.parametrize("name", sorted(_SAME_OUTCOME))
def test_outcome_matches_pytorchs_on_this_machine(name: str) -> None:
    from torch.testing._internal import common_distributed

    from distributed_testing import torch_compat

    assert not torch_compat.installed()  # else PyTorch's names would be ours
    apply = _SAME_OUTCOME[name]
    assert _outcome_of(apply(distributed_testing)(_body)) == _outcome_of(apply(common_distributed)(_body))


@pytest.mark.parametrize("x", [0, 1, 2])
def test_at_least_x_gpu_matches_pytorchs(x: int) -> None:
    from torch.testing._internal import common_distributed

    assert at_least_x_gpu(x) is common_distributed.at_least_x_gpu(x)


# -- in real runs: skipped in the parent before any rank, passing ones run in ranks ----

GUARDED = """
def mark(test, rank):
    open(os.path.join(os.environ["MARKER_DIR"], f"{test}-{rank}"), "w").close()


class TestGuards(MultiProcessTestCase):
    @property
    def world_size(self):
        return 2

    def setUp(self):
        super().setUp()
        self._spawn_processes()

    @skip_if_lt_x_gpu(2, allow_cpu=True)
    def test_allow_cpu(self):
        mark("allow_cpu", self.rank)

    @skip_if_lt_x_gpu(2)
    def test_lt_x_gpu(self):
        mark("lt_x_gpu", self.rank)

    @nccl_skip_if_lt_x_gpu("nccl", 2)
    def test_nccl_lt_x_gpu(self):
        mark("nccl_lt_x_gpu", self.rank)

    @nccl_skip_if_lt_x_gpu("gloo", 2)
    def test_gloo_lt_x_gpu(self):
        mark("gloo_lt_x_gpu", self.rank)

    @require_n_gpus_for_nccl_backend(2, "nccl")
    def test_n_gpus_nccl(self):
        mark("n_gpus_nccl", self.rank)

    @requires_accelerator_dist_backend()
    def test_accelerator_backend(self):
        mark("accelerator_backend", self.rank)

    @requires_accelerator_dist_backend(["gloo"])
    def test_accelerator_backend_gloo(self):
        mark("accelerator_backend_gloo", self.rank)

    @requires_multicast_support()
    def test_multicast(self):
        mark("multicast", self.rank)

    @skip_if_rocm_arch_multiprocess(("gfx942",))
    def test_rocm_arch(self):
        mark("rocm_arch", self.rank)

    @with_nccl_blocking_wait
    def test_blocking_wait(self):
        assert os.environ["TORCH_NCCL_BLOCKING_WAIT"] == "1"
        assert "TORCH_NCCL_ASYNC_ERROR_HANDLING" not in os.environ
        mark("blocking_wait", self.rank)

    def test_after_blocking_wait(self):
        assert os.environ["TORCH_NCCL_ASYNC_ERROR_HANDLING"] == "1"
        assert at_least_x_gpu(1) is False and DEFAULT_WORLD_SIZE == 4

    @unittest.skipIf(at_least_x_gpu(1), "has a GPU")
    def test_no_gpu(self):
        mark("no_gpu", self.rank)


if __name__ == "__main__":
    run_tests()
"""

GUARDED_OUTCOMES = {
    "TestGuards.test_allow_cpu": "ok",
    "TestGuards.test_lt_x_gpu": "skipped 'needs 2 CUDA devices, found 0'",
    "TestGuards.test_nccl_lt_x_gpu": "skipped 'needs 2 CUDA devices for the nccl backend, found 0'",
    "TestGuards.test_gloo_lt_x_gpu": "ok",
    "TestGuards.test_n_gpus_nccl": "skipped 'needs 2 CUDA devices for the nccl backend, found 0'",
    "TestGuards.test_accelerator_backend": "skipped 'needs an accelerator communication backend among nccl, xccl, "
    "hccl, found none: this torch build has gloo; hccl needs an HPU, found none'",
    "TestGuards.test_accelerator_backend_gloo": "skipped 'needs an accelerator communication backend among gloo, "
    "found none: gloo is not one (those are nccl, xccl, hccl)'",
    "TestGuards.test_multicast": "skipped 'needs CUDA multicast support, found no CUDA device'",
    "TestGuards.test_rocm_arch": "ok",
    "TestGuards.test_blocking_wait": "ok",
    "TestGuards.test_after_blocking_wait": "ok",
    "TestGuards.test_no_gpu": "ok",
}
_RAN = {"allow_cpu", "gloo_lt_x_gpu", "rocm_arch", "blocking_wait", "no_gpu"}


def _check_guarded_run(runner: Any, run: Any, marks: Any) -> None:
    assert run.returncode == 0, run.output
    assert outcomes(run.output) == GUARDED_OUTCOMES, run.output
    # every rank of the tests that run ran; no rank of a skipped test started
    assert sorted(os.listdir(marks)) == sorted(f"{name}-{rank}" for name in _RAN for rank in (0, 1))
    assert wait_gone(str(runner.tmp_path)) == []
    assert runner.leftovers() == []


@pytest.mark.slow
def test_new_guards_in_a_real_run(runner: Any) -> None:
    marks = runner.tmp_path / "marks"
    marks.mkdir()
    path = runner.write(GUARDED)
    run = runner.run(str(path), "-v", MARKER_DIR=str(marks), TORCH_NCCL_ASYNC_ERROR_HANDLING="1")
    _check_guarded_run(runner, run, marks)


# The same file written for PyTorch: the names come from common_distributed, ours after install().
GUARDED_FOR_PYTORCH = (
    """\
from distributed_testing import torch_compat
torch_compat.install()

import os, unittest
import distributed_testing
from torch.testing._internal import common_distributed
from torch.testing._internal.common_distributed import (
    DEFAULT_WORLD_SIZE,
    MultiProcessTestCase,
    at_least_x_gpu,
    nccl_skip_if_lt_x_gpu,
    require_n_gpus_for_nccl_backend,
    requires_accelerator_dist_backend,
    requires_multicast_support,
    skip_if_lt_x_gpu,
    skip_if_rocm_arch_multiprocess,
    with_nccl_blocking_wait,
)
from torch.testing._internal.common_utils import run_tests

NEW = ("DEFAULT_WORLD_SIZE", "at_least_x_gpu", "nccl_skip_if_lt_x_gpu", "require_n_gpus_for_nccl_backend",
       "requires_accelerator_dist_backend", "requires_multicast_support", "skip_if_lt_x_gpu",
       "skip_if_rocm_arch_multiprocess", "with_nccl_blocking_wait")
for name in NEW:
    assert getattr(common_distributed, name) is getattr(distributed_testing, name), name
    assert name in torch_compat.REPLACED, name
"""
    + GUARDED
)


@pytest.mark.slow
def test_new_guards_through_torch_compat(runner: Any) -> None:
    marks = runner.tmp_path / "marks"
    marks.mkdir()
    path = runner.write(GUARDED_FOR_PYTORCH, header=False)
    run = runner.run(str(path), "-v", MARKER_DIR=str(marks), TORCH_NCCL_ASYNC_ERROR_HANDLING="1")
    _check_guarded_run(runner, run, marks)


# -- _skips: PyTorch's skip table ---------------------------------------------


def _torch_skips() -> dict[str, Any]:
    from torch.testing._internal.common_distributed import TEST_SKIPS as torch_skips

    return dict(torch_skips)


def test_test_skips_have_pytorchs_keys_and_exit_codes() -> None:
    ours = {key: skip.exit_code for key, skip in TEST_SKIPS.items()}
    theirs = {key: skip.exit_code for key, skip in _torch_skips().items()}
    assert ours == theirs


def test_test_skips_have_pytorchs_messages_except_generic() -> None:
    # "generic" drops PyTorch's "look at subprocess log": here a skip keeps its reason.
    theirs = _torch_skips()
    differ = {key for key, skip in TEST_SKIPS.items() if skip.message != theirs[key].message}
    assert differ == {"generic"}


def test_test_skip_is_a_named_tuple() -> None:
    skip = TEST_SKIPS["odd_worldsize"]
    assert isinstance(skip, _skips.TestSkip)
    assert skip == (87, "Skipped due to odd world size.")
    assert (skip.exit_code, skip.message) == (87, "Skipped due to odd world size.")


def test_test_skips_exit_codes_are_unique() -> None:
    codes = [skip.exit_code for skip in TEST_SKIPS.values()]
    assert len(codes) == len(set(codes))


@pytest.mark.parametrize(("key", "code"), [("small_worldsize", 73), ("multi-gpu-2", 77), ("generic", 86), ("no_accelerator", 89)])
def test_reason_for_exit_code(key: str, code: int) -> None:
    assert reason_for_exit_code(code) == TEST_SKIPS[key].message


@pytest.mark.parametrize("code", [0, 1, 10, 71, 90, -11])
def test_reason_for_exit_code_other_codes(code: int) -> None:
    assert reason_for_exit_code(code) is None


def test_skip_exit_code_of_every_table_message() -> None:
    for skip in TEST_SKIPS.values():
        assert skip_exit_code(skip.message) == skip.exit_code


def test_skip_exit_code_of_any_other_reason_is_generic() -> None:
    assert skip_exit_code("needs an even world size, got 3") == 86
