"""The scenarios of ``tools/bench.py`` beyond its trivial-test table (``--scenario``).

Each scenario runs generated test files in fresh interpreters, PyTorch's class
and ours side by side in one run, and reports ratios:

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
* ``whole-file``: the wall clock of ``python file.py`` (no ``-v``) for a file
  of trivial tests (those of the table) against that of ``python -c "import
  torch"`` (the median of three runs, before, between and after the files),
  as a ratio to ``import torch + tests x 50 ms`` (target: at most 1.3).
* ``memory``: each rank's RSS, USS (``Private_Clean + Private_Dirty``) and Pss
  from ``/proc/self/smaps_rollup``, read inside the rank at the end of each
  trivial test; the same for our fork server (read by its ranks) and for the
  test process (read by itself in the test's last cleanup), and the Pss of
  them all summed.

Times come from the tests themselves: the test process appends a line with
``time.monotonic()`` when a test's ``setUp`` starts and when its last cleanup
ends (after ``tearDown``), so a run that is killed still leaves the tests it
finished. Figures: the first test alone, and the median and mean of the tests
from the second on that passed (how many is said). A test that failed, that
its class's own timeout stopped (``DISTRIBUTED_TESTS_DEFAULT_TIMEOUT`` for
PyTorch's, ``DISTRIBUTED_TESTING_TIMEOUT`` for ours, both ``--timeout``), or
that was still running when the run hit its wall-clock limit, is reported
apart by name and never enters a median or a mean. A scenario fails (exit
code 1) when a test of either side fails, dies or is still running at the
wall-clock limit; a test its class's own timeout stopped does not fail it.

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
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import bench

TIMES_VARIABLE = "DT_BENCH_TIMES"  # the test process appends each test's start and end here
MEMORY_VARIABLE = "DT_BENCH_RANK_MEMORY"  # each rank appends its RSS and USS here
WHOLE_FILE_BUDGET_MS = 50.0  # per test, on top of import torch
WHOLE_FILE_TARGET = 1.3
IMPORT_TORCH_RUNS = 3
# A failed test whose output says a class's own timeout stopped it (PyTorch's, then ours).
TIMEOUT_TEXT = re.compile(r"Timing out after \d+ seconds|\btimed out after [\d.]+ s\b")

PYTORCH, OURS = "pytorch", "ours"
TROUBLE = "tests not passed (never in a median or a mean), and what runs left behind:"
MPTC, DTENSOR = "MultiProcessTestCase", "DTensorTestBase"
IMPORTS = {
    (PYTORCH, MPTC): "from torch.testing._internal.common_distributed import MultiProcessTestCase\n"
    "from torch.testing._internal.common_utils import run_tests",
    (OURS, MPTC): "from distributed_testing import MultiProcessTestCase, run_tests",
    (PYTORCH, DTENSOR): "from torch.testing._internal.common_utils import run_tests\n"
    "from torch.testing._internal.distributed._tensor.common_dtensor import DTensorTestBase, with_comms",
    (OURS, DTENSOR): "from distributed_testing import DTensorTestBase, run_tests, with_comms",
}
LABELS = {
    (PYTORCH, MPTC): "PyTorch MultiProcessTestCase (spawn)",
    (OURS, MPTC): "ours MultiProcessTestCase (default: fork server)",
    (PYTORCH, DTENSOR): "PyTorch DTensorTestBase (spawn)",
    (OURS, DTENSOR): "ours DTensorTestBase (default: fork server)",
}

FILE_TEMPLATE = '''\
"""Generated by tools/bench.py --scenario {scenario}: {label}, world size {world_size}, {tests} tests."""

import json
import os
import time

import torch
import torch.distributed as dist
{body_imports}
{imports}

TIMES = os.environ.get({times_variable!r})
MEMORY = os.environ.get({memory_variable!r})


def bench_append(path, record):
    """One short write in append mode: lines written by several processes do not mix."""
    with open(path, "a") as out:
        out.write(json.dumps(record) + "\\n")


def bench_rollup(pid):
    """Rss, Pss and USS (Private_Clean + Private_Dirty) of a process, kB, from its smaps_rollup."""
    fields = {{}}
    with open(f"/proc/{{pid}}/smaps_rollup") as rollup:
        for line in rollup:
            parts = line.split()
            if len(parts) >= 2 and parts[1].isdigit():
                fields[parts[0].rstrip(":")] = int(parts[1])
    return {{"rss": fields["Rss"], "pss": fields["Pss"], "uss": fields["Private_Clean"] + fields["Private_Dirty"]}}


class {class_name}({base}):
    @property
    def world_size(self) -> int:
        return {world_size}

    def setUp(self) -> None:
        if TIMES:
            bench_append(TIMES, {{"test": self.id(), "event": "start", "at": time.monotonic()}})
        self.addCleanup(self.bench_end)  # the first cleanup registered runs last: after tearDown
        super().setUp()
{set_up}
    def bench_end(self) -> None:
        if self.rank >= 0:  # a rank, not the test process
            return
        if TIMES:
            bench_append(TIMES, {{"test": self.id(), "event": "end", "at": time.monotonic()}})
        if MEMORY:
            record = {{"test": self._testMethodName, "rank": -1, "pid": os.getpid(), **bench_rollup("self")}}
            bench_append(MEMORY, record)

    def bench_memory(self) -> None:
        """This rank's memory, and its parent's (a fork server or the test process), at the end of the test."""
        if not MEMORY:
            return
        record = {{"test": self._testMethodName, "rank": self.rank, "pid": os.getpid(), **bench_rollup("self")}}
        try:
            record["parent"] = bench_rollup(os.getppid())
        except (OSError, KeyError):
            pass
        bench_append(MEMORY, record)

    def bench_body(self) -> None:
{body}
{test_methods}

if __name__ == "__main__":
    run_tests()
'''

DDP_IMPORTS = "import torch.nn as nn\nfrom torch.nn.parallel import DistributedDataParallel\n"
DDP_BODY = """\
        dist.init_process_group(
            "gloo", init_method=f"file://{self.file_name}", rank=self.rank, world_size=self.world_size
        )
        try:
            torch.manual_seed(0)
            model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
            torch.manual_seed(0)  # the same seed: the same weights, for one process
            reference = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
            ddp = DistributedDataParallel(model)
            generator = torch.Generator().manual_seed(1)
            inputs = torch.randn(4 * self.world_size, 8, generator=generator)
            targets = torch.randn(4 * self.world_size, 4, generator=generator)
            mine = slice(4 * self.rank, 4 * (self.rank + 1))
            loss = nn.MSELoss()
            loss(ddp(inputs[mine]), targets[mine]).backward()  # DDP averages the ranks' gradients
            loss(reference(inputs), targets).backward()  # the whole batch: the same mean gradient
            for param, expected in zip(ddp.module.parameters(), reference.parameters()):
                self.assertEqual(param.grad, expected.grad)
        finally:
            dist.destroy_process_group()
"""
DTENSOR_IMPORTS = (
    "from torch.distributed.device_mesh import init_device_mesh\n"
    "from torch.distributed.tensor import Replicate, Shard, distribute_tensor\n"
)
DTENSOR_BODY = """\
        mesh = init_device_mesh(self.device_type, (self.world_size,))
        full = torch.arange(8.0 * self.world_size).reshape(2 * self.world_size, 4)
        sharded = distribute_tensor(full, mesh, [Shard(0)])
        self.assertEqual(sharded.to_local(), full.chunk(self.world_size)[self.rank])
        replicated = sharded.redistribute(mesh, [Replicate()])
        self.assertEqual(replicated.to_local(), full)
"""
# body name: (imports, body, the tests' decorator, base class)
BODIES = {
    "trivial": ("", bench.BODY[bench.PER_TEST], "", MPTC),
    "memory": ("", bench.BODY[bench.PER_TEST] + "        self.bench_memory()\n", "", MPTC),
    "ddp": (DDP_IMPORTS, DDP_BODY, "", MPTC),
    "dtensor": (DTENSOR_IMPORTS, DTENSOR_BODY, "    @with_comms\n", DTENSOR),
}


def render(scenario: str, body_name: str, side: str, world_size: int, tests: int, class_name: str) -> str:
    """The source of one generated test file."""
    body_imports, body, decorator, base = BODIES[body_name]
    methods = "\n".join(
        f"{decorator}    def test_{i:04d}(self) -> None:\n        self.bench_body()\n" for i in range(tests)
    )
    return FILE_TEMPLATE.format(
        scenario=scenario,
        label=LABELS[(side, base)],
        world_size=world_size,
        tests=tests,
        body_imports=body_imports,
        imports=IMPORTS[(side, base)],
        times_variable=TIMES_VARIABLE,
        memory_variable=MEMORY_VARIABLE,
        class_name=class_name,
        base=base,
        set_up="        self._spawn_processes()\n" if base == MPTC else "",
        body=body,
        test_methods=methods,
    )


# -- running one command ----------------------------------------------------------------


@dataclass
class Run:
    """One subprocess (a test file, a pytest run, an import): what it did and how long it took."""

    label: str
    side: str
    expected: list[str] = field(default_factory=list)  # test ids, in the order they should run
    code: int | None = None  # None: killed at the wall-clock limit
    limit: float = 0.0
    wall: float = 0.0  # seconds, from starting the subprocess to its exit
    foreign_cpu: float | None = None
    stdout: str = ""
    stderr: str = ""
    starts: dict[str, float] = field(default_factory=dict)  # test id: monotonic time its setUp began
    spans: dict[str, tuple[float, float]] = field(default_factory=dict)  # test id: (start, end)
    outcomes: dict[str, str] = field(default_factory=dict)  # ok, failed, timed out, hung, not run, ...
    reasons: dict[str, str] = field(default_factory=dict)  # test id: first line of its failure
    durations: dict[str, float] = field(default_factory=dict)  # pytest: setup + call + teardown, s
    memory: list[dict[str, object]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # run-level: a kill, an exit code, leaks

    def ids(self, prefix: str = "") -> list[str]:
        """The expected tests (those whose id starts with ``prefix``), in order."""
        return [name for name in self.expected if name.startswith(prefix)]

    def ms(self, name: str) -> float | None:
        span = self.spans.get(name)
        return None if span is None else 1000.0 * (span[1] - span[0])

    def not_ok(self) -> dict[str, list[str]]:
        """Tests that did not pass, by outcome."""
        found: dict[str, list[str]] = {}
        for name in self.expected:
            outcome = self.outcomes.get(name, "not run")
            if outcome != "ok":
                found.setdefault(outcome, []).append(name)
        return found


def run_bounded(run: Run, argv: list[str], cwd: str, env: dict[str, str], limit: float) -> None:
    """Run ``argv`` in its own session, killed (with its whole group) after ``limit`` seconds."""
    run.limit = limit
    stdout_path, stderr_path = os.path.join(cwd, "stdout"), os.path.join(cwd, "stderr")
    busy_before, ours_before = bench.busy_cpu_seconds(), bench.children_cpu_seconds()
    with open(stdout_path, "w") as out, open(stderr_path, "w") as err:
        started = time.perf_counter()
        proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=out, stderr=err, start_new_session=True)
    try:
        run.code = proc.wait(timeout=limit)
    except subprocess.TimeoutExpired:
        run.problems.append(f"killed at its wall-clock limit of {limit:.0f} s")
    finally:
        run.wall = time.perf_counter() - started
        if proc.poll() is None:  # timed out or interrupted: stop the whole run
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        leaked = bench.reap_run(proc.pid, cwd)
    busy, ours = bench.busy_cpu_seconds(), bench.children_cpu_seconds()
    if busy is not None and busy_before is not None and run.wall > 0:
        run.foreign_cpu = max(0.0, (busy - busy_before) - (ours - ours_before)) / (run.wall * (os.cpu_count() or 1))
    if leaked:
        run.problems.append(f"{len(leaked)} process(es) outlived the run and were killed: {leaked}")
    if run.code is not None:
        tmpdir = env.get("TMPDIR", "")
        left = bench.leftover_files(tmpdir)
        if left:
            run.problems.append(f"left {len(left)} entries in its TMPDIR: {', '.join(left)}")
    with open(stdout_path, errors="replace") as f:
        run.stdout = f.read()
    with open(stderr_path, errors="replace") as f:
        run.stderr = f.read()


def test_environment(workdir: str, timeout: int, memory: bool = False) -> tuple[dict[str, str], str, str]:
    """A clean environment for a run in ``workdir``: its own TMPDIR, times file and (if asked) memory file."""
    tmpdir = os.path.join(workdir, "tmp")
    os.mkdir(tmpdir)
    env = bench.clean_environment(tmpdir)
    times, memory_path = os.path.join(workdir, "times.jsonl"), os.path.join(workdir, "memory.jsonl")
    env[TIMES_VARIABLE] = times
    if memory:  # reading smaps_rollup takes milliseconds: only where memory is what is measured
        env[MEMORY_VARIABLE] = memory_path
    env["DISTRIBUTED_TESTS_DEFAULT_TIMEOUT"] = str(timeout)  # PyTorch's per-test timeout
    env["DISTRIBUTED_TESTING_TIMEOUT"] = str(timeout)  # ours
    return env, times, memory_path


def read_jsonl(path: str) -> list[dict[str, object]]:
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except OSError:
        return []
    records = []
    for line in lines:
        try:
            records.append(json.loads(line))
        except ValueError:
            continue  # a line cut short by a kill
    return records


def read_times(run: Run, path: str) -> None:
    for record in read_jsonl(path):
        name, at = str(record["test"]), float(record["at"])  # type: ignore[arg-type]
        if record["event"] == "start":
            run.starts[name] = at
        elif name in run.starts:
            run.spans[name] = (run.starts[name], at)


# -- outcomes -------------------------------------------------------------------------------

UNITTEST_PROGRESS = re.compile(r"^(test_\w+) \(([\w.]+)\) \.\.\. ", re.M)
UNITTEST_WORD = re.compile(r"\b(ok|FAIL|ERROR)$|\b(skipped) ", re.M)  # the last one in a test's section
UNITTEST_BLOCK = re.compile(r"^(ERROR|FAIL): (test_\w+) \(([\w.]+)\)\n(.*?)(?=^={20,}$|^-{20,}\nRan |\Z)", re.M | re.S)
PYTEST_SUMMARY = re.compile(r"^(PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS) (\S+?)(?: - (.*))?$", re.M)
PYTEST_SECTION = re.compile(r"^_{2,} (?:ERROR at \w+ of )?(\w+)\.(test_\w+) _{2,}$", re.M)
PYTEST_PART = re.compile(r"^={5,}", re.M)  # the next part of the report (PASSES, the summary)
PYTEST_DURATION = re.compile(r"^\s*([\d.]+)s (setup|call|teardown)\s+(\S+)\s*$", re.M)


def unittest_id(method: str, found: str) -> str:
    """The test's id (Python 3.11 prints it whole; earlier versions print only the class)."""
    return found if found.endswith("." + method) else f"{found}.{method}"


def pytest_id(node: str) -> str:
    """``test_a.py::Bench::test_0000`` as ``test_a.Bench.test_0000``, the id unittest gives it."""
    path, _, rest = node.partition("::")
    return path.removesuffix(".py").replace("/", ".") + "." + rest.replace("::", ".")


def parse_unittest(run: Run) -> dict[str, str]:
    """Each test's word (ok, FAIL, ERROR, skipped) from ``-v`` output; the text around its failure in reasons."""
    words: dict[str, str] = {}
    texts: dict[str, str] = {}
    text = run.stderr
    starts = list(UNITTEST_PROGRESS.finditer(text))
    for i, match in enumerate(starts):
        stop = starts[i + 1].start() if i + 1 < len(starts) else len(text)
        name = unittest_id(match.group(1), match.group(2))
        section = text[match.end() : stop]
        found = list(UNITTEST_WORD.finditer(section))
        if found:
            words[name] = found[-1].group(1) or found[-1].group(2)
        texts[name] = section
    for match in UNITTEST_BLOCK.finditer(text):
        name = unittest_id(match.group(2), match.group(3))
        texts[name] = texts.get(name, "") + match.group(4)
    run.reasons.update(texts)
    return words


def parse_pytest(run: Run, modules: dict[str, str]) -> dict[str, str]:
    """Each test's word from ``-rA``, its failure section in reasons, its phases in durations."""
    text = run.stdout
    words = {pytest_id(m.group(2)): m.group(1) for m in PYTEST_SUMMARY.finditer(text)}
    sections = list(PYTEST_SECTION.finditer(text))
    for i, match in enumerate(sections):
        stop = sections[i + 1].start() if i + 1 < len(sections) else len(text)
        part = PYTEST_PART.search(text, match.end(), stop)
        stop = part.start() if part else stop
        module = modules.get(match.group(1))
        if module is not None:
            name = f"{module}.{match.group(1)}.{match.group(2)}"
            run.reasons[name] = run.reasons.get(name, "") + text[match.end() : stop]
    for match in PYTEST_DURATION.finditer(text):
        name = pytest_id(match.group(3))
        run.durations[name] = run.durations.get(name, 0.0) + float(match.group(1))
    return words


def classify(run: Run, words: dict[str, str], timeout: float) -> None:
    """Each expected test's outcome: ok, failed, timed out (its class's own timeout), skipped,
    hung (running when the run was killed), finished but unknown (the run was killed before
    its summary), or not run."""
    for name in run.expected:
        word = words.get(name)
        text = run.reasons.get(name, "")
        ms = run.ms(name)
        if word in ("ok", "PASSED"):
            outcome = "ok"
        elif word in ("FAIL", "ERROR", "FAILED"):
            slow = ms is not None and ms >= 1000.0 * timeout
            outcome = "timed out" if TIMEOUT_TEXT.search(text) or slow else "failed"
        elif word in ("skipped", "SKIPPED"):
            outcome = "skipped"
        elif word is not None:
            outcome = word.lower()
        elif name in run.starts and name not in run.spans:
            outcome = "hung" if run.code is None else "died"
        elif name in run.spans:
            outcome = "finished, outcome unknown"
        else:
            outcome = "not run"
        run.outcomes[name] = outcome
        if outcome == "ok":
            run.reasons.pop(name, None)
        else:
            run.reasons[name] = first_error_line(text)


def first_error_line(text: str) -> str:
    """The most telling line of a failure's text: the last exception line, else the last line."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    # pytest marks the exception's lines with "E   ".
    lines = [ln[1:].strip() if re.match(r"^E\s", ln) else ln for ln in lines]
    errors = [ln for ln in lines if re.match(r"^[\w.]*(Error|Exception|Failure|Interrupt)\b", ln)]
    chosen = errors[-1] if errors else (lines[-1] if lines else "")
    return chosen[:200]


# -- figures --------------------------------------------------------------------------------


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
    return "-" if ms is None else bench.format_ms(ms)


def figure_cells(fig: Figures) -> list[str]:
    first = fmt(fig.first_ms) if fig.first_ms is not None else fig.first_outcome.upper()
    spread = f"{fmt(min(fig.later))} / {fmt(max(fig.later))}" if fig.later else "-"
    return [first, f"{len(fig.later)} of {fig.later_total}", fmt(fig.median), fmt(fig.mean), spread]


FIGURE_HEADER = ["first test, ms", "later tests passed", "median, ms", "mean, ms", "min / max, ms"]


def ratio(ours: float | None, theirs: float | None, better: str = "faster", worse: str = "slower") -> str:
    if ours is None or theirs is None:
        return "-"
    return bench.ratio_text(ours, theirs, better, worse)


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


def outcome_counts(run: Run) -> str:
    counts: dict[str, int] = {}
    for name in run.expected:
        outcome = run.outcomes.get(name, "not run")
        counts[outcome] = counts.get(outcome, 0) + 1
    return ", ".join(f"{outcome} {n}" for outcome, n in counts.items())


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


# -- the scenarios ----------------------------------------------------------------------------


@dataclass
class Section:
    """A scenario's report: its lines, and whether its runs went as they should (see ``runs_ok``)."""

    title: str
    lines: list[str] = field(default_factory=list)
    ok: bool = True


def file_limit(tests: int, timeout: int) -> float:
    """Wall-clock limit for a file: generous; only a hang past the classes' own timeouts reaches it."""
    return 120.0 + tests * (timeout + 30.0)


def run_unittest_file(
    scenario: str,
    body: str,
    side: str,
    world_size: int,
    tests: int,
    args: argparse.Namespace,
    root: str,
    verbose: bool = True,
) -> Run:
    """Generate one file of ``tests`` tests and run it as ``python file.py [-v]``."""
    base = BODIES[body][3]
    run = Run(label=LABELS[(side, base)], side=side)
    workdir = tempfile.mkdtemp(prefix=f"{scenario}-{side}-", dir=root)
    try:
        path = os.path.join(workdir, f"test_bench_{scenario.replace('-', '_')}.py")
        with open(path, "w") as f:
            f.write(render(scenario, body, side, world_size, tests, "Bench"))
        env, times, memory = test_environment(workdir, args.timeout, memory=body == "memory")
        run.expected = [f"__main__.Bench.test_{i:04d}" for i in range(tests)]
        argv = [sys.executable, path] + (["-v"] if verbose else [])
        bench.progress(f"{scenario}: {run.label}, world size {world_size}, {tests} tests ...")
        run_bounded(run, argv, workdir, env, file_limit(tests, args.timeout))
        read_times(run, times)
        run.memory = read_jsonl(memory)
        if verbose:
            words = parse_unittest(run)
        else:  # no per-test words without -v: all passed if the run says so
            passed = run.code == 0 and f"Ran {tests} test" in run.stderr and "OK" in run.stderr.splitlines()
            words = {name: "ok" for name in run.spans} if passed else {}
            if not passed and run.code is not None:
                run.problems.append(f"exit code {run.code}; " + (run.stderr.strip().splitlines() or [""])[-1])
        classify(run, words, args.timeout)
        bench.progress(f"{run.wall:.1f} s wall; {outcome_counts(run)}", end="\n")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return run


def runs_ok(runs: list[Run]) -> bool:
    """No run was killed at its wall-clock limit, and every test passed or was stopped by its
    class's own timeout (reported apart: torch's DDP teardown deadlock hits both sides)."""
    return all(run.code is not None and not set(run.not_ok()) - {"timed out"} for run in runs)


def deadlock_note(runs: list[Run]) -> list[str]:
    """What a timed-out DDP test most likely is (see the module's docstring)."""
    if not any("timed out" in run.not_ok() for run in runs):
        return []
    return [
        "note: a timed-out DDP test is most likely torch's own deadlock (both classes): the DDP module, freed "
        "after destroy_process_group, frees the gloo group while holding the GIL; see tools/bench_scenarios.py."
    ]


def compare_section(title: str, runs: list[Run], note: str, fmt_name: str) -> Section:
    """Side-by-side table of per-test figures for one file per side, with ratios."""
    section = Section(title)
    rows, figs = [], {}
    for run in runs:
        fig = figures(run, run.ids())
        figs[run.side] = fig
        rows.append([run.label, *figure_cells(fig)])
    section.lines.append(bench.render_table(["class", *FIGURE_HEADER], rows, fmt_name))
    if PYTORCH in figs and OURS in figs:
        theirs, ours = figs[PYTORCH], figs[OURS]
        section.lines.append(
            f"ours against PyTorch's: first test {ratio(ours.first_ms, theirs.first_ms)}; "
            f"later tests, median {ratio(ours.median, theirs.median)}, mean {ratio(ours.mean, theirs.mean)}"
        )
    section.lines.append(note)
    section.lines.append("each test, ms (setUp to the last cleanup, in order):")
    section.lines += [per_test_line(run, run.ids()) for run in runs]
    section.lines += [run_line(run) for run in runs]
    trouble = [line for run in runs for line in outcome_lines(run)]
    section.lines += [TROUBLE, *trouble] if trouble else []
    section.ok = runs_ok(runs)
    return section


def scenario_ddp(args: argparse.Namespace, root: str) -> Section:
    tests = args.scenario_tests["ddp"]
    runs = [run_unittest_file("ddp", "ddp", side, 2, tests, args, root) for side in (PYTORCH, OURS)]
    section = compare_section(
        f"ddp: DistributedDataParallel over gloo, an MLP's gradients checked, world size 2, "
        f"python file.py -v, {tests} tests per file",
        runs,
        "later tests: from the second on, those that passed; ms from setUp to the last cleanup "
        "(ranks started, the test, the ranks joined).",
        args.format,
    )
    section.lines += deadlock_note(runs)
    return section


def scenario_dtensor(args: argparse.Namespace, root: str) -> Section:
    tests = args.scenario_tests["dtensor"]
    runs = [run_unittest_file("dtensor", "dtensor", side, 4, tests, args, root) for side in (PYTORCH, OURS)]
    return compare_section(
        f"dtensor: DTensorTestBase + with_comms, distribute_tensor Shard(0) -> redistribute Replicate(), "
        f"world size 4, python file.py -v, {tests} tests per file",
        runs,
        "later tests: from the second on, those that passed; ms from setUp to the last cleanup.",
        args.format,
    )


def scenario_pytest(args: argparse.Namespace, root: str) -> Section:
    tests = args.scenario_tests["pytest"]
    runs = []
    for side in (PYTORCH, OURS):
        run = Run(label=LABELS[(side, MPTC)], side=side)
        workdir = tempfile.mkdtemp(prefix=f"pytest-{side}-", dir=root)
        try:
            modules = {"BenchDDP1": "test_bench_ddp_1", "BenchDDP2": "test_bench_ddp_2"}
            files = []
            for class_name, module in modules.items():
                path = os.path.join(workdir, module + ".py")
                with open(path, "w") as f:
                    f.write(render("pytest", "ddp", side, 2, tests, class_name))
                files.append(os.path.basename(path))
                run.expected += [f"{module}.{class_name}.test_{i:04d}" for i in range(tests)]
            env, times, _ = test_environment(workdir, args.timeout)
            argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
            argv += ["--durations=0", "--durations-min=0", "-rA", *files]
            bench.progress(f"pytest: {run.label}, two files of {tests} DDP tests at world size 2 ...")
            run_bounded(run, argv, workdir, env, file_limit(2 * tests, args.timeout))
            read_times(run, times)
            classify(run, parse_pytest(run, modules), args.timeout)
            bench.progress(f"{run.wall:.1f} s wall; {outcome_counts(run)}", end="\n")
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        runs.append(run)
    section = Section(
        f"pytest: two files of {tests} ddp tests each (world size 2) in one "
        "python -m pytest -q -p no:cacheprovider --durations=0 --durations-min=0 -rA run"
    )
    header = ["run, file", *FIGURE_HEADER, "pytest: first, ms", "pytest: later median, ms", "pytest: later mean, ms"]
    rows: list[list[str]] = []
    figs: dict[tuple[str, int], tuple[Figures, Figures]] = {}
    for run in runs:
        for number, module in enumerate(("test_bench_ddp_1", "test_bench_ddp_2"), 1):
            names = run.ids(module + ".")

            def phases(name: str, run: Run = run) -> float | None:
                return 1000.0 * run.durations[name] if name in run.durations else None

            fig, dur = figures(run, names), figures(run, names, phases)
            figs[(run.side, number)] = (fig, dur)
            rows.append(
                [f"{run.label}, file {number}", *figure_cells(fig), fmt(dur.first_ms), fmt(dur.median), fmt(dur.mean)]
            )
    section.lines.append(bench.render_table(header, rows, args.format))
    for run in runs:
        if (run.side, 1) in figs and (run.side, 2) in figs:
            (one, one_d), (two, two_d) = figs[(run.side, 1)], figs[(run.side, 2)]
            section.lines.append(
                f"{run.label}: file 2 against file 1 (timestamps): first test "
                f"{ratio(two.first_ms, one.first_ms, 'cheaper', 'dearer')}, later tests median "
                f"{ratio(two.median, one.median, 'cheaper', 'dearer')}, mean "
                f"{ratio(two.mean, one.mean, 'cheaper', 'dearer')}; (pytest phases) later median "
                f"{ratio(two_d.median, one_d.median, 'cheaper', 'dearer')}"
            )
    for number in (1, 2):
        if (OURS, number) in figs and (PYTORCH, number) in figs:
            ours, theirs = figs[(OURS, number)][0], figs[(PYTORCH, number)][0]
            section.lines.append(
                f"ours against PyTorch's, file {number}: first test {ratio(ours.first_ms, theirs.first_ms)}, "
                f"later tests median {ratio(ours.median, theirs.median)}, mean {ratio(ours.mean, theirs.mean)}"
            )
    section.lines.append(
        "timestamps: setUp to the last cleanup, written by the tests (ms resolution); pytest: setup + call + "
        "teardown from --durations=0 (10 ms resolution; a class's first setup phase includes setUpClass)."
    )
    section.lines.append("each test, ms (setUp to the last cleanup, in order; file 1 | file 2):")
    for run in runs:
        section.lines.append(per_test_line(run, run.ids("test_bench_ddp_1."), run.ids("test_bench_ddp_2.")))
    section.lines += [run_line(run) for run in runs]
    trouble = [line for run in runs for line in outcome_lines(run)]
    section.lines += [TROUBLE, *trouble] if trouble else []
    section.lines += deadlock_note(runs)
    section.ok = runs_ok(runs)
    return section


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
    bench.progress(f"whole-file: python -c 'import torch', {IMPORT_TORCH_RUNS} runs between the files ...")
    imports.append(import_torch(root))
    for side in (PYTORCH, OURS):
        runs.append(run_unittest_file("whole-file", "trivial", side, 2, tests, args, root, verbose=False))
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
    section.lines.append(bench.render_table(header, rows, args.format))
    by_side = {run.side: run for run in runs}
    ours, theirs = by_side[OURS], by_side[PYTORCH]
    if budget is not None and ours.code == 0:
        share = ours.wall / budget
        section.lines.append(
            f"target: ours <= {WHOLE_FILE_TARGET:g} x (import torch + {tests} x {WHOLE_FILE_BUDGET_MS:g} ms) = "
            f"{WHOLE_FILE_TARGET * budget:.2f} s: {ours.wall:.2f} s, {share:.2f}x, "
            f"{bench.verdict(share <= WHOLE_FILE_TARGET)}"
        )
    if ours.code == 0 and theirs.code == 0:
        section.lines.append(f"ours against PyTorch's, whole file: {ratio(ours.wall, theirs.wall)}")
    section.lines.append("inside the file, each test, ms (setUp to the last cleanup):")
    section.lines += [per_test_line(run, run.ids()) for run in runs]
    section.lines += [run_line(run) for run in [*runs, *imports]]
    trouble = [line for run in runs for line in outcome_lines(run)]
    section.lines += [TROUBLE, *trouble] if trouble else []
    section.ok = runs_ok(runs) and all(r.code == 0 for r in imports)
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
        return "-" if kb is None else bench.format_mib(int(kb))

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
    runs = [run_unittest_file("memory", "memory", side, 2, tests, args, root) for side in (PYTORCH, OURS)]
    section = Section(
        f"memory: each rank's RSS and USS at the end of a trivial test (world size 2, {tests} tests per file), MiB"
    )
    header = ["process", "first test: RSS", "USS", "Pss", "later tests (median): RSS", "USS", "Pss"]
    rows, sums = [], {}
    for run in runs:
        more, summary = memory_rows(run)
        rows += more
        sums[run.side] = summary
    section.lines.append(bench.render_table(header, rows, args.format))
    if sums.get(OURS) and sums.get(PYTORCH):
        ours, theirs = sums[OURS], sums[PYTORCH]
        section.lines.append(
            f"ours against PyTorch's, a rank in the later tests (median over ranks and tests): "
            f"RSS {ratio(ours['rss'], theirs['rss'], 'smaller', 'larger')}, "
            f"USS {ratio(ours['uss'], theirs['uss'], 'smaller', 'larger')}, "
            f"Pss {ratio(ours['pss'], theirs['pss'], 'smaller', 'larger')}; all the processes above, Pss summed: "
            f"{ratio(ours['total_pss'], theirs['total_pss'], 'smaller', 'larger')}"
        )
    section.lines.append(
        "RSS, USS (Private_Clean + Private_Dirty) and Pss from smaps_rollup: each rank reads its own at the end "
        "of the test body (after destroy_process_group), ours also its parent's, the fork server; the test "
        "process reads its own in the test's last cleanup. A forked rank's RSS counts the pages it shares with "
        "the fork server (and it with the test process); USS counts none of them; Pss shares them out, so the "
        "Pss sum is the run's footprint."
    )
    section.lines += [run_line(run) for run in runs]
    trouble = [line for run in runs for line in outcome_lines(run)]
    section.lines += [TROUBLE, *trouble] if trouble else []
    section.ok = runs_ok(runs)
    return section


RUNNERS: dict[str, Callable[[argparse.Namespace, str], Section]] = {
    "ddp": scenario_ddp,
    "dtensor": scenario_dtensor,
    "pytest": scenario_pytest,
    "whole-file": scenario_whole_file,
    "memory": scenario_memory,
}


def run_scenario(name: str, args: argparse.Namespace) -> Section:
    """Run one scenario in a fresh temporary directory; its report, with the load before and after."""
    root = tempfile.mkdtemp(prefix=f"dt-bench-{name}-")
    load_start = bench.load_average()
    try:
        section = RUNNERS[name](args, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    section.lines.insert(0, f"load average at the start: {load_start}")
    section.lines.append(f"load average at the end: {bench.load_average()}")
    return section
