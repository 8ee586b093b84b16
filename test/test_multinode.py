"""Many nodes on one machine: Slurm's srun without torchrun (each task a launched rank), and
simulated nodes (DISTRIBUTED_TESTING_NODES) that make local and global ranks differ."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import NO_HYPOTHESIS, PLAIN, Runner, outcomes, reports, wait_gone

from distributed_testing import _config, _nodes, _slurm
from distributed_testing._errors import ConfigError

# -- Slurm's variables, parsed ----------------------------------------------------------


@pytest.mark.parametrize(
    ("nodelist", "first"),
    [
        ("node[01-04,07],gpu5", "node01"),
        ("gpu5,node[01-04]", "gpu5"),
        ("node07", "node07"),
        ("rack[2-3]-n[08-09],x", "rack2-n08"),
        ("a[7]", "a7"),
        ("127.0.0.[1-2]", "127.0.0.1"),
        (" n[003-010] ", "n003"),
    ],
)
def test_first_host_of_a_hostlist(nodelist, first):
    assert _slurm.first_host(nodelist) == first


@pytest.mark.parametrize("nodelist", ["node[01", "node]01[", "[]", ",node1"])
def test_a_bad_hostlist_names_the_variable(nodelist):
    with pytest.raises(ConfigError, match=r"SLURM_STEP_NODELIST must be a Slurm hostlist such as node\[01-04,07\]"):
        _slurm.first_host(nodelist, "SLURM_STEP_NODELIST")


def test_tasks_per_node():
    assert _slurm.tasks_per_node("2(x3),1") == [2, 2, 2, 1]
    assert _slurm.tasks_per_node("4") == [4]
    with pytest.raises(ConfigError, match="SLURM_TASKS_PER_NODE must be Slurm's tasks per node"):
        _slurm.tasks_per_node("2(3)")


def _srun_env(rank: int = 1, tasks: int = 4, per_node: int = 2, **extra: str) -> dict[str, str]:
    """The variables srun gives task ``rank`` of a step of ``tasks`` tasks, ``per_node`` on each node."""
    nodes = tasks // per_node
    env = {
        "SLURM_JOB_ID": "4242",
        "SLURM_STEP_ID": "0",
        "SLURM_STEPID": "0",
        "SLURM_PROCID": str(rank),
        "SLURM_LOCALID": str(rank % per_node),
        "SLURM_NODEID": str(rank // per_node),
        "SLURM_NTASKS": str(tasks),
        "SLURM_NPROCS": str(tasks),
        "SLURM_STEP_NUM_TASKS": str(tasks),
        "SLURM_NNODES": str(nodes),
        "SLURM_STEP_NUM_NODES": str(nodes),
        "SLURM_STEP_TASKS_PER_NODE": f"{per_node}(x{nodes})",
        "SLURM_TASKS_PER_NODE": f"{per_node}(x{nodes})",
        "SLURM_JOB_NODELIST": f"fake[1-{nodes}]",
        "SLURM_STEP_NODELIST": f"fake[1-{nodes}]",
    }
    env.update(extra)
    return {k: v for k, v in env.items() if v is not None}


def test_an_srun_task_is_a_launched_rank():
    env = _srun_env(rank=3, MASTER_PORT="29500")
    assert _slurm.launch_env(env) == {
        "RANK": "3",
        "WORLD_SIZE": "4",
        "LOCAL_RANK": "1",
        "LOCAL_WORLD_SIZE": "2",
        "GROUP_RANK": "1",
        "GROUP_WORLD_SIZE": "2",
        "ROLE_RANK": "3",
        "ROLE_WORLD_SIZE": "4",
        "ROLE_NAME": "default",
        "MASTER_ADDR": "fake1",  # the step's first node: rank 0's
        "MASTER_PORT": "29500",
    }
    launch = _config.launch_info(env)
    assert launch is not None
    assert (launch.rank, launch.world_size, launch.local_rank) == (3, 4, 1)
    assert (launch.master_addr, launch.master_port, launch.agent_store) == ("fake1", 29500, False)
    # MASTER_ADDR from the environment wins over the node list.
    assert _slurm.launch_env({**env, "MASTER_ADDR": "10.0.0.7"})["MASTER_ADDR"] == "10.0.0.7"


def test_uneven_tasks_per_node():
    env = _srun_env(rank=2, tasks=3, per_node=2, MASTER_PORT="1", SLURM_STEP_TASKS_PER_NODE="2,1",
                    SLURM_NODEID="1", SLURM_LOCALID="0", SLURM_STEP_NUM_NODES="2")
    got = _slurm.launch_env(env)
    assert (got["RANK"], got["LOCAL_RANK"], got["GROUP_RANK"], got["LOCAL_WORLD_SIZE"]) == ("2", "0", "1", "1")
    # Tasks per node not known: LOCAL_WORLD_SIZE is left out, not guessed.
    env = {k: v for k, v in env.items() if "TASKS_PER_NODE" not in k}
    assert "LOCAL_WORLD_SIZE" not in _slurm.launch_env(env)


@pytest.mark.parametrize(
    "change",
    [
        {"SLURM_STEP_ID": None, "SLURM_STEPID": None},  # an old Slurm's batch script: no step id
        {"SLURM_STEP_ID": "batch", "SLURM_STEPID": "batch"},
        {"SLURM_STEP_ID": "4294967294", "SLURM_STEPID": "4294967294"},  # batch, before Slurm 20.11
        {"SLURM_STEP_ID": "4294967291", "SLURM_STEPID": "4294967291"},  # batch, since
        {"SLURM_STEP_ID": "4294967290", "SLURM_STEPID": "4294967290", "SLURM_STEP_NUM_TASKS": "1"},  # salloc
        {"SLURM_STEP_NUM_TASKS": "1", "SLURM_NTASKS": "8"},  # srun --ntasks=1 in an 8-task allocation
        {"SLURM_NTASKS": "1", "SLURM_STEP_NUM_TASKS": None, "SLURM_NPROCS": None},
        {"SLURM_PROCID": None},
        {"RANK": "0"},  # torchrun inside Slurm: RANK wins
    ],
)
def test_not_a_launched_rank(change):
    # A batch script's step has SLURM_PROCID=0 and the allocation's SLURM_NTASKS (4): it runs
    # python test_x.py once, and that process starts the ranks itself.
    env = _srun_env(rank=0, **change)
    assert _slurm.launch_env(env) == {}
    if "RANK" not in change:
        assert _config.launch_info(env) is None


def test_torchrun_inside_slurm_keeps_torchrun_s_variables():
    env = {**_srun_env(rank=1), "RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "MASTER_ADDR": "h",
           "MASTER_PORT": "29400"}
    launch = _config.launch_info(env)
    assert launch is not None and (launch.rank, launch.world_size) == (5, 8)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({}, "this process is task 1 of 4 of Slurm job step 4242.0 (srun), so it runs as rank 1 of a launched "
             "run, but MASTER_PORT is not set: the ranks meet at MASTER_ADDR:MASTER_PORT (fake1:?), a port free "
             "on that node. Example (in the sbatch script): export MASTER_PORT=$((20000 + SLURM_JOB_ID % 20000)); "
             "srun --ntasks=4 python "),
        ({"MASTER_PORT": "1", "SLURM_STEP_NODELIST": None, "SLURM_JOB_NODELIST": None},
         "but MASTER_ADDR is not set and no node list (SLURM_STEP_NODELIST, SLURM_JOB_NODELIST, SLURM_NODELIST) "
         "names rank 0's node: set MASTER_ADDR to it."),
        ({"MASTER_PORT": "70000"}, "MASTER_PORT must be a TCP port, got MASTER_PORT='70000'."),
        ({"MASTER_PORT": "1", "SLURM_PROCID": "4"},
         "SLURM_PROCID must be below SLURM_STEP_NUM_TASKS, got SLURM_PROCID=4 with SLURM_STEP_NUM_TASKS=4"),
        ({"MASTER_PORT": "1", "SLURM_LOCALID": None}, "but SLURM_LOCALID (its task number on this node) is not set"),
        ({"MASTER_PORT": "1", "SLURM_PROCID": "one"}, "SLURM_PROCID must be an integer >= 0, got SLURM_PROCID='one'"),
        ({"MASTER_PORT": "1", "SLURM_STEP_NUM_TASKS": "x"},
         "SLURM_STEP_NUM_TASKS must be an integer >= 1, got SLURM_STEP_NUM_TASKS='x'"),
    ],
)
def test_missing_or_bad_slurm_variables(change, message):
    with pytest.raises(ConfigError) as raised:
        _config.launch_info(_srun_env(**change))
    assert message in str(raised.value)


# -- simulated nodes, the layout -------------------------------------------------------


def test_node_layout():
    assert _nodes.node_env(0, 4, 1) == {}  # one node: nothing changes
    assert [_nodes.node_of(r, 4, 2) for r in range(4)] == [(0, 0, 2), (0, 1, 2), (1, 0, 2), (1, 1, 2)]
    assert _nodes.node_env(3, 4, 2) == {
        "RANK": "3",
        "WORLD_SIZE": "4",
        "LOCAL_RANK": "1",
        "LOCAL_WORLD_SIZE": "2",
        "GROUP_RANK": "1",
        "GROUP_WORLD_SIZE": "2",
        "ROLE_RANK": "3",
        "ROLE_WORLD_SIZE": "4",
        "ROLE_NAME": "default",
    }
    # Uneven: the first nodes get a rank more; nodes without a rank are not counted.
    assert _nodes.node_sizes(5, 3) == [2, 2, 1]
    assert _nodes.node_sizes(3, 2) == [2, 1]
    assert _nodes.node_sizes(2, 4) == [1, 1]
    assert _nodes.node_env(1, 2, 4)["GROUP_WORLD_SIZE"] == "2"
    assert _nodes.rank_env({"WORLD_SIZE": "4", "BACKEND": "gloo"}, 2, 4, 2)["LOCAL_RANK"] == "0"
    assert _nodes.rank_env({"WORLD_SIZE": "4"}, 2, 4, 1) == {"WORLD_SIZE": "4"}


def test_each_simulated_node_sees_its_own_gpus(monkeypatch):
    gpus = ["0", "1", "2", "3"]
    assert [_nodes.gpu_env(r, 4, 2, gpus) for r in (0, 2)] == [{"CUDA_VISIBLE_DEVICES": "0,1"},
                                                            {"CUDA_VISIBLE_DEVICES": "2,3"}]
    assert _nodes.gpu_env(2, 3, 2, gpus) == {"CUDA_VISIBLE_DEVICES": "2"}  # uneven: node 1 has rank 2 alone
    assert _nodes.gpu_env(0, 4, 2, gpus[:3]) == {}  # fewer GPUs than ranks: shared, as without nodes
    assert _nodes.gpu_env(0, 4, 1, gpus) == {}
    from distributed_testing import _devices

    monkeypatch.setattr(_devices, "cuda_device_count", lambda: 2)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5,7")
    assert _nodes.visible_gpus() == ["5", "7"]
    assert _nodes.rank_env({}, 1, 2, 2)["CUDA_VISIBLE_DEVICES"] == "7"
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert _nodes.visible_gpus() == ["0", "1"]


# -- srun without torchrun, through real processes --------------------------------------

SRUN_FILE = """
class TestSrun(DistBackendTestCase):
    def test_a_placement(self):
        env = os.environ
        self.assertEqual((env["RANK"], env["WORLD_SIZE"]), (env["SLURM_PROCID"], "2"))
        self.assertEqual(self.rank, int(env["RANK"]))
        self.assertEqual((env["LOCAL_RANK"], env["LOCAL_WORLD_SIZE"]), ("0", "1"))  # two nodes, one task each
        self.assertEqual((env["GROUP_RANK"], env["GROUP_WORLD_SIZE"]), (env["SLURM_NODEID"], "2"))
        self.assertEqual(env["MASTER_ADDR"], env["EXPECT_ADDR"])
        t = torch.ones(1)
        dist.all_reduce(t)
        self.assertEqual(t.item(), 2.0)

    def test_b_fails_on_rank_1(self):
        if self.rank == 1:
            raise ValueError("rank 1 only")  # <raise>

    def test_c_passes(self):
        t = torch.tensor([float(self.rank)])
        dist.all_reduce(t)
        self.assertEqual(t.item(), 1.0)


class TestEnvInit(MultiProcessTestCase):
    # torch.distributed's env:// sees a launched rank: RANK, WORLD_SIZE, MASTER_ADDR/PORT.
    def setUp(self):
        super().setUp()
        self._spawn_processes()

    def test_env_init(self):
        dist.init_process_group("gloo")
        self.assertEqual((dist.get_rank(), dist.get_world_size()), (self.rank, 2))
        t = torch.ones(1)
        dist.all_reduce(t)
        self.assertEqual(t.item(), 2.0)
        dist.destroy_process_group()

if __name__ == "__main__":
    run_tests()
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _clean(env: dict[str, str]) -> dict[str, str]:
    """No Slurm variable of an allocation around this suite reaches the fake tasks."""
    return {k: v for k, v in env.items() if not k.startswith("SLURM_")}


def _srun(runner: Runner, command: list[str], tasks: int = 2, **extra: str) -> list[tuple[int, str]]:
    """Start ``command`` once per task, as ``srun --ntasks=TASKS --ntasks-per-node=1`` would on
    ``tasks`` nodes: (exit code, output) per task."""
    procs = []
    for rank in range(tasks):
        env = _clean(runner.env(OMP_NUM_THREADS="1"))
        env.update(_srun_env(rank=rank, tasks=tasks, per_node=1))
        env.update({k: v for k, v in extra.items() if v})
        for name in [k for k, v in extra.items() if not v]:
            env.pop(name, None)
        log = open(runner.tmp_path / f"task{rank}.log", "w+")  # files, not pipes: no task blocks on its output
        procs.append((subprocess.Popen(command, cwd=runner.tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL, text=True), log))
    results = []
    for proc, log in procs:
        try:
            proc.wait(timeout=240)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        log.seek(0)
        results.append((proc.returncode, log.read()))
        log.close()
    return results


def _line_of(path: Path, marker: str) -> int:
    return next(n for n, line in enumerate(path.read_text().splitlines(), 1) if f"# {marker}" in line)


@pytest.mark.slow
def test_srun_tasks_run_as_ranks(runner):
    path = runner.write(SRUN_FILE)
    results = _srun(runner, [sys.executable, str(path), "-v"], MASTER_ADDR="127.0.0.1",
                    MASTER_PORT=str(_free_port()), EXPECT_ADDR="127.0.0.1")
    expected = {
        "TestSrun.test_a_placement": "ok",
        "TestSrun.test_b_fails_on_rank_1": "ERROR",
        "TestSrun.test_c_passes": "ok",
        "TestEnvInit.test_env_init": "ok",
    }
    for code, output in results:
        assert code == 1, output  # a test failed: every rank exits 1
        assert outcomes(output) == expected, output
    first, second = (output for _, output in results)
    report = reports(first)["TestSrun.test_b_fails_on_rank_1"]
    assert report.startswith("distributed_testing._errors.RankFailure: rank 1 of 2 failed: ValueError: rank 1 only\n")
    assert f'File "{path}", line {_line_of(path, "<raise>")}, in test_b_fails_on_rank_1' in report
    # Reported once, by rank 0; rank 1 points there.
    assert first.count('raise ValueError("rank 1 only")') + second.count('raise ValueError("rank 1 only")') == 1
    assert "rank 1 of 2 failed: ValueError: rank 1 only (the full report is printed by rank 0)" in second
    assert wait_gone(str(runner.tmp_path)) == []
    assert runner.leftovers() == []


@pytest.mark.slow
def test_srun_tasks_under_pytest_with_master_addr_from_the_node_list(runner):
    path = runner.write(SRUN_FILE)
    # No MASTER_ADDR: rank 0's node is the first of the step's node list.
    results = _srun(runner, [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *NO_HYPOTHESIS, "-v", str(path),
                             "-k", "placement or passes or env_init"],
                    MASTER_PORT=str(_free_port()), SLURM_STEP_NODELIST="127.0.0.[1-2]", EXPECT_ADDR="127.0.0.1")
    for code, output in results:
        assert code == 0, output
        assert output.count(" PASSED") == 3, output
    assert wait_gone(str(runner.tmp_path)) == []
    assert runner.leftovers() == []


@pytest.mark.slow
def test_srun_variables_missing(runner):
    plain, path = runner.write(PLAIN, "test_plain.py", header=False), runner.write(SRUN_FILE)
    pytest_command = [sys.executable, "-m", "pytest", *NO_HYPOTHESIS, str(path)]
    for command, usage_code in (([sys.executable, str(plain)], 2), (pytest_command, 4)):
        results = _srun(runner, command, MASTER_PORT="")
        for code, output in results:
            assert code == usage_code, output
            assert "so it runs as rank" in output and "but MASTER_PORT is not set" in output, output
            assert "export MASTER_PORT=" in output
    assert wait_gone(str(runner.tmp_path)) == []
    assert runner.leftovers() == []


BATCH_FILE = """
class TestBatch(MultiProcessTestCase):
    world_size = 2

    def setUp(self):
        super().setUp()
        self._spawn_processes()

    def test_one_shot_ranks(self):
        self.assertNotIn("RANK", os.environ)  # started by this run, as without Slurm
        self.assertEqual(os.environ["SLURM_PROCID"], "0")

if __name__ == "__main__":
    run_tests()
"""


@pytest.mark.slow
def test_a_batch_script_runs_the_file_once_with_its_own_ranks(runner):
    # sbatch --ntasks=4: the batch step has SLURM_PROCID=0 and the allocation's SLURM_NTASKS=4.
    path = runner.write(BATCH_FILE)
    env = {k: v for k, v in _srun_env(rank=0, tasks=4, per_node=4).items() if "STEP" not in k}
    run = runner.run(str(path), "-v", SLURM_STEP_ID="batch", **env)
    assert run.returncode == 0, run.output
    assert outcomes(run.output) == {"TestBatch.test_one_shot_ranks": "ok"}
    assert runner.leftovers() == []


# -- simulated nodes, through real processes ---------------------------------------------

NODES_FILE = """
import json

NODES = int(os.environ.get("DISTRIBUTED_TESTING_NODES", "1"))
PLACES = ("RANK", "LOCAL_RANK", "GROUP_RANK", "LOCAL_WORLD_SIZE", "GROUP_WORLD_SIZE", "ROLE_RANK",
          "ROLE_WORLD_SIZE")


def shard(data, rank, world_size):
    return data[rank::world_size]


class TestNodes(MultiProcessTestCase):
    world_size = 4

    def setUp(self):
        super().setUp()
        self._spawn_processes()

    def _init(self):
        dist.init_process_group("gloo", init_method=f"file://{self.file_name}", rank=self.rank,
                                world_size=self.world_size)

    def test_placement(self):
        env = os.environ
        if NODES == 1:  # nothing changes: what PyTorch's framework gives a rank
            self.assertEqual([name for name in PLACES if name in env], [])
            self.assertEqual(env["WORLD_SIZE"], "4")
            return
        self.assertEqual((env["RANK"], env["WORLD_SIZE"], env["ROLE_RANK"]), (str(self.rank), "4", str(self.rank)))
        self.assertEqual(env["LOCAL_RANK"], str(self.rank % 2))
        self.assertEqual(env["GROUP_RANK"], str(self.rank // 2))
        self.assertEqual((env["LOCAL_WORLD_SIZE"], env["GROUP_WORLD_SIZE"]), ("2", "2"))
        self.assertEqual(env["MASTER_ADDR"], "test-set")  # the test's own, unchanged

    def test_local_rank_taken_for_the_global_rank(self):
        self._init()
        me = int(os.environ.get("LOCAL_RANK", self.rank))  # the bug: LOCAL_RANK counts from 0 on each node
        mine = shard(list(range(8)), me, self.world_size)
        seen = [None] * self.world_size
        dist.all_gather_object(seen, mine)
        self.assertEqual(sorted(x for part in seen for x in part), list(range(8)), "shards overlap")

    def test_global_rank(self):
        self._init()
        me = int(os.environ.get("RANK", self.rank))
        mine = shard(list(range(8)), me, self.world_size)
        seen = [None] * self.world_size
        dist.all_gather_object(seen, mine)
        self.assertEqual(sorted(x for part in seen for x in part), list(range(8)))
        self.assertEqual(int(os.environ.get("LOCAL_RANK", self.rank)) < int(os.environ.get("LOCAL_WORLD_SIZE", 4)),
                         True)

    @world_sizes(3)
    def test_uneven(self):
        if NODES == 2:  # ranks 0-1 on node 0, rank 2 alone on node 1
            expect = [("0", "0", "2"), ("1", "0", "2"), ("0", "1", "1")][self.rank]
            env = os.environ
            self.assertEqual((env["LOCAL_RANK"], env["GROUP_RANK"], env["LOCAL_WORLD_SIZE"]), expect)


class TestPoolNodes(MultiProcContinuousTest):
    world_size = 2

    def test_pool_placement(self):
        if NODES == 2:
            self.assertEqual((os.environ["LOCAL_RANK"], os.environ["GROUP_RANK"]), ("0", str(self.rank)))
            self.assertEqual(os.environ["RANK"], str(self.rank))
        else:
            self.assertNotIn("LOCAL_RANK", os.environ)

if __name__ == "__main__":
    run_tests()
"""

NODES_OUTCOMES = {
    "TestNodes.test_placement": "ok",
    "TestNodes.test_global_rank": "ok",
    "TestNodes.test_uneven_world_size_3": "ok",
    "TestPoolNodes.test_pool_placement": "ok",
}


@pytest.mark.slow
def test_one_node_changes_nothing(runner):
    path = runner.write(NODES_FILE)
    run = runner.run(str(path), "-v", MASTER_ADDR="test-set")
    assert run.returncode == 0, run.output
    assert outcomes(run.output) == {**NODES_OUTCOMES, "TestNodes.test_local_rank_taken_for_the_global_rank": "ok"}
    assert wait_gone(str(runner.tmp_path)) == []
    assert runner.leftovers() == []


def _check_two_nodes(output: str, rerun: str) -> None:
    assert "Re-run: BACKEND=gloo WORLD_SIZE=4 DISTRIBUTED_TESTING_NODES=2 " + rerun in output, output
    assert "AssertionError" in output and "shards overlap" in output


@pytest.mark.slow
def test_two_simulated_nodes_under_python(runner):
    path = runner.write(NODES_FILE)
    run = runner.run(str(path), "-v", DISTRIBUTED_TESTING_NODES="2", MASTER_ADDR="test-set")
    assert run.returncode == 1, run.output
    assert outcomes(run.output) == {**NODES_OUTCOMES, "TestNodes.test_local_rank_taken_for_the_global_rank": "FAIL"}
    report = reports(run.output)["TestNodes.test_local_rank_taken_for_the_global_rank"]
    assert report.startswith("distributed_testing._errors.RankAssertionError: ranks 0-3 of 4 failed: same "
                             "AssertionError: Lists differ"), report
    _check_two_nodes(report, "python test_x.py TestNodes.test_local_rank_taken_for_the_global_rank")
    # The debug rank, run in the test process, sees its node too.
    run = runner.run(str(path), "-v", "TestNodes.test_placement", DISTRIBUTED_TESTING_NODES="2",
                     DISTRIBUTED_TESTING_DEBUG_RANK="3", MASTER_ADDR="test-set")
    assert run.returncode == 0, run.output
    assert outcomes(run.output) == {"TestNodes.test_placement": "ok"}
    assert wait_gone(str(runner.tmp_path)) == []
    assert runner.leftovers() == []


@pytest.mark.slow
def test_two_simulated_nodes_under_pytest_and_python_m(runner):
    path = runner.write(NODES_FILE)
    run = runner.pytest(str(path), "-v", "--dt-nodes", "2", MASTER_ADDR="test-set")
    assert run.returncode == 1, run.output
    assert "test_x.py::TestNodes::test_local_rank_taken_for_the_global_rank FAILED" in run.output
    assert run.output.count(" PASSED") == 4, run.output
    _check_two_nodes(run.output, "pytest test_x.py::TestNodes::test_local_rank_taken_for_the_global_rank")
    run = runner.run("-m", "distributed_testing", "--nodes", "2", str(path), "-v", MASTER_ADDR="test-set")
    assert run.returncode == 1, run.output
    assert outcomes(run.output) == {**NODES_OUTCOMES, "TestNodes.test_local_rank_taken_for_the_global_rank": "FAIL"}
    _check_two_nodes(run.output, "python -m distributed_testing test_x.py")
    run = runner.run("-m", "distributed_testing", "--nodes", "0", str(path))
    assert run.returncode == 2 and "--nodes must be an integer >= 1, got --nodes '0'" in run.output, run.output
    assert wait_gone(str(runner.tmp_path)) == []
    assert runner.leftovers() == []

