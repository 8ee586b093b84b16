"""MultiThreadedTestCase, spawn_threads_and_init_comms and run_subtests: rank threads, folded outcomes."""

from __future__ import annotations

import json
import re
import time

import pytest
from conftest import Runner, outcomes, reports

pytestmark = pytest.mark.slow

# Written once, run once per front end: every outcome a threaded test can have.
SUITE = """
import threading
from distributed_testing._threaded import MultiThreadedTestCase, run_subtests, spawn_threads_and_init_comms

SEEN = []  # (hook, rank, group world size) from every rank thread
LOCK = threading.Lock()


class TestThreads(MultiThreadedTestCase):
    def setUp(self):
        super().setUp()
        self._spawn_threads()

    def perThreadSetUp(self):
        with LOCK:
            SEEN.append(("setup", self.rank, dist.get_world_size()))

    def perThreadTearDown(self):
        with LOCK:
            SEEN.append(("teardown", self.rank, dist.is_initialized()))

    def test_a_all_reduce(self):
        self.assertIsInstance(threading.current_thread().name, str)
        self.assertEqual(self.world_size, 4)
        self.assertEqual(dist.get_rank(), self.rank)
        t = torch.ones(2) * (self.rank + 1)
        dist.all_reduce(t)
        self.assertEqual(t, torch.full((2,), 10.0))

    def test_b_hooks_ran_in_every_thread(self):
        with LOCK:
            seen = sorted(set(SEEN))
        for rank in range(4):
            self.assertIn(("setup", rank, 4), seen)
            self.assertIn(("teardown", rank, False), seen)  # after the group is destroyed

    def test_c_rank_2_fails(self):
        t = torch.ones(1)
        if self.rank == 2:
            self.assertEqual(self.rank, 0, "rank 2 disagrees")
        dist.all_reduce(t)  # the others wait here for rank 2: cancelled, not hung

    def test_d_after_a_failure(self):
        t = torch.ones(1)
        dist.all_reduce(t)
        self.assertEqual(t.item(), 4.0)

    def test_e_all_fail_the_same(self):
        self.assertEqual(dist.get_world_size(), 3)

    def test_f_error(self):
        raise ValueError("not an assertion")

    def test_g_skip(self):
        self.skipTest("no thanks")

    def test_h_skip_on_one_rank(self):
        if self.rank == 1:
            self.skipTest("rank 1 says no")
        dist.all_reduce(torch.ones(1))  # waits for rank 1: the test is a skip

    def test_i_subtests(self):
        def check(x, y):
            t = torch.ones(1)
            dist.all_reduce(t)
            self.assertNotEqual((x, y), (2, "b"), "bad combination")

        run_subtests(self, {"x": [1, 2], "y": ["a", "b"]}, check)

    def test_j_subtests_pass(self):
        calls = []
        run_subtests(self, {"x": [1, 2, 3]}, lambda x, scale: calls.append(x * scale), scale=10)
        self.assertEqual(calls, [10, 20, 30])

    @unittest.expectedFailure
    def test_k_known_failure_on_rank_0(self):
        t = torch.ones(1)
        if self.rank == 0:
            self.assertEqual(self.rank, 1, "known bug")
        dist.all_reduce(t)  # the others wait here for rank 0: woken at once, not at the deadline


class TestTwoThreads(MultiThreadedTestCase):
    @property
    def world_size(self):
        return 2

    def setUp(self):
        super().setUp()
        self._spawn_threads()

    def test_gather(self):
        out = [torch.zeros(1) for _ in range(2)]
        dist.all_gather(out, torch.tensor([float(self.rank)]))
        self.assertEqual(torch.cat(out), torch.tensor([0.0, 1.0]))


class TestNoSpawn(MultiThreadedTestCase):
    def test_forgot_spawn(self):
        pass


class TestDecorated(unittest.TestCase):
    @spawn_threads_and_init_comms(world_size=2)
    def test_passes(self):
        t = torch.ones(1)
        dist.all_reduce(t)
        self.assertEqual(t.item(), 2.0)

    @spawn_threads_and_init_comms
    def test_default_world_fails_on_rank_3(self):
        if dist.get_rank() == 3:
            raise RuntimeError("rank three")
        dist.all_reduce(torch.ones(1))

    def test_failure_is_a_runtime_error(self):  # as PyTorch's own test_multi_threaded_pg.py checks
        @spawn_threads_and_init_comms(world_size=2)
        def body(self):
            if dist.get_rank() == 0:
                raise AssertionError("Mimic real test failure.")
            dist.all_reduce(torch.ones(1))

        with self.assertRaises(RuntimeError):
            body(self)


class TestZAfterwards(unittest.TestCase):
    def test_world_is_restored(self):
        from torch.testing._internal.distributed.multi_threaded_pg import ThreadLocalWorld

        self.assertNotIsInstance(dist.distributed_c10d._world, ThreadLocalWorld)
        self.assertFalse(dist.is_initialized())
        self.assertTrue(torch.autograd.is_multithreading_enabled())
        self.assertEqual([t.name for t in threading.enumerate() if t.name.startswith("rank ")], [])


if __name__ == "__main__":
    run_tests()
"""

EXPECTED = {
    "TestThreads.test_a_all_reduce": "ok",
    "TestThreads.test_b_hooks_ran_in_every_thread": "ok",
    "TestThreads.test_c_rank_2_fails": "FAIL",
    "TestThreads.test_d_after_a_failure": "ok",
    "TestThreads.test_e_all_fail_the_same": "FAIL",
    "TestThreads.test_f_error": "ERROR",
    "TestThreads.test_g_skip": "skipped 'no thanks'",
    "TestThreads.test_h_skip_on_one_rank": "skipped 'rank 1 says no'",
    "TestThreads.test_i_subtests": "FAIL",
    "TestThreads.test_j_subtests_pass": "ok",
    "TestThreads.test_k_known_failure_on_rank_0": "expected failure",
    "TestTwoThreads.test_gather": "ok",
    "TestNoSpawn.test_forgot_spawn": "ERROR",
    "TestDecorated.test_passes": "ok",
    "TestDecorated.test_default_world_fails_on_rank_3": "ERROR",
    "TestDecorated.test_failure_is_a_runtime_error": "ok",
    "TestZAfterwards.test_world_is_restored": "ok",
}


def test_rank_threads_fold_into_one_outcome(runner: Runner) -> None:
    path = runner.write(SUITE)
    record_path = runner.tmp_path / "record.json"
    run = runner.run(str(path), "-v", DISTRIBUTED_TESTING_REPORT=str(record_path))
    assert run.returncode == 1, run.output
    assert outcomes(run.output) == EXPECTED, run.output
    found = reports(run.output)

    one = found["TestThreads.test_c_rank_2_fails"]
    assert "rank 2 of 4 failed: AssertionError: 2 != 0 : rank 2 disagrees" in one
    assert "ranks 0-1, 3 were stopped" in one  # their all_reduce was cancelled: no hang, no second traceback
    assert one.count("Traceback (most recent call last)") == 1
    assert "--- rank 2 ---" in one
    assert "self.assertEqual(self.rank, 0" in one
    assert "Re-run: python test_x.py TestThreads.test_c_rank_2_fails" in one

    same = found["TestThreads.test_e_all_fail_the_same"]
    assert "ranks 0-3 of 4 failed: same AssertionError: 4 != 3" in same
    assert same.count("Traceback (most recent call last)") == 1
    assert "--- ranks 0-3 ---" in same

    error = found["TestThreads.test_f_error"]
    assert "RankFailure: ranks 0-3 of 4 failed: same ValueError: not an assertion" in error

    sub = found["TestThreads.test_i_subtests"]
    assert "AssertionError: (2, 'b') == (2, 'b') : bad combination (in subTest (x=2, y='b'))" in sub
    assert "self.assertNotEqual((x, y), (2, \"b\"), \"bad combination\")" in sub
    assert "SystemExit" not in sub  # the cancelled collectives of the other threads are no failures

    assert "call self._spawn_threads() in setUp" in found["TestNoSpawn.test_forgot_spawn"]

    decorated = found["TestDecorated.test_default_world_fails_on_rank_3"]
    assert "rank 3 of 4 failed: RuntimeError: rank three" in decorated
    assert "ranks 0-2 were stopped" in decorated
    assert 'raise RuntimeError("rank three")' in decorated

    # The JSON record has every rank thread's part, as for rank processes.
    tests = {t["id"].rsplit(".", 1)[-1]: t for t in json.loads(record_path.read_text())["tests"]}
    ranks = {entry["rank"]: entry for entry in tests["test_c_rank_2_fails"]["ranks"]}
    assert [ranks[r]["outcome"] for r in range(4)] == ["stopped", "stopped", "failed", "stopped"]
    assert ranks[2]["exc_type"] == "AssertionError"
    assert [r["outcome"] for r in tests["test_a_all_reduce"]["ranks"]] == ["passed"] * 4
    known = {entry["rank"]: entry["outcome"] for entry in tests["test_k_known_failure_on_rank_0"]["ranks"]}
    assert known == {0: "failed", 1: "stopped", 2: "stopped", 3: "stopped"}, known  # not hung till the deadline
    assert runner.leftovers() == []


def test_pytest_front_end(runner: Runner) -> None:
    path = runner.write(SUITE)
    run = runner.pytest(str(path), "-rA")
    assert run.returncode == 1, run.output
    out = run.stdout
    assert "6 failed, 8 passed, 2 skipped, 1 xfailed" in out, out
    assert "RankAssertionError: rank 2 of 4 failed: AssertionError: 2 != 0 : rank 2 disagrees" in out
    assert "rank 2: failed: AssertionError: 2 != 0 : rank 2 disagrees" in out  # the rank's own section
    assert "Re-run: pytest test_x.py::TestThreads::test_c_rank_2_fails" in out
    assert "PASSED test_x.py::TestZAfterwards::test_world_is_restored" in out


HANGS = """
from distributed_testing._threaded import MultiThreadedTestCase


class TestHangs(MultiThreadedTestCase):
    @property
    def world_size(self):
        return 2

    def setUp(self):
        super().setUp()
        self._spawn_threads()

    def test_a_collective_without_peer(self):
        if self.rank == 0:
            dist.all_reduce(torch.ones(1))  # rank 1 never joins

    def test_b_sleeps(self):
        if self.rank == 1:
            time.sleep(120)  # a thread cannot be killed: left running, the process still exits

    def test_c_next_test_passes(self):
        t = torch.ones(1)
        dist.all_reduce(t)
        self.assertEqual(t.item(), 2.0)


if __name__ == "__main__":
    run_tests()
"""


def test_a_hang_reports_each_live_thread_stack_and_the_next_test_runs(runner: Runner) -> None:
    path = runner.write(HANGS)
    start = time.monotonic()
    run = runner.run(str(path), "-v", DISTRIBUTED_TESTING_TIMEOUT="1")
    took = time.monotonic() - start
    assert run.returncode == 1, run.output
    assert took < 60, f"the run waited for the sleeping thread: {took:.0f} s"
    assert outcomes(run.output) == {
        "TestHangs.test_a_collective_without_peer": "ERROR",
        "TestHangs.test_b_sleeps": "ERROR",
        "TestHangs.test_c_next_test_passes": "ok",
    }, run.output
    found = reports(run.output)

    collective = found["TestHangs.test_a_collective_without_peer"]
    assert "TestHangs.test_a_collective_without_peer timed out after 1 s; rank 0 still running" in collective
    assert "rank 0: in all_reduce at test_x.py:" in collective
    assert "rank 1: finished" in collective
    assert "--- rank 0 stacks (most recent call first) ---" in collective
    assert 'test_x.py", line ' in collective and "in test_a_collective_without_peer" in collective
    assert "_threaded.py" not in collective  # the framework's frames are trimmed
    assert "Rank thread 0 ended once the threaded group's collectives were cancelled." in collective

    sleeping = found["TestHangs.test_b_sleeps"]
    assert "rank 1: in time.sleep at test_x.py:" in sleeping
    assert "rank 0: finished" in sleeping
    assert "Rank thread 1 could not be stopped (a Python thread cannot be killed)" in sleeping
    assert "left running as a daemon thread until this process exits" in sleeping


REAL_SUITE = """
from distributed_testing import torch_compat

torch_compat.install()  # before PyTorch's DTensor and FSDP helpers import the threaded names

from torch.testing._internal import common_utils

import torch.distributed._functional_collectives as funcol
from torch.distributed.tensor import Replicate, Shard, distribute_tensor
from torch.testing._internal.common_fsdp import FSDPTestMultiThread
from torch.testing._internal.distributed._tensor.common_dtensor import DTensorOpTestBase


class TestDTensorOps(DTensorOpTestBase):
    def test_redistribute(self):
        mesh = self.build_device_mesh()
        full = torch.arange(16.0).reshape(4, 4)
        sharded = distribute_tensor(full, mesh, [Shard(0)])
        self.assertEqual(sharded.to_local(), full[self.rank : self.rank + 1])
        self.assertEqual(sharded.redistribute(mesh, [Replicate()]).to_local(), full)

    def test_functional_all_reduce_wrong_expectation(self):
        mesh = self.build_device_mesh()
        out = funcol.all_reduce(torch.ones(2), "sum", mesh)
        self.assertEqual(out, torch.full((2,), 3.0))

    def test_expect_inline_takes_pytorch_s_options(self):
        self.assertExpectedInline(self.world_size, "4")  # any value: its str()
        self.assertExpectedInline("a\\n\\nb", "a\\nb", ignore_empty_lines=True)


class TestFSDPThreads(FSDPTestMultiThread):
    @property
    def world_size(self):
        return 2

    def test_subtests(self):
        def check(scale, bias):
            t = torch.full((2,), float(scale + bias))
            dist.all_reduce(t)
            self.assertEqual(t, torch.full((2,), 2.0 * (scale + bias)))

        self.run_subtests({"scale": [1, 2], "bias": [0, 1]}, check)


if __name__ == "__main__":
    common_utils.run_tests()
"""


def test_pytorch_dtensor_and_fsdp_bases_run_on_our_threads(runner: Runner) -> None:
    path = runner.write(REAL_SUITE)
    run = runner.run(str(path), "-v")
    assert run.returncode == 1, run.output
    assert outcomes(run.output) == {
        "TestDTensorOps.test_redistribute": "ok",
        "TestDTensorOps.test_functional_all_reduce_wrong_expectation": "FAIL",
        "TestDTensorOps.test_expect_inline_takes_pytorch_s_options": "ok",
        "TestFSDPThreads.test_subtests": "ok",
    }, run.output
    wrong = reports(run.output)["TestDTensorOps.test_functional_all_reduce_wrong_expectation"]
    # Every rank thread fails the same check; one that fails first cancels the group's collectives
    # (as PyTorch's class does), so a peer not yet back from its all_reduce may be reported stopped.
    assert re.search(r"ranks? [\d, -]+ of 4 failed: (same )?AssertionError: Tensor-likes are not close!", wrong), wrong
    assert wrong.count("Traceback (most recent call last)") == 1


EXPECT_AND_PRINT = """
import expecttest
from distributed_testing._threaded import MultiThreadedTestCase, spawn_threads_and_init_comms


class TestSay(MultiThreadedTestCase):
    @property
    def world_size(self):
        return 4

    def setUp(self):
        super().setUp()
        self._spawn_threads()

    def test_expect(self):
        t = torch.ones(2)
        dist.all_reduce(t)
        self.assertExpectedInline(str(t.tolist()), \"\"\"\"\"\")

    def test_print_then_fail(self):
        print(f"rank {self.rank} was here")
        if self.rank == 1:
            print("x" * 30000)
            raise ValueError("rank 1 gives up")


class TestDecorated(expecttest.TestCase):
    @spawn_threads_and_init_comms(world_size=2)
    def test_expect_decorated(self):
        self.assertExpectedInline(str(dist.get_world_size()), \"\"\"\"\"\")


if __name__ == "__main__":
    run_tests()
"""


def test_expected_inline_is_accepted_once_for_all_rank_threads(runner: Runner) -> None:
    path = runner.write(EXPECT_AND_PRINT)
    run = runner.run(str(path), "-v", "TestSay.test_expect", "TestDecorated", EXPECTTEST_ACCEPT="1")
    assert run.returncode == 0, run.output
    text = path.read_text()
    assert 'assertExpectedInline(str(t.tolist()), """[4.0, 4.0]""")' in text  # one edit, not four
    assert 'assertExpectedInline(str(dist.get_world_size()), """2""")' in text
    assert run.output.count("Accepting new output") == 2, run.output
    again = runner.run(str(path), "-v", "TestSay.test_expect", "TestDecorated")
    assert outcomes(again.output) == {"TestSay.test_expect": "ok", "TestDecorated.test_expect_decorated": "ok"}


def test_rank_threads_output_is_kept_per_rank(runner: Runner) -> None:
    path = runner.write(EXPECT_AND_PRINT)
    run = runner.run(str(path), "-v", "TestSay.test_print_then_fail")
    assert run.returncode == 1, run.output
    assert "--- rank 1 output ---\n[rank 1] rank 1 was here\n" in run.output
    assert "[rank 0] rank 0 was here" in run.output
    assert "characters of rank 1's output not shown]" in run.output  # head and tail of 30,000 x
    assert "rank 0 was here\nrank" not in run.output  # nothing went to the terminal unprefixed
    live = runner.run(str(path), "TestSay.test_print_then_fail", DISTRIBUTED_TESTING_SHOW_OUTPUT="live")
    before_report = live.stderr.split("=" * 70)[0]
    assert "[rank 2] rank 2 was here" in before_report, live.output  # streamed as it was written
    shown = runner.pytest(str(path), "-rA", "-k", "print_then_fail")
    assert shown.returncode == 1, shown.output
    assert "rank 1: failed: ValueError: rank 1 gives up" in shown.output
    assert "rank 3: passed" in shown.output and "output:\nrank 3 was here" in shown.output


ACCEPT_OPTIONS = """
from distributed_testing import torch_compat

torch_compat.install()

from torch.testing._internal import common_utils
from torch.testing._internal.common_distributed import MultiThreadedTestCase


class TestOptions(MultiThreadedTestCase):
    @property
    def world_size(self):
        return 2

    def setUp(self):
        super().setUp()
        self._spawn_threads()

    def test_without_comments(self):
        self.assertExpectedInline("# a note\\nvalue = 2", \"\"\"\"\"\", ignore_comments=True)


if __name__ == "__main__":
    common_utils.run_tests()
"""


def test_accepting_in_rank_threads_applies_pytorch_s_options(runner: Runner) -> None:
    """PyTorch's assertExpectedInline options shape what the ranks record, so what is accepted is what it checks."""
    path = runner.write(ACCEPT_OPTIONS, header=False)
    run = runner.run(str(path), "-v", EXPECTTEST_ACCEPT="1")
    assert run.returncode == 0, run.output
    assert 'ignore_comments=True' in path.read_text() and '"""value = 2"""' in path.read_text(), path.read_text()
    again = runner.run(str(path), "-v")
    assert outcomes(again.output) == {"TestOptions.test_without_comments": "ok"}, again.output

