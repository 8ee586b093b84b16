"""Retries and repetitions: one test's ``run(result)`` as several attempts, each on fresh ranks.

``DISTRIBUTED_TESTING_RETRIES=K`` re-runs a failing or hung test up to K more
times; ``DISTRIBUTED_TESTING_REPEAT=N`` runs it N times, to find flaky tests.
Each attempt is unittest's own ``TestCase.run`` (setUp starts fresh ranks,
tearDown and the cleanups stop them) into an :class:`_Attempt`, a result that
keeps what it was told; the attempt that decides the outcome is then replayed
to the real result, unittest's runner and pytest's item alike. A test that
failed and then passed on a retry is flaky: the :class:`RetryRecord` left on
the test case says so, with its first failure's report, for the result, the
JSON record and the pytest plugin to show.
"""

from __future__ import annotations

import logging
import sys
import unittest
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from distributed_testing._errors import ConfigError
from distributed_testing._parsers import ENV_REPEAT, ENV_RETRIES

__unittest = True

__all__ = ["AttemptFailure", "RetryRecord", "Retrying", "record_of", "run_attempts"]

logger = logging.getLogger(__name__)

RECORD_ATTR = "_dt_retry"
# The calls unittest makes once per test to say how it ended (the rest: subtests, durations).
_OUTCOME_CALLS = ("addSuccess", "addFailure", "addError", "addSkip", "addExpectedFailure", "addUnexpectedSuccess")

RunOnce = Callable[[Any], Any]


@dataclass(frozen=True)
class AttemptFailure:
    """One failing attempt, as plain data: it outlives the attempt's tracebacks, and pickles."""

    repetition: int  # from 1
    attempt: int  # within its repetition, from 1
    outcome: str  # "failed" (an assertion) or "error"
    exc_type: str
    message: str  # the exception's message
    text: str  # the report unittest shows for it


@dataclass(frozen=True)
class RetryRecord:
    """How a test's attempts went: what the front ends report beside its outcome."""

    retries: int
    repeat: int
    runs: int  # attempts made, over every repetition
    failures: tuple[AttemptFailure, ...]  # every failing attempt, in order
    failed_repetition: int = 0  # the repetition whose every attempt failed (0: none did)
    passed_attempt: int = 0  # flaky: the attempt that passed after the last failure

    @property
    def flaky(self) -> bool:
        """Failed, then passed on a retry, and no repetition failed for good."""
        return bool(self.failures) and not self.failed_repetition

    @property
    def first_failure(self) -> AttemptFailure | None:
        return self.failures[0] if self.failures else None

    def where(self, failure: AttemptFailure) -> str:
        """``attempt 1 of 3`` (``repetition 4 of 20, attempt 1 of 3`` when repeating)."""
        attempt = f"attempt {failure.attempt} of {self.retries + 1}"
        return f"repetition {failure.repetition} of {self.repeat}, {attempt}" if self.repeat > 1 else attempt

    def describe(self) -> str:
        """One line: ``passed on attempt 3 of 3``, ``failed on each of 3 attempts``, ...."""
        if self.flaky and self.repeat == 1:
            return f"passed on attempt {self.passed_attempt} of {self.retries + 1}"
        if self.flaky:
            retried = len({f.repetition for f in self.failures})
            return f"{retried} of {self.repeat} repetitions passed only on a retry"
        if not self.failed_repetition:
            return f"passed {self.repeat} of {self.repeat} repetitions" if self.repeat > 1 else "passed"
        tried = sum(f.repetition == self.failed_repetition for f in self.failures)
        each = f"each of {tried} attempts" if tried > 1 else ""
        if self.repeat == 1:  # one attempt only when the run was told to stop (Ctrl-C, -x)
            return f"failed on {each or f'attempt {tried} of {self.retries + 1}'}"
        return f"failed on repetition {self.failed_repetition} of {self.repeat}" + (f" ({each})" if each else "")

    def as_record(self) -> dict[str, Any]:
        """The JSON record's fields: ``flaky``, ``attempts``, the first failure (and repetitions)."""
        entry: dict[str, Any] = {"flaky": self.flaky, "attempts": self.runs}
        if self.repeat > 1:
            entry["repetitions"] = self.repeat
        if self.failed_repetition and self.repeat > 1:
            entry["failed_repetition"] = self.failed_repetition
        first = self.first_failure
        if first is not None:
            entry["first_failure"] = {
                "where": self.where(first),
                "outcome": first.outcome,
                "exc_type": first.exc_type,
                "message": first.message,
            }
        return entry

    def note(self) -> str:
        """The line added to a failing test's report: what failed, under which settings."""
        settings = [f"{ENV_RETRIES}={self.retries}"] if self.retries else []
        shown = ", ".join(settings + ([f"{ENV_REPEAT}={self.repeat}"] if self.repeat > 1 else []))
        flaky = "; not flaky: it never passed" if self.retries and self.repeat == 1 else ""
        return f"distributed_testing: {self.describe()} ({shown}){flaky}"


def _is_pytest_outcome(err: Any) -> bool:
    """Whether an error is pytest's way of ending a test (skip, xfail, exit), not a failure
    (``pytest.fail`` is one)."""
    outcomes = sys.modules.get("_pytest.outcomes")
    if outcomes is None or err is None:
        return False
    kinds = tuple(getattr(outcomes, name) for name in ("Skipped", "XFailed", "Exit") if hasattr(outcomes, name))
    return isinstance(err[1], kinds)


def record_of(test: object) -> RetryRecord | None:
    """The record of a test's attempts, when it ran with retries or repetitions."""
    record = getattr(test, RECORD_ATTR, None)
    return record if isinstance(record, RetryRecord) else None


class _Attempt(unittest.TestResult):
    """One attempt's result: unittest's own bookkeeping, plus each call kept for the replay."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, tuple[Any, ...]]] = []
        self.first: tuple[str, Any, str] | None = None  # (outcome, exc_info, report) of the first failure

    def _failed(self, outcome: str, err: Any, reports: list[tuple[unittest.TestCase, str]]) -> None:
        if self.first is None:
            self.first = (outcome, err, reports[-1][1] if reports else "")

    def addSuccess(self, test: unittest.TestCase) -> None:  # noqa: N802
        super().addSuccess(test)
        self.calls.append(("addSuccess", (test,)))

    def addFailure(self, test: unittest.TestCase, err: Any) -> None:  # noqa: N802
        super().addFailure(test, err)
        self._failed("failed", err, self.failures)
        self.calls.append(("addFailure", (test, err)))

    def addError(self, test: unittest.TestCase, err: Any) -> None:  # noqa: N802
        super().addError(test, err)
        if not _is_pytest_outcome(err):  # pytest.skip/xfail/exit reach unittest as errors: not failures
            self._failed("error", err, self.errors)
        self.calls.append(("addError", (test, err)))

    def addSkip(self, test: unittest.TestCase, reason: str) -> None:  # noqa: N802
        super().addSkip(test, reason)
        self.calls.append(("addSkip", (test, reason)))

    def addExpectedFailure(self, test: unittest.TestCase, err: Any) -> None:  # noqa: N802
        super().addExpectedFailure(test, err)
        self.calls.append(("addExpectedFailure", (test, err)))

    def addUnexpectedSuccess(self, test: unittest.TestCase) -> None:  # noqa: N802
        super().addUnexpectedSuccess(test)
        self._failed("failed", None, [(test, "unexpected success")])
        self.calls.append(("addUnexpectedSuccess", (test,)))

    def addSubTest(self, test: unittest.TestCase, subtest: unittest.TestCase, err: Any) -> None:  # noqa: N802
        super().addSubTest(test, subtest, err)
        if err is not None:
            failure = issubclass(err[0], test.failureException)
            self._failed("failed" if failure else "error", err, self.failures if failure else self.errors)
        self.calls.append(("addSubTest", (test, subtest, err)))

    def addDuration(self, test: unittest.TestCase, elapsed: float) -> None:  # noqa: N802  # Python >= 3.12
        self.calls.append(("addDuration", (test, elapsed)))

    @property
    def failed(self) -> bool:
        return self.first is not None

    def skipped_whole(self, test: unittest.TestCase) -> bool:
        return any(skipped is test for skipped, _ in self.skipped)

    def failure(self, repetition: int, attempt: int) -> AttemptFailure:
        assert self.first is not None
        outcome, err, text = self.first
        exc_type, message = (err[0].__name__, str(err[1])) if err is not None else ("", "unexpected success")
        return AttemptFailure(repetition, attempt, outcome, exc_type, message, text)


def _plan() -> tuple[int, int]:
    """(retries, repeat) for this run; none under a launcher, whose ranks must run each test in step."""
    from distributed_testing import _config

    try:
        if _config.launch_info() is not None:
            return 0, 1
        settings = _config.load()
    except ConfigError:  # the test's own run reports it
        return 0, 1
    return settings.retries, settings.repeat


def run_attempts(case: unittest.TestCase, result: Any, run_once: RunOnce) -> Any:
    """Run ``case`` as the settings ask (once; or retried, repeated) and report to ``result`` once."""
    retries, repeat = _plan()
    if (retries == 0 and repeat == 1) or result is None:
        return run_once(result)
    case.__dict__.pop(RECORD_ATTR, None)

    def should_stop() -> bool:
        return bool(getattr(result, "shouldStop", False))

    failures: list[AttemptFailure] = []
    runs = failed_repetition = passed_attempt = 0
    result.startTest(case)
    try:
        for repetition in range(1, repeat + 1):
            done, attempts = _repetition(case, run_once, retries, repetition, failures, should_stop)
            runs += attempts
            if done.failed:
                failed_repetition = repetition
                break
            if failures and failures[-1].repetition == repetition:
                passed_attempt = attempts
            if done.skipped_whole(case) or should_stop():
                break
        record = RetryRecord(retries, repeat, runs, tuple(failures), failed_repetition, passed_attempt)
        _replay(done, result, case, record)
    finally:
        result.stopTest(case)
    return result


def _repetition(
    case: unittest.TestCase,
    run_once: RunOnce,
    retries: int,
    repetition: int,
    failures: list[AttemptFailure],
    should_stop: Callable[[], bool],
) -> tuple[_Attempt, int]:
    """One repetition: attempts until one does not fail, or the retries run out."""
    attempt = 1
    while True:
        case.__dict__.pop("_dt_outcome", None)  # the folded outcome of this attempt only
        done = _Attempt()
        run_once(done)
        if done.failed:
            failures.append(done.failure(repetition, attempt))
        if not done.failed or attempt > retries or should_stop():
            return done, attempt
        logger.info("%s failed on attempt %d of %d; retrying on fresh ranks", case.id(), attempt, retries + 1)
        fresh = getattr(case, "_dt_fresh_ranks", None)
        if fresh is not None:
            fresh()
        attempt += 1


def _replay(done: _Attempt, result: Any, case: unittest.TestCase, record: RetryRecord) -> None:
    """Tell ``result`` what the deciding attempt told its own; the record is on the case by
    the time the result hears how the test ended (subtests are told before)."""
    outcomes = [i for i, (name, args) in enumerate(done.calls) if name in _OUTCOME_CALLS and args[0] is case]
    final = outcomes[-1] if outcomes else len(done.calls)
    if done.failed and record.failures:
        _add_note(done.calls, record.note())
    for index, (name, args) in enumerate(done.calls):
        if index == final:
            setattr(case, RECORD_ATTR, record)
        method = getattr(result, name, None)
        if method is not None:
            method(*args)
    setattr(case, RECORD_ATTR, record)


def _add_note(calls: list[tuple[str, tuple[Any, ...]]], note: str) -> None:
    """Add ``note`` to the first exception reported (PEP 678 notes show in its report)."""
    for name, args in calls:
        err = args[-1] if name in ("addFailure", "addError", "addSubTest") else None
        if err is not None:
            add = getattr(err[1], "add_note", None)  # Python >= 3.11
            if add is not None:
                add(note)
            return


class Retrying(unittest.TestCase):
    """The distributed bases' ``run``: retried on fresh ranks and repeated, as the settings ask."""

    def run(self, result: unittest.TestResult | None = None) -> unittest.TestResult | None:
        return run_attempts(self, result, super().run)  # type: ignore[no-any-return]

    def _dt_fresh_ranks(self) -> None:
        """Before a retry: let go of ranks kept across tests, so that the retry starts fresh ones."""
