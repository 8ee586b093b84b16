"""A machine-readable record of a run, as JSON: each test's outcome, reason, duration and ranks.

Written by ``run_tests()`` when ``DISTRIBUTED_TESTING_REPORT`` names a file;
the matrix tool reads it instead of parsing unittest's text. The result and
runner here are ``run_tests()``'s: beside unittest's own report they show flaky
tests (``ok (flaky: ...)``, their first failure, ``OK (flaky=1)``) and count
the tests not run for lack of hardware apart from other skips.
"""

from __future__ import annotations

import json
import os
import time
import unittest
import warnings
from collections import Counter
from typing import Any

from distributed_testing import _hardware
from distributed_testing._outcomes import Outcome
from distributed_testing._protocol import ERROR, FAILED, PASSED, SKIPPED, TEST_OUTCOMES, TestOutcome
from distributed_testing._render import ranks_record
from distributed_testing._retry import record_of
from distributed_testing._shard import unittest_key

__all__ = ["RecordingResult", "RecordingRunner", "summary_lines", "write_report"]


class RecordingResult(unittest.TextTestResult):
    """unittest's text result that also keeps one record per test."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.records: list[dict[str, Any]] = []
        self._started: dict[str, float] = {}
        self.flaky: list[tuple[unittest.TestCase, str]] = []  # each flaky test and its first failure's report
        self.hardware: list[str] = []  # the need of each test skipped for lack of hardware
        self.hardware_failed: list[str] = []  # ... and of each that failed for it (require_hardware)

    def startTest(self, test: unittest.TestCase) -> None:  # noqa: N802
        self._started[test.id()] = time.monotonic()
        super().startTest(test)

    def _record(self, test: unittest.TestCase, outcome: TestOutcome, message: str = "", hardware: str = "") -> None:
        start = self._started.pop(test.id(), time.monotonic())
        record: dict[str, Any] = {
            "id": test.id(),
            "key": unittest_key(test),  # the same test's name under pytest and on every machine (shards)
            "outcome": outcome,
            "message": message,
            "seconds": round(time.monotonic() - start, 4),
        }
        folded = getattr(test, "_dt_outcome", None)  # a distributed test: every rank's part
        if isinstance(folded, Outcome):
            record["ranks"] = ranks_record(folded)
        retry = record_of(test)  # it ran with retries or repetitions
        if retry is not None:
            record.update(retry.as_record())
        if hardware:
            record["hardware"] = hardware
        self.records.append(record)

    def _status(self, test: unittest.TestCase, word: str, dot: str) -> None:
        """Show how a test ended, as TextTestResult does: its word (verbose) or its letter."""
        if self.showAll:
            write = getattr(self, "_write_status", None)  # Python >= 3.11: placed after subtest lines
            if write is not None:
                write(test, word)
            else:
                self.stream.writeln(word)
        elif self.dots:
            self.stream.write(dot)
            self.stream.flush()

    def addSuccess(self, test: unittest.TestCase) -> None:  # noqa: N802
        retry = record_of(test)
        first = retry.first_failure if retry is not None and retry.flaky else None
        if retry is None or first is None:
            super().addSuccess(test)
        else:
            unittest.TestResult.addSuccess(self, test)
            self._status(test, f"ok (flaky: {retry.describe()})", "R")
            self.flaky.append((test, f"{retry.describe()}; first failure ({retry.where(first)}):\n{first.text}"))
        self._record(test, PASSED)

    def addFailure(self, test: unittest.TestCase, err: Any) -> None:  # noqa: N802
        super().addFailure(test, err)
        need = err[1].need if isinstance(err[1], _hardware.HardwareMissing) else ""
        if need:
            self.hardware_failed.append(need)
        self._record(test, FAILED, str(err[1]), hardware=need)

    def addError(self, test: unittest.TestCase, err: Any) -> None:  # noqa: N802
        super().addError(test, err)
        self._record(test, ERROR, str(err[1]))

    def addSkip(self, test: unittest.TestCase, reason: str) -> None:  # noqa: N802
        ours = any(b.__module__.startswith("distributed_testing.") for b in type(test).__mro__)
        need = _hardware.need_of(reason) if ours else None  # a subtest's or a plain test's skip: its own
        if need and _hardware.required():
            self.addFailure(test, _hardware.required_failure(reason, need))
            return
        super().addSkip(test, reason)
        if need:
            self.hardware.append(need)
        self._record(test, SKIPPED, reason, hardware=need or "")

    def addExpectedFailure(self, test: unittest.TestCase, err: Any) -> None:  # noqa: N802
        super().addExpectedFailure(test, err)
        self._record(test, PASSED, "expected failure")

    def addUnexpectedSuccess(self, test: unittest.TestCase) -> None:  # noqa: N802
        super().addUnexpectedSuccess(test)
        self._record(test, FAILED, "unexpected success")

    def printErrors(self) -> None:  # noqa: N802
        """unittest's errors and failures, then each flaky test with its first failure."""
        super().printErrors()
        self.printErrorList("FLAKY", self.flaky)


def summary_lines(result: unittest.TestResult) -> list[str]:
    """The run's last lines: ``OK (skipped=2, flaky=1)`` as unittest words it, counting flaky tests,
    then how many tests were not run for lack of hardware, and what they need."""
    infos = []
    if result.wasSuccessful():
        head = "OK"
    else:
        head = "FAILED"
        infos += [f"{name}={len(found)}" for name, found in (("failures", result.failures), ("errors", result.errors))
                  if found]
    for name, found in (("skipped", result.skipped), ("expected failures", result.expectedFailures),
                        ("unexpected successes", result.unexpectedSuccesses), ("flaky", getattr(result, "flaky", ()))):
        if found:
            infos.append(f"{name}={len(found)}")
    lines = [head + (f" ({', '.join(infos)})" if infos else "")]
    lines.append(_hardware.summary(getattr(result, "hardware", ())))
    lines.append(_hardware.summary(getattr(result, "hardware_failed", ()), failed=True))
    return [line for line in lines if line]


class RecordingRunner(unittest.TextTestRunner):
    """unittest's text runner over :class:`RecordingResult`, with :func:`summary_lines` as its summary."""

    resultclass = RecordingResult

    def run(self, test: unittest.TestSuite | unittest.TestCase) -> Any:
        """Run ``test`` as TextTestRunner does, and end with the summary lines."""
        result: Any = self._makeResult()
        unittest.registerResult(result)
        result.failfast, result.buffer, result.tb_locals = self.failfast, self.buffer, self.tb_locals
        with warnings.catch_warnings():
            if self.warnings:
                warnings.simplefilter(self.warnings)  # type: ignore[arg-type]
                if self.warnings in ("default", "always"):  # unittest's: deprecated aliases once per module
                    warnings.filterwarnings(
                        "module", category=DeprecationWarning, message=r"Please use assert\w+ instead."
                    )
            start = time.perf_counter()
            result.startTestRun()
            try:
                test(result)
            finally:
                result.stopTestRun()
            taken = time.perf_counter() - start
        result.printErrors()
        if getattr(self, "durations", None) is not None:  # Python >= 3.12: --durations
            self._printDurations(result)  # type: ignore[attr-defined]
        self.stream.writeln(result.separator2)
        self.stream.writeln(f"Ran {result.testsRun} test{'s' * (result.testsRun != 1)} in {taken:.3f}s")
        self.stream.writeln()
        for line in summary_lines(result):
            self.stream.writeln(line)
        self.stream.flush()
        return result


def write_report(
    path: str, records: list[dict[str, Any]], exit_code: int, shard: tuple[int, int] | None = None
) -> None:
    """Write the run's records and counts to ``path`` atomically; ``shard`` (i, n): the part of
    the run this is, so merging the shards' records can tell when one is missing."""
    counts = {k: sum(r["outcome"] == k for r in records) for k in TEST_OUTCOMES}
    report: dict[str, Any] = {"exit_code": exit_code, "counts": counts, "tests": records}
    needs = Counter(str(r["hardware"]) for r in records if r.get("hardware"))
    also = {"flaky": sum(bool(r.get("flaky")) for r in records), "not_run_for_lack_of_hardware": sum(needs.values())}
    if any(also.values()):  # counted apart from the outcomes (merged shards add them up)
        report["also_counted"] = also
        report["hardware_needs"] = dict(needs)
    if shard is not None:
        report["shard"] = list(shard)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as handle:
        json.dump(report, handle, indent=1)
    os.replace(tmp, path)
