"""The matrix's report: the failing files' output, the summary table, the failed tests, JUnit XML.

The table has a row per configuration (skipped ones with their reason) and a
total; the JUnit XML file a ``testsuite`` per configuration and a ``testcase``
per test, with the failing ranks' tracebacks and output when the file's record
gives them.
"""

from __future__ import annotations

import os
import re
import socket
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from typing import TextIO

from distributed_testing._matrix_plan import INIT_URLS, Options, usage_error
from distributed_testing._matrix_results import ConfigResult, RankRecord, TestRecord
from distributed_testing._outcomes import signal_name
from distributed_testing._protocol import ERROR, FAILED, PASSED, SKIPPED, TestOutcome
from distributed_testing._runner import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK

__all__ = ["format_table", "junit_tree", "report", "write_junit"]

_XML_INVALID = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
_JUNIT_TAGS: dict[TestOutcome, str] = {FAILED: "failure", ERROR: "error", SKIPPED: "skipped"}


def report(
    results: list[ConfigResult], options: Options, root: str, seconds: float, out: TextIO, stopped: list[str] | None
) -> int:
    """Print the failing files' output, the table and the failed tests; write the JUnit XML.

    ``stopped`` lists what an interrupt stopped (None: no interrupt). Returns the exit code.
    """
    for result in results:
        for run in result.runs:
            if not run.passed:
                print(f"\n{'=' * 20} {result.config.name}: {run.file} (exit code {run.exit_code}) {'=' * 20}",
                      file=out)
                print(run.output.rstrip(), file=out)
    if results:
        print("\n" + format_table(results, seconds), file=out)
    failed = [(r.config.name, t.id) for r in results for run in r.runs for t in run.tests
              if t.outcome in (FAILED, ERROR)]
    for name, test_id in failed:
        print(f"FAILED {name} {test_id}", file=out)
    if options.keep_temp:
        print(f"kept TEMP_DIRs, output and reports in {root}", file=out)
    if options.junit_xml:
        try:
            write_junit(options.junit_xml, results, seconds)
        except OSError as exc:
            out.flush()
            return usage_error(options.prog, f"cannot write --junit-xml {options.junit_xml!r}: {exc.strerror or exc}")
        print(f"JUnit XML: {options.junit_xml}", file=out)
    if stopped is not None:
        print(f"interrupted; stopped: {', '.join(stopped) or 'nothing was running'}", file=out, flush=True)
        return EXIT_INTERRUPTED
    out.flush()
    return EXIT_FAILED if any(r.failed for r in results) else EXIT_OK


# The table -----------------------------------------------------------------------------------------


def format_table(results: Sequence[ConfigResult], seconds: float) -> str:
    """The summary: a row per configuration and a total (wall-clock seconds)."""
    header = ("configuration", "passed", "failed", "skipped", "seconds", "note")
    rows = [_row(result) for result in results]
    ran = [r for r in results if not r.skip_reason]
    rows.append(("total", *_counts(ran), f"{seconds:.1f}", ""))
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header) - 1)]
    lines = []
    for row in (header, *rows):
        cells = [row[0].ljust(widths[0])] + [cell.rjust(w) for cell, w in zip(row[1:-1], widths[1:], strict=True)]
        lines.append("  ".join(cells + [row[-1]]).rstrip())
    lines.insert(1, "-" * len(lines[0]))
    lines.insert(len(lines) - 1, "-" * len(lines[0]))
    return "\n".join(lines)


def _row(result: ConfigResult) -> tuple[str, ...]:
    if result.skip_reason:
        return (result.config.name, "-", "-", "-", "-", f"skipped: {result.skip_reason}")
    notes = "; ".join(f"{run.file}: {run.problem.removeprefix('the test file ')}" for run in result.runs if run.problem)
    return (result.config.name, *_counts([result]), f"{result.seconds:.1f}", notes)


def _counts(results: Sequence[ConfigResult]) -> tuple[str, str, str]:
    passed = sum(r.count(PASSED) for r in results)
    failed = sum(r.count(FAILED) + r.count(ERROR) for r in results)
    skipped = sum(r.count(SKIPPED) for r in results)
    return str(passed), str(failed), str(skipped)


# JUnit XML -----------------------------------------------------------------------------------------


def junit_tree(results: Sequence[ConfigResult], seconds: float) -> ET.ElementTree[ET.Element]:
    """JUnit XML: a ``testsuite`` per configuration, a ``testcase`` per test."""
    root = ET.Element("testsuites", name="run_distributed_tests")
    for result in results:
        _suite(root, result)
    for key in ("tests", "failures", "errors", "skipped"):
        root.set(key, str(sum(int(suite.get(key, "0")) for suite in root)))
    root.set("time", f"{seconds:.3f}")
    ET.indent(root)
    return ET.ElementTree(root)


def _suite(parent: ET.Element, result: ConfigResult) -> None:
    config = result.config
    suite = ET.SubElement(parent, "testsuite", name=config.name, hostname=socket.gethostname())
    properties = ET.SubElement(suite, "properties")
    for key, value in (("BACKEND", config.backend), ("WORLD_SIZE", str(config.world_size)),
                       ("INIT_METHOD", INIT_URLS[config.init_method])):
        ET.SubElement(properties, "property", name=key, value=value)
    tests: list[tuple[str, TestRecord]] = [(run.file, t) for run in result.runs for t in run.tests]
    if result.skip_reason:
        tests = [("", TestRecord(config.name, "(configuration)", SKIPPED, result.skip_reason, 0.0))]
    for path, test in tests:
        _case(suite, path, test)
    kinds: list[str] = [t.outcome for _, t in tests]
    for key, outcome in (("failures", FAILED), ("errors", ERROR), ("skipped", SKIPPED)):
        suite.set(key, str(kinds.count(outcome)))
    suite.set("tests", str(len(tests)))
    suite.set("time", f"{result.seconds:.3f}")
    failing = [run for run in result.runs if not run.passed]
    output = "\n".join(f"== {run.file} (exit code {run.exit_code})\n{run.output}" for run in failing)
    if output:
        ET.SubElement(suite, "system-out").text = _xml_text(output)


def _case(suite: ET.Element, path: str, test: TestRecord) -> None:
    case = ET.SubElement(suite, "testcase", classname=test.classname, name=test.name, time=f"{test.seconds:.3f}")
    if path:
        case.set("file", path)
    if test.properties:
        properties = ET.SubElement(case, "properties")
        for name, value in test.properties:
            ET.SubElement(properties, "property", name=name, value=_xml_text(value))
    exc_type, message = test.flaky_failure
    if message:  # Surefire's entry for a test that passed on a retry: its first failure
        flaky = ET.SubElement(case, "flakyFailure", message=_xml_text(message.strip().split("\n")[0]), type=exc_type)
        ET.SubElement(flaky, "stackTrace").text = _xml_text(message)
    tag = _JUNIT_TAGS.get(test.outcome)
    if not tag:
        return
    first = test.message.strip().splitlines()[0] if test.message.strip() else test.outcome
    element = ET.SubElement(case, tag, message=_xml_text(first))
    if tag == "skipped":
        return
    element.text = _xml_text(_failure_text(test))
    output = "\n".join(
        f"--- {_rank_title(rank)}: output\n{rank.output.rstrip()}"  # already head + tail, naming any kept log
        for rank in test.ranks if rank.failed and rank.output.strip()
    )
    if output:
        ET.SubElement(case, "system-out").text = _xml_text(output)


def _failure_text(test: TestRecord) -> str:
    """The test's message, then a line per failing rank with its traceback, unless the message has it."""
    parts = [test.message.rstrip()]
    for rank in test.ranks:
        if rank.failed:
            traceback = rank.traceback.strip()
            shown = traceback and traceback not in test.message
            parts.append(f"--- {_rank_title(rank)}" + (f"\n{traceback}" if shown else ""))
    return "\n\n".join(part for part in parts if part)


def _rank_title(rank: RankRecord) -> str:
    """``rank 1 failed (AssertionError)``, ``rank 2 exited (exit code 3)``, ``rank 0 exited (SIGSEGV)``."""
    number = str(rank.rank) if rank.rank >= 0 else "?"
    ended = rank.signal or (signal_name(rank.exit_code) if rank.exit_code and rank.exit_code < 0 else "")
    details = [rank.exc_type, ended or (f"exit code {rank.exit_code}" if rank.exit_code else "")]
    said = ", ".join(detail for detail in details if detail)
    return f"rank {number} {rank.outcome or 'failed'}" + (f" ({said})" if said else "")


def _xml_text(text: str) -> str:
    """``text`` without the characters XML 1.0 cannot hold (terminal escapes, NULs)."""
    return _XML_INVALID.sub("?", text)


def write_junit(path: str, results: Sequence[ConfigResult], seconds: float) -> None:
    """Write the JUnit XML file atomically, making its directory if needed."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    junit_tree(results, seconds).write(tmp, encoding="utf-8", xml_declaration=True)
    os.replace(tmp, path)
