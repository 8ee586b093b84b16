"""The JSON record of a pytest run (``--dt-report FILE`` or ``DISTRIBUTED_TESTING_REPORT``).

The same format ``run_tests()`` writes (see ``_record``): an entry per node id
with its outcome, message, seconds (setup, call and teardown together), shard
key and, for a distributed test, every rank's entry; so a pytest run gives the
durations file for shards, and each shard a record to merge. Under
pytest-xdist only the controller writes, from the reports its workers send:
the ranks travel as ``report.dt_ranks``, and any dict a report carries as
``report.dt_record_extra`` is merged into its test's entry.
"""

from __future__ import annotations

import os
from collections.abc import Generator
from typing import Any

import pytest

from distributed_testing._parsers import ENV_REPORT, parse_path

_RECORDER = "distributed_testing._pytest_record.recorder"
# How much a phase's outcome says: a later phase replaces an earlier one only with more.
_WEIGHT = {"": 0, "passed": 1, "skipped": 2, "failed": 3, "error": 3}


def _report_path() -> str | None:
    """The file to write (the variable as --dt-report set it); read directly, as loading every
    setting would import torch in runs without distributed tests."""
    return parse_path(os.environ[ENV_REPORT], ENV_REPORT) if os.environ.get(ENV_REPORT) else None


def pytest_configure(config: pytest.Config) -> None:
    """Record when a report file is set: the controller (or a run without xdist) writes it."""
    path = _report_path()
    if path is not None and not hasattr(config, "workerinput"):
        config.pluginmanager.register(_Recorder(config, path), _RECORDER)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, Any]:
    """Put a distributed test's ranks on its call report, as plain data that crosses to the controller."""
    report = yield
    if call.when != "call" or _report_path() is None:
        return report
    outcome = getattr(call.excinfo.value, "outcome", None) if call.excinfo is not None else None
    if outcome is None:
        outcome = getattr(getattr(item, "_testcase", None), "_dt_outcome", None)
    from distributed_testing._outcomes import Outcome

    if isinstance(outcome, Outcome):
        from distributed_testing._render import ranks_record

        report.dt_ranks = ranks_record(outcome)
    return report


class _Recorder:
    """The session's entries, written at its end."""

    def __init__(self, config: pytest.Config, path: str) -> None:
        self.config = config
        self.path = os.path.abspath(path)  # as given at the start, whatever directory the tests change to
        self.entries: dict[str, dict[str, Any]] = {}

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        """Fold each phase's report into its test's entry."""
        from distributed_testing._shard import nodeid_key

        entry = self.entries.setdefault(
            report.nodeid,
            {"id": report.nodeid, "key": nodeid_key(report.nodeid), "outcome": "", "message": "", "seconds": 0.0},
        )
        entry["seconds"] = round(entry["seconds"] + report.duration, 4)
        outcome, message = _phase_outcome(report)
        if _WEIGHT[outcome] > _WEIGHT[entry["outcome"]] or (outcome == "passed" and message and not entry["message"]):
            entry["outcome"], entry["message"] = outcome, message
        ranks = getattr(report, "dt_ranks", None)
        if isinstance(ranks, list):
            entry["ranks"] = ranks
        extra = getattr(report, "dt_record_extra", None)
        if isinstance(extra, dict):
            entry.update(extra)

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        """Write the record; the shard (if any) goes with it, so a merge can tell one is missing."""
        from distributed_testing._pytest_shard import shard_of
        from distributed_testing._record import write_report

        records = [{**entry, "outcome": entry["outcome"] or "passed"} for entry in self.entries.values()]
        write_report(self.path, records, int(exitstatus), shard=shard_of(self.config))


def _phase_outcome(report: pytest.TestReport) -> tuple[str, str]:
    """What one phase says, as the record's outcome and message: ('', '') for a plain setup or teardown."""
    xfail = getattr(report, "wasxfail", None)
    if report.skipped:
        if xfail is not None:
            return "passed", "expected failure"
        longrepr = report.longrepr
        reason = longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else longrepr
        return "skipped", str(reason).removeprefix("Skipped: ")
    if report.failed:
        if report.when == "call":
            return "failed", ("unexpected success" if xfail is not None else _failure_message(report))
        return "error", f"error in {report.when}: {_failure_message(report)}"
    if report.when == "call":
        return "passed", ("unexpected success" if xfail is not None else "")
    return "", ""


def _failure_message(report: pytest.TestReport) -> str:
    crash = getattr(report.longrepr, "reprcrash", None)
    message = getattr(crash, "message", None)
    return str(message) if message else report.longreprtext.strip()
