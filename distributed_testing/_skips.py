"""PyTorch's skip table: the exit codes ranks use to say "skip", and their messages."""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["TEST_SKIPS", "TestSkip", "not_spawned_reason", "reason_for_exit_code", "skip_exit_code"]


class TestSkip(NamedTuple):
    """An exit code a rank may leave with to mean "skip", and what it means."""

    exit_code: int
    message: str


TestSkip.__test__ = False  # type: ignore[attr-defined]  # a name pytest would collect, imported by test files


# Same keys and exit codes as torch.testing._internal.common_distributed, so
# suites and decorators written for PyTorch keep working.
TEST_SKIPS: dict[str, TestSkip] = {
    "backend_unavailable": TestSkip(72, "Skipped because distributed backend is not available."),
    "small_worldsize": TestSkip(73, "Skipped due to small world size."),
    "odd_worldsize": TestSkip(87, "Skipped due to odd world size."),
    "no_cuda": TestSkip(74, "CUDA is not available."),
    "multi-gpu-1": TestSkip(75, "Need at least 1 CUDA device"),
    "multi-gpu-2": TestSkip(77, "Need at least 2 CUDA devices"),
    "multi-gpu-3": TestSkip(80, "Need at least 3 CUDA devices"),
    "multi-gpu-4": TestSkip(81, "Need at least 4 CUDA devices"),
    "multi-gpu-5": TestSkip(82, "Need at least 5 CUDA devices"),
    "multi-gpu-6": TestSkip(83, "Need at least 6 CUDA devices"),
    "multi-gpu-7": TestSkip(84, "Need at least 7 CUDA devices"),
    "multi-gpu-8": TestSkip(85, "Need at least 8 CUDA devices"),
    "nccl": TestSkip(76, "c10d not compiled with NCCL support"),
    "skipIfRocm": TestSkip(78, "Test skipped for ROCm"),
    "no_peer_access": TestSkip(79, "Test skipped because no GPU peer access"),
    "generic": TestSkip(86, "Test skipped at subprocess level"),
    "importerror": TestSkip(88, "Test skipped due to missing import"),
    "no_accelerator": TestSkip(89, "accelerator is not available."),
}

_BY_CODE = {skip.exit_code: skip.message for skip in TEST_SKIPS.values()}
_BY_MESSAGE = {skip.message: skip.exit_code for skip in TEST_SKIPS.values()}


def reason_for_exit_code(code: int) -> str | None:
    """The skip message of a TEST_SKIPS exit code, or None for any other code."""
    return _BY_CODE.get(code)


def skip_exit_code(reason: str) -> int:
    """The exit code a rank leaves with after skipping for ``reason``."""
    return _BY_MESSAGE.get(reason, TEST_SKIPS["generic"].exit_code)


def not_spawned_reason(ranks: str) -> str:
    """Why a torch_compat test whose setUp started no ``ranks`` ("threads", "processes") skips:
    PyTorch's framework passes it without running its body; this library's own classes raise."""
    return (
        f"setUp started no rank {ranks} (it does not call self._spawn_{ranks}()), so the test body "
        "did not run; PyTorch's framework reports such a test passed"
    )
