"""The parent/rank protocol: plain, picklable data that crosses the process boundary."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final, Literal, get_args

__all__ = [
    "ERROR",
    "EXITED",
    "FAILED",
    "HUNG",
    "PASSED",
    "SKIPPED",
    "STOPPED",
    "TEST_OUTCOMES",
    "ErrorInfo",
    "PoolReady",
    "RankContext",
    "RankOutcome",
    "RankResult",
    "TestOutcome",
]

# The one vocabulary of outcomes. A test ends in a TestOutcome (reports, the JSON
# record, JUnit and the matrix tool all use these words); a rank in a RankOutcome:
# what it reported (passed, failed, skipped, exited) or what the parent saw (hung, stopped).
TestOutcome = Literal["passed", "failed", "error", "skipped"]
RankOutcome = Literal["passed", "failed", "skipped", "exited", "hung", "stopped"]
TEST_OUTCOMES: Final[tuple[TestOutcome, ...]] = get_args(TestOutcome)

PASSED: Final = "passed"
FAILED: Final = "failed"  # a test: an assertion failed; a rank: anything raised
ERROR: Final = "error"  # a test: something other than an assertion went wrong
SKIPPED: Final = "skipped"
EXITED: Final = "exited"  # the test called sys.exit(n) with n != 0 and not a skip code
HUNG: Final = "hung"  # still running at the deadline
STOPPED: Final = "stopped"  # stopped by the parent after a peer failed


@dataclass(frozen=True)
class ErrorInfo:
    """One exception raised in a rank, formatted there (tracebacks do not pickle)."""

    exc_type: str
    message: str
    traceback: str
    is_assertion: bool
    where: str = ""  # "", "setUp", "tearDown", "subTest (i=3)", "building the test case"


@dataclass(frozen=True)
class RankResult:
    """The one message a rank sends: how its run of the test ended."""

    rank: int
    pid: int
    status: RankOutcome  # passed, failed, skipped or exited
    errors: tuple[ErrorInfo, ...] = ()
    reason: str = ""  # the skip reason
    exit_code: int = 0  # the code this rank's process exits with
    duration: float = 0.0
    healthy: bool = True  # a pool rank: still fit for the next test (default group intact)
    failed_at: float = 0.0  # time.monotonic() of the first error (system-wide on Linux)
    sequence: int = -1  # a pool rank: collectives its default group has run (-1: unknown)
    expectations: tuple[tuple[str, int, str, str], ...] = ()  # assertExpectedInline: file, line, actual, expect
    imported: tuple[str, ...] = ()  # a forked rank: modules it imported that its fork server had not


@dataclass(frozen=True)
class PoolReady:
    """A pool rank's first message: its process group is up, or why not."""

    rank: int
    pid: int
    skip_reason: str | None = None
    error: ErrorInfo | None = None


@dataclass(frozen=True)
class RankContext:
    """What the parent tells a rank about where to leave its traces."""

    output_path: str
    stacks_path: str
    test_id: str
    stack_signal: int
    extra_env: dict[str, str] = field(default_factory=dict)
    example: Any = None  # hypothesis: the (args, kwargs) drawn in the parent
