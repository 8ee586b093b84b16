"""Running the trivial table: a generated file per row and world size, then the target runs.

Targets (reported, not enforced), for a class of 300 trivial tests at world
size 2: our pool's whole-class time (``setUpClass`` to the end of
``tearDownClass``) at most PyTorch's ``MultiProcContinuousTest``'s (aiming for
half), per-test dispatch at most 2 ms, start-up at most 1.5 s; and after a rank
crash (``os._exit(3)`` in rank 1) the rebuilt pool ready within 0.5 s.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import tempfile

from benchmarks.outcomes import unittest_sections
from benchmarks.runner import (
    MEMORY_VARIABLE,
    clean_environment,
    leak_text,
    progress,
    progress_done,
    run_isolated,
    warm_page_cache,
)
from benchmarks.tables import format_ms
from benchmarks.trivial_files import (
    CRASH,
    LAST,
    MARKER,
    METHODS,
    PER_TEST,
    POOL_TARGET_SIZE,
    PYTORCH_CRASH_TIMEOUT,
    TRIVIAL,
    Method,
    RunResult,
    render_test_file,
)


def run_timeout(method: Method, world_size: int, tests: int) -> float:
    """A generous limit for one file: only a hang should reach it."""
    per_test = 15.0 * world_size if method.slow else 2.0 * world_size
    return 180.0 + tests * per_test


def run_test_file(
    result: RunResult, bodies: list[str], root: str, extra_env: dict[str, str] | None = None
) -> RunResult:
    """Generate, run and check one test file (tests ``bodies``); remove everything it made."""
    method, world_size = result.method, result.world_size
    workdir = tempfile.mkdtemp(prefix=f"{method.key}-ws{world_size}-", dir=root)
    try:
        tmpdir, memory_dir = os.path.join(workdir, "tmp"), os.path.join(workdir, "memory")
        os.mkdir(tmpdir)
        os.mkdir(memory_dir)
        path = os.path.join(workdir, "test_bench_all_reduce.py")
        with open(path, "w") as f:
            f.write(render_test_file(method, world_size, bodies))
        env = clean_environment(tmpdir)
        env[MEMORY_VARIABLE] = memory_dir
        env.update(extra_env or {})
        done = run_isolated([sys.executable, path, "-v"], workdir, env, run_timeout(method, world_size, len(bodies)))
        result.wall_seconds, result.foreign_cpu = done.wall, done.foreign_cpu
        if done.leaked:
            result.leaks.append(leak_text(done.leaked))
        result.leaks.extend(f"left in TMPDIR: {name}" for name in done.left)
        check_run(result, done.code, done.stdout, done.stderr, len(bodies), expect_ok=CRASH not in bodies)
        read_memory(result, memory_dir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return result


def parse_outcomes(stderr: str) -> dict[str, str]:
    """Each test's verbose outcome: ok, FAIL, ERROR or skipped (rank output may come between)."""
    outcomes = {}
    for method, _, section in unittest_sections(stderr):
        found = re.search(r"\b(ok|FAIL|ERROR|skipped)\b", section)
        outcomes[method] = found.group(1) if found else "unknown"
    return outcomes


def check_run(result: RunResult, code: int | None, stdout: str, stderr: str, total: int, expect_ok: bool) -> None:
    """Fill ``result`` from the run's output, or set its error."""
    result.outcomes = parse_outcomes(stderr)
    if code is None:
        result.error = f"timed out after {run_timeout(result.method, result.world_size, total):.0f} s"
    elif expect_ok and code != 0:
        result.error = f"exit code {code}"
    elif expect_ok and (f"Ran {total} test" not in stderr or "OK" not in stderr.splitlines()):
        result.error = f"expected 'Ran {total} tests' and a plain 'OK' (no skips)"
    elif not expect_ok and f"Ran {total} test" not in stderr:
        result.error = f"expected 'Ran {total} tests'"
    else:
        line = next((ln for ln in stdout.splitlines() if ln.startswith(MARKER)), None)
        if line is None:
            result.error = "the test file printed no timing line"
        else:
            data = json.loads(line[len(MARKER) :])
            result.class_seconds = float(data["class_seconds"])
            result.teardown_seconds = float(data["teardown_seconds"])
            result.spans = [(float(start), float(end)) for start, end in data["tests"]]
            if len(result.spans) != total:
                result.error = f"timed {len(result.spans)} tests, expected {total}"
    if result.error:
        tail = "\n".join((stdout + stderr).strip().splitlines()[-40:])
        result.error += "\n" + tail


def read_memory(result: RunResult, memory_dir: str) -> None:
    """The largest VmHWM and last-test Pss the ranks wrote (kB)."""
    try:
        names = os.listdir(memory_dir)
    except OSError:
        return
    for name in names:
        try:
            with open(os.path.join(memory_dir, name)) as f:
                hwm, pss = (int(x) for x in f.read().split())
        except (OSError, ValueError):
            continue
        result.memory_processes += 1
        result.hwm_kb = max(result.hwm_kb, hwm)
        result.pss_kb = max(result.pss_kb, pss)


def table_run(method: Method, world_size: int, tests: int, warmup: int) -> tuple[RunResult, list[str]]:
    """A table cell's run and its tests: warm-up, timed, then the one that reads Pss.

    Reading Pss takes a few ms, so it has a test of its own after the timed
    ones; a row whose tests take seconds reads it in its last timed test.
    """
    tail = 0 if method.slow else 1
    bodies = [TRIVIAL] * (warmup + tests + tail - 1) + [LAST]
    return RunResult(method, world_size, tests, warmup, tail=tail), bodies


def tests_for(method: Method, args: argparse.Namespace) -> int:
    if method.kind != PER_TEST:
        return int(args.tests_warm)
    return int(args.tests_slow if method.slow else args.tests_fast)


def run_all(
    args: argparse.Namespace, results: dict[tuple[str, int], RunResult], extra: dict[str, list[RunResult]]
) -> None:
    """Run every (world size, row) in turn, then the target runs, reporting progress on stderr."""
    root = tempfile.mkdtemp(prefix="dt-bench-")
    try:
        warm_page_cache()
        for n in args.world_sizes:
            for key in args.methods:
                method = METHODS[key]
                tests = tests_for(method, args)
                progress(f"{method.label}, world size {n}, {args.warmup}+{tests} tests ...")
                run = run_test_file(*table_run(method, n, tests, args.warmup), root)
                results[(key, n)] = run
                status = (
                    f"start {format_ms(run.start_ms)} ms, {format_ms(run.per_test_ms)} ms per test"
                    if run.ok
                    else "FAILED"
                )
                progress_done(status, run.wall_seconds)
        if args.targets:
            run_targets(args, extra, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)


CRASH_BODIES = [TRIVIAL, CRASH, TRIVIAL] + [TRIVIAL] * 20


def run_targets(args: argparse.Namespace, extra: dict[str, list[RunResult]], root: str) -> None:
    """The 300-test class on our pool and PyTorch's continuous class; a rank crash in the pool."""
    n, size = args.class_tests, POOL_TARGET_SIZE
    for key in ("pytorch-continuous", "pool"):
        for i in range(args.target_repeats):
            progress(f"target: {METHODS[key].label}, {n} tests at world size {size}, run {i + 1} ...")
            run = RunResult(METHODS[key], size, n - 1, 1, tail=0, purpose="class")
            run_test_file(run, [TRIVIAL] * n, root)
            extra.setdefault(f"class-{key}", []).append(run)
            progress_done(f"{run.whole_class_ms / 1000:.2f} s whole class" if run.ok else "FAILED", run.wall_seconds)
    for i in range(args.target_repeats):
        run_crash("pool", f", run {i + 1}", extra, root)
    if not args.quick:  # about 20 s: PyTorch notices the dead rank after a 10 s poll
        run_crash("pytorch-continuous", "", extra, root, {"DISTRIBUTED_TESTS_DEFAULT_TIMEOUT": PYTORCH_CRASH_TIMEOUT})


def run_crash(
    key: str, which: str, extra: dict[str, list[RunResult]], root: str, env: dict[str, str] | None = None
) -> None:
    """A rank crash in ``key``'s class: our pool rebuilds itself, PyTorch's skips the rest."""
    size = POOL_TARGET_SIZE
    progress(f"target: {METHODS[key].label}, a rank crash at world size {size}{which} ...")
    run = RunResult(METHODS[key], size, len(CRASH_BODIES) - 1, 1, tail=0, purpose="crash")
    run_test_file(run, CRASH_BODIES, root, env)
    check_crash(run, expect_rebuild=key == "pool")
    extra.setdefault(f"crash-{key}", []).append(run)
    progress_done("done" if run.ok else "FAILED", run.wall_seconds)


def check_crash(run: RunResult, expect_rebuild: bool) -> None:
    """Our pool: only the crashing test fails. PyTorch's: it fails and the rest are skipped."""
    if not run.ok:
        return
    want = {f"test_{i:04d}": "ok" for i in range(run.warmup + run.tests)}
    want["test_0001"] = "FAIL or ERROR"
    if not expect_rebuild:
        want.update({name: "skipped" for name in want if name > "test_0001"})
    wrong = [
        f"{name}: {run.outcomes.get(name, 'missing')} (expected {expected})"
        for name, expected in want.items()
        if run.outcomes.get(name, "missing") not in expected.split(" or ")
    ]
    if wrong:
        run.error = "unexpected outcomes: " + "; ".join(wrong[:5])
