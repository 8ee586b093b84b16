"""How each mode runs a fault's test: the class it uses, its command line, its environment,
and how the user reads its verdict."""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

VENV_BIN = Path(sys.executable).parent
TORCHRUN = str(VENV_BIN / "torchrun")


@dataclass(frozen=True)
class Mode:
    """One way to run a test file."""

    key: str
    kind: str  # the class around the faults: see cases.CLASSES
    shown: str  # the command as a user types it, for the table's legend
    argv: Callable[[Path, str], list[str]]  # (file, test method) -> command line
    env: tuple[tuple[str, str], ...] = ()
    pytest: bool = False  # verdicts are pytest's (PASSED, FAILED, SKIPPED)
    death_ends_run: bool = False  # a rank's death ends the whole run (torchrun stops the others): no verdict

    def verdict(self, outcome: str) -> str:
        """The verdict this mode shows for a unittest outcome ("FAIL", "ERROR", "skipped")."""
        if not self.pytest:
            return outcome
        return {"FAIL": "FAILED", "ERROR": "FAILED", "skipped": "SKIPPED", "ok": "PASSED"}[outcome]


def _unittest(path: Path, method: str) -> list[str]:
    return [sys.executable, path.name, "-v", f"Faults.{method}"]


def _torchrun(path: Path, method: str) -> list[str]:
    return [TORCHRUN, "--standalone", "--nproc-per-node=2", path.name, "-v", f"Faults.{method}"]


def _pytest(path: Path, method: str) -> list[str]:
    return [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-v", "-rs", f"{path.name}::Faults::{method}"]


MODES = [
    Mode("one-shot", "one-shot", "python f.py -v", _unittest),
    Mode("env", "env", "BACKEND=gloo WORLD_SIZE=2 python f.py -v", _unittest,
         env=(("BACKEND", "gloo"), ("WORLD_SIZE", "2"))),
    Mode("pool", "pool", "python f.py -v", _unittest),
    Mode("torchrun", "env", "torchrun --standalone --nproc-per-node=2 f.py -v", _torchrun,
         env=(("OMP_NUM_THREADS", "1"),), death_ends_run=True),
    Mode("pytest", "one-shot", "pytest -v -rs f.py", _pytest, pytest=True),
]

MODE_KEYS = [m.key for m in MODES]

_UNITTEST_VERDICT = re.compile(r"(?:^|\.\.\. )(ok|FAIL|ERROR|skipped (?:'.*'|\".*\"))$")
_PYTEST_VERDICT = re.compile(r"::(\w+) (PASSED|FAILED|ERROR|SKIPPED)\b")


class VerdictReader:
    """Finds the verdict on one test in a run's lines as they come."""

    def __init__(self, mode: Mode, method: str) -> None:
        self.mode = mode
        self.method = method
        self.started = mode.pytest  # unittest: the verdict follows the test's "name (id) ..." line
        self.verdict: str | None = None

    def feed(self, line: str) -> bool:
        """Take one line; whether it is the verdict."""
        line = line.rstrip("\n")
        if self.verdict is not None:
            return False
        if self.mode.pytest:
            match = _PYTEST_VERDICT.search(line)
            if match and match[1] == self.method:
                self.verdict = match[2]
            return self.verdict is not None
        if re.search(rf"\b{self.method} \(", line):
            self.started = True
        match = _UNITTEST_VERDICT.search(line) if self.started else None
        if match:
            self.verdict = match[1].split(" ", 1)[0]
        return self.verdict is not None
