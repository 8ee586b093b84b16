"""Hardware accounting: which skips mean "this machine lacks what the test needs".

A skip reaches a result as its reason string only (unittest's ``addSkip(test,
reason)``, pytest's skip report), so the fact travels with the reason: the
sources that know a skip is for lack of hardware (the guards, the GPU
shortfall checks, PyTorch's TEST_SKIPS exit codes of a rank) register the
reason with its *need* ("needs 2 CUDA devices", "needs backend nccl"), and the
front ends look the reason up. Nothing parses text. Such tests are counted
apart from other skips, and with ``DISTRIBUTED_TESTING_REQUIRE_HARDWARE=1``
they fail instead.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from types import TracebackType
from typing import TYPE_CHECKING

from distributed_testing._errors import ConfigError
from distributed_testing._parsers import ENV_REQUIRE_HARDWARE
from distributed_testing._protocol import SKIPPED
from distributed_testing._skips import TEST_SKIPS

if TYPE_CHECKING:
    from distributed_testing._outcomes import Outcome

__all__ = [
    "HardwareMissing",
    "gpus",
    "need_of",
    "note",
    "outcome_reason",
    "required",
    "required_failure",
    "summary",
]

OPTION = "--dt-require-hardware"


def _devices(count: int, kind: str = "CUDA") -> str:
    return f"needs {count} {kind} device{'s' * (count != 1)}"


# PyTorch's TEST_SKIPS entries that a rank exits with for lack of hardware, and their needs.
_RANK_NEEDS = {
    "backend_unavailable": "needs its distributed backend",
    "no_cuda": "needs CUDA",
    "nccl": "needs backend nccl",
    "no_peer_access": "needs GPU peer access",
    "no_accelerator": "needs an accelerator",
    **{f"multi-gpu-{n}": _devices(n) for n in range(1, 9)},
}
# Each registered reason and its need; a rank's TEST_SKIPS skip arrives as the entry's message.
_NEEDS: dict[str, str] = {TEST_SKIPS[key].message: need for key, need in _RANK_NEEDS.items()}


def note(reason: str, need: str) -> str:
    """Register ``reason`` as a skip for lack of hardware that ``need`` names; return it."""
    _NEEDS[reason] = need
    return reason


def need_of(reason: str) -> str | None:
    """The need of a skip reason registered as one for lack of hardware, else None."""
    return _NEEDS.get(reason)


def gpus(count: int, kind: str = "CUDA") -> str:
    """The need for ``count`` devices: ``needs 2 CUDA devices``."""
    return _devices(count, kind)


class HardwareMissing(AssertionError):
    """A test not run for lack of hardware, under ``DISTRIBUTED_TESTING_REQUIRE_HARDWARE=1``."""

    def __init__(self, reason: str, need: str) -> None:
        super().__init__(
            f"not run for lack of hardware ({need}): {reason}; {ENV_REQUIRE_HARDWARE}=1 ({OPTION}) "
            "makes that a failure. Run it where the hardware is, or unset the setting."
        )
        self.need = need


def outcome_reason(outcome: Outcome) -> str:
    """A folded skip's reason, registered when its skipping ranks said why for lack of hardware."""
    needs = [need for r in outcome.ranks if r.outcome == SKIPPED and (need := need_of(r.summary))]
    message = outcome.message
    return note(message, needs[0]) if needs else message


def required() -> bool:
    """Whether a test not run for lack of hardware fails (``DISTRIBUTED_TESTING_REQUIRE_HARDWARE``)."""
    from distributed_testing import _config

    try:
        return _config.load().require_hardware
    except ConfigError:  # reported by the run's own checks
        return False


def required_failure(reason: str, need: str) -> tuple[type[BaseException], BaseException, TracebackType | None]:
    """The failure (as ``sys.exc_info()``) that replaces a hardware skip under the setting."""
    error = HardwareMissing(reason, need)
    return type(error), error, None


def summary(needs: Iterable[str], failed: bool = False) -> str:
    """``2 tests not run for lack of hardware (needs 2 CUDA devices: 1, needs backend nccl: 1)``."""
    counts = Counter(needs)
    total = sum(counts.values())
    if not total:
        return ""
    parts = ", ".join(f"{need}: {n}" for need, n in sorted(counts.items(), key=lambda item: (-item[1], item[0])))
    tests = f"{total} test{'s' * (total != 1)}"
    if failed:
        return f"{tests} failed for lack of hardware ({parts}): {ENV_REQUIRE_HARDWARE}=1"
    return f"{tests} not run for lack of hardware ({parts})"
