"""Pure tests of distributed_testing._guards and _skips: skip decorators and PyTorch's skip table."""

from __future__ import annotations

import contextlib
import os
import sys
import unittest
from typing import Any

import pytest
import torch
import torch.distributed as dist

from distributed_testing import (
    TEST_SKIPS,
    ConfigError,
    _skips,
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
