"""torchrun mode: launched processes are the ranks; one node, two nodes, a failing rank;
a failure, skip or hang on one rank ends that test on every rank, and the run goes on."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import Runner, outcomes, reports, wait_gone

pytestmark = pytest.mark.slow

TORCHRUN = str(Path(sys.executable).with_name("torchrun"))

LAUNCHED = """
class TestLaunched(MultiProcessTestCase):
    def setUp(self):
        super().setUp()
        self._spawn_processes()

    def test_own_group_from_file_name(self):
        dist.init_process_group("gloo", init_method=f"file://{self.file_name}", rank=self.rank,
                                world_size=self.world_size)
        t = torch.ones(1)
        dist.all_reduce(t)
        self.assertEqual(t.item(), float(self.world_size))
        self.assertEqual(self.rank, int(os.environ["RANK"]))

    def test_fails_on_rank_1(self):
        if self.rank == 1:
            raise ValueError("rank 1 only")

    @world_sizes(2, 3)
    def test_sized(self):
        pass

    def test_subtests_and_cleanups(self):
        # Through unittest's machinery, as in every other mode.
        self.addCleanup(print, f"cleanup ran on rank {self.rank}", flush=True)
        for i in range(2):
            with self.subTest(i=i):
                self.assertEqual(i, 0)


class TestEnvGroup(DistBackendTestCase):
    def test_collective(self):
        t = torch.tensor([float(self.rank)])
        dist.all_reduce(t)
        self.assertEqual(t.item(), 1.0)
        self._barrier()

    def test_subtest_fails_on_rank_1_only(self):
        for i in range(2):
            with self.subTest(i=i):
                self.assertFalse(self.rank == 1 and i == 0, "rank 1 disagrees")
                dist.all_reduce(torch.ones(1))  # rank 0 waits here for rank 1, which has left the test

if __name__ == "__main__":
    run_tests()
"""


# The target: a failure on rank 1 only, then a passing test, with a 10 s class
# timeout. Rank 0 waits for no one in the tear-down: both tests report at once.
TARGET = """
class TestTarget(DistBackendTestCase):
    timeout = 10

    def test_a_fails_on_rank_1(self):
        if self.rank == 1:
            raise ValueError("rank 1 only")  # <raise>

    def test_b_passes(self):
        t = torch.ones(1)
        dist.all_reduce(t)
        self.assertEqual(t.item(), 2.0)

if __name__ == "__main__":
    run_tests()
"""

# Run with DISTRIBUTED_TESTING_TIMEOUT=10.
ONE_RANK = """
class TestOneRank(DistBackendTestCase):
    def test_a_fails_on_rank_1_in_collective(self):
        if self.rank == 1:
            raise ValueError("rank 1 only")
        dist.all_reduce(torch.ones(1))  # rank 1 never comes: its group is aborted

    def test_b_skips_on_rank_1(self):
        if self.rank == 1:
            self.skipTest("not on rank 1")
        self.assertEqual(self.rank, 0)

    def test_c_hangs_on_rank_1(self):
        if self.rank == 1:
            time.sleep(600)  # <sleep>
        dist.all_reduce(torch.ones(1))  # <all-reduce>

    def test_d_passes(self):
        t = torch.ones(1)
        dist.all_reduce(t)
        self.assertEqual(t.item(), 2.0)

if __name__ == "__main__":
    run_tests()
"""

# Run with DISTRIBUTED_TESTING_TIMEOUT=5. Rank 1 blocks the signal that interrupts a
# test at its deadline, as C code that retries on EINTR would: it cannot leave the test.
STUCK = """
from distributed_testing import _launch_store

class TestStuck(DistBackendTestCase):
    def test_a_stuck_on_rank_1(self):
        if self.rank == 1:
            signal.pthread_sigmask(signal.SIG_BLOCK, {_launch_store.INTERRUPT_SIGNAL})
            time.sleep(600)  # <sleep>
        dist.all_reduce(torch.ones(1))

    def test_b_after(self):
        pass

if __name__ == "__main__":
    run_tests()
"""


def _line_of(path: Path, marker: str) -> int:
    lines = path.read_text().splitlines()
    return next(number for number, line in enumerate(lines, 1) if f"# {marker}" in line)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _launch(runner: Runner, args: list[str], path: Path, logs: Path) -> subprocess.Popen[str]:
    # Each rank's output in its own files (torchrun's --log-dir), not interleaved.
    return subprocess.Popen(
        [TORCHRUN, f"--log-dir={logs}", "--redirects=3", *args, str(path), "-v"],
        cwd=runner.tmp_path,
        env=runner.env(OMP_NUM_THREADS="1"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _rank_outputs(logs: Path) -> list[str]:
    """Every launched rank's stdout+stderr, one string per rank."""
    outputs = []
    for rank_dir in sorted(p for p in logs.rglob("*") if p.is_dir() and (p / "stderr.log").exists()):
        outputs.append((rank_dir / "stdout.log").read_text() + (rank_dir / "stderr.log").read_text())
    return outputs


def _check(outputs: list[str]) -> None:
    assert len(outputs) == 2, outputs
    for output in outputs:
        assert "test_own_group_from_file_name (__main__.TestLaunched.test_own_group_from_file_name) ... ok" in output
        assert "test_collective (__main__.TestEnvGroup.test_collective) ... ok" in output
        assert "test_sized_world_size_3 (__main__.TestLaunched.test_sized_world_size_3) ... skipped 'needs world " \
               "size 3, launched with 2'" in output
        assert "test_fails_on_rank_1 (__main__.TestLaunched.test_fails_on_rank_1) ... ERROR" in output
        assert "rank 1 of 2 failed: ValueError: rank 1 only" in output
        assert "test_subtests_and_cleanups (__main__.TestLaunched.test_subtests_and_cleanups) ... FAIL" in output
        assert "ranks 0-1 of 2 failed: same AssertionError: 1 != 0 (in subTest (i=1))" in output
        # A failed subTest ends its rank's test (as PyTorch's): the peer is stopped, no deadline.
        assert ("test_subtest_fails_on_rank_1_only (__main__.TestEnvGroup.test_subtest_fails_on_rank_1_only) "
                "... FAIL") in output
        assert "rank 1 of 2 failed: AssertionError: True is not false : rank 1 disagrees (in subTest (i=0))" in output
        assert "timed out" not in output
    assert sorted(o.count("cleanup ran on rank") for o in outputs) == [1, 1]
    # The failing rank's traceback is printed once, by rank 0; the other rank points there.
    assert sum(o.count('raise ValueError("rank 1 only")') for o in outputs) == 1
    assert sum(o.count("(the full report is printed by rank 0)") for o in outputs) == 3


def test_one_node(runner):
    path = runner.write(LAUNCHED)
    proc = _launch(runner, ["--standalone", "--nproc-per-node=2"], path, runner.tmp_path / "logs")
    output = proc.communicate(timeout=240)[0]
    assert proc.returncode == 1, output  # a test failed: every rank exits 1, and so does torchrun
    assert "exitcode: 1" in output
    _check(_rank_outputs(runner.tmp_path / "logs"))
    assert wait_gone(str(runner.tmp_path)) == []
    assert runner.leftovers() == []


def test_two_nodes_on_localhost(runner):
    path = runner.write(LAUNCHED)
    endpoint = f"127.0.0.1:{_free_port()}"
    common = ["--nnodes=2", "--nproc-per-node=1", "--rdzv-backend=c10d", f"--rdzv-endpoint={endpoint}",
              "--rdzv-id=dt-two-nodes"]
    logs = runner.tmp_path / "logs"
    nodes = [_launch(runner, [*common, f"--node-rank={n}"], path, logs / f"node{n}") for n in (0, 1)]
    outputs = [node.communicate(timeout=240)[0] for node in nodes]
    assert [node.returncode for node in nodes] == [1, 1], outputs
    _check(_rank_outputs(logs))
    assert wait_gone(str(runner.tmp_path)) == []


def test_inconsistent_launcher_variables(runner):
    path = runner.write(LAUNCHED)
    run = runner.run(str(path), RANK="0", WORLD_SIZE="2", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1")
    assert run.returncode == 2, run.output
    assert ("RANK is set, so this process was started by a launcher, but MASTER_PORT is not set; a launcher "
            "sets all of RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT.") in run.output
    run = runner.run(str(path), RANK="2", WORLD_SIZE="2", LOCAL_RANK="0", MASTER_ADDR="h", MASTER_PORT="1")
    assert run.returncode == 2
    assert "RANK must be below WORLD_SIZE, got RANK=2 with WORLD_SIZE=2." in run.output


def test_torchrun_is_installed_with_torch():
    assert os.path.exists(TORCHRUN)


def _standalone(runner: Runner, body: str, **env: str) -> tuple[Path, list[str], str]:
    """Run ``body`` under torchrun on one node, two ranks: (file, each rank's output, torchrun's)."""
    path = runner.write(body)
    logs = runner.tmp_path / "logs"
    proc = subprocess.Popen(
        [TORCHRUN, f"--log-dir={logs}", "--redirects=3", "--standalone", "--nproc-per-node=2", str(path), "-v"],
        cwd=runner.tmp_path,
        env=runner.env(OMP_NUM_THREADS="1", **env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    output = proc.communicate(timeout=240)[0]
    assert proc.returncode == 1, output
    outputs = _rank_outputs(logs)
    assert len(outputs) == 2, output
    # Nothing left: the launch's directory, the ranks, their helpers.
    assert wait_gone(str(runner.tmp_path)) == []
    assert runner.leftovers() == []
    return path, outputs, output


def test_failing_rank_then_passing_test(runner):
    path, outputs, _ = _standalone(runner, TARGET)
    for output in outputs:
        assert outcomes(output) == {"TestTarget.test_a_fails_on_rank_1": "ERROR", "TestTarget.test_b_passes": "ok"}
        assert "Ran 2 tests" in output
        assert "Timeout" not in output and "interrupted" not in output
    report = reports(outputs[0])["TestTarget.test_a_fails_on_rank_1"]
    assert report.startswith("distributed_testing._errors.RankFailure: rank 1 of 2 failed: ValueError: rank 1 only\n")
    assert f'File "{path}", line {_line_of(path, "<raise>")}, in test_a_fails_on_rank_1' in report
    assert "rank 0" not in report  # rank 0 passed; it did not wait for rank 1 in the tear-down
    # Reported once, by rank 0; rank 1 points there.
    assert sum(o.count('raise ValueError("rank 1 only")') for o in outputs) == 1
    assert "rank 1 of 2 failed: ValueError: rank 1 only (the full report is printed by rank 0)" in outputs[1]


def test_one_rank_fails_skips_or_hangs_and_the_run_goes_on(runner):
    path, outputs, _ = _standalone(runner, ONE_RANK, DISTRIBUTED_TESTING_TIMEOUT="10")
    expected = {
        "TestOneRank.test_a_fails_on_rank_1_in_collective": "ERROR",
        "TestOneRank.test_b_skips_on_rank_1": "skipped 'skipped on rank 1: not on rank 1 (rank 0 passed)'",
        "TestOneRank.test_c_hangs_on_rank_1": "ERROR",
        "TestOneRank.test_d_passes": "ok",
    }
    for output in outputs:
        assert outcomes(output) == expected, output
    found = reports(outputs[0])
    failed = found["TestOneRank.test_a_fails_on_rank_1_in_collective"]
    # Rank 0, in a collective with rank 1, was stopped: not a second failure.
    assert "rank 1 of 2 failed: ValueError: rank 1 only\nrank 0 was stopped\n" in failed
    assert "--- rank 1 ---" in failed and "Connection closed" not in failed
    hung = found["TestOneRank.test_c_hangs_on_rank_1"]
    sleep, reduce = _line_of(path, "<sleep>"), _line_of(path, "<all-reduce>")
    assert "test_c_hangs_on_rank_1 timed out after 10 s; ranks 0-1 still running\n" in hung
    assert f"  rank 1: in time.sleep at test_x.py:{sleep}" in hung
    assert "  rank 0: in all_reduce" in hung and f"at test_x.py:{reduce}" in hung, hung
    assert "--- rank 1 stacks (most recent call first) ---" in hung
    assert f'File "{path}", line {sleep} in test_c_hangs_on_rank_1' in hung
    assert "Timed out waiting" not in hung  # stacks at the deadline, not the group's own timeout
    assert "(the full report is printed by rank 0)" in outputs[1]


def test_a_rank_stuck_past_the_deadline_leaves_and_the_rest_is_not_run(runner):
    path, outputs, _ = _standalone(runner, STUCK, DISTRIBUTED_TESTING_TIMEOUT="5")
    sleep = _line_of(path, "<sleep>")
    found = outcomes(outputs[0])
    assert found["TestStuck.test_a_stuck_on_rank_1"] == "ERROR", outputs[0]
    not_run = found["TestStuck.test_b_after"]
    assert not_run.startswith("skipped 'not run: rank 1 was stuck in __main__.TestStuck.test_a_stuck_on_rank_1 ")
    assert f"(in time.sleep at test_x.py:{sleep}" in not_run and not_run.endswith(" and left the run'"), not_run
    report = reports(outputs[0])["TestStuck.test_a_stuck_on_rank_1"]
    assert "test_a_stuck_on_rank_1 timed out after 5 s" in report
    assert f"  rank 1: in time.sleep at test_x.py:{sleep}" in report
    assert "and left the run: the remaining tests are not run." in report
    assert "test_x.py: 1 test(s) not run: rank 1 was stuck in __main__.TestStuck.test_a_stuck_on_rank_1" in outputs[0]
    assert "  __main__.TestStuck.test_b_after" in outputs[0]
    assert "the remaining tests are not run (rank 0 reports)" in outputs[1]
