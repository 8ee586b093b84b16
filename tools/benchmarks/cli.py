"""The command line of ``tools/bench.py``: what to run, then the trivial table and the scenarios in turn."""

from __future__ import annotations

import argparse
import importlib.util
import signal
import sys
from collections.abc import Sequence

from benchmarks.runner import become_subreaper, busy_warning, load_average, warm_page_cache
from benchmarks.scenarios import RUNNERS, run_scenario
from benchmarks.tables import preamble
from benchmarks.trivial_files import METHODS, POOL_TARGET_TESTS, RunResult
from benchmarks.trivial_report import README_TITLE, build_report, readme_section, replace_section
from benchmarks.trivial_runs import run_all

# Scenarios: the trivial table (trivial_*.py), and the others (scenarios.py).
TRIVIAL_SCENARIO = "trivial"
SCENARIOS = tuple(RUNNERS)
DEFAULT_SCENARIO_TESTS = {"ddp": 8, "dtensor": 8, "pytest": 6, "whole-file": 8, "memory": 4}
QUICK_SCENARIO_TESTS = {"ddp": 3, "dtensor": 3, "pytest": 3, "whole-file": 8, "memory": 2}


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench.py",
        description="Start-up, per-test time and rank memory of PyTorch's distributed test classes and ours.",
    )
    parser.add_argument(
        "--scenario",
        dest="scenarios",
        nargs="+",
        choices=[TRIVIAL_SCENARIO, *SCENARIOS, "all"],
        default=[TRIVIAL_SCENARIO],
        metavar="NAME",
        help=f"what to run: {TRIVIAL_SCENARIO} (this table and its targets; the default), "
        f"{', '.join(SCENARIOS)}, or all",
    )
    parser.add_argument(
        "--scenario-tests",
        type=int,
        metavar="N",
        help="tests per file in the other scenarios (default: ddp 8, dtensor 8, pytest 6 per file, "
        "whole-file 8, memory 4; --quick: 3, 3, 3, 8, 2)",
    )
    parser.add_argument(
        "--timeout",
        type=int,
        default=60,
        metavar="S",
        help="per-test timeout of both classes in the other scenarios: DISTRIBUTED_TESTS_DEFAULT_TIMEOUT "
        "for PyTorch's, DISTRIBUTED_TESTING_TIMEOUT for ours (default: 60)",
    )
    parser.add_argument(
        "--world-sizes", type=int, nargs="+", default=[2, 4, 8], metavar="N", help="world sizes (default: 2 4 8)"
    )
    parser.add_argument(
        "--methods",
        nargs="+",
        choices=list(METHODS),
        default=list(METHODS),
        help="rows to measure (default: all)",
    )
    parser.add_argument(
        "--tests-fast", type=int, default=20, metavar="N", help="timed tests per file for fork (default: 20)"
    )
    parser.add_argument(
        "--tests-slow",
        type=int,
        default=2,
        metavar="N",
        help="timed tests per file for the rows that spawn ranks per test, seconds each (default: 2)",
    )
    parser.add_argument(
        "--tests-warm",
        type=int,
        default=100,
        metavar="N",
        help="timed tests per file for the continuous and threaded rows (default: 100)",
    )
    parser.add_argument(
        "--warmup",
        type=int,
        default=1,
        metavar="N",
        help="untimed tests at the start of each file, the first being the start-up figure (default: 1)",
    )
    parser.add_argument(
        "--no-targets",
        dest="targets",
        action="store_false",
        help="skip the target runs (a 300-test class and a rank crash at world size 2)",
    )
    parser.add_argument(
        "--target-repeats", type=int, default=3, metavar="N", help="runs of each target file (default: 3)"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: world size 2, 3 fork tests, 1 spawn test, 10 warm tests, a 30-test target class once",
    )
    parser.add_argument(
        "--format", choices=["text", "markdown", "rst"], default="text", help="table format (default: text)"
    )
    parser.add_argument(
        "--markdown", dest="format", action="store_const", const="markdown", help="same as --format markdown"
    )
    parser.add_argument(
        "--readme", metavar="PATH", help="also write the results into the Benchmarks section of this rst file"
    )
    args = parser.parse_args(argv)
    args.class_tests = POOL_TARGET_TESTS
    if args.quick:
        args.world_sizes, args.tests_fast, args.tests_slow, args.tests_warm = [2], 3, 1, 10
        args.warmup, args.class_tests, args.target_repeats = 1, 30, 1
    if min(args.world_sizes) < 1 or min(args.tests_fast, args.tests_slow, args.tests_warm) < 1:
        parser.error("world sizes and test counts must be at least 1")
    if args.warmup < 1:
        parser.error("--warmup must be at least 1: the first test is the start-up figure")
    if args.target_repeats < 1:
        parser.error("--target-repeats must be at least 1")
    if args.timeout < 1 or (args.scenario_tests is not None and args.scenario_tests < 2):
        parser.error("--timeout must be at least 1 and --scenario-tests at least 2 (the first test is apart)")
    chosen = [*SCENARIOS, TRIVIAL_SCENARIO] if "all" in args.scenarios else args.scenarios
    args.scenarios = [name for name in (TRIVIAL_SCENARIO, *SCENARIOS) if name in chosen]
    if args.readme and TRIVIAL_SCENARIO not in args.scenarios:
        parser.error(f"--readme writes the {TRIVIAL_SCENARIO} table: add --scenario {TRIVIAL_SCENARIO}")
    counts = QUICK_SCENARIO_TESTS if args.quick else DEFAULT_SCENARIO_TESTS
    args.scenario_tests = {name: args.scenario_tests or n for name, n in counts.items()}
    args.world_sizes = sorted(set(args.world_sizes))
    args.methods = [m for m in METHODS if m in args.methods]  # table order, no duplicates
    return args


def missing_modules(methods: list[str]) -> list[str]:
    """Modules the chosen rows import that this interpreter lacks."""
    needed = ["torch"] + (["distributed_testing"] if any(not m.startswith("pytorch") for m in methods) else [])
    return [name for name in needed if importlib.util.find_spec(name) is None]


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; print the tables; 0 if every run passed, 1 if one failed, 2 on usage."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    missing = missing_modules(args.methods if args.scenarios == [TRIVIAL_SCENARIO] else ["ours"])
    if missing:
        print(
            f"bench.py: error: {sys.executable} cannot import {', '.join(missing)}; "
            "run it with the project's venv: make bench",
            file=sys.stderr,
        )
        return 2
    head = preamble(argv)
    warning = busy_warning()
    if warning:
        head.append(warning)
    print("\n".join(head), flush=True)
    signal.signal(signal.SIGTERM, _interrupt)  # clean up on SIGTERM as on Ctrl-C
    become_subreaper()
    code = 0
    try:
        if TRIVIAL_SCENARIO in args.scenarios:
            code = run_trivial(args, head)
        others = [name for name in args.scenarios if name != TRIVIAL_SCENARIO]
        if others:
            code = max(code, run_scenarios(others, args))
    except KeyboardInterrupt:
        print("\nbench.py: interrupted; the running test file was stopped", file=sys.stderr)
        return 130
    return code


def run_scenarios(names: list[str], args: argparse.Namespace) -> int:
    """The scenarios of scenarios.py, each reported as it ends; 1 if one went wrong."""
    if TRIVIAL_SCENARIO not in args.scenarios:
        warm_page_cache()
    failed = []
    for name in names:
        section = run_scenario(name, args)
        print(f"\n{section.title}:", *section.lines, sep="\n", flush=True)
        if not section.ok:
            failed.append(name)
    for name in failed:
        print(f"\nERROR: scenario {name}: a test failed or died, or a run was killed at its limit", file=sys.stderr)
    return 1 if failed else 0


def run_trivial(args: argparse.Namespace, head: list[str]) -> int:
    """The trivial table (the trivial test in every row and world size) and its targets."""
    results: dict[tuple[str, int], RunResult] = {}
    extra: dict[str, list[RunResult]] = {}
    run_all(args, results, extra)
    report = build_report(results, extra, args)
    load_end = load_average()
    print()
    print(report.text(args.format))
    print(f"\nload average at the end: {load_end}")
    if args.readme:
        with open(args.readme) as f:
            text = f.read()
        with open(args.readme, "w") as f:
            f.write(replace_section(text, README_TITLE, readme_section(head, report, load_end)))
        print(f"wrote the {README_TITLE} section of {args.readme}")
    failed = [run for run in [*results.values(), *(r for group in extra.values() for r in group)] if not run.ok]
    for run in failed:
        print(f"\nERROR: {run.method.label}, world size {run.world_size} ({run.purpose}): {run.error}", file=sys.stderr)
    return 1 if failed else 0
