"""tools/run_distributed_tests.py: the matrix of configurations, its table, JUnit XML, and bad input."""

from __future__ import annotations

import json
import os
import pty
import re
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from conftest import Run, Runner, wait_gone

pytestmark = pytest.mark.slow

TOOL = str(Path(__file__).resolve().parent.parent / "tools" / "run_distributed_tests.py")
PROG = "run_distributed_tests.py"

# Passes everywhere, skips, and fails when there is more than one rank; rank 0 records
# what its configuration gave it: the environment and what TEMP_DIR held.
DIST_FILE = """
import json

class TestDist(DistBackendTestCase):
    def test_all_reduce(self):
        t = torch.ones(1)
        dist.all_reduce(t)
        self.assertEqual(t.item(), float(self.world_size))
        self._barrier()
        if self.rank == 0:
            seen = {{name: os.environ[name] for name in ("BACKEND", "WORLD_SIZE", "INIT_METHOD", "TEMP_DIR")}}
            seen["entries"] = sorted(os.listdir(os.environ["TEMP_DIR"]))
            with open({seen!r}, "a") as handle:
                handle.write(json.dumps(seen) + "\\n")

    def test_not_here(self):
        raise unittest.SkipTest("not on this machine")

    def test_rank_zero(self):
        self.assertEqual(self.rank, 0)

if __name__ == "__main__":
    run_tests()
"""

# No ranks and no torch in the test: a cheap second file.
PLAIN_FILE = """
import unittest
from distributed_testing import run_tests

class TestPlain(unittest.TestCase):
    def test_one(self):
        pass

if __name__ == "__main__":
    run_tests()
"""

CRASH_FILE = """
import os, signal
os.kill(os.getpid(), signal.SIGSEGV)
"""

EMPTY_FILE = """
import unittest
from distributed_testing import run_tests

class TestNothing(unittest.TestCase):
    def helper(self):
        pass

if __name__ == "__main__":
    run_tests()
"""


def tool(runner: Runner, *args: str, timeout: float = 240) -> Run:
    return runner.run(TOOL, *args, timeout=timeout)


def table(output: str) -> dict[str, list[str]]:
    """The summary table: {configuration: [passed, failed, skipped, seconds, note...]}."""
    lines = output.splitlines()
    start = lines.index("configuration  passed  failed  skipped  seconds  note".strip())
    rows = {}
    for line in lines[start + 2 :]:
        if line.startswith("---"):
            continue
        cells = line.split(maxsplit=5)
        rows[cells[0]] = cells[1:]
        if cells[0] == "total":
            break
    return rows


def error_line(run: Run) -> str:
    lines = [line for line in run.stderr.splitlines() if line.startswith(f"{PROG}: error: ")]
    assert len(lines) == 1, run.output
    return lines[0][len(f"{PROG}: error: ") :]


def test_matrix_of_world_sizes_and_init_methods(runner: Runner):
    seen = runner.tmp_path / "seen.jsonl"
    runner.write(DIST_FILE.format(seen=str(seen)), "test_dist.py")
    runner.write(PLAIN_FILE, "test_plain.py", header=False)
    runner.write(CRASH_FILE, "test_crash.py", header=False)
    junit = runner.tmp_path / "out" / "results.xml"
    run = tool(
        runner, "test_dist.py", "test_plain.py", "test_crash.py",
        "--world-size", "1", "2", "--init-method", "file", "env", "-j", "2", "--junit-xml", str(junit),
    )
    assert run.returncode == 1, run.output
    names = ["gloo-ws1-file", "gloo-ws1-env", "gloo-ws2-file", "gloo-ws2-env"]
    assert f"running 3 files in 4 configurations, 2 at a time: {', '.join(names)}" in run.stdout

    # Progress: a line per file and configuration as each finishes.
    progress = re.findall(r"^\[(\d+)/12\] (\S+)  (\S+)  (.*)  \(\d+\.\d s\)$", run.stdout, re.M)
    assert sorted(int(n) for n, *_ in progress) == list(range(1, 13))
    status = {(config, file): text for _, config, file, text in progress}
    assert status[("gloo-ws1-file", "test_dist.py")] == "2 passed, 1 skipped"
    assert status[("gloo-ws2-env", "test_dist.py")] == "FAILED: 1 passed, 1 failed, 1 skipped"
    assert status[("gloo-ws1-env", "test_plain.py")] == "1 passed"
    assert status[("gloo-ws2-file", "test_crash.py")] == "ERROR: died with SIGSEGV"

    # The summary table: a row per configuration ("failed" counts errors too) and the total.
    rows = table(run.stdout)
    assert list(rows) == [*names, "total"]
    note = "test_crash.py: died with SIGSEGV"
    for name in names[:2]:
        assert rows[name][:3] == ["3", "1", "1"] and rows[name][4] == note, rows
    for name in names[2:]:
        assert rows[name][:3] == ["2", "2", "1"] and rows[name][4] == note, rows
    assert rows["total"][:3] == ["10", "6", "4"]
    assert "FAILED gloo-ws2-file test_dist.TestDist.test_rank_zero" in run.stdout.splitlines()
    assert "rank 1 of 2 failed: AssertionError: 1 != 0" in run.stdout  # the file's own output

    # Each configuration had its own environment and a fresh TEMP_DIR with a barrier entry.
    records = [json.loads(line) for line in seen.read_text().splitlines()]
    got = {(r["BACKEND"], r["WORLD_SIZE"], r["INIT_METHOD"]) for r in records}
    assert got == {("gloo", w, i) for w in ("1", "2") for i in ("file://", "env://")}
    temps = [r["TEMP_DIR"] for r in records]
    assert len(set(temps)) == 4
    assert all(r["entries"] == ["barrier", "test_dir"] for r in records), records
    assert all(t.startswith(str(runner.scratch)) and not os.path.exists(t) for t in temps)

    # JUnit XML: a testsuite per configuration with its counts and test cases.
    root = ET.parse(junit).getroot()
    assert root.tag == "testsuites"
    assert {k: root.get(k) for k in ("tests", "failures", "errors", "skipped")} == {
        "tests": "20", "failures": "2", "errors": "4", "skipped": "4",
    }
    suites = root.findall("testsuite")
    assert [s.get("name") for s in suites] == names
    for suite in suites:
        ws2 = suite.get("name", "").startswith("gloo-ws2")
        assert {k: suite.get(k) for k in ("tests", "failures", "errors", "skipped")} == {
            "tests": "5", "failures": "1" if ws2 else "0", "errors": "1", "skipped": "1",
        }
        props = {p.get("name"): p.get("value") for p in suite.iter("property")}
        assert props["BACKEND"] == "gloo" and props["WORLD_SIZE"] == ("2" if ws2 else "1")
        cases = {(c.get("classname"), c.get("name")): c for c in suite.iter("testcase")}
        assert set(cases) == {
            ("test_dist.TestDist", "test_all_reduce"),
            ("test_dist.TestDist", "test_not_here"),
            ("test_dist.TestDist", "test_rank_zero"),
            ("test_plain.TestPlain", "test_one"),
            ("test_crash", "test_crash.py"),
        }
        skipped = cases[("test_dist.TestDist", "test_not_here")].find("skipped")
        assert skipped is not None and skipped.get("message") == "not on this machine"
        error = cases[("test_crash", "test_crash.py")].find("error")
        assert error is not None and error.get("message") == "the test file died with SIGSEGV"
        failure = cases[("test_dist.TestDist", "test_rank_zero")].find("failure")
        if ws2:
            assert failure is not None and failure.get("message", "").startswith("rank 1 of 2 failed: AssertionError")
            assert "Traceback" in (failure.text or "")
            assert "--- rank 1 failed (AssertionError, exit code 10)" in (failure.text or "")  # the record's ranks
        else:
            assert failure is None
    assert f"JUnit XML: {junit}" in run.stdout

    assert runner.leftovers() == []
    assert wait_gone(str(runner.tmp_path)) == []


def test_defaults_on_a_terminal_with_unavailable_backends(runner: Runner):
    """Progress bar on a terminal; unavailable backends are skipped with a note and a row."""
    runner.write(PLAIN_FILE, "test_plain.py", header=False)
    junit = runner.tmp_path / "results.xml"
    main, child = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, TOOL, "test_plain.py", "--backend", "gloo", "nccl", "mpi", "--junit-xml", str(junit),
         "--keep-temp"],
        cwd=runner.tmp_path, env=runner.env(), stdin=subprocess.DEVNULL, stdout=child, stderr=subprocess.PIPE,
    )
    os.close(child)
    chunks = []
    while True:
        try:
            data = os.read(main, 65536)
        except OSError:  # EIO: the tool closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(main)
    stderr = proc.stderr.read().decode() if proc.stderr else ""
    assert proc.wait(timeout=120) == 0, stderr
    screen = b"".join(chunks).decode().replace("\r\n", "\n")
    assert re.search(r"\r\x1b\[K\[\.{20}\] 0/1  \d+ s  gloo-ws2-file test_plain", screen), screen
    assert "[1/1] gloo-ws2-file  test_plain.py  1 passed" in screen
    assert "note: skipping nccl-ws2-file: nccl is not available in this torch build, which has: gloo" in screen
    assert "note: skipping mpi-ws2-file: mpi is not available in this torch build, which has: gloo" in screen
    rows = table(screen.replace("\r\x1b[K", ""))
    assert rows["gloo-ws2-file"][:3] == ["1", "0", "0"]
    assert rows["nccl-ws2-file"] == ["-", "-", "-", "-", "skipped: nccl is not available in this torch build, which has: gloo"]
    assert rows["total"][:3] == ["1", "0", "0"]

    suites = {s.get("name"): s for s in ET.parse(junit).getroot().iter("testsuite")}
    assert list(suites) == ["gloo-ws2-file", "nccl-ws2-file", "mpi-ws2-file"]
    skipped = suites["mpi-ws2-file"].find("testcase/skipped")
    assert skipped is not None and skipped.get("message") == "mpi is not available in this torch build, which has: gloo"
    assert suites["mpi-ws2-file"].get("skipped") == "1"

    # --keep-temp: the configuration's TEMP_DIR, output and report stay, and the tool says where.
    kept = re.search(r"kept TEMP_DIRs, output and reports in (\S+)", screen)
    assert kept, screen
    directory = Path(kept[1]) / "gloo-ws2-file"
    assert sorted(p.name for p in directory.iterdir()) == ["test_plain", "test_plain.json", "test_plain.log"]
    assert sorted(p.name for p in (directory / "test_plain").iterdir()) == ["barrier", "test_dir"]
    assert json.loads((directory / "test_plain.json").read_text())["counts"]["passed"] == 1
    import shutil

    shutil.rmtree(kept[1])
    assert runner.leftovers() == []


def test_ctrl_c_stops_the_running_files(runner: Runner):
    """Ctrl-C at a terminal signals the whole process group; each file gets one SIGTERM and stops cleanly."""
    started = runner.tmp_path / "started"
    runner.write(f"""
        class TestHang(DistBackendTestCase):
            def test_hang(self):
                open({str(started)!r} + str(os.getpid()), "w").close()
                time.sleep(120)

        if __name__ == "__main__":
            run_tests()
    """, "test_hang.py")
    proc = subprocess.Popen(
        [sys.executable, TOOL, "test_hang.py", "--init-method", "file", "env", "-j", "2"],
        cwd=runner.tmp_path, env=runner.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )
    deadline = time.monotonic() + 60
    while len(list(runner.tmp_path.glob("started*"))) < 4 and time.monotonic() < deadline:
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stdout + stderr
    assert "stopping 2 running test files (SIGTERM; interrupt again to kill)" in stdout
    assert "SIGKILL" not in stdout
    assert "interrupted; stopped: gloo-ws2-env test_hang, gloo-ws2-file test_hang" in stdout.splitlines()
    assert "configuration  passed" not in stdout  # nothing finished: no table
    assert runner.leftovers() == []
    assert wait_gone(str(runner.tmp_path)) == []


def test_a_file_with_no_tests(runner: Runner):
    runner.write(EMPTY_FILE, "test_empty.py", header=False)
    run = tool(runner, "test_empty.py")
    assert run.returncode == 2, run.output
    assert error_line(run) == (
        "test_empty.py has no tests (test_empty.py defines no test_* methods); "
        "each FILE must define test_* methods and end with run_tests()"
    )
    assert "configuration  passed" not in run.output
    assert runner.leftovers() == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["test_plain.py", "--bogus"], "unrecognized arguments: --bogus"),
        (
            ["nope.py"],
            f"test file 'nope.py' does not exist. Example: {PROG} test/test_x.py --world-size 2 4",
        ),
        (
            ["test_plain.py", "--world-size", "0"],
            "argument --world-size: must be an integer >= 1, got '0'. Example: --world-size 2 4",
        ),
        (["test_plain.py", "-j", "0"], "argument -j/--jobs: must be an integer >= 1, got '0'. Example: -j 2"),
        (
            ["test_plain.py", "--backend", "bogus"],
            "argument --backend: must be one of gloo, nccl, ucc, mpi, xccl, got 'bogus'. "
            "This torch build has: gloo. Example: --backend gloo",
        ),
        (
            ["--backend", "gloo", "test_plain.py"],
            "argument --backend: must be one of gloo, nccl, ucc, mpi, xccl, got 'test_plain.py' "
            "(to give a FILE after --backend, end the list with --: --backend gloo -- FILE).",
        ),
        (
            ["test_plain.py", "--backend", "nccl", "ucc"],
            "no configuration can run: nccl is not available in this torch build, which has: gloo; "
            "ucc is not available in this torch build, which has: gloo. "
            f"Example: {PROG} test_plain.py --backend gloo --world-size 2",
        ),
        (["test_plain.py", "--junit-xml", "."], "--junit-xml '.' is a directory. Example: --junit-xml results.xml"),
        (
            ["test_plain.py", "--init-method", "tcp"],
            "argument --init-method: must be one of file, env, got 'tcp'. Example: --init-method file env",
        ),
    ],
)
def test_bad_input_exits_2_with_a_clear_message(runner: Runner, args, message):
    runner.write(PLAIN_FILE, "test_plain.py", header=False)
    run = tool(runner, *args)
    assert run.returncode == 2, run.output
    assert error_line(run).startswith(message)
    assert "Traceback" not in run.output
    assert "running" not in run.stdout
    assert runner.leftovers() == []


def test_nccl_is_skipped_with_fewer_gpus_than_ranks(monkeypatch: pytest.MonkeyPatch):
    from distributed_testing import _devices, _matrix

    monkeypatch.setattr(_devices, "backend_available", lambda name: name in ("gloo", "nccl"))
    monkeypatch.setattr(_devices, "cuda_device_count", lambda: 1)
    assert _matrix.skip_reason(_matrix.Config("nccl", 1, "file")) == ""
    assert _matrix.skip_reason(_matrix.Config("nccl", 2, "env")) == (
        "nccl needs a CUDA device per rank: world size 2, found 1 CUDA device"
    )
    assert _matrix.skip_reason(_matrix.Config("ucc", 2, "file")) == (
        "ucc is not available in this torch build, which has: gloo, nccl"
    )
