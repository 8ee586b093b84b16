"""Retries, flaky outcomes and hardware accounting under pytest.

The retries run inside the test case (``_retry``: one loop for ``run_tests()``
and pytest); here their record becomes pytest's. A test that passed on a
retry is reported ``flaky`` (``1 flaky`` in the summary line, ``FLAKY`` or
``R``), its first failure shown as a report section and under "flaky tests";
a test skipped for lack of hardware carries its need and is counted apart in
the terminal summary, or fails with ``--dt-require-hardware``. What the
pytest-xdist controller needs travels on the report as plain data:
``dt_record_extra`` (the JSON record's fields), ``dt_retry`` (the failing
attempts, for JUnit) and the item's ``user_properties`` (JUnit properties).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Generator, Mapping
from typing import Any

import pytest

from distributed_testing import _hardware
from distributed_testing._retry import record_of

FLAKY = "flaky"  # the terminal reporter's category: "1 flaky" in the summary line
_JUNIT = "distributed_testing._pytest_retries.junit"


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, Any]:
    """Put a retried test's record, or a skip's lack of hardware, on its report (outermost:
    after the plugin has shaped a distributed test's failure)."""
    report = yield
    if call.when == "call":
        _retried(item, report)
    if report.skipped and call.excinfo is not None:
        _hardware_skip(item, call.excinfo.value, report)
    return report


def _extra(report: pytest.TestReport, fields: Mapping[str, Any]) -> None:
    """Add fields to the report's entry of the JSON record (``_pytest_record`` merges them)."""
    extra = getattr(report, "dt_record_extra", None)
    report.dt_record_extra = {**(extra if isinstance(extra, dict) else {}), **fields}  # type: ignore[attr-defined]


def _property(item: pytest.Item, name: str, value: str) -> None:
    """A JUnit property of the test (the teardown report carries the item's to the XML)."""
    if (name, value) not in item.user_properties:
        item.user_properties.append((name, value))


def _retried(item: pytest.Item, report: pytest.TestReport) -> None:
    record = record_of(getattr(item, "instance", None))
    if record is None:
        return
    _extra(report, record.as_record())
    report.dt_retry = {  # type: ignore[attr-defined]
        "describe": record.describe(),
        "failures": [
            {"where": record.where(f), "outcome": f.outcome, "exc_type": f.exc_type, "message": f.message,
             "text": f.text}
            for f in record.failures
        ],
    }
    if record.runs > 1:
        _property(item, "dt_attempts", str(record.runs))
    first = record.first_failure
    if record.flaky and first is not None:
        _property(item, "dt_flaky", "true")
        report.sections.append((f"first failure ({record.where(first)})", first.text))
    if report.failed and record.failures and isinstance(report.longrepr, str):
        report.longrepr += f"\n\n{record.note()}"  # the plugin's rank report (other failures show the note)


def _hardware_skip(item: pytest.Item, skip: BaseException, report: pytest.TestReport) -> None:
    """A skip for lack of hardware: say what it needs; under the setting, a failure."""
    cls = getattr(item, "cls", None)
    if not (isinstance(cls, type) and any(b.__module__.startswith("distributed_testing.") for b in cls.__mro__)):
        return  # not a distributed test: a skip of its own, whatever its words
    reason = str(getattr(skip, "msg", None) or skip)
    need = _hardware.need_of(reason)
    if need is None:
        return
    _extra(report, {"hardware": need})
    _property(item, "dt_hardware", need)
    if _hardware.required():
        report.outcome = "failed"
        report.longrepr = str(_hardware.HardwareMissing(reason, need))


def pytest_report_teststatus(report: pytest.TestReport, config: pytest.Config) -> Any:
    """A test that passed on a retry is its own category: ``R`` / ``FLAKY``, ``1 flaky``."""
    extra = getattr(report, "dt_record_extra", None)
    if report.when == "call" and report.passed and isinstance(extra, dict) and extra.get(FLAKY):
        return FLAKY, "R", ("FLAKY", {"yellow": True})
    return None


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Each flaky test with its first failure; the tests not run for lack of hardware, by need."""
    stats = terminalreporter.stats
    flaky = stats.get(FLAKY, [])
    if flaky:
        terminalreporter.write_sep("=", "flaky tests", yellow=True)
    for report in flaky:
        retry = getattr(report, "dt_retry", None) or {}
        failures = retry.get("failures") or [{}]
        first = failures[0]
        terminalreporter.write_line(
            f"FLAKY {report.nodeid}: {retry.get('describe', '')}; first failure ({first.get('where', '')}):"
        )
        terminalreporter.write_line(str(first.get("text", "")).rstrip())

    def needs(*keys: str) -> list[str]:
        found = [getattr(r, "dt_record_extra", None) for key in keys for r in stats.get(key, [])]
        return [str(extra["hardware"]) for extra in found if isinstance(extra, dict) and extra.get("hardware")]

    for line in (_hardware.summary(needs("skipped")), _hardware.summary(needs("failed", "error"), failed=True)):
        if line:
            terminalreporter.write_line(line, yellow=True)


def pytest_sessionstart(session: pytest.Session) -> None:
    """With --junitxml (on the controller), add Surefire's rerun entries to retried tests."""
    try:
        from _pytest.junitxml import xml_key
    except ImportError:  # a pytest without it: the properties still say flaky and attempts
        return
    xml = session.config.stash.get(xml_key, None)
    if xml is not None and not session.config.pluginmanager.has_plugin(_JUNIT):
        session.config.pluginmanager.register(_RerunEntries(xml), _JUNIT)


class _RerunEntries:
    """Surefire-style entries in pytest's JUnit XML: a flaky test's failing attempts as
    ``<flakyFailure>`` (or ``flakyError``), a failed test's earlier ones as ``<rerunFailure>``."""

    def __init__(self, xml: Any) -> None:
        self.xml = xml

    @pytest.hookimpl(trylast=True)  # after pytest's own <failure>, as Surefire orders them
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        retry = getattr(report, "dt_retry", None)
        if report.when != "call" or not isinstance(retry, dict):
            return
        failures = list(retry.get("failures") or [])
        if report.passed:
            prefix = "flaky"
        elif report.failed:
            prefix, failures = "rerun", failures[:-1]  # the last one is pytest's <failure>
        else:
            return
        from _pytest.junitxml import bin_xml_escape

        reporter = self.xml.node_reporter(report)
        for failure in failures:
            kind = "Failure" if failure.get("outcome") == "failed" else "Error"
            message = str(failure.get("message", "")).strip().splitlines()[:1] or [""]
            node = ET.Element(f"{prefix}{kind}", message=bin_xml_escape(message[0][:500]),
                              type=bin_xml_escape(failure.get("exc_type", "")))
            ET.SubElement(node, "stackTrace").text = bin_xml_escape(failure.get("text", ""))
            reporter.append(node)
