"""The scenarios of real distributed tests: ``ddp``, ``dtensor`` and ``pytest``.

* ``ddp``: a small MLP (Linear(8,16)-ReLU-Linear(16,4)) under
  ``DistributedDataParallel`` over gloo at world size 2, initialised from the
  test's ``file_name``: a forward on this rank's chunk, a backward, and a
  tensor ``assertEqual`` of each parameter's gradient against a one-process
  reference model (same seed) run on the whole batch. ``python file.py -v``.
* ``dtensor``: ``DTensorTestBase`` and ``with_comms`` at world size 4 (PyTorch's
  from ``common_dtensor``, ours from ``distributed_testing``):
  ``distribute_tensor`` with ``Shard(0)``, ``redistribute`` to ``Replicate()``,
  an ``assertEqual`` against the full tensor. ``python file.py -v``.
* ``pytest``: two files of ``ddp`` tests in one ``pytest -q -p no:cacheprovider``
  run (with ``--durations=0 --durations-min=0 -rA`` for per-test phases and
  outcomes): the second file's tests against the first's.

Why DDP tests time out, in both classes: torch's deadlock, not the classes'.
The test calls ``destroy_process_group()`` while the DDP module is alive; when
the test method returns, freeing the module frees its ``Reducer``, which holds
the last reference to the gloo group, and ``~ProcessGroupGloo`` joins gloo's
worker threads while holding the GIL; a worker thread freeing a finished
all-reduce's ``ThreadLocalState`` waits for the GIL to release a Python object
(gdb: ``~Reducer -> ~ProcessGroupGloo -> std::thread::join`` on the main
thread, ``~AsyncAllreduceWork -> ~ThreadLocalState -> SafePyObject decref ->
take_gil`` on a ``pt_gloo_runloop`` thread). The test is kept as written
(it is what tests look like); ``del ddp`` before ``destroy_process_group()``
avoids the deadlock (ours: none in 30 tests, against 9 in 30 without).
"""

from __future__ import annotations

import argparse
import sys

from benchmarks.figures import FIGURE_HEADER, Figures, Section, figure_cells, figures, fmt, per_test_line, ratios
from benchmarks.outcomes import Run, parse_pytest
from benchmarks.scenario_files import LABELS, MPTC, OURS, PYTORCH, SIDES, render, run_generated, run_sides
from benchmarks.tables import render_table


def deadlock_note(runs: list[Run]) -> list[str]:
    """What a timed-out DDP test most likely is (see the module's docstring)."""
    if not any("timed out" in run.not_ok() for run in runs):
        return []
    return [
        "note: a timed-out DDP test is most likely torch's own deadlock (both classes): the DDP module, freed "
        "after destroy_process_group, frees the gloo group while holding the GIL; see "
        "tools/benchmarks/scenario_ddp.py."
    ]


def compare_section(title: str, runs: list[Run], note: str, fmt_name: str) -> Section:
    """Side-by-side table of per-test figures for one file per side, with ratios."""
    section = Section(title)
    rows, figs = [], {}
    for run in runs:
        fig = figures(run, run.ids())
        figs[run.side] = fig
        rows.append([run.label, *figure_cells(fig)])
    section.lines.append(render_table(["class", *FIGURE_HEADER], rows, fmt_name))
    if PYTORCH in figs and OURS in figs:
        first, median, mean = ratios(figs[OURS], figs[PYTORCH])
        section.lines.append(f"ours against PyTorch's: first test {first}; later tests, median {median}, mean {mean}")
    section.lines.append(note)
    section.lines.append("each test, ms (setUp to the last cleanup, in order):")
    section.lines += [per_test_line(run, run.ids()) for run in runs]
    section.end(runs)
    return section


def scenario_ddp(args: argparse.Namespace, root: str) -> Section:
    runs = run_sides("ddp", 2, args, root)
    section = compare_section(
        f"ddp: DistributedDataParallel over gloo, an MLP's gradients checked, world size 2, "
        f"python file.py -v, {args.scenario_tests['ddp']} tests per file",
        runs,
        "later tests: from the second on, those that passed; ms from setUp to the last cleanup "
        "(ranks started, the test, the ranks joined).",
        args.format,
    )
    section.lines += deadlock_note(runs)
    return section


def scenario_dtensor(args: argparse.Namespace, root: str) -> Section:
    return compare_section(
        f"dtensor: DTensorTestBase + with_comms, distribute_tensor Shard(0) -> redistribute Replicate(), "
        f"world size 4, python file.py -v, {args.scenario_tests['dtensor']} tests per file",
        run_sides("dtensor", 4, args, root),
        "later tests: from the second on, those that passed; ms from setUp to the last cleanup.",
        args.format,
    )


PYTEST_MODULES = {"BenchDDP1": "test_bench_ddp_1", "BenchDDP2": "test_bench_ddp_2"}  # class: module


def run_pytest(side: str, tests: int, args: argparse.Namespace, root: str) -> Run:
    """Two generated files of ``tests`` DDP tests in one pytest run."""
    run = Run(label=LABELS[(side, MPTC)], side=side)
    sources = {}
    for class_name, module in PYTEST_MODULES.items():
        sources[module + ".py"] = render("pytest", "ddp", side, 2, tests, class_name)
        run.expected += [f"{module}.{class_name}.test_{i:04d}" for i in range(tests)]
    argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
    argv += ["--durations=0", "--durations-min=0", "-rA", *sources]  # the files, by name, in the run's directory
    return run_generated(
        run,
        "pytest",
        f"{run.label}, two files of {tests} DDP tests at world size 2",
        sources,
        lambda paths: argv,
        lambda run: parse_pytest(run, PYTEST_MODULES),
        args.timeout,
        root,
    )


def scenario_pytest(args: argparse.Namespace, root: str) -> Section:
    tests = args.scenario_tests["pytest"]
    runs = [run_pytest(side, tests, args, root) for side in SIDES]
    section = Section(
        f"pytest: two files of {tests} ddp tests each (world size 2) in one "
        "python -m pytest -q -p no:cacheprovider --durations=0 --durations-min=0 -rA run"
    )
    header = ["run, file", *FIGURE_HEADER, "pytest: first, ms", "pytest: later median, ms", "pytest: later mean, ms"]
    rows: list[list[str]] = []
    figs: dict[tuple[str, int], tuple[Figures, Figures]] = {}
    for run in runs:
        for number, module in enumerate(PYTEST_MODULES.values(), 1):
            names = run.ids(module + ".")

            def phases(name: str, run: Run = run) -> float | None:
                return 1000.0 * run.durations[name] if name in run.durations else None

            fig, dur = figures(run, names), figures(run, names, phases)
            figs[(run.side, number)] = (fig, dur)
            rows.append(
                [f"{run.label}, file {number}", *figure_cells(fig), fmt(dur.first_ms), fmt(dur.median), fmt(dur.mean)]
            )
    section.lines.append(render_table(header, rows, args.format))
    for run in runs:
        if (run.side, 1) in figs and (run.side, 2) in figs:
            (one, one_d), (two, two_d) = figs[(run.side, 1)], figs[(run.side, 2)]
            first, median, mean = ratios(two, one, "cheaper", "dearer")
            section.lines.append(
                f"{run.label}: file 2 against file 1 (timestamps): first test {first}, later tests median "
                f"{median}, mean {mean}; (pytest phases) later median {ratios(two_d, one_d, 'cheaper', 'dearer')[1]}"
            )
    for number in (1, 2):
        if (OURS, number) in figs and (PYTORCH, number) in figs:
            first, median, mean = ratios(figs[(OURS, number)][0], figs[(PYTORCH, number)][0])
            section.lines.append(
                f"ours against PyTorch's, file {number}: first test {first}, later tests median {median}, mean {mean}"
            )
    section.lines.append(
        "timestamps: setUp to the last cleanup, written by the tests (ms resolution); pytest: setup + call + "
        "teardown from --durations=0 (10 ms resolution; a class's first setup phase includes setUpClass)."
    )
    section.lines.append("each test, ms (setUp to the last cleanup, in order; file 1 | file 2):")
    for run in runs:
        section.lines.append(per_test_line(run, *(run.ids(module + ".") for module in PYTEST_MODULES.values())))
    section.end(runs)
    section.lines += deadlock_note(runs)
    return section
