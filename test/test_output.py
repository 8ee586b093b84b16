"""A rank's output: head and tail in reports, full logs kept in a log directory, shown live."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import Runner, outcomes, reports

from distributed_testing import _launcher, _output

# -- the excerpt and the live copy, on plain files -------------------------------------------


def _lines(count: int) -> str:
    return "".join(f"line {i:05d} " + "x" * 48 + "\n" for i in range(count))


def test_a_short_output_is_kept_whole(tmp_path: Path) -> None:
    path = tmp_path / "rank0.out"
    path.write_text("one\ntwo\n")
    assert _launcher.read_output(str(path), rank=0) == "one\ntwo\n"
    assert _launcher.read_output(str(path), rank=0, full_log="/logs/r0") == "one\ntwo\n[the full log of rank 0 is /logs/r0]\n"
    assert _launcher.read_output(str(path), offset=4, rank=0) == "two\n"


def test_a_long_output_keeps_its_head_and_tail_in_whole_lines(tmp_path: Path) -> None:
    path = tmp_path / "rank1.out"
    path.write_text(_lines(2000))  # 120 000 bytes
    text = _launcher.read_output(str(path), rank=1)
    lines = text.splitlines()
    assert lines[0] == "line 00000 " + "x" * 48 and lines[-1] == "line 01999 " + "x" * 48
    notes = [line for line in lines if line.startswith("[... ")]
    assert len(notes) == 1 and all(line.startswith("line ") for line in lines if line not in notes)
    cut = int(notes[0].split()[1])
    assert notes[0] == f"[... {cut} bytes of rank 1's output not shown; DISTRIBUTED_TESTING_LOG_DIR=DIR keeps full logs]"
    shown = len(text.encode()) - len(notes[0]) - 1
    assert shown + cut == 120_000 and 19_000 < shown <= 20_000
    named = _launcher.read_output(str(path), rank=1, full_log="/logs/rank1/output.log")
    assert f"[... {cut} bytes of rank 1's output not shown: the full log is /logs/rank1/output.log]\n" in named


def test_an_output_without_line_ends_is_cut_anyway(tmp_path: Path) -> None:
    path = tmp_path / "rank0.out"
    path.write_bytes(b"a" * 50_000)
    text = _launcher.read_output(str(path), rank=0)
    head, note, tail = text.split("\n")
    assert (len(head), len(tail)) == (5_000, 15_000)
    assert note.startswith("[... 30000 bytes of rank 0's output not shown")


def test_live_output_copies_lines_as_they_are_written(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    files = [tmp_path / "rank0.out", tmp_path / "rank1.out"]
    files[0].write_text("before the test\n")
    ranks: list[_launcher.RankHandle] = [SimpleNamespace(rank=r, output_path=str(f)) for r, f in enumerate(files)]  # type: ignore[misc]
    with _output.LiveOutput(ranks, offsets=[len("before the test\n"), 0]) as live:
        with open(files[0], "a") as out:
            out.write("first\nhalf a ")
        deadline = time.monotonic() + 5
        while "first" not in capsys.readouterr().err and time.monotonic() < deadline:  # reads the captured
            time.sleep(0.01)
        with open(files[0], "a") as out:
            out.write("line\n\nlast, no line end")
        files[1].write_text("rank 1 \xe9\n")
    assert live._thread.is_alive() is False
    err = capsys.readouterr().err
    assert err == "[rank 0] half a line\n[rank 0] \n[rank 0] last, no line end\n[rank 1] rank 1 \xe9\n", err


# -- through real runs -------------------------------------------------------------------------

BIG = """
class Big(MultiProcessTestCase):
    world_size = 2

    def setUp(self):
        super().setUp()
        self._spawn_processes()

    def test_big(self):
        if self.rank == 1:
            print("FIRST LINE of rank 1")
            for i in range(1700):  # 100 KB
                print(f"line {i:05d} " + "x" * 48)
            print("LAST LINE of rank 1", flush=True)
            raise AssertionError("too much to show")

    def test_quiet(self):
        print(f"quiet pass of rank {self.rank}")


class Pool(MultiProcContinuousTest):
    world_size = 2

    def test_pool_fails(self):
        print(f"pool output of rank {self.rank}")
        assert self.rank == 0, "rank 1 disagrees"

    def test_pool_passes(self):
        print(f"pool pass of rank {self.rank}")


if __name__ == "__main__":
    run_tests()
"""


def test_a_100_kb_output_shows_its_first_and_last_lines_and_the_record_has_them(runner: Runner) -> None:
    run = runner.run(str(runner.write(BIG)), "-v", "Big.test_big", DISTRIBUTED_TESTING_REPORT="record.json")
    assert run.returncode == 1, run.output
    report = reports(run.stderr)["Big.test_big"]
    assert "[rank 1] FIRST LINE of rank 1\n[rank 1] line 00000 " in report
    assert "[rank 1] LAST LINE of rank 1\n" in report
    assert "[... 8" in report and "bytes of rank 1's output not shown; DISTRIBUTED_TESTING_LOG_DIR=DIR keeps full" in report
    assert len(report) < 30_000, len(report)
    record = json.loads((runner.tmp_path / "record.json").read_text())
    output = next(r for r in record["tests"][0]["ranks"] if r["rank"] == 1)["output"]
    assert output.startswith("FIRST LINE of rank 1\n") and output.endswith("LAST LINE of rank 1\n")
    assert runner.leftovers() == []


def test_the_log_dir_keeps_failing_tests_logs_and_the_report_and_record_name_them(runner: Runner) -> None:
    logs = runner.tmp_path / "logs"
    run = runner.run(str(runner.write(BIG)), "-v", DISTRIBUTED_TESTING_LOG_DIR="logs", DISTRIBUTED_TESTING_REPORT="r.json")
    assert run.returncode == 1, run.output
    assert outcomes(run.stderr) == {
        "Big.test_big": "FAIL", "Big.test_quiet": "ok", "Pool.test_pool_fails": "FAIL", "Pool.test_pool_passes": "ok"
    }
    kept = sorted(str(p.relative_to(logs)) for p in logs.rglob("*.log"))
    assert kept == [f"test_x.{test}/rank{r}/output.log" for test in ("Big.test_big", "Pool.test_pool_fails") for r in (0, 1)]
    big = (logs / "test_x.Big.test_big" / "rank1" / "output.log").read_text()
    assert big.count("\n") == 1702 and big.startswith("FIRST LINE") and "line 00850 " in big
    assert (logs / "test_x.Pool.test_pool_fails" / "rank1" / "output.log").read_text() == "pool output of rank 1\n"
    found = reports(run.stderr)
    assert f"bytes of rank 1's output not shown: the full log is {logs}/test_x.Big.test_big/rank1/output.log]" in found[
        "Big.test_big"
    ]
    for rank in (0, 1):
        line = f"\n[the full log of rank {rank} is {logs}/test_x.Pool.test_pool_fails/rank{rank}/output.log]\n"
        assert line in found["Pool.test_pool_fails"]
    record = json.loads((runner.tmp_path / "r.json").read_text())
    pool = next(t for t in record["tests"] if t["id"].endswith("test_pool_fails"))
    assert pool["ranks"][1]["output"] == (
        f"pool output of rank 1\n[the full log of rank 1 is {logs}/test_x.Pool.test_pool_fails/rank1/output.log]\n"
    )
    assert runner.leftovers() == []

    every = runner.run(
        str(runner.tmp_path / "test_x.py"), "Big.test_quiet", "Pool.test_pool_passes",
        DISTRIBUTED_TESTING_LOG_DIR="logs", DISTRIBUTED_TESTING_LOG_DIR_ALL="1",
    )
    assert every.returncode == 0, every.output
    assert (logs / "test_x.Big.test_quiet" / "rank1" / "output.log").read_text() == "quiet pass of rank 1\n"
    assert (logs / "test_x.Pool.test_pool_passes" / "rank0" / "output.log").read_text() == "pool pass of rank 0\n"
    assert "quiet pass" not in every.output  # kept, not shown


def test_the_log_dir_under_pytest_uses_the_module_s_test_ids(runner: Runner) -> None:
    runner.write(BIG)
    run = runner.pytest("test_x.py", "-q", "-k", "pool", "--dt-log-dir", "pylogs")
    assert run.returncode == 1, run.output
    kept = runner.tmp_path / "pylogs" / "test_x.Pool.test_pool_fails" / "rank1" / "output.log"
    assert kept.read_text() == "pool output of rank 1\n"
    assert f"[the full log of rank 1 is {kept}]" in run.stdout
    assert not (runner.tmp_path / "pylogs" / "test_x.Pool.test_pool_passes").exists()


def _bad_log_dirs(runner: Runner) -> list[tuple[str, str]]:
    afile = runner.tmp_path / "afile"
    afile.write_text("")
    own = runner.scratch / "dt-run-abcd1234"  # a name this library's own run directories have
    return [
        (str(afile), "which is a file"),
        (str(afile / "logs"), f"which cannot be made: {str(afile)!r} is a file"),
        ("/proc/dt-logs", "which cannot be made: '/proc' is not writable ("),
        (str(own / "logs"), f"inside {str(own)!r}, a temporary directory this library removes after its test or run"),
    ]


def test_a_bad_log_dir_stops_run_tests_before_any_test(runner: Runner) -> None:
    path = str(runner.write(BIG))
    for value, problem in _bad_log_dirs(runner):
        run = runner.run(path, DISTRIBUTED_TESTING_LOG_DIR=value)
        assert run.returncode == 2, run.output
        assert (
            "test_x.py: error: DISTRIBUTED_TESTING_LOG_DIR must be a directory that exists or can be made, is "
            "writable and is kept after the run (not inside a test's temporary directory), got "
            f"DISTRIBUTED_TESTING_LOG_DIR={value!r}, {problem}"
        ) in run.stderr
        assert "Example: DISTRIBUTED_TESTING_LOG_DIR=dt-logs python test_x.py" in run.stderr
        assert "Ran " not in run.output
    alone = runner.run(path, DISTRIBUTED_TESTING_LOG_DIR_ALL="1")
    assert alone.returncode == 2 and "which is not set" in alone.stderr, alone.output


def test_a_bad_log_dir_is_a_pytest_usage_error(runner: Runner) -> None:
    runner.write(BIG)
    for value, problem in _bad_log_dirs(runner)[::3]:
        run = runner.pytest("test_x.py", "--dt-log-dir", value)
        assert run.returncode == 4, run.output
        assert f"got DISTRIBUTED_TESTING_LOG_DIR={value!r}, {problem}" in run.output
        assert "(the value came from --dt-log-dir)" in run.output


def test_a_bogus_show_output_lists_what_is_allowed(runner: Runner) -> None:
    path = str(runner.write(BIG))
    message = (
        "DISTRIBUTED_TESTING_SHOW_OUTPUT must be one of 0, 1, live (0 and 1 also as false/true, no/yes, off/on), "
        "got DISTRIBUTED_TESTING_SHOW_OUTPUT='bogus'. Example: DISTRIBUTED_TESTING_SHOW_OUTPUT=live python"
    )
    run = runner.run(path, DISTRIBUTED_TESTING_SHOW_OUTPUT="bogus")
    assert run.returncode == 2 and f"test_x.py: error: {message}" in run.stderr, run.output
    under_pytest = runner.pytest("test_x.py", DISTRIBUTED_TESTING_SHOW_OUTPUT="bogus")
    assert under_pytest.returncode == 4 and message in under_pytest.output, under_pytest.output
    option = runner.run("-m", "distributed_testing", "--show-output", "bogus", path)
    assert option.returncode == 2 and "--show-output must be one of 0, 1, live" in option.stderr, option.output


HANG = """
class Hang(MultiProcessTestCase):
    world_size = 2

    def setUp(self):
        super().setUp()
        self._spawn_processes()

    def test_hang(self):
        if self.rank == 1:
            print("rank 1 is about to hang", flush=True)
            time.sleep(600)


class Slow(MultiProcContinuousTest):
    world_size = 2

    def test_slow(self):
        print(f"pool rank {self.rank} works", flush=True)
        time.sleep(2)


if __name__ == "__main__":
    run_tests()
"""


def _timed_stderr(runner: Runner, *args: str, **env: str) -> tuple[int, list[tuple[float, str]]]:
    """Run ``python ARGS``; each stderr line with the seconds since start it arrived at."""
    start = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, *args], cwd=runner.tmp_path, env=runner.env(**env), stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    assert proc.stderr is not None
    lines = [(time.monotonic() - start, line.rstrip("\n")) for line in proc.stderr]
    return proc.wait(timeout=120), lines


def test_live_output_shows_a_hung_rank_s_line_before_the_deadline(runner: Runner) -> None:
    path = str(runner.write(HANG))
    code, lines = _timed_stderr(runner, path, DISTRIBUTED_TESTING_TIMEOUT="5", DISTRIBUTED_TESTING_SHOW_OUTPUT="live")
    assert code == 1, lines
    text = [line for _, line in lines]
    live = next(i for i, line in enumerate(text) if line.endswith("[rank 1] rank 1 is about to hang"))
    deadline = next(i for i, line in enumerate(text) if "Hang.test_hang timed out after 5 s" in line)
    assert live < deadline, text
    assert lines[deadline][0] - lines[live][0] > 3, lines  # shown as it happened, not with the report
    pool = [t for t, line in lines if line.endswith("[rank 0] pool rank 0 works")]
    end = lines[-1][0]
    assert pool and end - pool[0] > 1.5, lines  # the pool's test was still running
    assert runner.leftovers() == []


def test_pytest_s_streams_the_ranks_output_and_rp_shows_it_after(runner: Runner) -> None:
    runner.write(BIG)
    streamed = runner.pytest("test_x.py", "-s", "-q", "-k", "quiet or passes")
    assert streamed.returncode == 0, streamed.output
    for rank in (0, 1):
        assert f"[rank {rank}] quiet pass of rank {rank}\n" in streamed.stderr
        assert f"[rank {rank}] pool pass of rank {rank}\n" in streamed.stderr
    quiet = runner.pytest("test_x.py", "-q", "-k", "quiet or passes")
    assert quiet.returncode == 0 and "pass of rank" not in quiet.output, quiet.output
    shown = runner.pytest("test_x.py", "-q", "-rP", "-k", "quiet or passes")
    assert shown.returncode == 0, shown.output
    assert "rank 1: passed" in shown.stdout and "output:\nquiet pass of rank 1" in shown.stdout
    assert "output:\npool pass of rank 1" in shown.stdout
    after = runner.run("test_x.py", "Pool.test_pool_passes", DISTRIBUTED_TESTING_SHOW_OUTPUT="1")
    assert after.returncode == 0 and "[rank 1] pool pass of rank 1\n" in after.stderr, after.output
    assert runner.leftovers() == []
