"""Measure the rank budget under pytest-xdist: how many ranks are alive at once, how often tests overlap.

Writes a test file of TESTS tests at world size WS whose ranks each sleep SLEEP seconds, runs
``pytest -n N --dt-max-ranks BUDGET`` on it in a private temp dir, and reads back what every rank
recorded: when its process started (from /proc), when its test body began and ended. Prints the
most ranks alive at once (process start to body end, and body only), and the share of the run's
time during which 0, 1, 2, ... tests ran at once (a test runs from its first rank's start to its
last rank's end).

    python tools/budget_bench.py [--tests 12] [--world-size 2] [--sleep 1.5] [-n 3] [--max-ranks 4]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TEST_FILE = """
import json, os, time
from distributed_testing import MultiProcessTestCase

TIMES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "times")


def process_start() -> float:
    # when this rank's process started, on the time.time() clock (to 10 ms)
    with open("/proc/self/stat") as handle:
        ticks = int(handle.read().rsplit(")", 1)[1].split()[19])  # since boot
    age = time.clock_gettime(time.CLOCK_BOOTTIME) - ticks / os.sysconf("SC_CLK_TCK")
    return time.time() - age


class TestBudget(MultiProcessTestCase):
    world_size = {world_size}

    def setUp(self):
        super().setUp()
        self._spawn_processes()

    def work(self):
        began = time.time()
        time.sleep({sleep})
        record = [process_start(), began, time.time()]
        with open(os.path.join(TIMES, f"{{self.id()}}.{{self.rank}}"), "w") as handle:
            json.dump(record, handle)
"""


def write_tests(directory: Path, tests: int, world_size: int, sleep: float) -> None:
    body = textwrap.dedent(TEST_FILE).format(world_size=world_size, sleep=sleep)
    body += "".join(f"\n    def test_{i:02d}(self):\n        self.work()\n" for i in range(tests))
    (directory / "test_budget_bench.py").write_text(body)
    (directory / "times").mkdir()


def most_at_once(spans: list[tuple[float, float]]) -> int:
    """The largest number of the half-open ``spans`` that overlap at one moment."""
    events = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans])
    alive = most = 0
    for _, step in events:
        alive += step
        most = max(most, alive)
    return most


def time_at_level(spans: list[tuple[float, float]]) -> dict[int, float]:
    """Seconds during which exactly k of the ``spans`` overlapped, for each k, over their whole extent."""
    events = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans])
    seconds: dict[int, float] = defaultdict(float)
    level, last = 0, events[0][0]
    for moment, step in events:
        seconds[level] += moment - last
        level, last = level + step, moment
    return dict(seconds)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tests", type=int, default=12)
    parser.add_argument("--world-size", type=int, default=2)
    parser.add_argument("--sleep", type=float, default=1.5, help="seconds each rank sleeps")
    parser.add_argument("-n", "--workers", type=int, default=3, help="pytest-xdist workers")
    parser.add_argument("--max-ranks", type=int, default=4, help="the rank budget (--dt-max-ranks)")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (test file, times, output)")
    args = parser.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="budget-bench-"))
    try:
        write_tests(root, args.tests, args.world_size, args.sleep)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "DISTRIBUTED_TESTING_"))}
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
        command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-n", str(args.workers),
                   "--dt-max-ranks", str(args.max_ranks), "--basetemp", str(root / "basetemp"),
                   "test_budget_bench.py"]
        print("$ " + " ".join(command[1:]), flush=True)
        began = time.monotonic()
        proc = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=1800)
        wall = time.monotonic() - began
        (root / "output.txt").write_text(proc.stdout + proc.stderr)
        if proc.returncode != 0:
            print(proc.stdout[-3000:] + proc.stderr[-3000:], file=sys.stderr)
            print(f"budget_bench: pytest exited {proc.returncode}", file=sys.stderr)
            return 1
        records = {path.name: json.loads(path.read_text()) for path in (root / "times").iterdir()}
        expected = args.tests * args.world_size
        if len(records) != expected:
            print(f"budget_bench: {len(records)} ranks recorded, expected {expected}", file=sys.stderr)
            return 1
        alive = [(start, end) for start, _, end in records.values()]
        bodies = [(began_at, end) for _, began_at, end in records.values()]
        tests: dict[str, list[float]] = {}
        for name, (start, _, end) in records.items():
            test = name.rsplit(".", 1)[0]
            first, last = tests.get(test, [start, end])
            tests[test] = [min(first, start), max(last, end)]
        levels = time_at_level([(a, b) for a, b in tests.values()])
        total = sum(levels.values())
        print(f"pytest wall time: {wall:.1f} s (tests' span {total:.1f} s; {proc.stdout.strip().splitlines()[-1]})")
        print(f"most ranks alive at once: {most_at_once(alive)} (process start to body end), "
              f"{most_at_once(bodies)} (test bodies only); budget {args.max_ranks}")
        print("share of the tests' span with k tests running at once:")
        for k in sorted(levels):
            print(f"  k={k}: {levels[k] / total:6.1%}  ({levels[k]:.1f} s)")
        return 0
    finally:
        if args.keep:
            print(f"kept: {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
