"""MultiProcContinuousTest and world_sizes: a warm pool, through real processes."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from conftest import Run, Runner, outcomes, reports, wait_gone

pytestmark = pytest.mark.slow

POOL = """
import json

def record(name, **extra):
    path = os.path.join(os.environ["MARKER_DIR"], f"{name}-{dist.get_rank()}.json")
    with open(path, "w") as handle:
        json.dump({"pid": os.getpid(), "world_size": dist.get_world_size(), **extra}, handle)


class TestPool(MultiProcContinuousTest):
    world_size = 2
    timeout = 5

    def test_01_first(self):
        t = torch.ones(1) * self.rank
        dist.all_reduce(t)
        self.assertEqual(t, torch.tensor([1.0]))
        record("first")

    def test_02_second(self):
        record("second", rank=self.rank)

    def test_03_raise_on_every_rank(self):
        raise ValueError("same on all")

    def test_04_after_raise(self):
        dist.barrier()
        record("after-raise")

    def test_05_raise_on_one_rank(self):
        if self.rank == 1:
            raise KeyError("only rank 1")

    def test_05b_after_raise_in_step(self):
        dist.barrier()
        record("after-raise-in-step")

    def test_05c_raise_out_of_step(self):
        if self.rank == 0:
            dist.isend(torch.ones(1), 1)  # never received: rank 0 is one collective ahead
        else:
            raise KeyError("rank 1 leaves before its recv")

    def test_06_after_one_raise(self):
        dist.barrier()
        record("after-one-raise")

    def test_07_os_exit(self):
        if self.rank == 1:
            os._exit(3)
        dist.barrier()

    def test_08_after_exit(self):
        dist.barrier()
        record("after-exit")

    def test_09_sigkill(self):
        if self.rank == 0:
            os.kill(os.getpid(), signal.SIGKILL)
        dist.barrier()

    def test_10_after_sigkill(self):
        dist.barrier()
        record("after-sigkill")

    def test_11_hang(self):
        if self.rank == 0:
            time.sleep(60)
        dist.barrier()

    def test_12_after_hang(self):
        dist.barrier()
        record("after-hang")

    def test_13_change_state(self):
        os.environ["LEAKED"] = "1"
        torch.set_default_dtype(torch.float64)
        torch.manual_seed(99)
        dist.new_group([0, 1])

    def test_14_state_was_reset(self):
        self.assertNotIn("LEAKED", os.environ)
        self.assertEqual(torch.get_default_dtype(), torch.float32)
        self.assertEqual(torch.initial_seed(), 1234)
        self.assertEqual(os.environ["WORLD_SIZE"], "2")
        record("reset")

    def test_15_skip_in_rank(self):
        raise unittest.SkipTest("not today")


class TestSizes(MultiProcContinuousTest):
    @world_sizes(1, 3)
    def test_size(self):
        record(self._testMethodName)

    def test_default_size(self):
        record("default-size")


class TestLazy(MultiProcContinuousTest):
    def test_never_selected(self):
        record("lazy")


@unittest.skip("class off")
class TestSkippedClass(MultiProcContinuousTest):
    def test_x(self):
        record("skipped-class")


class TestAllSkipped(MultiProcContinuousTest):
    @skip_if_lt_x_gpu(8)
    def test_needs_gpus(self):
        record("all-skipped")


if __name__ == "__main__":
    run_tests()
"""


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> tuple[Run, Runner, Path]:
    tmp = tmp_path_factory.mktemp("pool")
    runner = Runner(tmp)
    markers = tmp / "markers"
    markers.mkdir()
    path = runner.write(POOL)
    run = runner.run(
        str(path), "-v", "TestPool", "TestSizes", "TestSkippedClass", "TestAllSkipped", MARKER_DIR=str(markers)
    )
    return run, runner, markers


def _marks(pool: tuple[Run, Runner, Path], name: str) -> list[dict[str, int]]:
    return [json.loads((pool[2] / f"{name}-{rank}.json").read_text()) for rank in range(2)]


def _pids(pool: tuple[Run, Runner, Path], name: str) -> list[int]:
    return [m["pid"] for m in _marks(pool, name)]


def test_outcomes_of_every_test(pool):
    assert outcomes(pool[0].output) == {
        "TestPool.test_01_first": "ok",
        "TestPool.test_02_second": "ok",
        "TestPool.test_03_raise_on_every_rank": "ERROR",
        "TestPool.test_04_after_raise": "ok",
        "TestPool.test_05_raise_on_one_rank": "ERROR",
        "TestPool.test_05b_after_raise_in_step": "ok",
        "TestPool.test_05c_raise_out_of_step": "ERROR",
        "TestPool.test_06_after_one_raise": "ok",
        "TestPool.test_07_os_exit": "ERROR",
        "TestPool.test_08_after_exit": "ok",
        "TestPool.test_09_sigkill": "ERROR",
        "TestPool.test_10_after_sigkill": "ok",
        "TestPool.test_11_hang": "ERROR",
        "TestPool.test_12_after_hang": "ok",
        "TestPool.test_13_change_state": "ok",
        "TestPool.test_14_state_was_reset": "ok",
        "TestPool.test_15_skip_in_rank": "skipped 'not today'",
        "TestSizes.test_default_size": "ok",
        "TestSizes.test_size_world_size_1": "ok",
        "TestSizes.test_size_world_size_3": "ok",
        "TestSkippedClass.test_x": "skipped 'class off'",
        "TestAllSkipped.test_needs_gpus": "skipped 'needs 8 CUDA devices, found 0'",
    }, pool[0].output


def test_the_same_ranks_run_consecutive_tests(pool):
    assert _pids(pool, "first") == _pids(pool, "second")
    assert [m["rank"] for m in _marks(pool, "second")] == [0, 1]


def test_a_raise_on_every_rank_keeps_the_pool(pool):
    assert "ranks 0-1 of 2 failed: same ValueError: same on all" in reports(pool[0].output)[
        "TestPool.test_03_raise_on_every_rank"
    ]
    assert _pids(pool, "after-raise") == _pids(pool, "first")


def test_a_raise_on_one_rank_with_ranks_in_step_keeps_the_pool(pool):
    assert "rank 1 of 2 failed: KeyError: 'only rank 1'" in reports(pool[0].output)["TestPool.test_05_raise_on_one_rank"]
    assert _pids(pool, "after-raise-in-step") == _pids(pool, "after-raise")


def test_ranks_out_of_step_rebuild_the_pool(pool):
    report = reports(pool[0].output)["TestPool.test_05c_raise_out_of_step"]
    assert "rank 1 of 2 failed: KeyError: 'rank 1 leaves before its recv'" in report
    assert set(_pids(pool, "after-one-raise")).isdisjoint(_pids(pool, "after-raise-in-step"))


def test_an_exit_fails_that_test_and_the_next_runs_on_a_new_pool(pool):
    report = reports(pool[0].output)["TestPool.test_07_os_exit"]
    assert "rank 1 of 2 failed: exited with code 3 before reporting a result" in report
    assert set(_pids(pool, "after-exit")).isdisjoint(_pids(pool, "after-one-raise"))


def test_a_sigkill_names_the_signal(pool):
    assert "rank 0 of 2 failed: died with SIGKILL" in reports(pool[0].output)["TestPool.test_09_sigkill"]
    assert set(_pids(pool, "after-sigkill")).isdisjoint(_pids(pool, "after-exit"))


def test_a_hang_reports_stacks_and_the_pool_is_rebuilt(pool):
    report = reports(pool[0].output)["TestPool.test_11_hang"]
    # Rank 1 waits in the barrier (the group's timeout outlasts the deadline): both hang.
    assert "__main__.TestPool.test_11_hang timed out after 5 s; ranks 0-1 still running" in report
    where = re.search(
        r"^  rank 0: in time\.sleep at test_x\.py:\d+ \(after collective #(\d+)\)\n"
        r"  rank 1: in barrier \(collective #(\d+) of the default group\) at test_x\.py:\d+$",
        report,
        re.M,
    )
    assert where and int(where[2]) == int(where[1]) + 1, report  # rank 1 is one collective ahead
    assert "<module>" not in report  # frames of the fork server trimmed
    assert set(_pids(pool, "after-hang")).isdisjoint(_pids(pool, "after-sigkill"))


def test_state_a_test_changed_is_reset(pool):
    assert _pids(pool, "reset") == _pids(pool, "after-hang")


def test_world_sizes_expand_into_one_pool_per_size(pool):
    one = json.loads((pool[2] / "test_size_world_size_1-0.json").read_text())
    assert one["world_size"] == 1
    three = [json.loads((pool[2] / f"test_size_world_size_3-{r}.json").read_text()) for r in range(3)]
    assert {m["world_size"] for m in three} == {3}
    assert _marks(pool, "default-size")[0]["world_size"] == 2


def test_skipped_or_unselected_classes_start_nothing(pool):
    names = {p.name.split("-")[0] for p in pool[2].iterdir()}
    assert not names & {"lazy", "skipped", "all"}


def test_nothing_is_left_behind(pool):
    assert pool[1].leftovers() == []
    assert wait_gone(str(pool[1].tmp_path)) == []


def test_the_same_file_under_pytest(runner):
    markers = runner.tmp_path / "markers"
    markers.mkdir()
    path = runner.write(POOL)
    run = runner.pytest(str(path), "-q", "-k", "TestSizes or test_01 or test_02", MARKER_DIR=str(markers))
    assert run.returncode == 0, run.output
    assert "5 passed" in run.output
    assert wait_gone(str(runner.tmp_path)) == []
