"""What the matrix found: each test's, file's and configuration's outcome, read from what a file left.

A test file run under the matrix writes a JSON record (``run_tests()`` with
``DISTRIBUTED_TESTING_REPORT`` set); with its exit code and output that makes
a ``FileRun``: a ``TestRecord`` per test (with a ``RankRecord`` per rank when
the record gives them), and any problem: the file crashed, wrote no report, or
cannot be run at all.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

from distributed_testing._matrix_plan import Config
from distributed_testing._outcomes import signal_name
from distributed_testing._protocol import ERROR, PASSED, SKIPPED, TEST_OUTCOMES, TestOutcome
from distributed_testing._runner import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE

__all__ = [
    "OUTPUT_TAIL",
    "ConfigResult",
    "FileRun",
    "RankRecord",
    "TestRecord",
    "file_run",
    "read_report",
    "usage_problem",
]

OUTPUT_TAIL = 4000  # characters of a crashed file's output kept in its JUnit error


@dataclass(frozen=True)
class RankRecord:
    """How one rank ended one test, when the file's record says (every key of it optional there)."""

    rank: int  # -1: the record did not say
    outcome: str  # a RankOutcome word as the record gives it ("" when it gives none)
    exc_type: str = ""
    traceback: str = ""
    output: str = ""
    exit_code: int | None = None
    signal: str = ""  # the signal that ended the rank, by name ("SIGSEGV")

    @property
    def failed(self) -> bool:
        return self.outcome not in (PASSED, SKIPPED)


@dataclass(frozen=True)
class TestRecord:
    """One test's outcome in one configuration (``classname`` as JUnit has it)."""

    classname: str
    name: str
    outcome: TestOutcome
    message: str
    seconds: float
    ranks: tuple[RankRecord, ...] = ()  # empty when the record has no "ranks"
    properties: tuple[tuple[str, str], ...] = ()  # JUnit's: dt_flaky, dt_attempts, dt_hardware (retries, hardware)
    flaky_failure: tuple[str, str] = ("", "")  # a flaky test's first failure: (exception type, message)

    @property
    def id(self) -> str:
        return f"{self.classname}.{self.name}"


@dataclass(frozen=True)
class FileRun:
    """One test file run in one configuration."""

    file: str
    label: str  # unique name of the file in this run (its stem)
    exit_code: int
    seconds: float
    tests: tuple[TestRecord, ...]
    output: str
    problem: str = ""  # what went wrong beyond the tests: a crash, no report

    @property
    def passed(self) -> bool:
        return self.exit_code == EXIT_OK and not self.problem

    def count(self, outcome: TestOutcome) -> int:
        return sum(t.outcome == outcome for t in self.tests)


@dataclass
class ConfigResult:
    """What one configuration did: its file runs, or why it was skipped."""

    config: Config
    skip_reason: str = ""
    runs: list[FileRun] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        return sum(run.seconds for run in self.runs)

    def count(self, outcome: TestOutcome) -> int:
        return sum(run.count(outcome) for run in self.runs)

    @property
    def failed(self) -> bool:
        return any(not run.passed for run in self.runs)


# Reading what a file left ------------------------------------------------------------------------


def read_report(path: str) -> list[dict[str, Any]] | None:
    """The ``"tests"`` of a file's JSON record, or None when it wrote none (or an unreadable one)."""
    try:
        with open(path) as handle:
            tests = json.load(handle)["tests"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return tests if isinstance(tests, list) else None


def file_run(
    path: str, label: str, code: int, seconds: float, output: str, report: list[dict[str, Any]] | None
) -> FileRun:
    """What one file did: its tests, and a record of the problem (a crash, no report) if there was one."""
    tests = [_record(label, test) for test in report or []]
    problem = _run_problem(code, report, tests)
    if problem:
        tail = output[-OUTPUT_TAIL:]
        tests.append(TestRecord(label, os.path.basename(path), ERROR, f"{problem}\n{tail}", seconds))
    return FileRun(path, label, code, seconds, tuple(tests), output, problem)


def _record(label: str, test: dict[str, Any]) -> TestRecord:
    """A report entry; ``__main__.TestX.test_y`` becomes ``<label>.TestX`` / ``test_y``."""
    head, space, params = str(test.get("id", "?")).partition(" ")  # "test_y (i=1)" for subtests
    classname, _, name = head.rpartition(".")
    if classname == "__main__" or classname.startswith("__main__."):
        classname = label + classname[len("__main__") :]
    first = test.get("first_failure") if test.get("flaky") else None
    flaky = (str(first.get("exc_type", "")), str(first.get("message", ""))) if isinstance(first, dict) else ("", "")
    return TestRecord(classname or label, name + space + params, _outcome(test.get("outcome")),
                      str(test.get("message", "")), float(test.get("seconds", 0.0)), _ranks(test.get("ranks")),
                      _properties(test), flaky)


def _properties(test: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    """What a record says beside the outcome (retries, hardware), as the JUnit properties pytest gives."""
    found = [("dt_flaky", "true")] if test.get("flaky") else []
    if isinstance(test.get("attempts"), int) and test["attempts"] > 1:
        found.append(("dt_attempts", str(test["attempts"])))
    if test.get("hardware"):
        found.append(("dt_hardware", str(test["hardware"])))
    return tuple(found)


def _outcome(word: object) -> TestOutcome:
    """A record's outcome word; ``error`` for anything unknown."""
    return next((outcome for outcome in TEST_OUTCOMES if outcome == word), ERROR)


def _ranks(entries: object) -> tuple[RankRecord, ...]:
    """A test's ``"ranks"``, tolerating a missing list and missing or odd keys."""
    if not isinstance(entries, list):
        return ()
    return tuple(_rank(entry) for entry in entries if isinstance(entry, dict))


def _rank(entry: dict[str, Any]) -> RankRecord:
    def text(key: str) -> str:
        value = entry.get(key)
        return "" if value is None else str(value)

    def number(key: str) -> int | None:
        value = entry.get(key)
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    rank, code, signum = number("rank"), number("exit_code"), number("signal")
    return RankRecord(
        rank=-1 if rank is None else rank, outcome=text("outcome"), exc_type=text("exc_type"),
        traceback=text("traceback"), output=text("output"), exit_code=code,
        signal=signal_name(-abs(signum)) if signum else text("signal"),
    )


def _run_problem(code: int, report: list[dict[str, Any]] | None, tests: list[TestRecord]) -> str:
    """What went wrong with the file's process itself, beyond its tests' outcomes."""
    if code < 0:
        return f"the test file died with {signal_name(code)}"
    if code == EXIT_INTERRUPTED:
        return "the test file was interrupted"
    if report is None and code != EXIT_OK:
        return f"the test file exited with code {code} without a report (did it fail to import?)"
    if report is None:
        return "the test file exited with code 0 but wrote no report: does it end with run_tests()?"
    if code not in (EXIT_OK, EXIT_FAILED) or (code == EXIT_FAILED and all(t.outcome in (PASSED, SKIPPED)
                                                                        for t in tests)):
        return f"the test file exited with code {code} after its tests"
    return ""


def usage_problem(path: str, config: Config, code: int, output: str) -> str:
    """The file cannot be run at all: it has no tests (exit 5) or rejected its configuration (exit 2)."""
    if code == 5:
        said = _said(output, "no tests ran: ") or "it ran no tests"
        return f"{path} has no tests ({said}); each FILE must define test_* methods and end with run_tests()"
    if code == EXIT_USAGE:
        said = _said(output, ": error: ") or "it exited with code 2"
        return f"{path} rejected configuration {config.name}: {said}"
    return ""


def _said(output: str, marker: str) -> str:
    """The text after ``marker`` on the last output line that has it."""
    lines = [line for line in output.splitlines() if marker in line]
    return lines[-1].split(marker, 1)[1].strip() if lines else ""


