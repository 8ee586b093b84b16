"""A machine-readable record of a run, as JSON: each test's outcome, reason, duration and ranks.

Written by ``run_tests()`` when ``DISTRIBUTED_TESTING_REPORT`` names a file;
the matrix tool reads it instead of parsing unittest's text.
"""

from __future__ import annotations

import json
import os
import time
import unittest
from typing import Any

from distributed_testing._outcomes import Outcome
from distributed_testing._protocol import ERROR, FAILED, PASSED, SKIPPED, TEST_OUTCOMES, TestOutcome
from distributed_testing._render import ranks_record

__all__ = ["RecordingResult", "write_report"]


class RecordingResult(unittest.TextTestResult):
    """unittest's text result that also keeps one record per test."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.records: list[dict[str, Any]] = []
        self._started: dict[str, float] = {}

    def startTest(self, test: unittest.TestCase) -> None:  # noqa: N802
        self._started[test.id()] = time.monotonic()
        super().startTest(test)

    def _record(self, test: unittest.TestCase, outcome: TestOutcome, message: str = "") -> None:
        start = self._started.pop(test.id(), time.monotonic())
        record: dict[str, Any] = {
            "id": test.id(),
            "outcome": outcome,
            "message": message,
            "seconds": round(time.monotonic() - start, 4),
        }
        folded = getattr(test, "_dt_outcome", None)  # a distributed test: every rank's part
        if isinstance(folded, Outcome):
            record["ranks"] = ranks_record(folded)
        self.records.append(record)

    def addSuccess(self, test: unittest.TestCase) -> None:  # noqa: N802
        super().addSuccess(test)
        self._record(test, PASSED)

    def addFailure(self, test: unittest.TestCase, err: Any) -> None:  # noqa: N802
        super().addFailure(test, err)
        self._record(test, FAILED, str(err[1]))

    def addError(self, test: unittest.TestCase, err: Any) -> None:  # noqa: N802
        super().addError(test, err)
        self._record(test, ERROR, str(err[1]))

    def addSkip(self, test: unittest.TestCase, reason: str) -> None:  # noqa: N802
        super().addSkip(test, reason)
        self._record(test, SKIPPED, reason)

    def addExpectedFailure(self, test: unittest.TestCase, err: Any) -> None:  # noqa: N802
        super().addExpectedFailure(test, err)
        self._record(test, PASSED, "expected failure")

    def addUnexpectedSuccess(self, test: unittest.TestCase) -> None:  # noqa: N802
        super().addUnexpectedSuccess(test)
        self._record(test, FAILED, "unexpected success")


def write_report(path: str, records: list[dict[str, Any]], exit_code: int) -> None:
    """Write the run's records and counts to ``path`` atomically."""
    counts = {k: sum(r["outcome"] == k for r in records) for k in TEST_OUTCOMES}
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as handle:
        json.dump({"exit_code": exit_code, "counts": counts, "tests": records}, handle, indent=1)
    os.replace(tmp, path)
