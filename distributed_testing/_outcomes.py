"""Outcome: fold what every rank did into one test outcome and one readable report.

Plain functions over plain data, testable without starting a process.
"""

from __future__ import annotations

import os
import re
import signal
import sysconfig
from collections.abc import Sequence
from dataclasses import dataclass

from distributed_testing._protocol import EXITED, FAILED, PASSED, SKIPPED, ErrorInfo, RankResult

__all__ = ["Outcome", "RankView", "fold", "rank_failed", "rank_list", "signal_name", "summarize_stacks"]

PASS, FAIL, ERROR, SKIP = "pass", "fail", "error", "skip"


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
class Outcome:
    """One test's folded outcome: ``kind`` is pass, fail, error or skip."""

    kind: str
    message: str = ""
    failed_ranks: tuple[int, ...] = ()


@dataclass(frozen=True)
class _Verdict:
    rank: int
    kind: str  # ok, skip, fail, stopped, hung
    summary: str = ""  # what happened, without the rank: "ValueError: boom"
    detail: str = ""  # the traceback shown once per group
    assertion: bool = False
    pid: str = ""  # "pid N" of a rank that died: named in the header, not grouped on


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


def _ranks_word(ranks: Sequence[int]) -> str:
    return f"rank{'s' * (len(ranks) > 1)} {rank_list(ranks)}"


SUMMARY_LIMIT = 200  # characters of an exception message in a one-line summary


def _error_summary(error: ErrorInfo) -> str:
    message = error.message
    if len(message) > SUMMARY_LIMIT:
        message = message[:SUMMARY_LIMIT] + " [...]"
    text = f"{error.exc_type}: {message}" if message else error.exc_type
    return f"{text} (in {error.where})" if error.where else text


def _classify(view: RankView, expected_code: int | None, ignore_codes: bool, timed_out: bool) -> _Verdict:
    result, code = view.result, view.exitcode
    pid = f"pid {view.pid}" if view.pid else ""
    if timed_out and view.stacks and (result is None or result.status != FAILED):
        return _Verdict(view.rank, "hung", "still running at the deadline")
    if result is not None and result.status == FAILED:
        first = result.errors[0]
        detail = "\n\n".join(e.traceback for e in result.errors)
        assertion = all(e.is_assertion for e in result.errors)
        return _Verdict(view.rank, "fail", _error_summary(first), detail, assertion)
    if result is not None and result.status == EXITED:
        if ignore_codes or result.exit_code == expected_code:
            return _Verdict(view.rank, "ok")
        return _Verdict(view.rank, "fail", f"the test called sys.exit({result.exit_code})")
    if result is not None and result.status == SKIPPED:
        return _Verdict(view.rank, "skip", result.reason)
    if view.stopped:
        if timed_out:
            after = "reported that it passed, then was " if result is not None else ""
            return _Verdict(view.rank, "hung", f"{after}still running at the deadline")
        return _Verdict(view.rank, "stopped")
    if ignore_codes or (expected_code is not None and code == expected_code):
        return _Verdict(view.rank, "ok")
    if result is not None and result.status == PASSED:
        if expected_code is not None and view.rank == 0:
            return _Verdict(view.rank, "fail", f"exited with code {code}, expected {expected_code}")
        if code in (0, None):
            return _Verdict(view.rank, "ok")
        return _Verdict(view.rank, "fail", f"passed, then its process {_death(code)}", pid=pid)
    return _Verdict(view.rank, "fail", f"{_death(code)} before reporting a result", pid=pid)


def _death(code: int | None) -> str:
    if code is None:
        return "did not exit"
    if code < 0:
        return f"died with {signal_name(code)}"
    return f"exited with code {code}"


def rank_failed(view: RankView, expected_code: int | None, ignore_codes: bool) -> bool:
    """Whether one finished rank has already failed the test (used to stop the rest early)."""
    if view.exitcode is None and view.result is not None and view.result.status in (PASSED, SKIPPED):
        return False  # reported, still exiting: judge its exit code later
    return _classify(view, expected_code, ignore_codes, False).kind == "fail"


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
    """Fold the ranks' views into one outcome with its report."""
    verdicts = [_classify(v, expected_code, ignore_codes, timed_out) for v in views]
    bad = [v for v in verdicts if v.kind in ("fail", "hung")]
    if timed_out:
        return Outcome(ERROR, _timeout_report(views, verdicts, test_id, timeout, rerun), tuple(v.rank for v in bad))
    if bad:
        kind = FAIL if all(v.assertion for v in bad) else ERROR
        report = _failure_report(views, verdicts, world_size, first_failure, rerun)
        return Outcome(kind, report, tuple(v.rank for v in bad))
    stopped = [v.rank for v in verdicts if v.kind == "stopped"]
    if stopped:  # the parent stopped ranks, yet no rank failed: never call that a pass
        verb = "were" if len(stopped) > 1 else "was"
        message = f"{_ranks_word(stopped)} {verb} stopped, but no rank reported a failure"
        return Outcome(ERROR, message + (f"\n\nRe-run: {rerun}" if rerun else ""), tuple(stopped))
    skips = [v for v in verdicts if v.kind == "skip"]
    if skips:
        return Outcome(SKIP, _skip_reason(skips))
    return Outcome(PASS)


def _skip_reason(skips: list[_Verdict]) -> str:
    reasons = {v.summary for v in skips}
    if len(reasons) == 1:
        return reasons.pop()
    return "; ".join(f"rank {v.rank}: {v.summary}" for v in skips)


def _groups(bad: list[_Verdict]) -> list[list[_Verdict]]:
    groups: dict[tuple[str, str], list[_Verdict]] = {}
    for verdict in bad:
        groups.setdefault((verdict.summary, verdict.detail), []).append(verdict)
    return list(groups.values())


def _failure_report(
    views: Sequence[RankView],
    verdicts: list[_Verdict],
    world_size: int,
    first_failure: int | None,
    rerun: str,
) -> str:
    bad = [v for v in verdicts if v.kind == "fail"]
    # The rank that failed first leads: the others may only be consequences.
    groups = sorted(_groups(bad), key=lambda g: all(v.rank != first_failure for v in g))
    lines = []
    for group in groups:
        ranks = [v.rank for v in group]
        same = "same " if len(ranks) > 1 else ""
        pids = ", ".join(v.pid.removeprefix("pid ") for v in group if v.pid)
        where = f" ({'pids' if ',' in pids else 'pid'} {pids})" if pids else ""
        lines.append(f"{_ranks_word(ranks)} of {world_size} failed: {same}{group[0].summary}{where}")
    if len(groups) > 1 and first_failure is not None:
        lines.append(f"rank {first_failure} failed first; the other failures may be consequences")
    stopped = [v.rank for v in verdicts if v.kind == "stopped"]
    if stopped:
        verb = "were" if len(stopped) > 1 else "was"
        lines.append(f"{_ranks_word(stopped)} {verb} stopped")
    for group in groups:
        if group[0].detail:
            lines += ["", f"--- {_ranks_word([v.rank for v in group])} ---", group[0].detail]
    lines += _output_sections(views)
    if rerun:
        lines += ["", f"Re-run: {rerun}"]
    return "\n".join(lines)


def _output_sections(views: Sequence[RankView]) -> list[str]:
    lines: list[str] = []
    for view in views:
        text = view.output.rstrip("\n")
        if text:
            lines += ["", f"--- rank {view.rank} output ---"]
            lines += [f"[rank {view.rank}] {line}" for line in text.splitlines()]
    return lines


def _timeout_report(
    views: Sequence[RankView], verdicts: list[_Verdict], test_id: str, timeout: float, rerun: str
) -> str:
    hung = [v.rank for v in verdicts if v.kind == "hung"]
    still = f"; {_ranks_word(hung)} still running" if hung else ""
    lines = [f"{test_id} timed out after {timeout:g} s{still}"]
    for view in views:
        if view.rank in hung:
            lines.append(f"  rank {view.rank}: {summarize_stacks(view.stacks)}")
        else:
            verdict = verdicts[view.rank] if view.rank < len(verdicts) else None
            state = verdict.summary if verdict and verdict.summary else "finished"
            lines.append(f"  rank {view.rank}: {state}")
    for view in views:
        if view.rank in hung:
            stacks = trim_stacks(view.stacks) or "(no stacks: the rank did not answer the stack request)"
            lines += ["", f"--- rank {view.rank} stacks (most recent call first) ---", stacks]
    lines += _output_sections(views)
    if rerun:
        lines += ["", f"Re-run: {rerun}"]
    return "\n".join(lines)


_FRAME = re.compile(r'^\s*File "(?P<file>[^"]+)", line (?P<line>\d+) in (?P<func>\S+)')
_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep
_STDLIB = sysconfig.get_paths()["stdlib"] + os.sep
# Frames of these directories are the framework's, trimmed from reports.
_FRAMEWORK = (
    _PACKAGE_DIR,
    os.path.join(_STDLIB, "multiprocessing") + os.sep,
    os.path.join(_STDLIB, "unittest") + os.sep,
    os.path.join(sysconfig.get_paths()["purelib"], "expecttest") + os.sep,
)
# A rank's entry points: older frames belong to the process it was forked from.
_ENTRY_FILES = (os.path.join(_PACKAGE_DIR, "_rank.py"), os.path.join(_PACKAGE_DIR, "_pool_worker.py"))
_ENTRY_FUNCTIONS = (" rank_main", " pool_main")
# Frames of these are libraries: a hung rank's summary names the user's frame.
_LIBRARIES = (_STDLIB, sysconfig.get_paths()["purelib"] + os.sep, sysconfig.get_paths()["platlib"] + os.sep)


def _frame_file(line: str) -> str:
    match = _FRAME.match(line)
    return match["file"] if match else ""


def _is_framework(path: str) -> bool:
    return bool(path) and path.startswith(_FRAMEWORK)


def _is_library(path: str) -> bool:
    return path.startswith((*_LIBRARIES, *_FRAMEWORK))


def trim_stacks(text: str) -> str:
    """faulthandler output without the framework's frames, nor those a forked
    rank inherited from the parent (everything older than the rank's entry)."""
    kept: list[str] = []
    in_parent = False
    for line in text.splitlines():
        if line.startswith(("Thread ", "Current thread ")):
            in_parent = False
        elif _frame_file(line) in _ENTRY_FILES and line.endswith(_ENTRY_FUNCTIONS):
            in_parent = True
        if in_parent or _is_framework(_frame_file(line)):
            continue
        kept.append(line)
    return "\n".join(kept).strip("\n")


def _thread_blocks(text: str) -> list[list[tuple[str, str, str]]]:
    blocks: list[list[tuple[str, str, str]]] = []
    for line in text.splitlines():
        if line.startswith(("Thread ", "Current thread ")):
            blocks.append([])
            continue
        match = _FRAME.match(line)
        if match and blocks:
            blocks[-1].append((match["file"], match["line"], match["func"]))
    return blocks


def summarize_stacks(text: str) -> str:
    """Where a hung rank was, in one line: ``in all_reduce at test_x.py:41``."""
    blocks = [b for b in _thread_blocks(text) if any(not _is_library(f) for f, _, _ in b)]
    if not blocks:
        return "no Python stack available"
    frames = blocks[-1]  # the main thread is listed last
    user = next(frame for frame in frames if not _is_library(frame[0]))
    inner = frames[0]
    where = f"{user[0].rsplit('/', 1)[-1]}:{user[1]}"
    return f"in {inner[2]} at {where}"
