"""Measure retries: a planted 1-in-3 flaky test comes out flaky, a deterministic failure failed.

Writes one test file into a private temporary directory: ``test_flaky`` passes
on every third attempt (a counter file remembers attempts across the fresh
ranks of each attempt, and across runs), ``test_broken`` always fails. Runs the file ``--runs`` times (default
10) with ``--retries`` (default 2) under ``run_tests()`` (``python FILE``) or
pytest, each run in a fresh interpreter with a clean environment, reads each
run's JSON record (``DISTRIBUTED_TESTING_REPORT``) and prints, per run and in
total, whether the flaky test came out flaky and the broken one failed after
every attempt. Exits 0 when both did in every run, else 1.

Usage::

    python tools/flaky_bench.py                      # 10 runs, --retries 2, python FILE
    python tools/flaky_bench.py --front-end pytest   # the same under pytest --dt-retries
    python tools/flaky_bench.py --runs 20 --retries 1
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any

TEST_FILE = '''\
import os
from distributed_testing import DistributedTestBase, run_tests

COUNTER = os.environ["FLAKY_BENCH_COUNTER"]


class TestPlanted(DistributedTestBase):
    world_size = 2

    def test_flaky(self):
        if self.rank == 0:
            count = int(open(COUNTER).read()) + 1 if os.path.exists(COUNTER) else 1
            with open(COUNTER, "w") as handle:
                handle.write(str(count))
            self.assertEqual(count % 3, 0, f"planted flake: attempt {count} is not a third one")

    def test_broken(self):
        self.assertEqual(self.rank, -1, "a deterministic failure")


if __name__ == "__main__":
    run_tests()
'''

# The configuration a run would otherwise inherit from the shell (the bench sets its own).
_INHERITED = ("BACKEND", "WORLD_SIZE", "TEMP_DIR", "INIT_METHOD", "RANK", "PYTEST_ADDOPTS", "PYTEST_XDIST_WORKER")


def _environment(workdir: str, counter: str, record: str, retries: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISTRIBUTED_TESTING_") and k not in _INHERITED}
    env.update(
        TMPDIR=workdir,
        PYTHONWARNINGS="ignore",
        FLAKY_BENCH_COUNTER=counter,
        DISTRIBUTED_TESTING_REPORT=record,
        DISTRIBUTED_TESTING_RETRIES=str(retries),
        DISTRIBUTED_TESTING_TIMEOUT="120",
    )
    return env


def _one_run(path: str, front_end: str, env: dict[str, str], cwd: str) -> tuple[int, dict[str, dict[str, Any]], float]:
    """Run the file once; its exit code, its tests' records by method name, and its wall seconds."""
    command = [sys.executable, path] if front_end == "python" else [sys.executable, "-m", "pytest", "-q", "-p",
                                                                     "no:cacheprovider", path]
    start = time.monotonic()
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600,
                          stdin=subprocess.DEVNULL)
    seconds = time.monotonic() - start
    try:
        with open(env["DISTRIBUTED_TESTING_REPORT"], encoding="utf-8") as handle:
            tests = json.load(handle)["tests"]
    except (OSError, ValueError, KeyError):
        sys.stderr.write(done.stdout + done.stderr)
        return done.returncode, {}, seconds
    return done.returncode, {str(t["id"]).replace("::", ".").rsplit(".", 1)[-1]: t for t in tests}, seconds


def _verdicts(tests: dict[str, dict[str, Any]], retries: int) -> tuple[bool, bool, str]:
    """(flaky came out flaky, broken came out failed after every attempt, a line for the table)."""
    flaky, broken = tests.get("test_flaky", {}), tests.get("test_broken", {})
    flaky_ok = flaky.get("outcome") == "passed" and flaky.get("flaky") is True
    broken_ok = broken.get("outcome") == "failed" and broken.get("attempts") == retries + 1 and not broken.get("flaky")
    first = (flaky.get("first_failure") or {}).get("where", "-")
    line = (f"test_flaky: {flaky.get('outcome', '?')}{' (flaky)' if flaky.get('flaky') else ''}, "
            f"{flaky.get('attempts', '?')} attempts, first failure: {first}; "
            f"test_broken: {broken.get('outcome', '?')} after {broken.get('attempts', '?')} attempts")
    return flaky_ok, broken_ok, line


def main(argv: Sequence[str] | None = None) -> int:
    """Run the measurement; return 0 when every run came out as expected."""
    parser = argparse.ArgumentParser(prog="python tools/flaky_bench.py", description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10, help="runs of the file (default 10)")
    parser.add_argument("--retries", type=int, default=2, help="DISTRIBUTED_TESTING_RETRIES (default 2)")
    parser.add_argument("--front-end", choices=("python", "pytest"), default="python", help="python FILE or pytest")
    args = parser.parse_args(argv)
    if args.runs < 1 or args.retries < 0:
        parser.error("--runs must be >= 1 and --retries >= 0")
    workdir = tempfile.mkdtemp(prefix="flaky-bench-")
    try:
        path = os.path.join(workdir, "test_planted.py")
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(TEST_FILE)
        counter = os.path.join(workdir, "attempts")
        flaky_count = broken_count = 0
        total = 0.0
        print(f"{args.runs} runs of {args.front_end} {os.path.basename(path)} with "
              f"DISTRIBUTED_TESTING_RETRIES={args.retries}")
        for run in range(1, args.runs + 1):
            record = os.path.join(workdir, f"record{run}.json")
            code, tests, seconds = _one_run(path, args.front_end, _environment(workdir, counter, record, args.retries),
                                            workdir)
            total += seconds
            flaky_ok, broken_ok, line = _verdicts(tests, args.retries)
            flaky_count += flaky_ok
            broken_count += broken_ok
            print(f"run {run:2d}: exit {code}; {line}")
        print(f"planted 1-in-3 flaky test: flaky in {flaky_count} of {args.runs} runs")
        print(f"deterministic failure: failed (all {args.retries + 1} attempts) in {broken_count} of {args.runs} runs")
        print(f"wall time: {total:.1f} s in all, {total / args.runs:.1f} s per run")
        return 0 if flaky_count == broken_count == args.runs else 1
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
