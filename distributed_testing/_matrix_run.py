"""The matrix's run: a process per test file and configuration, a pool of configurations, progress.

Each configuration runs the files one after another, each in a fresh process
with the configuration's variables and its own TEMP_DIR; ``-j J``
configurations run at once. An interrupt stops the running files: SIGTERM,
then SIGKILL after a grace period. Progress is a line per finished file, and a
live bar on a terminal.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import TextIO

from distributed_testing import _config
from distributed_testing._matrix_plan import INIT_URLS, Config, Options
from distributed_testing._matrix_results import ConfigResult, FileRun, TestRecord, file_run, read_report, usage_problem
from distributed_testing._protocol import TEST_OUTCOMES
from distributed_testing._runner import interruptible

__all__ = ["Progress", "banner", "child_environment", "run_file", "run_matrix"]

TERM_GRACE = 10.0  # seconds a test file may take to stop its ranks after SIGTERM
TICK = 1.0  # seconds between redraws of the progress bar's clock
# Inherited variables that would make a child join someone else's job.
_DROPPED = (
    "RANK", "LOCAL_RANK", "GROUP_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID",
    "PYTEST_CURRENT_TEST",
)


# The pool ------------------------------------------------------------------------------------------


class _Processes:
    """The test-file processes now running, so an interrupt or a usage error can stop them all."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.running: set[subprocess.Popen[bytes]] = set()
        self.stopping = False

    def start(self, cmd: list[str], env: dict[str, str], log: TextIO) -> subprocess.Popen[bytes] | None:
        """Start ``cmd``, or return None once stopping (checked under the lock: nothing starts late)."""
        with self.lock:
            if self.stopping:
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
            self.stopping = True
            for proc in self.running:
                if proc.poll() is None:
                    proc.send_signal(signum)
            return len(self.running)


def run_matrix(
    options: Options, runnable: list[Config], root: str, progress: Progress
) -> tuple[dict[str, ConfigResult], str, list[str] | None]:
    """Run every file in every configuration, ``options.jobs`` configurations at once.

    Returns the results by configuration name; the usage error if a file was
    unusable (it has no tests, or rejected its configuration), else ``""``; and
    what an interrupt stopped (None when there was none).
    """
    results = {config.name: ConfigResult(config) for config in runnable}
    matrix = _Matrix(runnable, _labels(options.files), root, min(options.jobs, len(runnable)), progress)
    try:
        try:
            usage = matrix.run(results)
        except KeyboardInterrupt:
            stopped = sorted(progress.running)
            matrix.stop()
            return {name: r for name, r in results.items() if r.runs}, "", stopped
        except BaseException:
            matrix.stop()
            raise
        if usage:
            matrix.stop()
        return results, usage, None
    finally:
        matrix.pool.shutdown(wait=True, cancel_futures=True)


FileOutcome = tuple[FileRun, str] | None  # what run_file returns: None when not started


class _Matrix:
    """Runs each configuration's files one after another, ``jobs`` configurations at once.

    Only the calling thread touches the results and the progress; the pool's
    threads run the files, at most one per configuration and ``jobs`` in all.
    """

    def __init__(self, runnable: list[Config], labels: dict[str, str], root: str, jobs: int,
                 progress: Progress) -> None:
        self.waiting = deque(runnable)  # configurations not started yet
        self.labels, self.root, self.jobs, self.progress = labels, root, jobs, progress
        self.procs = _Processes()
        self.pool = ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="run_distributed_tests")
        # The file each started configuration is running, in the order they started.
        self.running: dict[Future[FileOutcome], tuple[Config, Iterator[tuple[str, str]]]] = {}

    def run(self, results: dict[str, ConfigResult]) -> str:
        """Run until every configuration is done or a file turns out unusable; return its usage error or ``""``."""
        for _ in range(self.jobs):
            self._next_configuration()
        while self.running:
            done, _ = wait(self.running, timeout=TICK if self.progress.bar else None, return_when=FIRST_COMPLETED)
            if not done:
                self.progress.draw()
            for future in [f for f in self.running if f in done]:
                config, files = self.running.pop(future)
                outcome = _result(future)
                if outcome is None:  # stopping
                    continue
                run, problem = outcome
                if problem:
                    return problem
                results[config.name].runs.append(run)
                self.progress.finished(config, run)
                self._next_file(config, files)
        return ""

    def _next_configuration(self) -> None:
        if self.waiting:
            config = self.waiting.popleft()
            self._next_file(config, iter(self.labels.items()))

    def _next_file(self, config: Config, files: Iterator[tuple[str, str]]) -> None:
        """Start ``config``'s next file; once it has none left, the next configuration."""
        for path, label in files:
            self.progress.started(config, label)
            future = self.pool.submit(run_file, config, path, label, os.path.join(self.root, config.name), self.procs)
            self.running[future] = (config, files)
            return
        self._next_configuration()

    def stop(self) -> None:
        """Stop the running files: SIGTERM (they stop their ranks), then SIGKILL after a grace period
        or at a second interrupt. Starts no more files."""
        count = self.procs.stop(signal.SIGTERM)
        if count:
            self.progress.note(
                f"stopping {count} running test file{'s' * (count > 1)} (SIGTERM; interrupt again to kill)"
            )
        try:
            with interruptible(every=True):
                wait(self.running, timeout=TERM_GRACE)
        except KeyboardInterrupt:
            pass
        if not all(future.done() for future in self.running):
            self.progress.note("test files still running: sending SIGKILL")
            self.procs.stop(signal.SIGKILL)


def _result(future: Future[FileOutcome]) -> FileOutcome:
    try:
        return future.result()
    except Exception as exc:
        raise RuntimeError(f"the matrix runner crashed:\n{''.join(traceback.format_exception(exc))}") from None


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


# One file ------------------------------------------------------------------------------------------


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


def run_file(config: Config, path: str, label: str, directory: str, procs: _Processes) -> FileOutcome:
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
    run = file_run(path, label, code, seconds, output, read_report(report))
    return run, usage_problem(path, config, code, output)


# Progress ------------------------------------------------------------------------------------------


def banner(options: Options, runnable: list[Config]) -> str:
    """The first line of a run: how many files, in which configurations, how many at a time."""
    files = f"{len(options.files)} file{'s' * (len(options.files) > 1)}"
    many = len(runnable) > 1
    return (
        f"running {files} in {len(runnable)} configuration{'s' * many}"
        + (f", {min(options.jobs, len(runnable))} at a time" if many else "")
        + f": {', '.join(c.name for c in runnable)}"
    )


class Progress:
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
    counts = {outcome: sum(t.outcome == outcome for t in tests) for outcome in TEST_OUTCOMES}
    return ", ".join(f"{n} {outcome}" for outcome, n in counts.items() if n)
