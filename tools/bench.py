"""Side-by-side overhead benchmark: PyTorch's distributed test classes against ours.

Rows (each a framework and how it runs ranks):

* PyTorch's ``MultiProcessTestCase`` (fresh spawned ranks per test), its
  ``MultiProcContinuousTest`` (spawned ranks that live for the class) and its
  ``MultiThreadedTestCase`` (ranks are threads of the test process, with a fake
  "threaded" process group; listed for reference only);
* ours: ``MultiProcessTestCase`` with ``start_method = "spawn"`` and with
  ``"fork"`` (the default on Linux), and ``MultiProcContinuousTest`` (a warm
  pool of ranks forked once per class).

Columns: world sizes (default 2, 4, 8). For every row and world size one
generated test file of identical trivial tests runs in a fresh interpreter
with a clean environment; the class times itself inside the test process, so
interpreter start-up and ``import torch`` are not counted. The trivial test:

* per-test classes: ``init_process_group`` on gloo from the test's
  ``file_name``, an ``all_reduce`` of a one-element tensor, an assertion of
  the sum, ``destroy_process_group``;
* continuous classes: the ``all_reduce`` and the assertion on the default
  (gloo) group the class already set up;
* threaded class: the ``all_reduce`` and the assertion on ``dist.group.WORLD``
  (PyTorch's threaded group, set up per test by the class).

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

Every run gets a fresh TMPDIR and its own session; the processes it leaves
(in its session, or anywhere with their working directory in the run's
directory) and its leftover files are reported as leaks. Other work on the
machine skews every figure: each run's share of the CPUs used by other
processes is measured (``/proc/stat`` minus the run's own CPU time) and shown.

Targets (reported, not enforced), for a class of 300 trivial tests at world
size 2: our pool's whole-class time (``setUpClass`` to the end of
``tearDownClass``) at most PyTorch's ``MultiProcContinuousTest``'s (aiming for
half), per-test dispatch at most 2 ms, start-up at most 1.5 s; and after a rank
crash (``os._exit(3)`` in rank 1) the rebuilt pool ready within 0.5 s.

Scenarios (``--scenario``; this table is ``trivial``, the default): ``ddp`` (a
DistributedDataParallel test at world size 2), ``dtensor`` (DTensorTestBase and
with_comms at world size 4), ``pytest`` (two files of ddp tests in one pytest
run), ``whole-file`` (``python file.py`` against ``python -c "import torch"``)
and ``memory`` (each rank's RSS and USS); ``all`` runs every one. Each runs
PyTorch's class and ours side by side; ``tools/bench_scenarios.py`` says what
they measure. They are not in the default run: the table and its targets take
about six minutes on two cores already, and the five scenarios together take
about five more on an idle machine, plus a minute for each DDP test that hangs
(PyTorch's spawned DDP and DTensor tests take seconds each, and DDP tests of
both classes hang in torch now and then until their timeout, ``--timeout``, 60
s by default; a full run on 2 cores took 16 minutes with 13 such hangs).

Usage::

    python tools/bench.py                      # every row, world sizes 2 4 8, the targets
    python tools/bench.py --quick              # smoke run: world size 2, few tests
    python tools/bench.py --methods fork pool --world-sizes 2 8 --no-targets
    python tools/bench.py --format markdown    # or rst
    python tools/bench.py --readme README.rst  # also write the results into its Benchmarks section
    python tools/bench.py --scenario ddp       # one scenario alone; several: --scenario ddp memory
    python tools/bench.py --scenario all --timeout 60

Benchmarks are not unit tests: a missed target is reported, not failed. The
exit code is 0 when every run passed, 1 when a run failed or hung, 2 on bad
usage; in the scenarios, a test its class's own timeout stopped is reported
apart and is not a failure.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import importlib.metadata
import importlib.util
import json
import os
import platform
import re
import resource
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

MARKER = "DT-BENCH-RESULT "
CLASS_NAME = "BenchAllReduce"
MEMORY_VARIABLE = "DT_BENCH_MEMORY_DIR"  # where ranks write their VmHWM and Pss
# Variables that would change what the generated files do if they leaked in.
SCRUBBED_VARIABLES = (
    "BACKEND",
    "WORLD_SIZE",
    "TEMP_DIR",
    "INIT_METHOD",
    "RANK",
    "LOCAL_RANK",
    "LOCAL_WORLD_SIZE",
    "GROUP_RANK",
    "MASTER_ADDR",
    "MASTER_PORT",
    "TORCHELASTIC_RUN_ID",
    "PYTEST_CURRENT_TEST",
    "PYTEST_ADDOPTS",
    "DISTRIBUTED_TESTS_DEFAULT_TIMEOUT",
    MEMORY_VARIABLE,
)
SCRUBBED_PREFIXES = ("DISTRIBUTED_TESTING_",)
LEAK_GRACE = 3.0  # seconds a finished run's helper processes may take to exit
# Targets from the issues: ours with fork, in ms per test, by world size.
FORK_TARGETS_MS = {2: 80.0, 8: 300.0}
# Targets for the pool: a class of POOL_TARGET_TESTS tests at world size POOL_TARGET_SIZE.
POOL_TARGET_TESTS = 300
POOL_TARGET_SIZE = 2
POOL_DISPATCH_MS = 2.0
POOL_START_MS = 1500.0
POOL_REBUILD_MS = 500.0
# PyTorch's continuous class polls a rank's result queue for max(10, min(120, timeout // 4)) s
# before it looks at whether the rank is alive; this timeout gives its shortest poll, 10 s.
PYTORCH_CRASH_TIMEOUT = "40"

PER_TEST, CONTINUOUS, THREADED = "per-test", "continuous", "threaded"
# Scenarios: this file's table, and those of tools/bench_scenarios.py (imported when one runs).
TRIVIAL_SCENARIO = "trivial"
SCENARIOS = ("ddp", "dtensor", "pytest", "whole-file", "memory")
DEFAULT_SCENARIO_TESTS = {"ddp": 8, "dtensor": 8, "pytest": 6, "whole-file": 8, "memory": 4}
QUICK_SCENARIO_TESTS = {"ddp": 3, "dtensor": 3, "pytest": 3, "whole-file": 8, "memory": 2}


@dataclass(frozen=True)
class Method:
    """One row of the table: a framework's class and how it runs ranks."""

    key: str
    label: str
    kind: str  # PER_TEST, CONTINUOUS or THREADED
    slow: bool  # starts a fresh interpreter per rank per test: few tests per run
    imports: str
    base: str
    class_lines: str = ""
    baseline: str | None = None  # the PyTorch row this one is compared with


PYTORCH_UTILS = "from torch.testing._internal.common_utils import run_tests"
OURS = "from distributed_testing import {base}, run_tests"
METHODS: dict[str, Method] = {
    "pytorch": Method(
        key="pytorch",
        label="PyTorch MultiProcessTestCase (spawn)",
        kind=PER_TEST,
        slow=True,
        imports="from torch.testing._internal.common_distributed import MultiProcessTestCase\n" + PYTORCH_UTILS,
        base="MultiProcessTestCase",
    ),
    "pytorch-continuous": Method(
        key="pytorch-continuous",
        label="PyTorch MultiProcContinuousTest (spawn)",
        kind=CONTINUOUS,
        slow=False,
        imports="from torch.testing._internal.common_distributed import MultiProcContinuousTest\n" + PYTORCH_UTILS,
        base="MultiProcContinuousTest",
    ),
    "pytorch-threaded": Method(
        key="pytorch-threaded",
        label="PyTorch MultiThreadedTestCase (threads)",
        kind=THREADED,
        slow=False,
        imports="from torch.testing._internal.common_distributed import MultiThreadedTestCase\n" + PYTORCH_UTILS,
        base="MultiThreadedTestCase",
    ),
    "spawn": Method(
        key="spawn",
        label="ours MultiProcessTestCase, spawn",
        kind=PER_TEST,
        slow=True,
        imports=OURS.format(base="MultiProcessTestCase"),
        base="MultiProcessTestCase",
        class_lines='    start_method = "spawn"\n',
        baseline="pytorch",
    ),
    "fork": Method(
        key="fork",
        label="ours MultiProcessTestCase, fork (default)",
        kind=PER_TEST,
        slow=False,
        imports=OURS.format(base="MultiProcessTestCase"),
        base="MultiProcessTestCase",
        class_lines='    start_method = "fork"\n',
        baseline="pytorch",
    ),
    "pool": Method(
        key="pool",
        label="ours MultiProcContinuousTest (pool, fork)",
        kind=CONTINUOUS,
        slow=False,
        imports=OURS.format(base="MultiProcContinuousTest"),
        base="MultiProcContinuousTest",
        baseline="pytorch-continuous",
    ),
}

FILE_TEMPLATE = '''\
"""Generated by tools/bench.py: {label}, world size {world_size}, {tests} tests."""

import json
import os
import time

import torch
import torch.distributed as dist

{imports}

MEMORY_DIR = os.environ.get({memory_variable!r})


def bench_memory(rank, with_pss):
    """Write this process's VmHWM (and, if asked, Pss) in kB to a file named after its pid and rank."""
    if not MEMORY_DIR:
        return
    try:
        with open("/proc/self/status") as status:
            hwm = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
        pss = -1
        if with_pss:  # a few ms: only in the last, untimed, test
            with open("/proc/self/smaps_rollup") as rollup:
                pss = next(int(line.split()[1]) for line in rollup if line.startswith("Pss:"))
    except (OSError, StopIteration):
        return
    with open(os.path.join(MEMORY_DIR, f"{{os.getpid()}}-{{rank}}"), "w") as out:
        out.write(f"{{hwm}} {{pss}}")


class {class_name}({base}):
{class_lines}
    @classmethod
    def setUpClass(cls) -> None:
        cls.bench_started = time.perf_counter()
        cls.bench_tests = []  # (start, end) of each test, seconds since setUpClass
        super().setUpClass()

    @classmethod
    def tearDownClass(cls) -> None:
        body_end = cls.bench_now()
        super().tearDownClass()
        report = {{
            "class_seconds": body_end,
            "teardown_seconds": cls.bench_now() - body_end,
            "tests": cls.bench_tests,
        }}
        print({marker!r} + json.dumps(report), flush=True)

    @classmethod
    def bench_now(cls) -> float:
        return time.perf_counter() - cls.bench_started

    def setUp(self) -> None:
        started = self.bench_now()
        # The first cleanup registered runs last: after tearDown and every other cleanup.
        self.addCleanup(lambda: self.bench_tests.append((started, self.bench_now())))
{set_up}
    def bench_body(self, with_pss=False) -> None:
        assert self.rank >= 0, "the test body must run in a rank, not in the parent"
{body}        bench_memory(self.rank, with_pss)

    def bench_crash(self) -> None:
        if self.rank == 1:
            os._exit(3)

{test_methods}

if __name__ == "__main__":
    run_tests()
'''

CLASS_LINES = {
    PER_TEST: "    @property\n    def world_size(self) -> int:\n        return {world_size}\n",
    CONTINUOUS: (
        '    world_size = {world_size}\n\n    @classmethod\n    def backend_str(cls) -> str:\n        return "gloo"\n'
    ),
    THREADED: "    @property\n    def world_size(self) -> int:\n        return {world_size}\n",
}
SET_UP = {
    PER_TEST: "        super().setUp()\n        self._spawn_processes()\n",
    CONTINUOUS: "        super().setUp()\n",
    THREADED: "        super().setUp()\n        self._spawn_threads()\n",
}
ALL_REDUCE = """\
        tensor = torch.tensor([float(self.rank + 1)])
        dist.all_reduce(tensor{group})
        self.assertEqual(tensor.item(), float(self.world_size * (self.world_size + 1) // 2))
"""
BODY = {
    PER_TEST: (
        "        dist.init_process_group(\n"
        '            "gloo", init_method=f"file://{self.file_name}", rank=self.rank, world_size=self.world_size\n'
        "        )\n" + ALL_REDUCE.format(group="") + "        dist.destroy_process_group()\n"
    ),
    CONTINUOUS: ALL_REDUCE.format(group=""),
    THREADED: ALL_REDUCE.format(group=", group=dist.group.WORLD"),
}

# What a generated test does: a trivial test, the last one (which also reads Pss), a crash.
TRIVIAL, LAST, CRASH = "self.bench_body()", "self.bench_body(with_pss=True)", "self.bench_crash()"


@dataclass
class RunResult:
    """What one generated file did: timings, memory, or why it failed."""

    method: Method
    world_size: int
    tests: int  # timed tests
    warmup: int  # untimed tests run first; the first of them is the start-up test
    tail: int = 1  # untimed tests run last (the one that reads Pss)
    purpose: str = "table"
    class_seconds: float = 0.0  # setUpClass to the start of tearDownClass
    teardown_seconds: float = 0.0  # tearDownClass
    spans: list[tuple[float, float]] = field(default_factory=list)  # each test's (start, end)
    hwm_kb: int = 0  # the largest VmHWM a rank reported
    pss_kb: int = 0  # the largest Pss a rank reported in the last test
    memory_processes: int = 0  # how many (process, rank) pairs reported memory
    wall_seconds: float = 0.0
    foreign_cpu: float | None = None  # share of the CPUs other processes used during the run
    outcomes: dict[str, str] = field(default_factory=dict)  # test name: ok, FAIL, ERROR, skipped
    error: str = ""
    leaks: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.error

    @property
    def total(self) -> int:
        return self.warmup + self.tests + self.tail

    @property
    def start_ms(self) -> float:
        """setUpClass to the end of the first test."""
        return 1000.0 * self.spans[0][1]

    @property
    def per_test_ms(self) -> float:
        """Mean of the timed tests, from the end of the warm-up to the end of the last timed test."""
        first, last = self.spans[self.warmup - 1][1], self.spans[self.warmup + self.tests - 1][1]
        return 1000.0 * (last - first) / self.tests

    @property
    def whole_class_ms(self) -> float:
        """setUpClass to the end of tearDownClass."""
        return 1000.0 * (self.class_seconds + self.teardown_seconds)

    def end_ms(self, index: int) -> float:
        return 1000.0 * self.spans[index][1]

    def test_ms(self) -> list[float]:
        """Single timed tests' durations (setUp to the last cleanup)."""
        return [1000.0 * (end - start) for start, end in self.spans[self.warmup : self.warmup + self.tests]]


# -- generating and running one test file -------------------------------------


def render_test_file(method: Method, world_size: int, bodies: list[str]) -> str:
    """The source of a test file whose tests run ``bodies`` in order."""
    tests = "\n".join(f"    def test_{i:04d}(self) -> None:\n        {body}\n" for i, body in enumerate(bodies))
    return FILE_TEMPLATE.format(
        label=method.label,
        world_size=world_size,
        tests=len(bodies),
        imports=method.imports,
        memory_variable=MEMORY_VARIABLE,
        class_name=CLASS_NAME,
        base=method.base,
        class_lines=CLASS_LINES[method.kind].format(world_size=world_size) + method.class_lines,
        set_up=SET_UP[method.kind],
        body=BODY[method.kind],
        marker=MARKER,
        test_methods=tests,
    )


def clean_environment(tmpdir: str) -> dict[str, str]:
    """This process's environment without the variables the test files read."""
    env = {
        name: value
        for name, value in os.environ.items()
        if name not in SCRUBBED_VARIABLES and not name.startswith(SCRUBBED_PREFIXES)
    }
    env["TMPDIR"] = tmpdir  # every temp file of the run lands here, so leaks show up
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def run_members(session: int, workdir: str) -> list[int]:
    """Pids of the run's live processes (Linux /proc; empty elsewhere).

    Those in its session, and those that left it (a new session, a double
    fork) but still have their working directory in the run's ``workdir``.
    """
    pids = []
    workdir = os.path.realpath(workdir)
    try:
        entries = os.listdir("/proc")
    except OSError:
        return []
    for entry in entries:
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
            cwd = os.readlink(f"/proc/{entry}/cwd")
        except (OSError, IndexError):
            continue
        # After the command name: state, ppid, pgrp, session, ...
        if len(fields) < 4 or fields[0] == "Z":
            continue
        if int(fields[3]) == session or cwd == workdir or cwd.startswith(workdir + os.sep):
            pids.append(int(entry))
    return pids


def become_subreaper() -> None:
    """Adopt the runs' orphans (Linux): their CPU time then counts as the run's, and they are reaped here."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        pass


def reap_orphans() -> None:
    """Collect every finished child: adopted orphans included."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def reap_run(session: int, workdir: str) -> list[int]:
    """Wait briefly for a finished run's processes to go; kill and return the stragglers."""
    deadline = time.monotonic() + LEAK_GRACE
    reap_orphans()
    survivors = run_members(session, workdir)
    while survivors and time.monotonic() < deadline:
        time.sleep(0.05)
        reap_orphans()
        survivors = run_members(session, workdir)
    for pid in survivors:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    if survivors:
        time.sleep(0.1)
        reap_orphans()
    return survivors


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
        stdout_path, stderr_path = os.path.join(workdir, "stdout"), os.path.join(workdir, "stderr")
        started = time.perf_counter()
        busy_before, ours_before = busy_cpu_seconds(), children_cpu_seconds()
        code, leaked = run_isolated(
            [sys.executable, path, "-v"],
            workdir,
            env,
            stdout_path,
            stderr_path,
            run_timeout(method, world_size, len(bodies)),
        )
        result.wall_seconds = time.perf_counter() - started
        busy, ours = busy_cpu_seconds(), children_cpu_seconds()
        if busy is not None and busy_before is not None:
            foreign = (busy - busy_before) - (ours - ours_before)
            result.foreign_cpu = max(0.0, foreign) / (result.wall_seconds * (os.cpu_count() or 1))
        with open(stdout_path, errors="replace") as f:
            stdout = f.read()
        with open(stderr_path, errors="replace") as f:
            stderr = f.read()
        if leaked:
            result.leaks.append(f"{len(leaked)} process(es) outlived the run and were killed: {leaked}")
        if code is not None:  # a killed run leaves its temp files by necessity
            result.leaks.extend(f"left in TMPDIR: {name}" for name in leftover_files(tmpdir))
        expect_ok = CRASH not in bodies
        check_run(result, code, stdout, stderr, len(bodies), expect_ok)
        read_memory(result, memory_dir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return result


def busy_cpu_seconds() -> float | None:
    """CPU time the whole machine spent busy since boot (Linux /proc/stat; None elsewhere)."""
    try:
        with open("/proc/stat") as stat:
            fields = [int(x) for x in stat.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    busy = sum(fields[:8]) - idle  # user nice system idle iowait irq softirq steal
    return busy / os.sysconf("SC_CLK_TCK")


def children_cpu_seconds() -> float:
    """CPU time of this process's finished children and their reaped descendants."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_isolated(
    argv: list[str], cwd: str, env: dict[str, str], stdout_path: str, stderr_path: str, timeout: float
) -> tuple[int | None, list[int]]:
    """Run ``argv`` in its own session; return (exit code or None on timeout, leaked pids).

    Output goes to files, not pipes, so a leaked grandchild holding them open
    cannot stall the benchmark.
    """
    with open(stdout_path, "w") as out, open(stderr_path, "w") as err:
        proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=out, stderr=err, start_new_session=True)
    code: int | None = None
    leaked: list[int] = []
    try:
        code = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        pass
    finally:
        if proc.poll() is None:  # timed out or interrupted: stop the whole run we started
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        leaked = reap_run(proc.pid, cwd)
    return code, leaked


def leftover_files(tmpdir: str) -> list[str]:
    """Names the run left in its TMPDIR (torch's per-user compile cache dirs excepted)."""
    try:
        names = sorted(os.listdir(tmpdir))
    except OSError:
        return []
    return [name for name in names if not name.startswith("torchinductor_")]


def parse_outcomes(stderr: str) -> dict[str, str]:
    """Each test's verbose outcome: ok, FAIL, ERROR or skipped (rank output may come between)."""
    outcomes = {}
    starts = list(re.finditer(r"^(test_\d{4}) \([^\n]*?\) \.\.\. ", stderr, re.M))
    for i, match in enumerate(starts):
        stop = starts[i + 1].start() if i + 1 < len(starts) else len(stderr)
        found = re.search(r"\b(ok|FAIL|ERROR|skipped)\b", stderr[match.end() : stop])
        outcomes[match.group(1)] = found.group(1) if found else "unknown"
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


# -- reporting ----------------------------------------------------------------


def format_ms(ms: float) -> str:
    return f"{ms:,.0f}" if abs(ms) >= 100 else f"{ms:.1f}" if abs(ms) >= 10 else f"{ms:.2f}"


def format_mib(kb: int) -> str:
    return f"{kb / 1024:,.0f}" if kb > 0 else "n/a"


def ratio_text(ours: float, theirs: float, better: str, worse: str) -> str:
    if ours <= 0 or theirs <= 0:
        return "-"
    ratio = theirs / ours
    return f"{ratio:.1f}x {better}" if ratio >= 1 else f"{1 / ratio:.1f}x {worse}"


def render_table(header: list[str], rows: list[list[str]], fmt: str) -> str:
    """A table as aligned text, GitHub markdown or an rst simple table."""
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str], sep: str = "  ") -> str:
        parts = [c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))]
        return sep.join(parts).rstrip()

    if fmt == "markdown":
        rule = "|" + "|".join("-" * (w + 1) + (":" if i else "-") for i, w in enumerate(widths)) + "|"
        body = ["| " + line(r, " | ") + " |" for r in [header, *rows]]
        return "\n".join([body[0], rule, *body[1:]])
    if fmt == "rst":
        rule = "  ".join("=" * w for w in widths)
        return "\n".join([rule, line(header), rule, *(line(r) for r in rows), rule])
    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(header), rule, *(line(r) for r in rows)])


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


FIGURES: tuple[tuple[str, Callable[[RunResult], str]], ...] = (
    ("start-up, ms (setUpClass to the end of the first test)", lambda r: format_ms(r.start_ms)),
    ("per test, ms (mean of the timed tests)", lambda r: format_ms(r.per_test_ms)),
    ("peak RSS of a rank, MiB (largest VmHWM; threaded: the test process)", lambda r: format_mib(r.hwm_kb)),
)


def build_report(
    results: dict[tuple[str, int], RunResult], extra: dict[str, list[RunResult]], args: argparse.Namespace
) -> Report:
    """The tables, the targets and the per-run details of a benchmark run."""
    report = Report()
    sizes, methods = args.world_sizes, args.methods
    header = ["class", *(f"world size {n}" for n in sizes)]
    for title, cell in FIGURES:
        rows = []
        for key in methods:
            cells = [METHODS[key].label]
            for n in sizes:
                run = results.get((key, n))
                cells.append("FAILED" if run is None or not run.ok else cell(run))
            rows.append(cells)
        report.tables.append((title, header, rows))
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


def ratio_table(results: dict[tuple[str, int], RunResult], methods: list[str], sizes: list[int]) -> list[list[str]]:
    rows = []
    for key in methods:
        base_key = METHODS[key].baseline
        if base_key is None or base_key not in methods:
            continue
        names = {"pytorch": "PyTorch MultiProcessTestCase", "pytorch-continuous": "PyTorch MultiProcContinuousTest"}
        for figure in ("start-up", "per test", "peak RSS"):
            cells = [f"ours {key} vs {names[base_key]}: {figure}"]
            for n in sizes:
                ours, theirs = results.get((key, n)), results.get((base_key, n))
                if ours is None or theirs is None or not ours.ok or not theirs.ok:
                    cells.append("-")
                elif figure == "start-up":
                    cells.append(ratio_text(ours.start_ms, theirs.start_ms, "faster", "slower"))
                elif figure == "per test":
                    cells.append(ratio_text(ours.per_test_ms, theirs.per_test_ms, "faster", "slower"))
                else:
                    cells.append(ratio_text(ours.hwm_kb, theirs.hwm_kb, "smaller", "larger"))
            rows.append(cells)
    return rows


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def target_lines(
    results: dict[tuple[str, int], RunResult], extra: dict[str, list[RunResult]], sizes: list[int]
) -> list[str]:
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
    counts: dict[str, int] = {}
    for word in run.outcomes.values():
        counts[word] = counts.get(word, 0) + 1
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
    results: dict[tuple[str, int], RunResult], extra: dict[str, list[RunResult]], methods: list[str], sizes: list[int]
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


def load_average() -> str:
    """The 1, 5 and 15 minute load averages: other work on the machine skews every cell."""
    return " ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"


def busy_warning() -> str | None:
    """A warning when the machine already has work on it: other processes skew every figure."""
    if not hasattr(os, "getloadavg"):
        return None
    load, cpus = os.getloadavg()[0], os.cpu_count() or 1
    if load <= 0.25 * cpus:
        return None
    return f"warning: load average {load:.2f} on {cpus} CPUs before the first run: other work skews the figures"


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def memory_total() -> str:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB RAM"
    except OSError:
        pass
    return "RAM unknown"


def version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def library() -> str:
    """Which distributed_testing the test files import: version, place, and git state."""
    with tempfile.TemporaryDirectory(prefix="dt-bench-") as tmp:
        found = subprocess.run(
            [sys.executable, "-c", "import importlib.util as u; print(u.find_spec('distributed_testing').origin)"],
            capture_output=True,
            text=True,
            cwd=tmp,
            env=clean_environment(tmp),
            check=False,
        )
    if found.returncode != 0:
        return "distributed_testing not importable"
    package = os.path.dirname(found.stdout.strip())
    text = f"distributed_testing {version('distributed_testing')} from {package}"
    try:
        run = functools.partial(subprocess.run, capture_output=True, text=True, check=True, cwd=package, timeout=10)
        commit = run(["git", "log", "-1", "--format=%h %cs"]).stdout.strip()
        changed = run(["git", "status", "--porcelain", "--", "."]).stdout.splitlines()
    except (OSError, subprocess.SubprocessError):
        return text
    state = f"{len(changed)} uncommitted change(s) in the package" if changed else "the package as committed"
    return f"{text} (git {commit}, {state})"


def command(argv: Sequence[str]) -> str:
    """This run's command line, with the variable that chooses which library the test files import."""
    words = [sys.executable, sys.argv[0], *argv]
    if os.environ.get("PYTHONPATH"):
        words.insert(0, f"PYTHONPATH={os.environ['PYTHONPATH']}")
    return shlex.join(words)


def preamble(argv: Sequence[str]) -> list[str]:
    """Date, machine, versions and the command line, printed before anything runs."""
    return [
        f"date:    {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"command: {command(argv)}",
        f"machine: {platform.system()} {platform.release()}, {cpu_model()}, nproc {os.cpu_count()}, "
        f"{memory_total()}, load average {load_average()}",
        f"python:  {platform.python_version()}, torch {version('torch')}",
        f"library: {library()}",
    ]


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


# -- the command line ---------------------------------------------------------


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


def progress(text: str, end: str = " ") -> None:
    print(text, end=end, file=sys.stderr, flush=True)


def warm_page_cache() -> None:
    """Import torch once, untimed, so the first row does not pay for a cold page cache."""
    progress("warming the page cache (import torch) ...")
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-c", "import torch, torch.distributed, torch.testing._internal.common_distributed"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        check=False,
    )
    progress(f"{time.perf_counter() - started:.1f} s", end="\n")


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
                progress(f"{status} ({run.wall_seconds:.1f} s wall)", end="\n")
        if args.targets:
            run_targets(args, extra, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def run_targets(args: argparse.Namespace, extra: dict[str, list[RunResult]], root: str) -> None:
    """The 300-test class on our pool and PyTorch's continuous class; a rank crash in the pool."""
    n, size = args.class_tests, POOL_TARGET_SIZE
    for key in ("pytorch-continuous", "pool"):
        for i in range(args.target_repeats):
            progress(f"target: {METHODS[key].label}, {n} tests at world size {size}, run {i + 1} ...")
            run = RunResult(METHODS[key], size, n - 1, 1, tail=0, purpose="class")
            run_test_file(run, [TRIVIAL] * n, root)
            extra.setdefault(f"class-{key}", []).append(run)
            status = f"{run.whole_class_ms / 1000:.2f} s whole class" if run.ok else "FAILED"
            progress(f"{status} ({run.wall_seconds:.1f} s wall)", end="\n")
    crash_bodies = [TRIVIAL, CRASH, TRIVIAL] + [TRIVIAL] * 20
    for i in range(args.target_repeats):
        progress(f"target: {METHODS['pool'].label}, a rank crash at world size {size}, run {i + 1} ...")
        run = RunResult(METHODS["pool"], size, len(crash_bodies) - 1, 1, tail=0, purpose="crash")
        run_test_file(run, crash_bodies, root)
        check_crash(run, expect_rebuild=True)
        extra.setdefault("crash-pool", []).append(run)
        progress(f"{'done' if run.ok else 'FAILED'} ({run.wall_seconds:.1f} s wall)", end="\n")
    if not args.quick:  # about 20 s: PyTorch notices the dead rank after a 10 s poll
        progress(f"target: {METHODS['pytorch-continuous'].label}, a rank crash at world size {size} ...")
        run = RunResult(METHODS["pytorch-continuous"], size, len(crash_bodies) - 1, 1, tail=0, purpose="crash")
        run_test_file(run, crash_bodies, root, {"DISTRIBUTED_TESTS_DEFAULT_TIMEOUT": PYTORCH_CRASH_TIMEOUT})
        check_crash(run, expect_rebuild=False)
        extra.setdefault("crash-pytorch-continuous", []).append(run)
        progress(f"{'done' if run.ok else 'FAILED'} ({run.wall_seconds:.1f} s wall)", end="\n")


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
            code = run_trivial(args, argv, head)
        others = [name for name in args.scenarios if name != TRIVIAL_SCENARIO]
        if others:
            code = max(code, run_scenarios(others, args))
    except KeyboardInterrupt:
        print("\nbench.py: interrupted; the running test file was stopped", file=sys.stderr)
        return 130
    return code


def run_scenarios(names: list[str], args: argparse.Namespace) -> int:
    """The scenarios of tools/bench_scenarios.py, each reported as it ends; 1 if one went wrong."""
    sys.modules.setdefault("bench", sys.modules[__name__])  # bench_scenarios imports this module by name
    import bench_scenarios

    if TRIVIAL_SCENARIO not in args.scenarios:
        warm_page_cache()
    failed = []
    for name in names:
        section = bench_scenarios.run_scenario(name, args)
        print(f"\n{section.title}:", *section.lines, sep="\n", flush=True)
        if not section.ok:
            failed.append(name)
    for name in failed:
        print(f"\nERROR: scenario {name}: a test failed or died, or a run was killed at its limit", file=sys.stderr)
    return 1 if failed else 0


def run_trivial(args: argparse.Namespace, argv: Sequence[str], head: list[str]) -> int:
    """This file's table (the trivial test in every row and world size) and its targets."""
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


if __name__ == "__main__":
    sys.exit(main())
