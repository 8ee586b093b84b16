"""torchrun mode: launched processes are the ranks; one node, two nodes, a failing rank."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import Runner, wait_gone

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

if __name__ == "__main__":
    run_tests()
"""


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
    assert sorted(o.count("cleanup ran on rank") for o in outputs) == [1, 1]
    # The failing rank's traceback is printed once, by rank 0; the other rank points there.
    assert sum(o.count('raise ValueError("rank 1 only")') for o in outputs) == 1
    assert sum(o.count("(the full report is printed by rank 0)") for o in outputs) == 2


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
