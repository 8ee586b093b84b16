"""The scenarios of what a run costs beside its tests: ``whole-file`` and ``memory``.

* ``whole-file``: the wall clock of ``python file.py`` (no ``-v``) for a file
  of trivial tests (those of the table) against that of ``python -c "import
  torch"`` (the median of three runs, before, between and after the files),
  as a ratio to ``import torch + tests x 50 ms`` (target: at most 1.3).
* ``memory``: each rank's RSS, USS (``Private_Clean + Private_Dirty``) and Pss
  from ``/proc/self/smaps_rollup``, read inside the rank at the end of each
  trivial test; the same for our fork server (read by its ranks) and for the
  test process (read by itself in the test's last cleanup), and the Pss of
  them all summed.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile

from benchmarks.figures import Section, per_test_line
from benchmarks.outcomes import Run
from benchmarks.runner import progress
from benchmarks.scenario_files import OURS, PYTORCH, SIDES, run_bounded, run_sides, run_unittest_file, test_environment
from benchmarks.tables import format_mib, ratio_text, render_table, verdict

WHOLE_FILE_BUDGET_MS = 50.0  # per test, on top of import torch
WHOLE_FILE_TARGET = 1.3
IMPORT_TORCH_RUNS = 3


def import_torch(root: str) -> Run:
    """The wall clock of ``python -c "import torch"`` in the same clean environment."""
    run = Run(label="python -c 'import torch'", side="import")
    workdir = tempfile.mkdtemp(prefix="import-torch-", dir=root)
    try:
        env, _, _ = test_environment(workdir, 60)
        run_bounded(run, [sys.executable, "-c", "import torch"], workdir, env, 120.0)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return run


def scenario_whole_file(args: argparse.Namespace, root: str) -> Section:
    tests = args.scenario_tests["whole-file"]
    imports: list[Run] = []
    runs: list[Run] = []
    progress(f"whole-file: python -c 'import torch', {IMPORT_TORCH_RUNS} runs between the files ...")
    imports.append(import_torch(root))
    for side in SIDES:
        runs.append(run_unittest_file("whole-file", "trivial", side, 2, tests, args.timeout, root, verbose=False))
        imports.append(import_torch(root))
    while len(imports) < IMPORT_TORCH_RUNS:
        imports.append(import_torch(root))
    section = Section(
        f"whole-file: wall clock of python file.py ({tests} trivial tests, world size 2) against "
        "python -c 'import torch'"
    )
    good = [r.wall for r in imports if r.code == 0]
    torch_s = statistics.median(good) if good else None
    budget = None if torch_s is None else torch_s + tests * WHOLE_FILE_BUDGET_MS / 1000
    section.lines.append(
        f"import torch: median {torch_s:.2f} s of {len(good)} runs ({', '.join(f'{r.wall:.2f}' for r in imports)} s)"
        if torch_s is not None
        else "import torch: FAILED"
    )
    header = ["class", "wall, s", f"/ (import torch + {tests} x {WHOLE_FILE_BUDGET_MS:g} ms)", "tests passed"]
    rows = []
    for run in runs:
        passed = sum(1 for n in run.expected if run.outcomes.get(n) == "ok")
        share = f"{run.wall / budget:.2f}" if budget and run.code is not None else "-"
        rows.append([run.label, f"{run.wall:.2f}" if run.code is not None else "KILLED", share, f"{passed} of {tests}"])
    section.lines.append(render_table(header, rows, args.format))
    by_side = {run.side: run for run in runs}
    ours, theirs = by_side[OURS], by_side[PYTORCH]
    if budget is not None and ours.code == 0:
        share = ours.wall / budget
        section.lines.append(
            f"target: ours <= {WHOLE_FILE_TARGET:g} x (import torch + {tests} x {WHOLE_FILE_BUDGET_MS:g} ms) = "
            f"{WHOLE_FILE_TARGET * budget:.2f} s: {ours.wall:.2f} s, {share:.2f}x, "
            f"{verdict(share <= WHOLE_FILE_TARGET)}"
        )
    if ours.code == 0 and theirs.code == 0:
        section.lines.append(f"ours against PyTorch's, whole file: {ratio_text(ours.wall, theirs.wall)}")
    section.lines.append("inside the file, each test, ms (setUp to the last cleanup):")
    section.lines += [per_test_line(run, run.ids()) for run in runs]
    section.end(runs, imports)
    return section


def memory_rows(run: Run) -> tuple[list[list[str]], dict[str, float]]:
    """Per process (each rank, the test process, our fork server): RSS, USS and Pss, kB, in the
    first test and the later tests' median; and the later tests' median for a rank and in all."""
    # A spawned rank's module is __mp_main__, not __main__: the records name a test by its method.
    outcomes = {name.rpartition(".")[2]: outcome for name, outcome in run.outcomes.items()}
    first = run.expected[0].rpartition(".")[2] if run.expected else ""
    # (process, test): its figures. Ranks read their parent: for ours that is the fork server.
    seen: dict[tuple[str, str], dict[str, float]] = {}
    for record in run.memory:
        test = str(record["test"])
        if outcomes.get(test) != "ok":
            continue
        rank = int(record["rank"])  # type: ignore[call-overload]
        process = "the test process" if rank < 0 else f"rank {rank}"
        seen[(process, test)] = {key: float(record[key]) for key in ("rss", "uss", "pss")}  # type: ignore[arg-type]
        parent = record.get("parent")
        if rank >= 0 and run.side == OURS and isinstance(parent, dict):
            seen.setdefault(("the fork server (the ranks' parent)", test), {k: float(v) for k, v in parent.items()})
    processes = sorted({p for p, _ in seen}, key=lambda p: (not p.startswith("rank"), p))

    def median(process: str, key: str, later: bool) -> float | None:
        values = [v[key] for (p, t), v in seen.items() if p == process and (t != first) == later]
        return statistics.median(values) if values else None

    def mib(kb: float | None) -> str:
        return "-" if kb is None else format_mib(int(kb))

    rows = []
    for process in processes:
        cells = [mib(median(process, key, later)) for later in (False, True) for key in ("rss", "uss", "pss")]
        rows.append([f"{run.label}: {process}", *cells])
    later_tests = {t for _, t in seen if t != first}
    totals = [sum(v["pss"] for (_, t), v in seen.items() if t == test) for test in later_tests]
    firsts = [v["pss"] for (_, t), v in seen.items() if t == first]
    rows.append(
        [
            f"{run.label}: all of the above, Pss summed",
            "",
            "",
            mib(sum(firsts)) if firsts else "-",
            "",
            "",
            mib(statistics.median(totals)) if totals else "-",
        ]
    )
    summary: dict[str, float] = {}
    ranks = [v for (p, t), v in seen.items() if p.startswith("rank") and t != first]
    if ranks:
        summary = {key: statistics.median(v[key] for v in ranks) for key in ("rss", "uss", "pss")}
        summary["total_pss"] = statistics.median(totals) if totals else 0.0
    return rows, summary


def scenario_memory(args: argparse.Namespace, root: str) -> Section:
    tests = args.scenario_tests["memory"]
    runs = run_sides("memory", 2, args, root)
    section = Section(
        f"memory: each rank's RSS and USS at the end of a trivial test (world size 2, {tests} tests per file), MiB"
    )
    header = ["process", "first test: RSS", "USS", "Pss", "later tests (median): RSS", "USS", "Pss"]
    rows, sums = [], {}
    for run in runs:
        more, summary = memory_rows(run)
        rows += more
        sums[run.side] = summary
    section.lines.append(render_table(header, rows, args.format))
    if sums.get(OURS) and sums.get(PYTORCH):
        ours, theirs = sums[OURS], sums[PYTORCH]
        size = {key: ratio_text(ours[key], theirs[key], "smaller", "larger") for key in ours}
        section.lines.append(
            f"ours against PyTorch's, a rank in the later tests (median over ranks and tests): "
            f"RSS {size['rss']}, USS {size['uss']}, Pss {size['pss']}; all the processes above, Pss summed: "
            f"{size['total_pss']}"
        )
    section.lines.append(
        "RSS, USS (Private_Clean + Private_Dirty) and Pss from smaps_rollup: each rank reads its own at the end "
        "of the test body (after destroy_process_group), ours also its parent's, the fork server; the test "
        "process reads its own in the test's last cleanup. A forked rank's RSS counts the pages it shares with "
        "the fork server (and it with the test process); USS counts none of them; Pss shares them out, so the "
        "Pss sum is the run's footprint."
    )
    section.end(runs)
    return section
