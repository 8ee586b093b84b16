"""One cell of the matrix: run one fault in one mode, time its report, judge what the user sees."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from conftest import Runner, wait_gone

from .cases import Fault, line_of, source
from .modes import Mode, VerdictReader

FILE = "f.py"
HANG_DEADLINE = 5  # DISTRIBUTED_TESTING_TIMEOUT for the faults that hang
DEADLINE = 10  # for the others: a fault that hangs by mistake still ends
PROMPT = 5.0  # seconds a report may take after the fault (after the deadline, for a hang)

# How a report names the faulty rank (rank 1 of 2): the library's words, then torchrun's.
RANK_NAMES = [
    re.compile(r"\brank 1 of 2 failed\b.*"),
    re.compile(r"^\s*rank 1: .*", re.M),
    re.compile(r"^rank 1 (?:failed first|exited|died|was not ready)\b.*", re.M),
    re.compile(r"\bskipped on rank 1\b.*"),
    re.compile(r"\brank 1 was stuck\b.*"),
    re.compile(r"Root Cause \(first observed failure\):\n.*\n(?:.*\n){0,3}?\s*rank\s*: 1 \(local_rank: 1\)"),
]


@dataclass
class Cell:
    """What one run of a fault in a mode showed, and what was wrong with it."""

    fault: Fault
    mode: Mode
    verdict: str | None = None
    returncode: int | None = None  # None: killed at the tool's own limit
    named: str = ""  # the words that name rank 1, "" when none do
    line: int = 0  # the fault's line in the file
    line_named: bool = False
    seconds: float | None = None  # from the fault to the verdict (or to the end, without one)
    by_exit: bool = False  # no verdict: timed to the end of the run
    processes: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    output: str = ""

    @property
    def allowed(self) -> float:
        """Seconds the report may take after the fault."""
        return PROMPT + (HANG_DEADLINE if self.fault.hang else 0)

    @property
    def problems(self) -> list[str]:
        """What the user should have seen and did not; empty when the cell is as expected."""
        found = []
        want = self.mode.verdict(self.fault.outcome)
        if self.returncode is None:
            found.append("did not end: killed by the tool")
        ends_run = self.fault.dies and self.mode.death_ends_run and self.verdict is None
        if self.verdict != want and not ends_run:
            found.append(f"verdict {self.verdict or 'none'}, expected {want}")
        if self.returncode is not None and self.returncode != self.fault.exit_code:
            found.append(f"exit {self.returncode}, expected {self.fault.exit_code}")
        if not self.named:
            found.append("rank 1 not named")
        if self.fault.line and not self.line_named:
            found.append(f"{FILE}:{self.line} not named")
        if self.seconds is not None and self.seconds > self.allowed:
            found.append(f"reported {self.seconds:.0f} s after the fault")
        if self.processes:
            found.append(f"{len(self.processes)} processes left")
        if self.files:
            found.append(f"{len(self.files)} temp files left")
        return found


def names_rank(output: str) -> str:
    """The words of ``output`` that name rank 1 as the faulty rank, or ""."""
    for pattern in RANK_NAMES:
        matches = [m[0] for m in pattern.finditer(output)]
        if matches:
            longest = max(matches, key=len).strip()  # pytest's -v line cuts a reason that its -rs line shows
            text = re.sub(r"(?:'|\)? +\[\d+%\])$", "", longest)  # unittest's quote, pytest's progress
            return "torchrun's summary: rank 1" if text.startswith("Root Cause") else text
    return ""


def names_line(output: str, line: int) -> bool:
    """Whether ``output`` names line ``line`` of the test file (``f.py:N`` or a traceback's)."""
    name = re.escape(FILE)
    return re.search(rf"\b{name}:{line}\b|\b{name}\", line {line}\b", output) is not None


def run_cell(fault: Fault, mode: Mode, limit: float = 150.0) -> Cell:
    """Run ``fault``'s test alone in ``mode`` in a fresh directory; judge and clean up."""
    tmp = Path(tempfile.mkdtemp(prefix="fault-matrix-"))
    runner = Runner(tmp)
    marks = tmp / "marks"
    marks.mkdir()
    text = source(mode.kind)
    path = runner.write(text, name=FILE, header=False)
    env = runner.env(
        FAULT_MARKS=str(marks),
        PYTHONUNBUFFERED="1",  # lines as a terminal shows them, for the timing
        DISTRIBUTED_TESTING_TIMEOUT=str(HANG_DEADLINE if fault.hang else DEADLINE),
        **dict(mode.env),
        **dict(fault.env),
    )
    cell = Cell(fault, mode, line=line_of(text, fault.marker))
    proc = subprocess.Popen(
        mode.argv(path, fault.method), cwd=tmp, env=env, stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace",
    )
    killer = threading.Timer(limit, proc.kill)
    killer.start()
    reader = VerdictReader(mode, fault.method)
    lines, reported_at = [], None
    assert proc.stdout is not None
    for output_line in proc.stdout:
        lines.append(output_line)
        if reader.feed(output_line):
            reported_at = time.time()
    returncode = proc.wait()
    ended = time.time()
    killer.cancel()
    cell.returncode = None if returncode == -signal.SIGKILL else returncode
    cell.output = "".join(lines)
    cell.verdict = reader.verdict
    stamps = [float(p.read_text()) for p in marks.iterdir() if p.read_text()]
    if stamps:
        cell.by_exit = reported_at is None
        cell.seconds = (reported_at or ended) - min(stamps)
    cell.named = names_rank(cell.output)
    cell.line_named = names_line(cell.output, cell.line)
    cell.processes = wait_gone(str(tmp))
    cell.files = [f for f in runner.leftovers() if not _torchrun_own(runner.scratch, f)]
    _clean(tmp, cell.processes)
    return cell


def _torchrun_own(scratch: Path, name: str) -> bool:
    """A directory of torchrun's log tree: it leaves them in TMPDIR for any script, ours or not."""
    return name.split("/", 1)[0].startswith("torchelastic_") and (scratch / name).is_dir()


def _clean(tmp: Path, processes: list[str]) -> None:
    """End the processes this run left (by pid) and remove its directory."""
    for entry in processes:
        try:
            os.kill(int(entry.split(":", 1)[0]), signal.SIGKILL)
        except (ProcessLookupError, PermissionError, ValueError):
            pass
    shutil.rmtree(tmp, ignore_errors=True)
