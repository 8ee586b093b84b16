"""A scenario's figures and report: the first test apart, the later ones that passed summarised.

Figures: the first test alone, and the median and mean of the tests from the
second on that passed (how many is said). A test that failed, that its class's
own timeout stopped, or that was still running when the run hit its
wall-clock limit, is reported apart by name and never enters a median or a
mean (see ``Section.end``).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from benchmarks.outcomes import Run, outcome_counts
from benchmarks.tables import format_ms, ratio_text

TROUBLE = "tests not passed (never in a median or a mean), and what runs left behind:"


@dataclass
class Figures:
    """A sequence of tests: the first alone, the later ones that passed summarised."""

    first_ms: float | None
    first_outcome: str
    later: list[float]  # ms of the later tests that passed
    later_total: int  # later tests, passed or not

    @property
    def median(self) -> float | None:
        return statistics.median(self.later) if self.later else None

    @property
    def mean(self) -> float | None:
        return statistics.fmean(self.later) if self.later else None


def figures(run: Run, names: list[str], value: Callable[[str], float | None] | None = None) -> Figures:
    """The first of ``names`` and the later ones that passed, in ms (``value``: another measure)."""
    measure = value or run.ms
    first = names[0] if names else ""
    later = [measure(n) for n in names[1:] if run.outcomes.get(n) == "ok"]
    return Figures(
        first_ms=measure(first) if first and run.outcomes.get(first) == "ok" else None,
        first_outcome=run.outcomes.get(first, "not run"),
        later=[ms for ms in later if ms is not None],
        later_total=max(0, len(names) - 1),
    )


def fmt(ms: float | None) -> str:
    return "-" if ms is None else format_ms(ms)


def figure_cells(fig: Figures) -> list[str]:
    first = fmt(fig.first_ms) if fig.first_ms is not None else fig.first_outcome.upper()
    spread = f"{fmt(min(fig.later))} / {fmt(max(fig.later))}" if fig.later else "-"
    return [first, f"{len(fig.later)} of {fig.later_total}", fmt(fig.median), fmt(fig.mean), spread]


FIGURE_HEADER = ["first test, ms", "later tests passed", "median, ms", "mean, ms", "min / max, ms"]


def ratios(ours: Figures, theirs: Figures, better: str = "faster", worse: str = "slower") -> tuple[str, str, str]:
    """Ours against theirs: the first test, the later tests' median and their mean."""
    return (
        ratio_text(ours.first_ms, theirs.first_ms, better, worse),
        ratio_text(ours.median, theirs.median, better, worse),
        ratio_text(ours.mean, theirs.mean, better, worse),
    )


def outcome_lines(run: Run) -> list[str]:
    """The tests that did not pass, apart: count and names (and why), by outcome."""
    lines = []
    for outcome, names in run.not_ok().items():
        shown = ", ".join(short(n) for n in names)
        lines.append(f"  {run.label}: {len(names)} {outcome}: {shown}")
        for name in names:
            if run.reasons.get(name):
                lines.append(f"      {short(name)}: {run.reasons[name]}")
    lines.extend(f"  {run.label}: {problem}" for problem in run.problems)
    return lines


def short(name: str) -> str:
    """``module.Class.test_0001`` as ``module::test_0001`` (``__main__`` left out)."""
    module, _, method = name.rpartition(".")
    module = module.rpartition(".")[0]
    return method if module in ("", "__main__") else f"{module}::{method}"


def per_test_line(run: Run, *groups: list[str]) -> str:
    """Every test's ms in order, with its outcome when it did not pass; groups (files) apart."""
    return f"  {run.label}: " + "  ||  ".join(per_test_cells(run, names) for names in groups)


def per_test_cells(run: Run, names: list[str]) -> str:
    cells = []
    for name in names:
        ms, outcome = run.ms(name), run.outcomes.get(name, "not run")
        cell = fmt(ms) if ms is not None else "-"
        cells.append(cell if outcome == "ok" else f"{cell} ({outcome})")
    return " | ".join(cells)


def run_line(run: Run) -> str:
    other = "" if run.foreign_cpu is None else f", other work {run.foreign_cpu:.0%} of the CPUs"
    code = "killed" if run.code is None else f"exit {run.code}"
    tests = f"; tests: {outcome_counts(run)}" if run.expected else ""
    return f"  {run.label}: wall {run.wall:.1f} s ({code}, limit {run.limit:.0f} s{other}){tests}"


@dataclass
class Section:
    """A scenario's report: its lines, and whether its runs went as they should (see ``runs_ok``)."""

    title: str
    lines: list[str] = field(default_factory=list)
    ok: bool = True

    def end(self, runs: list[Run], others: Sequence[Run] = ()) -> None:
        """A line per run (``others`` too: runs without tests), then the tests that did not pass;
        ``ok`` when the runs went as they should and every one of ``others`` exited 0."""
        self.lines += [run_line(run) for run in [*runs, *others]]
        trouble = [line for run in runs for line in outcome_lines(run)]
        self.lines += [TROUBLE, *trouble] if trouble else []
        self.ok = runs_ok(runs) and all(run.code == 0 for run in others)


def runs_ok(runs: list[Run]) -> bool:
    """No run was killed at its wall-clock limit, and every test passed or was stopped by its
    class's own timeout (reported apart: torch's DDP teardown deadlock hits both sides)."""
    return all(run.code is not None and not set(run.not_ok()) - {"timed out"} for run in runs)
