"""The trivial table's report: its tables, ratios, targets, per-run details and README section.

Figures:

* start-up, ms: from ``setUpClass`` to the end of the first test: the time to
  the first result, with whatever starts once (spawned ranks, a fork server,
  a pool and its process group) included;
* per test, ms: the mean over the timed tests, measured from the end of the
  warm-up test(s) (the first of which is the start-up test) to the end of the
  last timed test;
* peak RSS of a rank, MiB: the largest ``VmHWM`` (from ``/proc/<pid>/status``)
  any rank process reported at the end of a test. A forked rank counts the
  pages it shares with the process it was forked from; Pss at the end of the
  last test (shared pages divided among the processes sharing them) is shown
  with the details. The threaded class has no rank process: its figure is the
  test process itself, which holds all the ranks.

Ratios: ours with spawn and with fork against PyTorch's
``MultiProcessTestCase``; our pool against PyTorch's
``MultiProcContinuousTest``.
"""

from __future__ import annotations

import argparse
import re
import statistics
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from benchmarks.tables import format_mib, format_ms, ratio_text, render_table, verdict
from benchmarks.trivial_files import (
    FORK_TARGETS_MS,
    METHODS,
    POOL_DISPATCH_MS,
    POOL_REBUILD_MS,
    POOL_START_MS,
    PYTORCH_CRASH_TIMEOUT,
    RunResult,
)


@dataclass
class Report:
    """What a run found: tables (title, header, rows) and lines of notes, in order."""

    tables: list[tuple[str, list[str], list[list[str]]]] = field(default_factory=list)
    targets: list[str] = field(default_factory=list)
    details: list[str] = field(default_factory=list)

    def text(self, fmt: str) -> str:
        out = []
        for title, header, rows in self.tables:
            out += [f"{title}:", render_table(header, rows, fmt), ""]
        if self.targets:
            out += ["targets:", *(f"  {line}" for line in self.targets), ""]
        out += self.details
        return "\n".join(out)


@dataclass(frozen=True)
class Figure:
    """A figure of the table: its title, its name in the ratio rows, how it is measured and written."""

    title: str
    name: str
    value: Callable[[RunResult], float]
    text: Callable[[float], str]
    better: str = "faster"
    worse: str = "slower"


FIGURES = (
    Figure("start-up, ms (setUpClass to the end of the first test)", "start-up", lambda r: r.start_ms, format_ms),
    Figure("per test, ms (mean of the timed tests)", "per test", lambda r: r.per_test_ms, format_ms),
    Figure(
        "peak RSS of a rank, MiB (largest VmHWM; threaded: the test process)",
        "peak RSS",
        lambda r: r.hwm_kb,
        format_mib,
        "smaller",
        "larger",
    ),
)
# How the ratio rows name the PyTorch rows they compare with.
BASELINE_NAMES = {"pytorch": "PyTorch MultiProcessTestCase", "pytorch-continuous": "PyTorch MultiProcContinuousTest"}

Results = dict[tuple[str, int], RunResult]


def figure_cell(run: RunResult | None, figure: Figure) -> str:
    return "FAILED" if run is None or not run.ok else figure.text(figure.value(run))


def ratio_cell(ours: RunResult | None, theirs: RunResult | None, figure: Figure) -> str:
    if ours is None or theirs is None or not ours.ok or not theirs.ok:
        return "-"
    return ratio_text(figure.value(ours), figure.value(theirs), figure.better, figure.worse)


def build_report(results: Results, extra: dict[str, list[RunResult]], args: argparse.Namespace) -> Report:
    """The tables, the targets and the per-run details of a benchmark run."""
    report = Report()
    sizes, methods = args.world_sizes, args.methods
    header = ["class", *(f"world size {n}" for n in sizes)]
    for figure in FIGURES:
        rows = [[METHODS[key].label, *(figure_cell(results.get((key, n)), figure) for n in sizes)] for key in methods]
        report.tables.append((figure.title, header, rows))
    ratio_rows = ratio_table(results, methods, sizes)
    if ratio_rows:
        report.tables.append(("ours against PyTorch's matching class", ["comparison", *header[1:]], ratio_rows))
    report.targets = target_lines(results, extra, sizes)
    report.details = detail_lines(results, extra, methods, sizes)
    report.details.append(contention_line([*results.values(), *(r for group in extra.values() for r in group)]))
    return report


def contention_line(runs: list[RunResult]) -> str:
    """How much of the CPUs other processes used while the runs ran: what skews the figures."""
    measured = [r for r in runs if r.foreign_cpu is not None and r.wall_seconds > 0]
    if not measured:
        return "other work during the runs: not measured (no /proc/stat)"
    wall = sum(r.wall_seconds for r in measured)
    mean = sum(r.foreign_cpu * r.wall_seconds for r in measured if r.foreign_cpu is not None) / wall
    worst = max(measured, key=lambda r: r.foreign_cpu or 0.0)
    return (
        f"other work during the runs (machine's busy CPU time minus the runs' own): {mean:.0%} of the CPUs "
        f"on average, at most {worst.foreign_cpu:.0%} ({worst.method.key}, world size {worst.world_size}, "
        f"{worst.purpose})"
    )


def ratio_table(results: Results, methods: list[str], sizes: list[int]) -> list[list[str]]:
    rows = []
    for key in methods:
        base_key = METHODS[key].baseline
        if base_key is None or base_key not in methods:
            continue
        for figure in FIGURES:
            cells = (ratio_cell(results.get((key, n)), results.get((base_key, n)), figure) for n in sizes)
            rows.append([f"ours {key} vs {BASELINE_NAMES[base_key]}: {figure.name}", *cells])
    return rows


def target_lines(results: Results, extra: dict[str, list[RunResult]], sizes: list[int]) -> list[str]:
    """The issues' targets, checked against what was measured (reported, not enforced)."""
    lines = []
    for n, limit in FORK_TARGETS_MS.items():
        run = results.get(("fork", n))
        if run is not None and run.ok:
            lines.append(
                f"fork <= {limit:.0f} ms per test at world size {n}: "
                f"{format_ms(run.per_test_ms)} ms, {verdict(run.per_test_ms <= limit)}"
            )
    for n in sizes:
        spawn, base = results.get(("spawn", n)), results.get(("pytorch", n))
        if spawn is not None and base is not None and spawn.ok and base.ok:
            lines.append(
                f"spawn no slower than PyTorch at world size {n}: {format_ms(spawn.per_test_ms)} vs "
                f"{format_ms(base.per_test_ms)} ms, {verdict(spawn.per_test_ms <= base.per_test_ms)}"
            )
    lines += class_target_lines(extra)
    lines += crash_target_lines(extra)
    return lines


def medians(runs: list[RunResult]) -> tuple[float, float, float] | None:
    """Median whole-class, start-up and per-test ms of the runs that passed."""
    good = [r for r in runs if r.ok]
    if not good:
        return None
    return (
        statistics.median(r.whole_class_ms for r in good),
        statistics.median(r.start_ms for r in good),
        statistics.median(r.per_test_ms for r in good),
    )


def class_target_lines(extra: dict[str, list[RunResult]]) -> list[str]:
    ours, theirs = medians(extra.get("class-pool", [])), medians(extra.get("class-pytorch-continuous", []))
    if ours is None:
        return []
    runs = [r for r in extra["class-pool"] if r.ok]
    n, size = runs[0].tests + runs[0].warmup, runs[0].world_size
    whole, start, dispatch = ours
    lines = [f"a class of {n} trivial tests at world size {size}, median of {len(runs)} run(s):"]
    if theirs is not None:
        their_whole, their_start, their_dispatch = theirs
        lines.append(
            f"  whole class <= PyTorch MultiProcContinuousTest's: {whole / 1000:.2f} s vs "
            f"{their_whole / 1000:.2f} s (start {their_start / 1000:.2f} s + {format_ms(their_dispatch)} ms per test), "
            f"{verdict(whole <= their_whole)}; aim: half ({their_whole / 2000:.2f} s), "
            f"{'reached' if whole <= their_whole / 2 else 'not reached'} ({whole / their_whole:.0%} of it)"
        )
    single = statistics.median(ms for run in runs for ms in run.test_ms())
    lines.append(
        f"  per-test dispatch <= {POOL_DISPATCH_MS:g} ms (the mean): {format_ms(dispatch)} ms, "
        f"{verdict(dispatch <= POOL_DISPATCH_MS)}; the median single test {format_ms(single)} ms"
    )
    lines.append(f"  start-up <= {POOL_START_MS / 1000:g} s: {start / 1000:.2f} s, {verdict(start <= POOL_START_MS)}")
    return lines


@dataclass
class CrashFigures:
    crash_ms: float  # the crashing test: dispatch, the death noticed, the broken pool closed
    rebuild_ms: float  # the test after it, minus a normal test: a new pool started
    steady_ms: float  # a normal test after the rebuild
    outcomes: str


def crash_figures(run: RunResult) -> CrashFigures:
    """Test 0 starts the pool, 1 crashes, 2 rebuilds, 3.. are normal tests."""
    steady = (run.end_ms(len(run.spans) - 1) - run.end_ms(2)) / (len(run.spans) - 3)
    counts = Counter(run.outcomes.values())
    return CrashFigures(
        crash_ms=run.end_ms(1) - run.end_ms(0),
        rebuild_ms=run.end_ms(2) - run.end_ms(1) - steady,
        steady_ms=steady,
        outcomes=", ".join(f"{k} {v}" for k, v in sorted(counts.items())),
    )


def crash_target_lines(extra: dict[str, list[RunResult]]) -> list[str]:
    lines = []
    runs = [r for r in extra.get("crash-pool", []) if r.ok]
    if runs:
        figures = [crash_figures(r) for r in runs]
        rebuild = statistics.median(f.rebuild_ms for f in figures)
        crash = statistics.median(f.crash_ms for f in figures)
        lines.append(
            f"rebuilt pool ready <= {POOL_REBUILD_MS:.0f} ms after a rank crash (world size "
            f"{runs[0].world_size}, median of {len(runs)}): {format_ms(rebuild)} ms, "
            f"{verdict(rebuild <= POOL_REBUILD_MS)}"
        )
        lines.append(
            f"  (the test after the crash minus a normal test; the crashing test itself, with the death "
            f"noticed and the broken pool closed, took {format_ms(crash)} ms; crash to ready "
            f"{format_ms(crash + rebuild)} ms; outcomes: {figures[0].outcomes})"
        )
    theirs = [r for r in extra.get("crash-pytorch-continuous", []) if r.ok]
    if theirs:
        figures = [crash_figures(r) for r in theirs]
        lines.append(
            f"  for reference, PyTorch MultiProcContinuousTest with its shortest dead-rank poll "
            f"(DISTRIBUTED_TESTS_DEFAULT_TIMEOUT={PYTORCH_CRASH_TIMEOUT}): the crashing test took "
            f"{format_ms(figures[0].crash_ms)} ms; no rebuild, the later tests are skipped "
            f"(outcomes: {figures[0].outcomes})"
        )
    return lines


def detail_lines(
    results: Results, extra: dict[str, list[RunResult]], methods: list[str], sizes: list[int]
) -> list[str]:
    """One line per run: test count, spread of single tests, memory, wall time."""
    lines = [
        "runs (timed tests, ms: min / median / max; peak RSS / Pss of a rank in the last test, MiB; "
        "wall time of the whole file, interpreter start-up and imports included):"
    ]
    runs = [results[(k, n)] for k in methods for n in sizes if (k, n) in results]
    runs += [run for group in extra.values() for run in group]
    for run in runs:
        counts = f"{run.warmup}+{run.tests}+{run.tail} tests"
        name = f"  {run.method.key:<18} ws={run.world_size:<2} {run.purpose:<6} {counts}"
        if run.ok:
            ms = run.test_ms() or [run.per_test_ms]
            spread = " / ".join(format_ms(x) for x in (min(ms), statistics.median(ms), max(ms)))
            lines.append(
                f"{name}: {spread}; start {format_ms(run.start_ms)}; class {format_ms(run.whole_class_ms)} "
                f"(tearDownClass {format_ms(1000 * run.teardown_seconds)}); RSS {format_mib(run.hwm_kb)} / "
                f"Pss {format_mib(run.pss_kb)} ({run.memory_processes} reports); wall {run.wall_seconds:.1f} s"
                + ("" if run.foreign_cpu is None else f"; other work {run.foreign_cpu:.0%} of the CPUs")
            )
        else:
            lines.append(f"{name}: FAILED: {run.error.splitlines()[0]}")
        lines.extend(f"    leak: {leak}" for leak in run.leaks)
    return lines


# -- README ---------------------------------------------------------------------

README_TITLE = "Benchmarks"
README_INTRO = """\
``tools/bench.py`` (``make bench``) runs the same trivial test in PyTorch's classes and
in ours, each file in a fresh interpreter; the class times itself, so interpreter
start-up and ``import torch`` are not counted. Per-test classes run
``init_process_group`` (gloo) + an ``all_reduce`` of one element + ``destroy_process_group``
per test; continuous classes run the ``all_reduce`` on the group they already set up;
PyTorch's ``MultiThreadedTestCase`` (ranks as threads of one process, a fake group) is
listed for reference. *Start-up*: ``setUpClass`` to the end of the first test (spawned
ranks, fork server, pool and process group included). *Per test*: the mean of the
timed tests after it. *Peak RSS of a rank*: the largest ``VmHWM`` of any rank process
(a forked rank counts pages it shares with the process it was forked from; the threaded
row is the whole test process). Ratios compare ours with spawn and fork against
PyTorch's ``MultiProcessTestCase`` and our pool against PyTorch's
``MultiProcContinuousTest``. Figures depend on the machine and on other work on it: the
last line of the runs says how much of the CPUs other processes used meanwhile."""


def readme_section(head: list[str], report: Report, load_end: str) -> str:
    """The Benchmarks section of README.rst."""
    out = [README_TITLE, "-" * len(README_TITLE), "", README_INTRO, "", "::", ""]
    out += [f"    {line}" for line in head]
    out += [f"    load average at the end: {load_end}", ""]
    for title, header, rows in report.tables:
        out += [title[0].upper() + title[1:] + ":", "", render_table(header, rows, "rst"), ""]
    if report.targets:
        out += ["Targets::", "", *(f"    {line}" for line in report.targets), ""]
    out += ["Runs::", "", *(f"    {line.strip()}" for line in report.details[1:]), ""]
    return "\n".join(out).rstrip() + "\n"


def replace_section(text: str, title: str, section: str) -> str:
    """``text`` with its ``title`` section (up to the next section) replaced, or ``section`` appended."""
    lines = text.splitlines()

    def is_header(i: int) -> bool:
        return (
            i + 1 < len(lines)
            and lines[i].strip() != ""
            and len(lines[i + 1]) >= len(lines[i].rstrip())
            and re.fullmatch(r"([-=~^\"'`#*+])\1+", lines[i + 1]) is not None
        )

    start = next((i for i in range(len(lines)) if lines[i].rstrip() == title and is_header(i)), None)
    if start is None:
        return text.rstrip() + "\n\n\n" + section
    end = next((i for i in range(start + 2, len(lines)) if is_header(i)), len(lines))
    before = "\n".join(lines[:start]).rstrip() + "\n\n\n"
    after = "\n".join(lines[end:])
    return before + section + ("\n\n" + after.rstrip() + "\n" if after.strip() else "")
