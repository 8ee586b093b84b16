"""MultiProcessTestCase end to end: real test files, real rank processes, real gloo.

One file with a test per case runs once per start method; each pytest test
asserts on the outcome and report of one case, as a user would read them.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import Run, Runner, outcomes, reports, wait_gone

pytestmark = pytest.mark.slow

CASES = """
class TestCases(MultiProcessTestCase):
    timeout = 120

    @property
    def world_size(self):
        return 3

    def setUp(self):
        super().setUp()
        self._spawn_processes()

    def _pg(self):
        dist.init_process_group("gloo", init_method=f"file://{self.file_name}",
                                rank=self.rank, world_size=self.world_size)

    @requires_gloo()
    def test_sum(self):
        self._pg()
        t = torch.tensor([float(self.rank)])
        dist.all_reduce(t)
        self.assertEqual(t.item(), 3.0)

    def test_raise_one(self):
        print(f"hello from rank {self.rank}")
        if self.rank == 2:
            raise ValueError("boom")
        time.sleep(60)  # stopped as soon as rank 2 fails

    def test_raise_all(self):
        self._pg()
        dist.barrier()
        self.assertEqual(1, 2, "all ranks disagree")

    def test_segfault(self):
        if self.rank == 1:
            os.kill(os.getpid(), signal.SIGSEGV)

    def test_os_exit(self):
        if self.rank == 1:
            os._exit(3)

    def test_sys_exit(self):
        if self.rank == 0:
            sys.exit(4)

    @skip_if_lt_x_gpu(2)
    def test_parent_skip(self):
        open(os.path.join(os.environ["MARKER_DIR"], "ran"), "w").close()

    def test_rank_skip(self):
        raise unittest.SkipTest("only on tuesdays")

    def test_rank_skip_exit_code(self):
        sys.exit(TEST_SKIPS["multi-gpu-2"].exit_code)

    def test_quiet_pass(self):
        print("chatter from a passing rank")

    def test_subtest(self):
        for i in range(2):
            with self.subTest(i=i):
                self.assertNotEqual(i + self.rank, 2)

    def test_rank_1_skips_while_the_others_wait(self):
        self._pg()
        if self.rank == 1:
            self.skipTest("rank 1 has no GPU")
        dist.all_reduce(torch.ones(1))  # rank 1 left: connection closed, as on PyTorch's framework

    def test_subtest_failure_ends_the_rank(self):
        self._pg()

        def check(x):
            if self.rank == 1 and x == 1:
                self.assertEqual(x, 0, "rank 1 disagrees")
            dist.all_reduce(torch.ones(1))  # the others wait here for rank 1, which has left: no hang

        run_subtests(self, {"x": [1, 2]}, check)

    @unittest.expectedFailure
    def test_expected_failure(self):
        self.assertEqual(self.rank, -5)

    def test_errors_in_setup_are_not_rank_failures(self):
        self.assertTrue(self.file_name.endswith("rendezvous"))
        self.assertEqual(self.world_size, 3)
        self.assertIn(self.rank, (0, 1, 2))


@requires_world_size(2)
class TestOddSizeSkip(MultiProcessTestCase):
    def setUp(self):
        super().setUp()
        self._spawn_processes()

    @property
    def world_size(self):
        return 3

    @skip_if_odd_worldsize
    def test_even_only(self):
        open(os.path.join(os.environ["MARKER_DIR"], "ran-odd"), "w").close()


@unittest.skip("whole class off")
class TestSkippedClass(MultiProcessTestCase):
    def setUp(self):
        super().setUp()
        self._spawn_processes()

    def test_never(self):
        open(os.path.join(os.environ["MARKER_DIR"], "ran-class"), "w").close()


if __name__ == "__main__":
    run_tests()
"""


def _run_cases(tmp: Path, method: str, *names: str) -> tuple[Run, Runner, Path]:
    runner = Runner(tmp)
    markers = tmp / "markers"
    markers.mkdir()
    path = runner.write(CASES)
    run = runner.run(str(path), "-v", *names, DISTRIBUTED_TESTING_START_METHOD=method, MARKER_DIR=str(markers))
    return run, runner, markers


@pytest.fixture(scope="module")
def cases(tmp_path_factory: pytest.TempPathFactory) -> tuple[Run, Runner, Path]:
    """Every case, with the default fast start method."""
    return _run_cases(tmp_path_factory.mktemp("cases-fork"), "fork")


# spawn costs seconds per test: a representative subset must fold the same way.
SPAWN_SUBSET = ["TestCases.test_sum", "TestCases.test_raise_one", "TestCases.test_segfault",
                "TestCases.test_rank_skip", "TestCases.test_parent_skip"]


def test_spawn_folds_outcomes_like_fork(cases, tmp_path):
    run, runner, _ = _run_cases(tmp_path, "spawn", *SPAWN_SUBSET)
    expected = {name: outcomes(cases[0].output)[name] for name in SPAWN_SUBSET}
    assert outcomes(run.output) == expected, run.output
    assert "rank 2 of 3 failed: ValueError: boom" in reports(run.output)["TestCases.test_raise_one"]
    assert "rank 1 of 3 failed: died with SIGSEGV" in reports(run.output)["TestCases.test_segfault"]
    assert "Re-run: BACKEND=gloo WORLD_SIZE=3 DISTRIBUTED_TESTING_START_METHOD=spawn python test_x.py" in run.output
    assert runner.leftovers() == []
    assert wait_gone(str(runner.tmp_path)) == []


def _outcome(cases: tuple[Run, Runner, Path], name: str) -> str:
    return outcomes(cases[0].output)[name]


def _report(cases: tuple[Run, Runner, Path], name: str) -> str:
    return reports(cases[0].output)[name]


def test_the_run_fails_overall_with_exit_code_1(cases):
    assert cases[0].returncode == 1, cases[0].output


def test_all_ranks_pass(cases):
    assert _outcome(cases, "TestCases.test_sum") == "ok"


def test_one_rank_raises_names_the_rank_and_its_traceback(cases):
    assert _outcome(cases, "TestCases.test_raise_one") == "ERROR"
    report = _report(cases, "TestCases.test_raise_one")
    assert "rank 2 of 3 failed: ValueError: boom" in report
    assert 'raise ValueError("boom")' in report
    assert "ranks 0, 1 were stopped" in report or "ranks 0-1 were stopped" in report
    assert "[rank 2] hello from rank 2" in report


def test_report_ends_with_a_rerun_line(cases):
    report = _report(cases, "TestCases.test_raise_one").rstrip()
    last = report.splitlines()[-1]
    assert last.startswith("Re-run: BACKEND=gloo WORLD_SIZE=3 ")
    assert last.endswith("python test_x.py TestCases.test_raise_one")


def test_same_failure_on_every_rank_is_shown_once(cases):
    assert _outcome(cases, "TestCases.test_raise_all") == "FAIL"
    report = _report(cases, "TestCases.test_raise_all")
    assert "ranks 0-2 of 3 failed: same AssertionError: 1 != 2 : all ranks disagree" in report
    assert report.count('self.assertEqual(1, 2, "all ranks disagree")') == 1


def test_a_segfault_on_a_non_first_rank_fails_with_the_signal_name(cases):
    assert _outcome(cases, "TestCases.test_segfault") == "ERROR"
    report = _report(cases, "TestCases.test_segfault")
    assert "rank 1 of 3 failed: died with SIGSEGV" in report
    assert "[rank 1] Fatal Python error: Segmentation fault" in report


def test_os_exit_names_the_exit_code(cases):
    assert _outcome(cases, "TestCases.test_os_exit") == "ERROR"
    assert "rank 1 of 3 failed: exited with code 3 before reporting a result" in _report(
        cases, "TestCases.test_os_exit"
    )


def test_sys_exit_in_a_rank_is_a_failure(cases):
    assert _outcome(cases, "TestCases.test_sys_exit") == "ERROR"
    assert "rank 0 of 3 failed: the test called sys.exit(4)" in _report(cases, "TestCases.test_sys_exit")


def test_a_guard_known_in_the_parent_skips_before_any_process(cases):
    assert _outcome(cases, "TestCases.test_parent_skip") == "skipped 'needs 2 CUDA devices, found 0'"
    assert not (cases[2] / "ran").exists()


def test_a_skip_raised_in_a_rank_keeps_its_reason(cases):
    assert _outcome(cases, "TestCases.test_rank_skip") == "skipped 'only on tuesdays'"


def test_a_pytorch_skip_exit_code_keeps_its_message(cases):
    assert _outcome(cases, "TestCases.test_rank_skip_exit_code") == "skipped 'Need at least 2 CUDA devices'"


def test_passing_tests_stay_quiet(cases):
    assert _outcome(cases, "TestCases.test_quiet_pass") == "ok"
    assert "chatter from a passing rank" not in cases[0].output


def test_subtest_failures_name_the_subtest(cases):
    assert _outcome(cases, "TestCases.test_subtest") == "FAIL"
    report = _report(cases, "TestCases.test_subtest")
    assert "rank 1 of 3 failed: AssertionError: 2 == 2 (in subTest (i=1))" in report
    assert "rank 2 of 3 failed: AssertionError: 2 == 2 (in subTest (i=0))" in report


def test_a_failed_subtest_ends_its_rank_as_on_pytorch_s(cases):
    assert _outcome(cases, "TestCases.test_subtest_failure_ends_the_rank") == "FAIL"
    report = _report(cases, "TestCases.test_subtest_failure_ends_the_rank")
    assert "rank 1 of 3 failed: AssertionError: 1 != 0 : rank 1 disagrees (in subTest (x=1))" in report
    assert "timed out" not in report and "rank 1 failed first" in report, report


def test_a_rank_that_skips_alone_is_named_as_the_likely_cause(cases):
    assert _outcome(cases, "TestCases.test_rank_1_skips_while_the_others_wait") == "ERROR"  # as PyTorch's
    report = _report(cases, "TestCases.test_rank_1_skips_while_the_others_wait")
    assert "rank 1 skipped: rank 1 has no GPU (the failures above are likely a consequence" in report, report


def test_expected_failure_is_recorded_as_expected(cases):
    assert _outcome(cases, "TestCases.test_expected_failure") == "expected failure"


def test_rank_attributes(cases):
    assert _outcome(cases, "TestCases.test_errors_in_setup_are_not_rank_failures") == "ok"


def test_world_size_guard_skips_in_the_parent(cases):
    assert _outcome(cases, "TestOddSizeSkip.test_even_only") == "skipped 'needs an even world size, got 3'"
    assert not (cases[2] / "ran-odd").exists()


def test_a_skipped_class_starts_no_process(cases):
    assert _outcome(cases, "TestSkippedClass.test_never") == "skipped 'whole class off'"
    assert not (cases[2] / "ran-class").exists()


def test_nothing_is_left_behind(cases):
    _, runner, _ = cases
    assert runner.leftovers() == []
    assert wait_gone(str(runner.tmp_path)) == []


HANG = """
class TestHang(MultiProcessTestCase):
    timeout = 3

    @property
    def world_size(self):
        return 2

    def setUp(self):
        super().setUp()
        self._spawn_processes()

    def test_hang(self):
        dist.init_process_group("gloo", init_method=f"file://{self.file_name}",
                                rank=self.rank, world_size=self.world_size)
        if self.rank == 1:
            time.sleep(600)
        dist.all_reduce(torch.ones(1))

if __name__ == "__main__":
    run_tests()
"""


def test_a_hang_reports_where_every_rank_was(runner):
    run = runner.run(str(runner.write(HANG)), "-v")
    assert run.returncode == 1, run.output
    report = reports(run.output)["TestHang.test_hang"]
    assert "__main__.TestHang.test_hang timed out after 3 s; ranks 0-1 still running" in report
    assert "rank 0: in all_reduce (collective #1 of the default group) at test_x.py:24" in report
    assert "rank 1: in time.sleep at test_x.py:23 (after collective #0)" in report
    assert "--- rank 1 stacks (most recent call first) ---" in report
    assert "_rank.py" not in report  # framework frames trimmed
    assert runner.leftovers() == []
    assert wait_gone(str(runner.tmp_path)) == []


COMPAT = """
class TestPyTorchStyle(MultiProcessTestCase):
    seen_kwargs = None

    @property
    def world_size(self):
        return 2

    def setUp(self):
        super().setUp()
        self.skip_return_code_checks = [type(self).test_any_code]
        self.special_return_code_checks = {self.test_abort: -signal.SIGABRT}
        self._spawn_processes()

    @classmethod
    def _run(cls, rank, test_name, file_name, pipe, **kwargs):
        self = cls(test_name)
        self.rank = rank
        self.file_name = file_name
        self.custom = f"built by _run for rank {rank}"
        self.run_test(test_name, pipe)

    def test_custom_run(self):
        self.assertEqual(self.custom, f"built by _run for rank {self.rank}")
        self.assertTrue(self.is_master or self.rank == 1)

    def test_any_code(self):
        os._exit(7 + self.rank)

    def test_abort(self):
        os.abort()

    def test_abort_unexpected(self):
        if self.rank == 1:
            os.abort()


class TestBrokenRun(MultiProcessTestCase):
    def setUp(self):
        super().setUp()
        self._spawn_processes()

    @classmethod
    def _run(cls, rank, test_name, file_name, pipe, **kwargs):
        raise ImportError("no module named helpers_only_on_ci")

    def test_x(self):
        pass


if __name__ == "__main__":
    run_tests()
"""


def test_a_subclass_written_for_pytorch_runs_unchanged(runner):
    run = runner.run(str(runner.write(COMPAT)), "-v")
    found = outcomes(run.output)
    assert found["TestPyTorchStyle.test_custom_run"] == "ok", run.output
    assert found["TestPyTorchStyle.test_any_code"] == "ok", run.output
    assert found["TestPyTorchStyle.test_abort"] == "ok", run.output
    assert found["TestPyTorchStyle.test_abort_unexpected"] == "ERROR"
    assert "rank 1 of 2 failed: died with SIGABRT" in reports(run.output)["TestPyTorchStyle.test_abort_unexpected"]
    report = reports(run.output)["TestBrokenRun.test_x"]
    assert "ranks 0-3 of 4 failed: same ImportError: no module named helpers_only_on_ci (in building the test case)" in report
    assert runner.leftovers() == []


def test_spawn_as_a_class_attribute(runner):
    body = CASES.replace("    timeout = 120\n", '    timeout = 120\n    start_method = "spawn"\n')
    path = runner.write(body)
    run = runner.run(str(path), "-v", "TestCases.test_sum", MARKER_DIR=str(runner.tmp_path))
    assert outcomes(run.output) == {"TestCases.test_sum": "ok"}, run.output
    assert run.returncode == 0


def test_the_same_file_under_pytest(runner):
    path = runner.write(CASES)
    run = runner.pytest(
        str(path), "-rA", "-k", "test_sum or test_raise_one or test_parent_skip or test_rank_skip",
        MARKER_DIR=str(runner.tmp_path),
    )
    assert run.returncode == 1, run.output
    assert "PASSED test_x.py::TestCases::test_sum" in run.output
    assert "FAILED test_x.py::TestCases::test_raise_one" in run.output
    assert "rank 2 of 3 failed: ValueError: boom" in run.output
    assert "Re-run: BACKEND=gloo WORLD_SIZE=3 pytest test_x.py::TestCases::test_raise_one" in run.output
    assert "SKIPPED" in run.output and "needs 2 CUDA devices, found 0" in run.output
    assert "only on tuesdays" in run.output
    assert wait_gone(str(runner.tmp_path)) == []


SLEEPER = """
class TestSleep(MultiProcessTestCase):
    world_size = 2

    def setUp(self):
        super().setUp()
        self._spawn_processes()

    def test_sleep(self):
        open(os.path.join(os.environ["MARKER_DIR"], f"started-{self.rank}"), "w").close()
        time.sleep(600)

if __name__ == "__main__":
    run_tests()
"""


def _start_sleeper(runner: Runner) -> tuple[subprocess.Popen[str], Path]:
    markers = runner.tmp_path / "markers"
    markers.mkdir()
    path = runner.write(SLEEPER)
    proc = subprocess.Popen(
        [sys.executable, str(path)],
        cwd=runner.tmp_path,
        env=runner.env(MARKER_DIR=str(markers)),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # as an interactive shell does
    )
    for _ in range(600):  # until both ranks run the test (bounded: 60 s)
        if len(list(markers.iterdir())) == 2:
            break
        time.sleep(0.1)
    assert len(list(markers.iterdir())) == 2, proc.communicate(timeout=60)[0]
    return proc, markers



@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_or_sigterm_stops_the_run_and_leaves_nothing(runner, signum):
    proc, _ = _start_sleeper(runner)
    proc.send_signal(signum)
    output = proc.communicate(timeout=60)[0]
    assert proc.returncode == 130, output
    assert "test_x.py: interrupted in __main__.TestSleep.test_sleep; every rank was stopped" in output
    assert "Traceback" not in output
    assert wait_gone(str(runner.tmp_path)) == []
    assert runner.leftovers() == []


def test_ranks_die_with_a_sigkilled_parent(runner):
    proc, _ = _start_sleeper(runner)
    proc.kill()
    proc.communicate(timeout=60)
    assert wait_gone(str(runner.tmp_path)) == []


COMPAT_EXITS = """
import multiprocessing

class TestRunExits(MultiProcessTestCase):
    world_size = 2

    def setUp(self):
        super().setUp()
        self._spawn_processes()

    @classmethod
    def _run(cls, rank, test_name, file_name, pipe, **kwargs):
        # TestDistBackend's shape: skip by exit code before the test, exit 0 after.
        if test_name == "test_skipped_by_run":
            sys.exit(TEST_SKIPS["no_cuda"].exit_code)
        self = cls(test_name)
        self.rank = rank
        self.file_name = file_name
        self.run_test(test_name, pipe)
        sys.exit(0)

    def test_passes_then_exits_0(self):
        self.assertEqual(torch.ones(3) * self.rank, torch.full((3,), float(self.rank)))

    def test_fails_then_exits_0(self):
        self.assertEqual(torch.ones(2), torch.zeros(2))

    def test_skipped_by_run(self):
        pass

    def test_world_size_and_backend_are_exported(self):
        self.assertEqual(os.environ["WORLD_SIZE"], "2")
        self.assertEqual(os.environ["BACKEND"], "gloo")

    def test_message_exit(self):
        sys.exit("fatal: config missing")

    def test_leaves_a_child_running(self):
        child = multiprocessing.get_context("fork").Process(target=time.sleep, args=(600,), daemon=True)
        child.start()
        with open(os.path.join(os.environ["MARKER_DIR"], f"child-{self.rank}"), "w") as handle:
            handle.write(str(child.pid))


class BrokenMixin:
    def setUp(self):  # forgets super().setUp(), as some mixins do
        self.mixin_ready = True


class TestAutoSpawn(BrokenMixin, DistributedTestBase):
    world_size = 2

    def test_create_pg(self):
        pg = self.create_pg("cpu")
        t = torch.tensor([1.0])
        dist.all_reduce(t, group=pg)
        self.assertEqual(t, torch.tensor([2.0]))
        self.assertEqual(self.rank_to_device("cpu"), {0: [0], 1: [0]})


if __name__ == "__main__":
    run_tests()
"""


def test_pytorch_style_run_exits_and_environment(runner):
    markers = runner.tmp_path / "markers"
    markers.mkdir()
    run = runner.run(str(runner.write(COMPAT_EXITS)), "-v", MARKER_DIR=str(markers))
    found = outcomes(run.output)
    assert found == {
        "TestRunExits.test_passes_then_exits_0": "ok",
        "TestRunExits.test_fails_then_exits_0": "FAIL",
        "TestRunExits.test_skipped_by_run": "skipped 'CUDA is not available.'",
        "TestRunExits.test_world_size_and_backend_are_exported": "ok",
        "TestRunExits.test_message_exit": "ERROR",
        "TestRunExits.test_leaves_a_child_running": "ok",
        "TestAutoSpawn.test_create_pg": "ok",
    }, run.output
    found_reports = reports(run.output)
    assert "ranks 0-1 of 2 failed: same AssertionError: Tensor-likes are not close!" in found_reports[
        "TestRunExits.test_fails_then_exits_0"
    ]
    assert "ranks 0-1 of 2 failed: same SystemExit: fatal: config missing" in found_reports[
        "TestRunExits.test_message_exit"
    ]
    children = [int(p.read_text()) for p in markers.iterdir()]
    assert len(children) == 2
    assert all(not Path(f"/proc/{pid}").exists() for pid in children)
    assert wait_gone(str(runner.tmp_path)) == []
    assert runner.leftovers() == []
