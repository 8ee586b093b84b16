"""Hang reports through real processes: at the deadline every mode reports each live
rank's stacks and which collective of the default group it was in, never a process
group's own timeout; ranks with the same stacks are shown once."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import Runner, outcomes, reports, wait_gone

pytestmark = pytest.mark.slow

TIMEOUT = {"DISTRIBUTED_TESTING_TIMEOUT": "5"}

ONE_SHOT = """
class TestHang(MultiProcessTestCase):
    @property
    def world_size(self):
        return 2

    def setUp(self):
        super().setUp()
        self._spawn_processes()

    def test_hang(self):
        dist.init_process_group("gloo", init_method=f"file://{self.file_name}",
                                rank=self.rank, world_size=self.world_size)
        dist.all_reduce(torch.ones(1))
        dist.barrier()
        if self.rank == 1:
            time.sleep(600)  # <sleep>
        dist.all_reduce(torch.ones(1))  # <third>

if __name__ == "__main__":
    run_tests()
"""

BACKEND = """
class TestBackendHang(DistBackendTestCase):
    def test_hang(self):
        if self.rank == 0:
            dist.all_reduce(torch.ones(1))  # <all-reduce>
        else:
            time.sleep(600)  # <sleep>

if __name__ == "__main__":
    run_tests()
"""

POOL = """
class TestPoolHang(MultiProcContinuousTest):
    world_size = 2

    def test_1_in_step(self):
        dist.all_reduce(torch.ones(1))

    def test_2_hang(self):
        if self.rank == 0:
            dist.barrier()  # <barrier>
        else:
            time.sleep(600)  # <sleep>

    def test_3_after(self):
        dist.barrier()

if __name__ == "__main__":
    run_tests()
"""

EIGHT = """
class TestEight(MultiProcessTestCase):
    @property
    def world_size(self):
        return 8

    def setUp(self):
        super().setUp()
        self._spawn_processes()

    def test_hang(self):
        dist.init_process_group("gloo", init_method=f"file://{self.file_name}",
                                rank=self.rank, world_size=self.world_size)
        if self.rank == 0:
            time.sleep(600)  # <sleep>
        dist.barrier()  # <barrier>

if __name__ == "__main__":
    run_tests()
"""


def line_of(path: Path, marker: str) -> int:
    """The line of the written test file that carries ``# marker``."""
    lines = path.read_text().splitlines()
    return next(number for number, line in enumerate(lines, 1) if f"# {marker}" in line)


def run_hang(runner: Runner, body: str, test: str) -> tuple[Path, str]:
    """Run the file, check the test errored and left nothing behind; return its report."""
    path = runner.write(body)
    run = runner.run(str(path), "-v", **TIMEOUT)
    assert outcomes(run.output).get(test) == "ERROR", run.output
    assert runner.leftovers() == []
    assert wait_gone(str(runner.tmp_path)) == []
    return path, reports(run.output)[test]


def test_one_shot_hang_names_each_ranks_collective(runner: Runner) -> None:
    path, report = run_hang(runner, ONE_SHOT, "TestHang.test_hang")
    assert "timed out after 5 s; ranks 0-1 still running" in report
    third, sleep = line_of(path, "<third>"), line_of(path, "<sleep>")
    assert f"  rank 0: in all_reduce (collective #3 of the default group) at test_x.py:{third}\n" in report
    assert f"  rank 1: in time.sleep at test_x.py:{sleep} (after collective #2)\n" in report
    assert "--- rank 0 stacks (most recent call first) ---" in report
    assert "distributed_testing where" not in report  # the helper thread is the framework's
    assert "Thread 0x" not in report


def test_dist_backend_hang_reports_stacks_not_a_process_group_timeout(runner: Runner) -> None:
    path, report = run_hang(runner, BACKEND, "TestBackendHang.test_hang")
    reduce, sleep = line_of(path, "<all-reduce>"), line_of(path, "<sleep>")
    assert f"  rank 0: in all_reduce (collective #1 of the default group) at test_x.py:{reduce}\n" in report
    assert f"  rank 1: in time.sleep at test_x.py:{sleep} (after collective #0)\n" in report
    assert "Timed out" not in report and "RuntimeError" not in report, report  # gloo's own timeout


def test_pool_hang_names_the_collective_and_the_pool_recovers(runner: Runner) -> None:
    path = runner.write(POOL)
    run = runner.run(str(path), "-v", **TIMEOUT)
    found = outcomes(run.output)
    assert [found.get(f"TestPoolHang.{t}") for t in ("test_1_in_step", "test_2_hang", "test_3_after")] == [
        "ok",
        "ERROR",
        "ok",
    ], run.output
    report = reports(run.output)["TestPoolHang.test_2_hang"]
    barrier, sleep = line_of(path, "<barrier>"), line_of(path, "<sleep>")
    assert f"  rank 0: in barrier (collective #2 of the default group) at test_x.py:{barrier}\n" in report
    assert f"  rank 1: in time.sleep at test_x.py:{sleep} (after collective #1)\n" in report
    assert "Timed out" not in report and "RuntimeError" not in report, report
    assert runner.leftovers() == []
    assert wait_gone(str(runner.tmp_path)) == []


def test_identical_stacks_of_many_ranks_are_shown_once(runner: Runner) -> None:
    path, report = run_hang(runner, EIGHT, "TestEight.test_hang")
    barrier, sleep = line_of(path, "<barrier>"), line_of(path, "<sleep>")
    assert "timed out after 5 s; ranks 0-7 still running" in report
    assert f"  rank 0: in time.sleep at test_x.py:{sleep} (after collective #0)\n" in report
    assert f"  ranks 1-7: in barrier (collective #1 of the default group) at test_x.py:{barrier}\n" in report
    assert report.count("stacks (most recent call first) ---") == 2, report
    assert "--- ranks 1-7 stacks (most recent call first) ---" in report
    assert len(report.splitlines()) < 60, report
