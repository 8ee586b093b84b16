"""Outcome: fold what every rank did into one test outcome, as data.

Plain functions over plain data, testable without starting a process. The
folded :class:`Outcome` holds each rank's part; ``_render`` turns it into the
unittest report, pytest sections and the JSON record.
"""

from __future__ import annotations

import signal
from collections.abc import Sequence
from dataclasses import dataclass

from distributed_testing._protocol import (
    ERROR,
    EXITED,
    FAILED,
    HUNG,
    PASSED,
    SKIPPED,
    STOPPED,
    ErrorInfo,
    RankOutcome,
    RankResult,
    TestOutcome,
)
from distributed_testing._stacks import split_where, summarize_stacks, trim_stacks

__all__ = ["Outcome", "RankReport", "RankView", "fold", "rank_failed", "rank_list", "says_peer_gone", "signal_name"]

SUMMARY_LIMIT = 200  # characters of an exception message in a one-line summary
# An error whose message says a peer went away is most likely a consequence of that
# peer's own failure (it may even be recorded first: the peer's test code tears its
# group down before unittest hears of its exception).
_PEER_GONE = ("Connection reset by peer", "Connection closed by peer", "Broken pipe", "Connection refused")


def says_peer_gone(message: str) -> bool:
    """Whether an error message says a peer went away (a consequence, not a cause)."""
    return any(text in message for text in _PEER_GONE)


@dataclass(frozen=True)
class RankView:
    """Everything the parent knows about one rank once it is gone."""

    rank: int
    pid: int | None
    result: RankResult | None
    exitcode: int | None
    stopped: str = ""  # "", "SIGTERM" or "SIGKILL": the parent stopped it
    finished_at: float | None = None
    stacks: str = ""
    output: str = ""


@dataclass(frozen=True)
class RankReport:
    """One rank's part of a test's outcome."""

    rank: int
    outcome: RankOutcome  # passed, failed, skipped, hung or stopped
    summary: str = ""  # one line: "ValueError: boom (in setUp)", a skip reason, "died with SIGSEGV ..."
    exc_type: str = ""  # the first exception's type
    traceback: str = ""  # every traceback the rank reported
    assertion: bool = False  # every exception was an AssertionError
    peer_gone: bool = False  # the first exception says a peer went away: likely a consequence
    pid: int | None = None
    exit_code: int | None = None  # the process's exit code (None: unknown, or killed by a signal)
    signal: str = ""  # "SIGSEGV": the process died by this signal
    died: bool = False  # the process ended without (or after) reporting: its pid is named
    stacks: str = ""  # a hung rank's stacks, framework frames trimmed
    where: str = ""  # a hung rank: "in all_reduce (collective #3 of the default group) at test_x.py:41"
    sequence: int = -1  # collectives the rank's default group had run (-1: unknown)
    output: str = ""  # what the rank printed
    first: bool = False  # this rank failed first
    consequence: bool = False  # failed after another rank had: maybe only a consequence

    @property
    def bad(self) -> bool:
        return self.outcome in (FAILED, HUNG)


@dataclass(frozen=True)
class Outcome:
    """One test's folded outcome: ``kind`` and every rank's :class:`RankReport`."""

    kind: TestOutcome
    test_id: str = ""
    world_size: int = 0
    ranks: tuple[RankReport, ...] = ()
    timed_out: bool = False
    timeout: float = 0.0
    first_failure: int | None = None
    rerun: str = ""  # the command that re-runs just this test
    note: str = ""  # text added after the fold: an expectation the ranks disagree on
    printed_by: int | None = None  # torchrun mode: the rank that prints the full report

    @property
    def failed_ranks(self) -> tuple[int, ...]:
        bad = tuple(r.rank for r in self.ranks if r.bad)
        if bad or self.kind != ERROR:
            return bad
        return tuple(r.rank for r in self.ranks if r.outcome == STOPPED)

    @property
    def message(self) -> str:
        """The unittest report (a skip: its reason)."""
        from distributed_testing._render import text

        return text(self)


def signal_name(code: int) -> str:
    """``-11`` -> ``SIGSEGV``; a negative exit code is a death by signal."""
    try:
        return signal.Signals(-code).name
    except ValueError:
        return f"signal {-code}"


def rank_list(ranks: Sequence[int]) -> str:
    """``[0, 1, 2, 5]`` -> ``0-2, 5``."""
    ordered = sorted(set(ranks))
    parts: list[str] = []
    start = prev = ordered[0] if ordered else 0
    for rank in ordered[1:] + [None]:  # type: ignore[list-item]
        if rank is not None and rank == prev + 1:
            prev = rank
            continue
        parts.append(str(start) if start == prev else f"{start}-{prev}")
        if rank is not None:
            start = prev = rank
    return ", ".join(parts) if ordered else ""


def _error_summary(error: ErrorInfo) -> str:
    message = error.message
    if len(message) > SUMMARY_LIMIT:
        message = message[:SUMMARY_LIMIT] + " [...]"
    text = f"{error.exc_type}: {message}" if message else error.exc_type
    return f"{text} (in {error.where})" if error.where else text


def _death(code: int | None) -> str:
    if code is None:
        return "did not exit"
    if code < 0:
        return f"died with {signal_name(code)}"
    return f"exited with code {code}"


def _classify(view: RankView, expected_code: int | None, ignore_codes: bool, timed_out: bool) -> RankReport:
    """One rank's outcome, before the rest of the fold (first/consequence, stacks, output)."""
    result, code = view.result, view.exitcode
    base = RankReport(
        view.rank,
        PASSED,
        pid=view.pid,
        exit_code=code if code is None or code >= 0 else None,
        signal=signal_name(code) if code is not None and code < 0 else "",
    )

    def report(outcome: RankOutcome, summary: str = "", **fields: object) -> RankReport:
        return RankReport(**{**base.__dict__, "outcome": outcome, "summary": summary, **fields})  # type: ignore[arg-type]

    if timed_out and view.stacks and (result is None or result.status != FAILED):
        return report(HUNG, "still running at the deadline")
    if result is not None and result.status == FAILED:
        first = result.errors[0]
        detail = "\n\n".join(e.traceback for e in result.errors)
        assertion = all(e.is_assertion for e in result.errors)
        gone = says_peer_gone(first.message)
        fields = {"exc_type": first.exc_type, "traceback": detail, "assertion": assertion, "peer_gone": gone}
        return report(FAILED, _error_summary(first), **fields)
    if result is not None and result.status == EXITED:
        if ignore_codes or result.exit_code == expected_code:
            return report(PASSED)
        where = "\n\n".join(e.traceback for e in result.errors)  # where it called sys.exit
        return report(FAILED, f"the test called sys.exit({result.exit_code})", exc_type="SystemExit", traceback=where)
    if result is not None and result.status == SKIPPED:
        return report(SKIPPED, result.reason)
    if view.stopped:
        if timed_out:
            after = "reported that it passed, then was " if result is not None else ""
            return report(HUNG, f"{after}still running at the deadline")
        return report(STOPPED)
    if ignore_codes or (expected_code is not None and code == expected_code):
        return report(PASSED)
    if result is not None and result.status == PASSED:
        if expected_code is not None and view.rank == 0:
            return report(FAILED, f"exited with code {code}, expected {expected_code}")
        if code in (0, None):
            return report(PASSED)
        return report(FAILED, f"passed, then its process {_death(code)}", died=bool(view.pid))
    return report(FAILED, f"{_death(code)} before reporting a result", died=bool(view.pid))


def rank_failed(view: RankView, expected_code: int | None, ignore_codes: bool) -> bool:
    """Whether one finished rank has already failed the test (used to stop the rest early)."""
    if view.exitcode is None and view.result is not None and view.result.status in (PASSED, SKIPPED):
        return False  # reported, still exiting: judge its exit code later
    return _classify(view, expected_code, ignore_codes, False).outcome == FAILED


def fold(
    views: Sequence[RankView],
    *,
    test_id: str,
    world_size: int,
    timed_out: bool = False,
    timeout: float = 0.0,
    first_failure: int | None = None,
    expected_code: int | None = None,
    ignore_codes: bool = False,
    rerun: str = "",
) -> Outcome:
    """Fold the ranks' views into one outcome."""
    reports = []
    classified = [_classify(v, expected_code, ignore_codes, timed_out) for v in views]
    failures = sum(report.outcome == FAILED for report in classified)
    for view, report in zip(views, classified, strict=True):
        record, stacks = split_where(view.stacks)
        sequence = record.get("sequence", view.result.sequence if view.result is not None else -1)
        extra: dict[str, object] = {"output": view.output, "sequence": sequence}
        if report.outcome == HUNG:
            extra |= {"stacks": trim_stacks(stacks), "where": summarize_stacks(stacks, record)}
        if report.outcome == FAILED and failures > 1 and first_failure is not None:
            extra |= {"first": view.rank == first_failure, "consequence": view.rank != first_failure}
        reports.append(RankReport(**{**report.__dict__, **extra}))  # type: ignore[arg-type]
    kind = _kind(reports, timed_out)
    return Outcome(kind, test_id, world_size, tuple(reports), timed_out, timeout, first_failure, rerun)


def _kind(reports: list[RankReport], timed_out: bool) -> TestOutcome:
    bad = [r for r in reports if r.bad]
    if timed_out:
        return ERROR
    if bad:
        # A peer's "connection reset" after an assertion is that assertion's consequence.
        causes = [r for r in bad if not (r.consequence and r.peer_gone)]
        return FAILED if all(r.assertion for r in causes) else ERROR
    if any(r.outcome == STOPPED for r in reports):  # stopped, yet no rank failed: never a pass
        return ERROR
    if any(r.outcome == SKIPPED for r in reports):
        return SKIPPED
    return PASSED
