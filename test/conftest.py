"""Shared fixtures: write a test file into a temp dir, run it in a real subprocess."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import pytest

HEADER = """\
import os, signal, sys, time, unittest
import torch
import torch.distributed as dist
import distributed_testing as dt
from distributed_testing import *
"""

ROOT = Path(__file__).resolve().parent.parent

# A file that calls run_tests() without importing torch: run_tests() checks the settings and the
# launch before any test, so a bad one shows here in a fraction of the time.
PLAIN = """
import unittest

from distributed_testing import run_tests


class TestPlain(unittest.TestCase):
    def test_plain(self):
        pass


if __name__ == "__main__":
    run_tests()
"""


# Child pytest runs leave hypothesis's plugin out (hypothesis is a dependency, so pytest loads it):
# it adds over a second to each pytest process, xdist workers included. One test keeps it.
NO_HYPOTHESIS = ("-p", "no:hypothesispytest")


def load_tool(name: str) -> ModuleType:
    """``tools/<name>.py`` as a module, for tests of its pure parts."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "tools" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[name]
    return module


# Variables that would leak the outer run's configuration into the file under test.
_CONFIG_VARS = (
    "BACKEND",
    "WORLD_SIZE",
    "TEMP_DIR",
    "INIT_METHOD",
    "RANK",
    "LOCAL_RANK",
    "MASTER_ADDR",
    "MASTER_PORT",
    "DISTRIBUTED_TESTING_START_METHOD",
    "DISTRIBUTED_TESTING_TIMEOUT",
    "DISTRIBUTED_TESTING_SHOW_OUTPUT",
    "DISTRIBUTED_TESTING_DEBUG_RANK",
    "DISTRIBUTED_TESTING_REPORT",
    "DISTRIBUTED_TESTING_LOG",
    "DISTRIBUTED_TESTING_FULL_TRACEBACKS",
    "DISTRIBUTED_TESTING_DEFAULTED_BACKEND",
    "DISTRIBUTED_TESTING_LOG_DIR",
    "DISTRIBUTED_TESTING_LOG_DIR_ALL",
    "DISTRIBUTED_TESTING_MAX_RANKS",
    "DISTRIBUTED_TESTING_SHARD",
    "DISTRIBUTED_TESTING_DURATIONS",
    "DISTRIBUTED_TESTING_RETRIES",
    "DISTRIBUTED_TESTING_REPEAT",
    "DISTRIBUTED_TESTING_REQUIRE_HARDWARE",
    "DISTRIBUTED_TESTING_NODES",
    "PYTEST_XDIST_WORKER",  # this suite runs on xdist workers; the files under test choose their own
    "PYTEST_XDIST_WORKER_COUNT",
    "PYTEST_XDIST_TESTRUNUID",
    "SLURM_PROCID",  # a Slurm allocation around this suite is not the file under test's
    "SLURM_NTASKS",
    "SLURM_LOCALID",
    "SLURM_JOB_ID",
    "PYTEST_CURRENT_TEST",
    "PYTEST_ADDOPTS",
    "CI",  # PyTorch's runner changes behaviour on CI (XML reports needing xmlrunner)
)


@dataclass
class Run:
    """A finished subprocess: its exit code and what it printed."""

    returncode: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


class Runner:
    """Writes test files into ``tmp_path`` and runs them with a clean environment."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.scratch = tmp_path / "tmp"  # TMPDIR of the child: must end up empty
        self.scratch.mkdir()

    def write(self, body: str, name: str = "test_x.py", header: bool = True) -> Path:
        path = self.tmp_path / name
        text = textwrap.dedent(body)
        path.write_text((HEADER + "\n" if header else "") + text)
        return path

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in _CONFIG_VARS}
        env["TMPDIR"] = str(self.scratch)
        env["PYTHONWARNINGS"] = "ignore"
        env["DISTRIBUTED_TESTING_TIMEOUT"] = "60"  # a hang reports instead of eating the suite
        # torch's compile cache is torch's, kept on purpose: not a leftover of ours.
        env["TORCHINDUCTOR_CACHE_DIR"] = str(self.tmp_path / "torchinductor")
        env.update(extra)
        return env

    def run(self, *args: str, timeout: float = 240, **env: str) -> Run:
        """Run ``python ARGS`` (a file and its arguments) in ``tmp_path``."""
        return self._run([sys.executable, *args], timeout, env)

    def pytest(self, *args: str, timeout: float = 240, hypothesis: bool = False, **env: str) -> Run:
        """Run ``python -m pytest ARGS`` in ``tmp_path`` (without hypothesis's plugin unless asked)."""
        plugins = ("-p", "no:cacheprovider", *(() if hypothesis else NO_HYPOTHESIS))
        return self._run([sys.executable, "-m", "pytest", *plugins, *args], timeout, env)

    def _run(self, cmd: list[str], timeout: float, env: dict[str, str]) -> Run:
        proc = subprocess.run(
            cmd,
            cwd=self.tmp_path,
            env=self.env(**env),
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )
        return Run(proc.returncode, proc.stdout, proc.stderr)

    def leftovers(self) -> list[str]:
        """Files the run left in its TMPDIR (there should be none)."""
        return sorted(str(p.relative_to(self.scratch)) for p in self.scratch.rglob("*"))


@pytest.fixture
def runner(tmp_path: Path) -> Runner:
    return Runner(tmp_path)


_STATUS = re.compile(r"^(?P<name>test\w*) \((?P<id>[\w.]+)\)(?: \.\.\.|\n.*?\.\.\.) (?P<status>ok|FAIL|ERROR|skipped .*|expected failure|unexpected success)$", re.M)
_SECTION = re.compile(r"^={50,}\n(?P<kind>FAIL|ERROR): (?P<name>test\w*) \((?P<id>[\w.]+)\)\n-{50,}\n", re.M)


def outcomes(output: str) -> dict[str, str]:
    """unittest -v lines -> {"TestX.test_y": "ok" | "FAIL" | "ERROR" | "skipped 'why'"}."""
    found = {}
    for match in _STATUS.finditer(output):
        key = ".".join(match["id"].split(".")[-2:])
        found[key] = match["status"]
    return found


def reports(output: str) -> dict[str, str]:
    """The failure report under each FAIL/ERROR heading, keyed "TestX.test_y"."""
    matches = list(_SECTION.finditer(output))
    found = {}
    for i, match in enumerate(matches):
        end = matches[i + 1].start() if i + 1 < len(matches) else output.find("\n" + "-" * 70 + "\nRan ")
        key = ".".join(match["id"].split(".")[-2:])
        found[key] = output[match.end() : end if end > 0 else len(output)]
    return found


def live_processes(marker: str) -> list[str]:
    """Processes whose command line or environment mentions ``marker``.

    ``marker`` is a test's unique temp path: every process a run starts (the
    test process, the fork server, the ranks) inherits TMPDIR from the Runner.
    """
    alive = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                cmdline = handle.read().replace(b"\0", b" ").decode(errors="replace")
            with open(f"/proc/{entry}/environ", "rb") as handle:
                environ = handle.read().decode(errors="replace")
        except OSError:
            continue
        if marker in cmdline or marker in environ:
            alive.append(f"{entry}: {cmdline}")
    return alive


def wait_gone(marker: str) -> list[str]:
    """The processes of a finished run still alive after a grace period.

    Helpers (the fork server, multiprocessing's resource tracker) exit when
    they see the run's pipes close, a moment after the run itself.
    """
    for _ in range(100):  # at most 10 s
        if not live_processes(marker):
            break
        time.sleep(0.1)
    return live_processes(marker)
