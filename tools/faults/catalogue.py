"""The one-shot fault catalogue of ``test/test_faults.py``, each fault run on its own.

For each fault: unittest's verdict, the ranks the report names, an excerpt of its reason,
the seconds from the fault (each rank records when it injects one) to the report (the
test's verdict line), and how many processes and temp files the run left; then the
parent signalled while its ranks wait in a collective, and two runs of one file at once.
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import test_faults as tf
from conftest import Run, Runner, live_processes, reports, wait_gone

# Faults test_multiprocess.py asserts on; the fault file has them for their timings.
COVERED = [
    tf.Fault("SIGSEGV in a rank", "faults", "Faults.test_segfault", "ERROR",
             ("rank 1 of 2 failed: died with SIGSEGV",)),
    tf.Fault("os._exit(3) in a rank", "faults", "Faults.test_os_exit", "ERROR", ("exited with code 3",)),
    tf.Fault("sys.exit(4) in a rank", "faults", "Faults.test_sys_exit", "ERROR", ("the test called sys.exit(4)",)),
]


@dataclass
class Row:
    """One catalogue row, as printed."""

    fault: str
    outcome: str
    ranks: str
    reason: str
    seconds: str
    processes: int
    files: int
    expected: str


def _runner() -> Runner:
    return Runner(Path(tempfile.mkdtemp(prefix="fault-matrix-")))


def _finish(runner: Runner) -> tuple[int, int]:
    """Processes and temp files the run left behind; then remove its directory."""
    left = len(wait_gone(str(runner.tmp_path))), len(runner.leftovers())
    shutil.rmtree(runner.tmp_path, ignore_errors=True)
    return left


def _verdict_line(line: str) -> bool:
    return re.search(r"(?:^|\.\.\. )(?:ok|FAIL|ERROR|skipped .*)$", line.rstrip("\n")) is not None


@dataclass
class Timed:
    run: Run
    seconds: str
    processes: int
    files: int


_timed: dict[tuple[str, str, tuple[tuple[str, str], ...]], Timed] = {}


def time_fault(fault: tf.Fault) -> Timed:
    """Run one fault's test alone (once per test and environment); time its report
    from the moment a rank injected the fault."""
    key = (fault.file, fault.test, fault.env)
    if key in _timed:
        return _timed[key]
    runner = _runner()
    marks = runner.tmp_path / "marks"
    marks.mkdir()
    path = runner.write(tf.FILES[fault.file])
    env = runner.env(FAULT_MARKS=str(marks), **dict(fault.env))
    proc = subprocess.Popen(
        [sys.executable, str(path), "-v", fault.test],
        cwd=runner.tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    assert proc.stdout is not None
    lines, reported_at = [], None
    for line in proc.stdout:
        lines.append(line)
        if reported_at is None and _verdict_line(line):
            reported_at = time.time()
    proc.wait()
    stamps = [float(p.read_text()) for p in marks.iterdir()]
    seconds = f"{reported_at - min(stamps):.2f}" if stamps and reported_at else "n/a"
    _timed[key] = Timed(Run(proc.returncode, "".join(lines), ""), seconds, *_finish(runner))
    return _timed[key]


def run_fault(fault: tf.Fault) -> Row:
    timed = time_fault(fault)
    run = timed.run
    problems = tf.check(run, fault)
    expected = "yes" if not problems else (f"no: bug ({fault.bug})" if fault.bug else "NO: " + "; ".join(problems))
    if problems and not fault.bug:
        print(f"--- unexpected: {fault.name} ---\n{run.output}", file=sys.stderr)
    report = reports(run.output).get(fault.test, "")
    status = tf.status_of(run.output, fault.test) or f"exit {run.returncode}"
    return Row(fault.name, status, ranks_named(report), reason_of(report, run.output), timed.seconds,
               timed.processes, timed.files, expected)


def ranks_named(report: str) -> str:
    """The ranks a report names, and how: failed, failed first, stopped, still running."""
    parts = [f"failed {m}" for m in re.findall(r"^(?:[\w.]+: )?ranks? ([\d, -]+) of \d+ failed", report, re.M)]
    first = re.search(r"^rank (\d+) failed first", report, re.M)
    if first:
        parts.append(f"first {first[1]}")
    parts += [f"stopped {m}" for m in re.findall(r"^ranks? ([\d, -]+) (?:was|were) stopped", report, re.M)]
    hung = re.search(r"; ranks? ([\d, -]+) still running", report)
    if hung:
        parts.append(f"running {hung[1]}")
    return "; ".join(parts) or "-"


def reason_of(report: str, output: str, width: int = 70) -> str:
    """The report's first line without the exception type (or, for a pass, what it showed)."""
    if not report:
        shown = len(re.findall(r"\[rank \d+\] ", output))
        return f"{shown} [rank N] lines shown" if shown else "quiet"
    first = report.strip().splitlines()[0]
    first = re.sub(r"^[\w.]+(?:Error|Failure): ", "", first)
    first = re.sub(r"^(?:ranks? [\d, -]+ of \d+ failed: )", "", first)
    first = re.sub(r" \(pid \d+\)", "", first)
    return first if len(first) <= width else first[: width - 3] + "..."


def _wait_for(condition: Callable[[], bool], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.02)


def run_parent_signal(method: str, signum: int) -> Row:
    """Signal the test process while its ranks wait in a collective; time until all is gone."""
    runner = _runner()
    markers = runner.tmp_path / "markers"
    markers.mkdir()
    body = tf.KILLED_FILE.replace('start_method = "spawn"', f'start_method = "{method}"')
    proc = subprocess.Popen(
        [sys.executable, str(runner.write(body)), "-v"],
        cwd=runner.tmp_path, env=runner.env(MARKER_DIR=str(markers)),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # as an interactive shell does
    )
    _wait_for(lambda: len(list(markers.iterdir())) == 2, 120)
    start = time.time()
    proc.send_signal(signum)
    output = proc.communicate(timeout=120)[0]
    _wait_for(lambda: not live_processes(str(runner.tmp_path)), 30)
    seconds = f"{time.time() - start:.2f}"
    name = signal.Signals(signum).name
    said = next((line for line in output.splitlines() if "interrupted" in line), "")
    reason = said.split(": ", 1)[-1] if said else "(killed: no report possible)"
    processes, files = _finish(runner)
    expected = "yes" if processes == 0 and files == 0 else "no: temp files left" if processes == 0 else "NO"
    if signum == signal.SIGINT and "interrupted in __main__.Killed.test_parent_killed" not in output:
        expected = "NO: " + output[-200:]
    return Row(f"{name} of the parent ({method}), ranks in a collective", f"exit {proc.returncode}", "-", reason,
               seconds, processes, files, expected)


def run_together(init_method: str) -> Row:
    """Two runs of the same file at once; seconds until both finished."""
    runner = _runner()
    markers = runner.tmp_path / "markers"
    markers.mkdir()
    path = runner.write(tf.TOGETHER_FILE)
    start = time.time()
    procs = [
        subprocess.Popen(
            [sys.executable, str(path), "-v"], cwd=runner.tmp_path,
            env=runner.env(MARKER_DIR=str(markers), RUN_ID=run_id, INIT_METHOD=init_method),
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        for run_id in ("a", "b")
    ]
    outputs = [proc.communicate(timeout=240)[0] for proc in procs]
    seconds = f"{time.time() - start:.2f}"
    verdicts = ["OK" if proc.returncode == 0 else f"exit {proc.returncode}" for proc in procs]
    ran = [re.search(r"Ran (\d+) tests", out) for out in outputs]
    processes, files = _finish(runner)
    ok = all(v == "OK" for v in verdicts) and processes == files == 0
    return Row(f"two runs of one file at once ({init_method})", " + ".join(verdicts), "-",
               " + ".join(f"{m[1] if m else 0} tests" for m in ran), seconds, processes, files,
               "yes" if ok else "NO")


def jobs() -> list[tuple[str, Callable[[], Row]]]:
    """Every catalogue row, named, to run on demand."""
    found: list[tuple[str, Callable[[], Row]]] = [(f.name, lambda f=f: run_fault(f)) for f in tf.FAULTS + COVERED]
    for method in ("fork", "spawn"):
        for signum in (signal.SIGINT, signal.SIGKILL):
            name = f"{signal.Signals(signum).name} of the parent ({method}), ranks in a collective"
            found.append((name, lambda m=method, s=signum: run_parent_signal(m, s)))
    for init in ("file://", "env://"):
        found.append((f"two runs of one file at once ({init})", lambda i=init: run_together(i)))
    return found


def as_expected(row: Row) -> bool:
    """A row is fine when it is as expected or fails only by a known, named bug."""
    return row.expected == "yes" or row.expected.startswith("no: ")


def print_table(rows: list[Row]) -> None:
    header = ["fault", "outcome", "ranks named", "reason (excerpt)", "s to report", "procs left", "files left",
              "as expected"]
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    for r in rows:
        cells = [r.fault, r.outcome, r.ranks, r.reason, r.seconds, str(r.processes), str(r.files), r.expected]
        print("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
