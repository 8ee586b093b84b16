"""The test matrix: run test files over backends, world sizes and init methods.

The logic of ``tools/run_distributed_tests.py``, as PyTorch's ``run_test.py``
runs ``test_distributed_spawn.py``: every configuration runs every file in its
own subprocess with ``BACKEND``, ``WORLD_SIZE``, ``INIT_METHOD`` and a fresh
``TEMP_DIR`` (holding ``barrier`` and ``test_dir``) set, and reads back the JSON
record ``run_tests()`` writes to ``DISTRIBUTED_TESTING_REPORT``. Prints progress,
a summary table and, on request, one JUnit XML file with a testsuite per
configuration. Exit codes as ``run_tests()``: 0 passed, 1 failed, 2 bad usage,
130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

from distributed_testing import _config, _devices
from distributed_testing._outcomes import signal_name
from distributed_testing._runner import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, _interruptible

__all__ = ["Config", "ConfigResult", "FileRun", "TestRecord", "format_table", "junit_tree", "main"]

# The INIT_METHOD each --init-method name sets: "file://" is a rendezvous file per test.
INIT_URLS = {"file": "file://", "env": "env://"}
DEFAULT_BACKENDS, DEFAULT_WORLD_SIZES, DEFAULT_INITS = ("gloo",), (2,), ("file",)
OUTCOMES = ("passed", "failed", "error", "skipped")
TERM_GRACE = 10.0  # seconds a test file may take to stop its ranks after SIGTERM
TICK = 1.0  # seconds between redraws of the progress bar's clock
OUTPUT_TAIL = 4000  # characters of a crashed file's output kept in its JUnit error
# Inherited variables that would make a child join someone else's job.
_DROPPED = (
    "RANK", "LOCAL_RANK", "GROUP_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID",
    "PYTEST_CURRENT_TEST",
)
_XML_INVALID = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")

EPILOG = """\
examples:
  %(prog)s test/test_x.py
  %(prog)s test/test_x.py test/test_y.py --world-size 2 4 --init-method file env -j 2
  %(prog)s test/test_x.py --backend gloo nccl --junit-xml results.xml

Each configuration runs each FILE in a fresh process with BACKEND, WORLD_SIZE,
INIT_METHOD (file:// or env://) and a fresh TEMP_DIR (with barrier/ and
test_dir/) set. A backend this torch build lacks, or nccl with fewer CUDA
devices than ranks, is skipped with a note. In the table, "failed" counts
failures and errors.

exit codes: 0 all passed, 1 a test failed, 2 bad usage, 130 interrupted.
"""


class _UsageError(Exception):
    """A problem with what the user asked for; the run stops with exit code 2."""


@dataclass(frozen=True)
class Config:
    """One cell of the matrix."""

    backend: str
    world_size: int
    init_method: str  # a key of INIT_URLS

    @property
    def name(self) -> str:
        return f"{self.backend}-ws{self.world_size}-{self.init_method}"


@dataclass(frozen=True)
class TestRecord:
    """One test's outcome in one configuration (``classname`` as JUnit has it)."""

    classname: str
    name: str
    outcome: str  # one of OUTCOMES
    message: str
    seconds: float

    @property
    def id(self) -> str:
        return f"{self.classname}.{self.name}"


@dataclass(frozen=True)
class FileRun:
    """One test file run in one configuration."""

    file: str
    label: str  # unique name of the file in this run (its stem)
    exit_code: int
    seconds: float
    tests: tuple[TestRecord, ...]
    output: str
    problem: str = ""  # what went wrong beyond the tests: a crash, no report

    @property
    def passed(self) -> bool:
        return self.exit_code == EXIT_OK and not self.problem

    def count(self, outcome: str) -> int:
        return sum(t.outcome == outcome for t in self.tests)


@dataclass
class ConfigResult:
    """What one configuration did: its file runs, or why it was skipped."""

    config: Config
    skip_reason: str = ""
    runs: list[FileRun] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        return sum(run.seconds for run in self.runs)

    def count(self, outcome: str) -> int:
        return sum(run.count(outcome) for run in self.runs)

    @property
    def failed(self) -> bool:
        return any(not run.passed for run in self.runs)


@dataclass(frozen=True)
class Options:
    """The validated command line."""

    files: tuple[str, ...]
    backends: tuple[str, ...]
    world_sizes: tuple[int, ...]
    init_methods: tuple[str, ...]
    jobs: int
    junit_xml: str | None
    keep_temp: bool
    prog: str  # the program's name, for messages


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """Run the matrix the command line asks for; return the exit code."""
    parser = build_parser(prog)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, or argparse's own usage error (already printed)
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    try:
        options = check_options(args, parser.prog)
        plan = [(config, skip_reason(config)) for config in configurations(options)]
        runnable = [config for config, why in plan if not why]
        if not runnable:
            raise _UsageError(_nothing_to_run(plan, options))
    except _UsageError as exc:
        return _usage_error(parser.prog, str(exc))
    out = sys.stdout
    _print_skip_notes(plan, out)
    return _run_and_report(options, plan, out)


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """The command line: FILE... and the matrix's axes."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Run distributed test files over every combination of backend, world size and init "
        "method, as PyTorch's run_test.py runs test_distributed_spawn.py; print a summary table.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = parser.add_argument
    add("files", nargs="+", metavar="FILE", help="test files that end with run_tests()")
    add("--backend", dest="backends", nargs="+", action="extend", type=_backend_arg, metavar="B",
        help=f"c10d backends, of {', '.join(_devices.KNOWN_BACKENDS)} (default: gloo)")
    add("--world-size", dest="world_sizes", nargs="+", action="extend", metavar="N",
        type=_positive_int("--world-size 2 4"), help="ranks per test (default: 2)")
    add("--init-method", dest="init_methods", nargs="+", action="extend", metavar="M", type=_init_arg,
        help="file (a rendezvous file per test) or env (MASTER_ADDR/MASTER_PORT) (default: file)")
    add("-j", "--jobs", type=_positive_int("-j 2"), default=1, metavar="J",
        help="configurations run at once, each in its own process and TEMP_DIR (default: 1)")
    add("--junit-xml", metavar="PATH", help="write a JUnit XML file with a testsuite per configuration")
    add("--keep-temp", action="store_true", help="keep each configuration's TEMP_DIR, output and report")
    return parser


def _positive_int(example: str) -> Callable[[str], int]:
    def parse(text: str) -> int:
        if not re.fullmatch(r"\+?[0-9]+", text.strip()) or int(text) < 1:
            raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}. Example: {example}")
        return int(text)

    return parse


def _backend_arg(text: str) -> str:
    backend = text.strip().lower()
    if backend in _devices.KNOWN_BACKENDS:
        return backend
    have = ", ".join(_devices.available_backends()) or "none"
    hint = " (to give a FILE after --backend, end the list with --: --backend gloo -- FILE)" if (
        text.endswith(".py") or os.path.exists(text)
    ) else ""
    raise argparse.ArgumentTypeError(
        f"must be one of {', '.join(_devices.KNOWN_BACKENDS)}, got {text!r}{hint}. "
        f"This torch build has: {have}. Example: --backend gloo"
    )


def _init_arg(text: str) -> str:
    method = text.strip().lower().removesuffix("://")
    if method not in INIT_URLS:
        raise argparse.ArgumentTypeError(
            f"must be one of {', '.join(INIT_URLS)}, got {text!r}. Example: --init-method file env"
        )
    return method


def check_options(args: argparse.Namespace, prog: str) -> Options:
    """Check what argparse cannot: the files and the JUnit path."""
    files: list[str] = []
    for path in args.files:
        _check_file(path, prog)
        if os.path.realpath(path) not in {os.path.realpath(f) for f in files}:
            files.append(path)
    if args.junit_xml:
        _check_junit_path(args.junit_xml)
    return Options(
        files=tuple(files),
        backends=_unique(args.backends or DEFAULT_BACKENDS),
        world_sizes=_unique(args.world_sizes or DEFAULT_WORLD_SIZES),
        init_methods=_unique(args.init_methods or DEFAULT_INITS),
        jobs=args.jobs,
        junit_xml=args.junit_xml,
        keep_temp=args.keep_temp,
        prog=prog,
    )


def _check_file(path: str, prog: str) -> None:
    problem = ""
    if not os.path.exists(path):
        problem = f"test file {path!r} does not exist"
    elif os.path.isdir(path):
        problem = f"{path!r} is a directory, not a test file"
    elif not os.access(path, os.R_OK):
        problem = f"test file {path!r} is not readable"
    if problem:
        raise _UsageError(f"{problem}. Example: {prog} test/test_x.py --world-size 2 4")


def _check_junit_path(path: str) -> None:
    """Fail before the run, not after it: PATH must not be a directory; its folder must be writable."""
    folder = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(folder):  # write_junit makes the missing folders
        folder = os.path.dirname(folder)
    problem = "is a directory" if os.path.isdir(path) else ""
    if not problem and not os.access(folder, os.W_OK):
        problem = f"cannot be written: {folder!r} is not writable"
    if problem:
        raise _UsageError(f"--junit-xml {path!r} {problem}. Example: --junit-xml results.xml")


def _unique(values: Sequence[Any]) -> tuple[Any, ...]:
    return tuple(dict.fromkeys(values))


def configurations(options: Options) -> list[Config]:
    """Every combination of backend, world size and init method, in the order given."""
    return [
        Config(backend, size, init)
        for backend in options.backends
        for size in options.world_sizes
        for init in options.init_methods
    ]


def skip_reason(config: Config) -> str:
    """Why ``config`` cannot run on this machine and torch build, or ``""``."""
    if not _devices.backend_available(config.backend):
        have = ", ".join(_devices.available_backends()) or "none"
        return f"{config.backend} is not available in this torch build, which has: {have}"
    if config.backend == "nccl":
        count = _devices.cuda_device_count()
        if count < config.world_size:
            found = f"found {count} CUDA device{'s' * (count != 1)}"
            return f"nccl needs a CUDA device per rank: world size {config.world_size}, {found}"
    return ""


def _nothing_to_run(plan: list[tuple[Config, str]], options: Options) -> str:
    reasons = "; ".join(dict.fromkeys(why for _, why in plan))
    return (
        f"no configuration can run: {reasons}. "
        f"Example: {options.prog} {options.files[0]} --backend gloo --world-size {options.world_sizes[0]}"
    )


def _print_skip_notes(plan: list[tuple[Config, str]], out: TextIO) -> None:
    by_reason: dict[str, list[str]] = {}
    for config, why in plan:
        if why:
            by_reason.setdefault(why, []).append(config.name)
    for why, names in by_reason.items():
        print(f"note: skipping {', '.join(names)}: {why}", file=out, flush=True)


def _usage_error(prog: str, message: str) -> int:
    print(f"{prog}: error: {message}", file=sys.stderr, flush=True)
    return EXIT_USAGE


# Running ------------------------------------------------------------------------------------------


class _Processes:
    """The test-file processes now running, so an interrupt or a usage error can stop them all."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.running: set[subprocess.Popen[bytes]] = set()
        self.stopping = threading.Event()

    def start(self, cmd: list[str], env: dict[str, str], log: TextIO) -> subprocess.Popen[bytes] | None:
        """Start ``cmd``, or return None once stopping (checked under the lock: nothing starts late)."""
        with self.lock:
            if self.stopping.is_set():
                return None
            # A session of its own: a Ctrl-C at the terminal reaches only this process, which then
            # stops each file with one SIGTERM (a second signal would cut short the file's clean-up).
            proc = subprocess.Popen(
                cmd, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
            )
            self.running.add(proc)
            return proc

    def finish(self, proc: subprocess.Popen[bytes]) -> int:
        code = proc.wait()
        with self.lock:
            self.running.discard(proc)
        return code

    def stop(self, signum: int) -> int:
        """Start no more files; send ``signum`` to those running; return how many."""
        with self.lock:
            self.stopping.set()
            for proc in self.running:
                if proc.poll() is None:
                    proc.send_signal(signum)
            return len(self.running)


def _run_and_report(options: Options, plan: list[tuple[Config, str]], out: TextIO) -> int:
    root = tempfile.mkdtemp(prefix="dt-matrix-")
    runnable = [config for config, why in plan if not why]
    progress = _Progress(len(runnable) * len(options.files), out)
    started = time.monotonic()
    print(_banner(options, runnable), file=out, flush=True)
    try:
        with _interruptible():
            results, usage, stopped = run_matrix(options, runnable, root, progress)
    finally:
        progress.close()
        if not options.keep_temp:
            shutil.rmtree(root, ignore_errors=True)
    if usage:
        return _usage_error(options.prog, usage)
    everything = [results.get(c.name, ConfigResult(c, why)) for c, why in plan if why or c.name in results]
    return _report(everything, options, root, time.monotonic() - started, out, stopped)


def _banner(options: Options, runnable: list[Config]) -> str:
    files = f"{len(options.files)} file{'s' * (len(options.files) > 1)}"
    many = len(runnable) > 1
    return (
        f"running {files} in {len(runnable)} configuration{'s' * many}"
        + (f", {min(options.jobs, len(runnable))} at a time" if many else "")
        + f": {', '.join(c.name for c in runnable)}"
    )


def run_matrix(
    options: Options, runnable: list[Config], root: str, progress: _Progress
) -> tuple[dict[str, ConfigResult], str, list[str] | None]:
    """Run every file in every configuration, ``options.jobs`` configurations at once.

    Returns the results by configuration name; the usage error if a file was
    unusable (it has no tests, or rejected its configuration), else ``""``; and
    what an interrupt stopped (None when there was none).
    """
    pending: queue.Queue[Config] = queue.Queue()
    for config in runnable:
        pending.put(config)
    events: queue.Queue[tuple[str, Any]] = queue.Queue()
    procs = _Processes()
    labels = _labels(options.files)
    workers = [
        threading.Thread(target=_worker, args=(pending, labels, root, procs, events), daemon=True)
        for _ in range(min(options.jobs, len(runnable)))
    ]
    for worker in workers:
        worker.start()
    results = {config.name: ConfigResult(config) for config in runnable}
    try:
        usage = _collect(events, len(workers), results, progress)
    except KeyboardInterrupt:
        stopped = sorted(progress.running)
        _stop(procs, workers, progress)
        return {name: r for name, r in results.items() if r.runs}, "", stopped
    except BaseException:
        _stop(procs, workers, progress)
        raise
    if usage:
        _stop(procs, workers, progress)
    return results, usage, None


def _collect(
    events: queue.Queue[tuple[str, Any]],
    workers: int,
    results: dict[str, ConfigResult],
    progress: _Progress,
) -> str:
    """Take the workers' events until they are all done, or until a file turns out unusable.

    Returns that file's usage error, or ``""``.
    """
    while workers:
        try:
            kind, payload = events.get(timeout=TICK if progress.bar else None)
        except queue.Empty:
            progress.draw()
            continue
        if kind == "start":
            progress.started(*payload)
        elif kind == "done":
            config, run, problem = payload
            if problem:
                return str(problem)
            results[config.name].runs.append(run)
            progress.finished(config, run)
        elif kind == "crash":
            raise RuntimeError(f"the matrix runner crashed:\n{payload}")
        elif kind == "exit":
            workers -= 1
    return ""


def _stop(procs: _Processes, workers: list[threading.Thread], progress: _Progress) -> None:
    """Stop the running files: SIGTERM (they stop their ranks), then SIGKILL after a grace period
    or at a second interrupt."""
    count = procs.stop(signal.SIGTERM)
    if count:
        progress.note(f"stopping {count} running test file{'s' * (count > 1)} (SIGTERM; interrupt again to kill)")
    try:
        _join(workers, time.monotonic() + TERM_GRACE)
    except KeyboardInterrupt:
        pass
    if any(worker.is_alive() for worker in workers):
        progress.note("test files still running: sending SIGKILL")
        procs.stop(signal.SIGKILL)
        _join(workers, None)


def _join(workers: list[threading.Thread], deadline: float | None) -> None:
    for worker in workers:
        worker.join(None if deadline is None else max(0.0, deadline - time.monotonic()))


def _labels(files: Sequence[str]) -> dict[str, str]:
    """A unique short name per file: its stem, numbered when two files share one."""
    labels: dict[str, str] = {}
    for path in files:
        stem = os.path.splitext(os.path.basename(path))[0]
        label, n = stem, 1
        while label in labels.values():
            n += 1
            label = f"{stem}-{n}"
        labels[path] = label
    return labels


def _worker(
    pending: queue.Queue[Config],
    labels: dict[str, str],
    root: str,
    procs: _Processes,
    events: queue.Queue[tuple[str, Any]],
) -> None:
    try:
        while not procs.stopping.is_set():
            try:
                config = pending.get_nowait()
            except queue.Empty:
                return
            _run_configuration(config, labels, root, procs, events)
    except BaseException:
        events.put(("crash", traceback.format_exc()))
    finally:
        events.put(("exit", None))


def _run_configuration(
    config: Config, labels: dict[str, str], root: str, procs: _Processes, events: queue.Queue[tuple[str, Any]]
) -> None:
    directory = os.path.join(root, config.name)
    os.makedirs(directory)
    for path, label in labels.items():
        events.put(("start", (config, label)))
        outcome = run_file(config, path, label, directory, procs)
        if outcome is None:  # stopping
            return
        events.put(("done", (config, *outcome)))


def child_environment(config: Config, temp_dir: str, report: str) -> dict[str, str]:
    """This process's environment with the configuration's variables set."""
    env = {name: value for name, value in os.environ.items() if name not in _DROPPED}
    env.update(
        BACKEND=config.backend,
        WORLD_SIZE=str(config.world_size),
        INIT_METHOD=INIT_URLS[config.init_method],
        TEMP_DIR=temp_dir,
        PYTHONUNBUFFERED="1",  # keeps stdout and stderr in order in the one log
    )
    env[_config.ENV_REPORT] = report
    return env


def run_file(
    config: Config, path: str, label: str, directory: str, procs: _Processes
) -> tuple[FileRun, str] | None:
    """Run one file in a fresh TEMP_DIR; return its run and a usage error (or ``""``).

    Returns None when the matrix is stopping and the file was not started.
    """
    temp_dir = os.path.join(directory, label)
    for entry in ("barrier", "test_dir"):  # what PyTorch's run_test.py puts in TEMP_DIR
        os.makedirs(os.path.join(temp_dir, entry))
    report, log_path = os.path.join(directory, f"{label}.json"), os.path.join(directory, f"{label}.log")
    started = time.monotonic()
    with open(log_path, "w") as log:
        proc = procs.start([sys.executable, path], child_environment(config, temp_dir, report), log)
        if proc is None:
            return None
        code = procs.finish(proc)
    seconds = time.monotonic() - started
    with open(log_path, errors="replace") as handle:
        output = handle.read()
    run = _file_run(path, label, code, seconds, output, _read_report(report))
    return run, _usage_problem(path, config, code, output)


def _read_report(path: str) -> list[dict[str, Any]] | None:
    try:
        with open(path) as handle:
            tests = json.load(handle)["tests"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return tests if isinstance(tests, list) else None


def _file_run(
    path: str, label: str, code: int, seconds: float, output: str, report: list[dict[str, Any]] | None
) -> FileRun:
    tests = [_record(label, test) for test in report or []]
    problem = _run_problem(code, report, tests)
    if problem:
        tail = output[-OUTPUT_TAIL:]
        tests.append(TestRecord(label, os.path.basename(path), "error", f"{problem}\n{tail}", seconds))
    return FileRun(path, label, code, seconds, tuple(tests), output, problem)


def _record(label: str, test: dict[str, Any]) -> TestRecord:
    """A report entry; ``__main__.TestX.test_y`` becomes ``<label>.TestX`` / ``test_y``."""
    head, space, params = str(test.get("id", "?")).partition(" ")  # "test_y (i=1)" for subtests
    classname, _, name = head.rpartition(".")
    if classname == "__main__" or classname.startswith("__main__."):
        classname = label + classname[len("__main__") :]
    outcome = test.get("outcome") if test.get("outcome") in OUTCOMES else "error"
    return TestRecord(classname or label, name + space + params, str(outcome), str(test.get("message", "")),
                      float(test.get("seconds", 0.0)))


def _run_problem(code: int, report: list[dict[str, Any]] | None, tests: list[TestRecord]) -> str:
    """What went wrong with the file's process itself, beyond its tests' outcomes."""
    if code < 0:
        return f"the test file died with {signal_name(code)}"
    if code == EXIT_INTERRUPTED:
        return "the test file was interrupted"
    if report is None and code != EXIT_OK:
        return f"the test file exited with code {code} without a report (did it fail to import?)"
    if report is None:
        return "the test file exited with code 0 but wrote no report: does it end with run_tests()?"
    if code not in (EXIT_OK, EXIT_FAILED) or (code == EXIT_FAILED and all(t.outcome in ("passed", "skipped")
                                                                        for t in tests)):
        return f"the test file exited with code {code} after its tests"
    return ""


def _usage_problem(path: str, config: Config, code: int, output: str) -> str:
    """The file cannot be run at all: it has no tests (exit 5) or rejected its configuration (exit 2)."""
    if code == 5:
        said = _said(output, "no tests ran: ") or "it ran no tests"
        return f"{path} has no tests ({said}); each FILE must define test_* methods and end with run_tests()"
    if code == EXIT_USAGE:
        said = _said(output, ": error: ") or "it exited with code 2"
        return f"{path} rejected configuration {config.name}: {said}"
    return ""


def _said(output: str, marker: str) -> str:
    """The text after ``marker`` on the last output line that has it."""
    lines = [line for line in output.splitlines() if marker in line]
    return lines[-1].split(marker, 1)[1].strip() if lines else ""


# Progress -----------------------------------------------------------------------------------------


class _Progress:
    """One line per finished file run; a live bar under them when the output is a terminal."""

    def __init__(self, total: int, out: TextIO) -> None:
        self.total, self.done, self.out = total, 0, out
        self.bar = out.isatty() and os.environ.get("TERM") != "dumb"
        self.running: list[str] = []  # "<configuration> <file label>"
        self.started_at = time.monotonic()

    def started(self, config: Config, label: str) -> None:
        self.running.append(f"{config.name} {label}")
        self.draw()

    def finished(self, config: Config, run: FileRun) -> None:
        self.running.remove(f"{config.name} {run.label}")
        self.done += 1
        self.note(f"[{self.done}/{self.total}] {config.name}  {run.file}  {_run_status(run)}  ({run.seconds:.1f} s)")

    def note(self, text: str) -> None:
        self._clear()
        print(text, file=self.out, flush=True)
        self.draw()

    def draw(self) -> None:
        if not self.bar:
            return
        width = shutil.get_terminal_size().columns
        filled = self.done * 20 // max(self.total, 1)
        elapsed = time.monotonic() - self.started_at
        now = ", ".join(self.running) or "finishing"
        line = f"[{'#' * filled}{'.' * (20 - filled)}] {self.done}/{self.total}  {elapsed:.0f} s  {now}"
        self.out.write("\r\x1b[K" + line[: max(width - 1, 10)])
        self.out.flush()

    def _clear(self) -> None:
        if self.bar:
            self.out.write("\r\x1b[K")

    def close(self) -> None:
        self._clear()
        self.bar = False
        self.out.flush()


def _run_status(run: FileRun) -> str:
    counts = _counts_text(run.tests[:-1] if run.problem else run.tests)  # not the problem's own record
    if run.problem:
        return f"ERROR: {run.problem.removeprefix('the test file ')}" + (f"; {counts}" if counts else "")
    return ("FAILED: " if not run.passed else "") + (counts or "no tests")


def _counts_text(tests: Sequence[TestRecord]) -> str:
    counts = {outcome: sum(t.outcome == outcome for t in tests) for outcome in OUTCOMES}
    return ", ".join(f"{n} {outcome}" for outcome, n in counts.items() if n)


# Reporting ----------------------------------------------------------------------------------------


def _report(
    results: list[ConfigResult], options: Options, root: str, seconds: float, out: TextIO, stopped: list[str] | None
) -> int:
    """Print the failing files' output, the table and the failed tests; write the JUnit XML.

    ``stopped`` lists what an interrupt stopped (None: no interrupt).
    """
    for result in results:
        for run in result.runs:
            if not run.passed:
                print(f"\n{'=' * 20} {result.config.name}: {run.file} (exit code {run.exit_code}) {'=' * 20}",
                      file=out)
                print(run.output.rstrip(), file=out)
    if results:
        print("\n" + format_table(results, seconds), file=out)
    failed = [(r.config.name, t.id) for r in results for run in r.runs for t in run.tests
              if t.outcome in ("failed", "error")]
    for name, test_id in failed:
        print(f"FAILED {name} {test_id}", file=out)
    if options.keep_temp:
        print(f"kept TEMP_DIRs, output and reports in {root}", file=out)
    if options.junit_xml:
        try:
            write_junit(options.junit_xml, results, seconds)
        except OSError as exc:
            out.flush()
            return _usage_error(options.prog, f"cannot write --junit-xml {options.junit_xml!r}: {exc.strerror or exc}")
        print(f"JUnit XML: {options.junit_xml}", file=out)
    if stopped is not None:
        print(f"interrupted; stopped: {', '.join(stopped) or 'nothing was running'}", file=out, flush=True)
        return EXIT_INTERRUPTED
    out.flush()
    return EXIT_FAILED if any(r.failed for r in results) else EXIT_OK


def format_table(results: Sequence[ConfigResult], seconds: float) -> str:
    """The summary: a row per configuration and a total (wall-clock seconds)."""
    header = ("configuration", "passed", "failed", "skipped", "seconds", "note")
    rows = [_row(result) for result in results]
    ran = [r for r in results if not r.skip_reason]
    rows.append(("total", *_counts(ran), f"{seconds:.1f}", ""))
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header) - 1)]
    lines = []
    for row in (header, *rows):
        cells = [row[0].ljust(widths[0])] + [cell.rjust(w) for cell, w in zip(row[1:-1], widths[1:], strict=True)]
        lines.append("  ".join(cells + [row[-1]]).rstrip())
    lines.insert(1, "-" * len(lines[0]))
    lines.insert(len(lines) - 1, "-" * len(lines[0]))
    return "\n".join(lines)


def _row(result: ConfigResult) -> tuple[str, ...]:
    if result.skip_reason:
        return (result.config.name, "-", "-", "-", "-", f"skipped: {result.skip_reason}")
    notes = "; ".join(f"{run.file}: {run.problem.removeprefix('the test file ')}" for run in result.runs if run.problem)
    return (result.config.name, *_counts([result]), f"{result.seconds:.1f}", notes)


def _counts(results: Sequence[ConfigResult]) -> tuple[str, str, str]:
    passed = sum(r.count("passed") for r in results)
    failed = sum(r.count("failed") + r.count("error") for r in results)
    skipped = sum(r.count("skipped") for r in results)
    return str(passed), str(failed), str(skipped)


def junit_tree(results: Sequence[ConfigResult], seconds: float) -> ET.ElementTree[ET.Element]:
    """JUnit XML: a ``testsuite`` per configuration, a ``testcase`` per test."""
    root = ET.Element("testsuites", name="run_distributed_tests")
    for result in results:
        _suite(root, result)
    for key in ("tests", "failures", "errors", "skipped"):
        root.set(key, str(sum(int(suite.get(key, "0")) for suite in root)))
    root.set("time", f"{seconds:.3f}")
    ET.indent(root)
    return ET.ElementTree(root)


def _suite(parent: ET.Element, result: ConfigResult) -> None:
    config = result.config
    suite = ET.SubElement(parent, "testsuite", name=config.name, hostname=socket.gethostname())
    properties = ET.SubElement(suite, "properties")
    for key, value in (("BACKEND", config.backend), ("WORLD_SIZE", str(config.world_size)),
                       ("INIT_METHOD", INIT_URLS[config.init_method])):
        ET.SubElement(properties, "property", name=key, value=value)
    tests: list[tuple[str, TestRecord]] = [(run.file, t) for run in result.runs for t in run.tests]
    if result.skip_reason:
        tests = [("", TestRecord(config.name, "(configuration)", "skipped", result.skip_reason, 0.0))]
    for path, test in tests:
        _case(suite, path, test)
    kinds = [t.outcome for _, t in tests]
    for key, outcome in (("failures", "failed"), ("errors", "error"), ("skipped", "skipped")):
        suite.set(key, str(kinds.count(outcome)))
    suite.set("tests", str(len(tests)))
    suite.set("time", f"{result.seconds:.3f}")
    failing = [run for run in result.runs if not run.passed]
    output = "\n".join(f"== {run.file} (exit code {run.exit_code})\n{run.output}" for run in failing)
    if output:
        ET.SubElement(suite, "system-out").text = _xml_text(output)


def _case(suite: ET.Element, path: str, test: TestRecord) -> None:
    case = ET.SubElement(suite, "testcase", classname=test.classname, name=test.name, time=f"{test.seconds:.3f}")
    if path:
        case.set("file", path)
    tag = {"failed": "failure", "error": "error", "skipped": "skipped"}.get(test.outcome)
    if tag:
        first = test.message.strip().splitlines()[0] if test.message.strip() else test.outcome
        element = ET.SubElement(case, tag, message=_xml_text(first))
        if tag != "skipped":
            element.text = _xml_text(test.message)


def _xml_text(text: str) -> str:
    """``text`` without the characters XML 1.0 cannot hold (terminal escapes, NULs)."""
    return _XML_INVALID.sub("?", text)


def write_junit(path: str, results: Sequence[ConfigResult], seconds: float) -> None:
    """Write the JUnit XML file atomically, making its directory if needed."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    junit_tree(results, seconds).write(tmp, encoding="utf-8", xml_declaration=True)
    os.replace(tmp, path)
