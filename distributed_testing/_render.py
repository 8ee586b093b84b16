"""Render a folded :class:`~distributed_testing._outcomes.Outcome` for each place it is shown.

``text``: the unittest report (one string); ``headline`` plus ``sections``: the
same for pytest, with one report section per rank as pytest shows captured
output; ``ranks_record``: the JSON record's entry per rank.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from distributed_testing._outcomes import Outcome, RankReport, rank_list
from distributed_testing._protocol import FAILED, HUNG, PASSED, SKIPPED, STOPPED
from distributed_testing._stacks import stacks_key

__all__ = ["headline", "ranks_record", "sections", "text"]

_NO_STACKS = "(no stacks: the rank did not answer the stack request)"


def _ranks_word(ranks: Sequence[int]) -> str:
    return f"rank{'s' * (len(ranks) > 1)} {rank_list(ranks)}"


def _were(ranks: Sequence[int]) -> str:
    return "were" if len(ranks) > 1 else "was"


def text(outcome: Outcome) -> str:
    """The whole report unittest shows: headline, tracebacks or stacks, output, re-run line."""
    if outcome.kind == SKIPPED:
        return _skip_reason(outcome)
    if outcome.kind == PASSED and not outcome.note:
        return ""
    if outcome.printed_by is not None:
        first = _headline_lines(outcome)[:1] or [""]
        return f"{first[0]} (the full report is printed by rank {outcome.printed_by})"
    lines = _headline_lines(outcome)
    if outcome.timed_out or _failure_groups(outcome):
        lines += _detail_lines(outcome) + _output_lines(outcome)
    if lines and outcome.rerun:
        lines += ["", f"Re-run: {outcome.rerun}"]
    return _with_note("\n".join(lines), outcome.note)


def headline(outcome: Outcome) -> str:
    """The report without the ranks' details (pytest shows those as sections)."""
    if outcome.kind in (PASSED, SKIPPED):
        return text(outcome)
    lines = _headline_lines(outcome)
    if lines and outcome.rerun:
        lines += ["", f"Re-run: {outcome.rerun}"]
    return _with_note("\n".join(lines), outcome.note)


def sections(outcome: Outcome) -> list[tuple[str, str]]:
    """One (title, body) per rank with something to show: its traceback or stacks, then its output."""
    shown: list[tuple[str, str]] = []
    # Hung ranks with the same stacks: shown once, in the section of the group's first rank.
    stack_group = {r.rank: group for group in _stack_groups(outcome) for r in group}
    for report in outcome.ranks:
        parts = []
        ranks = [report.rank]
        if report.outcome == FAILED and report.traceback:
            parts.append(report.traceback)
        elif report.outcome == HUNG:
            group = stack_group[report.rank]
            if group[0] is report:
                ranks = [r.rank for r in group]
                parts.append("stacks (most recent call first):\n" + (report.stacks or _NO_STACKS))
            elif report.output.strip():  # a section of its own only for its output
                parts.append(f"stacks: the same as rank {group[0].rank}'s")
        if report.output.strip():
            label = "output:" if ranks == [report.rank] else f"rank {report.rank} output:"  # a group's section
            parts.append(f"{label}\n" + report.output.rstrip("\n"))
        if parts:
            title = f"{_ranks_word(ranks)}: {report.outcome}" + (f": {report.summary}" if report.summary else "")
            shown.append((title, "\n\n".join(parts)))
    return shown


def ranks_record(outcome: Outcome) -> list[dict[str, Any]]:
    """Each rank's entry for the JSON record."""
    return [
        {
            "rank": r.rank,
            "outcome": r.outcome,
            "summary": r.summary,
            "exc_type": r.exc_type,
            "traceback": r.traceback,
            "pid": r.pid,
            "exit_code": r.exit_code,
            "signal": r.signal,
            "stacks": r.stacks,
            "where": r.where,
            "output": r.output,
            "first": r.first,
            "consequence": r.consequence,
        }
        for r in outcome.ranks
    ]


def _with_note(report: str, note: str) -> str:
    if not note:
        return report
    return f"{report}\n\n{note}" if report else note


def _skip_reason(outcome: Outcome) -> str:
    """The reason; which ranks skipped, when some did not (``skipped on rank 1: ... (rank 0 passed)``)."""
    skips = [r for r in outcome.ranks if r.outcome == SKIPPED]
    passed = [r.rank for r in outcome.ranks if r.outcome == PASSED]
    reasons = {r.summary for r in skips}
    if len(reasons) == 1:
        reason = reasons.pop()
        if not passed:
            return reason
        return f"skipped on {_ranks_word([r.rank for r in skips])}: {reason} ({_ranks_word(passed)} passed)"
    said = "; ".join(f"rank {r.rank}: {r.summary}" for r in skips)
    return f"{said} ({_ranks_word(passed)} passed)" if passed else said


def _headline_lines(outcome: Outcome) -> list[str]:
    if outcome.timed_out:
        return _timeout_headline(outcome)
    stopped = [r.rank for r in outcome.ranks if r.outcome == STOPPED]
    groups = _failure_groups(outcome)
    if not groups:
        if stopped:
            return [f"{_ranks_word(stopped)} {_were(stopped)} stopped, but no rank reported a failure"]
        return []
    lines = []
    for group in groups:
        ranks = [r.rank for r in group]
        same = "same " if len(ranks) > 1 else ""
        pids = ", ".join(str(r.pid) for r in group if r.died)
        where = f" ({'pids' if ',' in pids else 'pid'} {pids})" if pids else ""
        lines.append(f"{_ranks_word(ranks)} of {outcome.world_size} failed: {same}{group[0].summary}{where}")
    if len(groups) > 1 and outcome.first_failure is not None:
        lines.append(f"rank {outcome.first_failure} failed first; the other failures may be consequences")
    skipped = [r for r in outcome.ranks if r.outcome == SKIPPED]
    if skipped:  # a rank that skips leaves the group: its peers' collectives fail for it
        reasons = "; ".join(sorted({r.summary for r in skipped}))
        why = ""
        if all(r.peer_gone for group in groups for r in group):
            failures = "the failure above is" if sum(map(len, groups)) == 1 else "the failures above are"
            why = f" ({failures} likely a consequence: a rank that skips leaves the group)"
        lines.append(f"{_ranks_word([r.rank for r in skipped])} skipped: {reasons}{why}")
    if stopped:
        lines.append(f"{_ranks_word(stopped)} {_were(stopped)} stopped")
    return lines


def _failure_groups(outcome: Outcome) -> list[list[RankReport]]:
    """Failed ranks grouped by what they reported; the rank that failed first leads."""
    groups: dict[tuple[str, str], list[RankReport]] = {}
    for report in outcome.ranks:
        if report.outcome == FAILED:
            groups.setdefault((report.summary, report.traceback), []).append(report)
    first = outcome.first_failure
    return sorted(groups.values(), key=lambda group: all(r.rank != first for r in group))


def _timeout_headline(outcome: Outcome) -> list[str]:
    """The headline, then one line per state, ranks in the same state together
    (``ranks 0, 2-63: in barrier (collective #3 of the default group) at test_x.py:27``)."""
    hung = [r.rank for r in outcome.ranks if r.outcome == HUNG]
    still = f"; {_ranks_word(hung)} still running" if hung else ""
    lines = [f"{outcome.test_id} timed out after {outcome.timeout:g} s{still}"]
    states: dict[str, list[int]] = {}
    for report in outcome.ranks:
        states.setdefault(_timeout_state(report), []).append(report.rank)
    lines += [f"  {_ranks_word(ranks)}: {state}" for state, ranks in states.items()]
    return lines


def _timeout_state(report: RankReport) -> str:
    if report.outcome == HUNG:
        return report.where
    after = f" (after collective #{report.sequence})" if report.sequence >= 0 else ""
    return (report.summary or "finished") + after


def _stack_groups(outcome: Outcome) -> list[list[RankReport]]:
    """Hung ranks grouped by their trimmed stacks, in rank order of each group's first."""
    groups: dict[str, list[RankReport]] = {}
    for report in outcome.ranks:
        if report.outcome == HUNG:
            groups.setdefault(stacks_key(report.stacks), []).append(report)
    return list(groups.values())


def _detail_lines(outcome: Outcome) -> list[str]:
    lines: list[str] = []
    if outcome.timed_out:
        for group in _stack_groups(outcome):
            title = f"--- {_ranks_word([r.rank for r in group])} stacks (most recent call first) ---"
            lines += ["", title, group[0].stacks or _NO_STACKS]
        return lines
    for group in _failure_groups(outcome):
        if group[0].traceback:
            lines += ["", f"--- {_ranks_word([r.rank for r in group])} ---", group[0].traceback]
    return lines


# The launcher's own lines in a rank's output (what was cut, where the full log is): shown unprefixed.
_OUTPUT_NOTE = re.compile(
    r"\[(?:\.\.\. \d+ (?:bytes|characters) of rank \d+'s output not shown|the full log of rank \d+ is )"
)


def _output_lines(outcome: Outcome) -> list[str]:
    lines: list[str] = []
    for report in outcome.ranks:
        output = report.output.rstrip("\n")
        if output:
            lines += ["", f"--- rank {report.rank} output ---"]
            prefix = f"[rank {report.rank}] "
            lines += [line if _OUTPUT_NOTE.match(line) else prefix + line for line in output.splitlines()]
    return lines
