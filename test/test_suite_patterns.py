"""Patterns real suites use: a class world size of 0, BACKEND set by the test, long runs."""

from __future__ import annotations

from conftest import Runner, outcomes

ZERO_AND_ONE = """
class TestNoGpus(MultiProcessTestCase):
    world_size = min(8, torch.cuda.device_count())  # as PyTorch's FSDP and DTensor files do

    def setUp(self):
        super().setUp()
        self._spawn_processes()

    def test_needs_gpus(self):
        raise AssertionError("never runs: there is no rank")


class TestPool(MultiProcContinuousTest):
    world_size = torch.cuda.device_count()

    def test_on_the_pool(self):
        raise AssertionError("never runs")


class TestOthers(MultiProcessTestCase):
    def setUp(self):
        super().setUp()
        self._spawn_processes()

    @property
    def world_size(self):
        return 2

    def test_runs(self):
        self.assertIn(self.rank, (0, 1))

if __name__ == "__main__":
    run_tests()
"""


def test_a_class_world_size_of_0_skips_that_class_and_runs_the_rest(runner: Runner) -> None:
    path = runner.write(ZERO_AND_ONE)
    for run in (runner.run(str(path), "-v"), runner.pytest(str(path), "-v", "-rs")):
        assert run.returncode == 0, run.output
        assert "TestNoGpus.world_size is 0: torch.cuda.device_count() is 0 here; no rank to run" in run.output
        assert "TestPool.world_size is 0: torch.cuda.device_count() is 0 here; no rank to run" in run.output
    found = outcomes(runner.run(str(path), "-v").output)
    assert found["TestOthers.test_runs"] == "ok"
    assert found["TestNoGpus.test_needs_gpus"].startswith("skipped")
    assert runner.leftovers() == []


def test_a_negative_class_world_size_is_a_usage_error_naming_the_class(runner: Runner) -> None:
    path = runner.write("""
        class TestBad(MultiProcessTestCase):
            world_size = -1

            def setUp(self):
                super().setUp()
                self._spawn_processes()

            def test_x(self):
                pass

        if __name__ == "__main__":
            run_tests()
        """)
    run = runner.run(str(path))
    assert run.returncode == 2, run.output
    assert "TestBad.world_size must be an integer >= 1 (or 0, when no rank can run here: its tests skip), " \
           "got TestBad.world_size=-1. Example: class TestBad(...): world_size = 2" in run.stderr
    assert "Traceback" not in run.output


BACKEND_IN_SETUP = """
class TestSetsBackend(MultiProcessTestCase):
    backend_value = "nccl"

    def setUp(self):
        super().setUp()
        os.environ["BACKEND"] = self.backend_value
        self._spawn_processes()

    @property
    def world_size(self):
        return 2

    def test_x(self):
        pass


class TestBogus(TestSetsBackend):
    backend_value = "bogus"


class TestGloo(TestSetsBackend):
    backend_value = "gloo"

    def test_x(self):
        self.assertEqual(os.environ["BACKEND"], "gloo")

if __name__ == "__main__":
    run_tests()
"""


def test_a_backend_the_test_sets_is_named_as_the_test_s_not_a_config_traceback(runner: Runner) -> None:
    path = runner.write(BACKEND_IN_SETUP)
    run = runner.run(str(path), "-v")
    assert run.returncode == 1, run.output  # the unknown name is an error
    found = outcomes(run.output)
    assert found["TestSetsBackend.test_x"] == (
        "skipped \"BACKEND='nccl' was set by the test, not the shell (the shell set none), and this torch "
        "build cannot run it: it has gloo\""
    ), run.output
    assert found["TestGloo.test_x"] == "ok"
    assert found["TestBogus.test_x"] == "ERROR"
    assert "BACKEND='bogus' was set by the test, not the shell (the shell set none), and this torch build " \
           "knows no such backend: it has gloo. Example: os.environ['BACKEND'] = 'gloo'" in run.output
    assert "_config.py" not in run.output and "_oneshot.py" not in run.output
    assert runner.leftovers() == []


def test_a_long_run_releases_each_test_and_what_it_kept(runner: Runner) -> None:
    # Each test keeps an open file and 4 MiB on self, in a reference cycle: a run that
    # kept its tests (or could not collect them) would hold 500 files and 2 GiB.
    path = runner.write("""
        def _open_fds():
            return len(os.listdir("/proc/self/fd"))

        def _rss_mib():
            with open("/proc/self/status") as status:
                line = next(l for l in status if l.startswith("VmRSS:"))
            return int(line.split()[1]) // 1024

        SEEN = {}

        class TestLong(unittest.TestCase):
            def setUp(self):
                self.kept = open(__file__)
                self.buffer = bytearray(4 << 20)
                self.buffer[::4096] = b"x" * len(self.buffer[::4096])  # touched: resident
                self.me = self  # a cycle: freed by the collector, not by reference counts

        for i in range(500):
            setattr(TestLong, f"test_{i:03d}", lambda self, i=i: SEEN.setdefault(i, (_open_fds(), _rss_mib())))

        class TestZLast(unittest.TestCase):
            def test_flat(self):
                import gc
                gc.collect()
                fds, rss = _open_fds(), _rss_mib()
                first_fds, first_rss = SEEN[10]
                print(f"fds {first_fds} -> {fds}, rss {first_rss} -> {rss} MiB")
                self.assertLess(fds - first_fds, 10)
                self.assertLess(rss - first_rss, 200)

        if __name__ == "__main__":
            run_tests()
        """)
    run = runner.run(str(path), "-v")
    assert run.returncode == 0, run.output
    assert "test_flat (__main__.TestZLast.test_flat) ... ok" in run.output


def test_what_the_module_made_at_import_is_finalized_at_exit(runner: Runner) -> None:
    # PyTorch's test_store.py keeps a FileStore on a class, made at import: the store removes its
    # file when it is destroyed, which a plain unittest run does at exit. Ours froze it (gc.freeze)
    # and left the file behind.
    path = runner.write("""
        import tempfile

        class TestClassStore(unittest.TestCase):
            store = dist.FileStore(tempfile.NamedTemporaryFile(delete=False).name, 1)

            def test_uses_it(self):
                self.store.set("key", "value")
                self.assertEqual(self.store.get("key"), b"value")

        if __name__ == "__main__":
            run_tests()
        """)
    run = runner.run(str(path))
    assert run.returncode == 0, run.output
    assert runner.leftovers() == []


def test_a_one_rank_assertion_under_with_comms_stays_a_failure_and_names_the_teardown(runner: Runner) -> None:
    path = runner.write("""
        class TestComms(DTensorTestBase):
            @property
            def world_size(self):
                return 2

            @with_comms
            def test_one_rank(self):
                self.assertEqual(self.rank, 0)

        if __name__ == "__main__":
            run_tests()
        """)
    run = runner.run(str(path), "-v")
    assert run.returncode == 1, run.output
    assert outcomes(run.output)["TestComms.test_one_rank"] == "FAIL"  # not ERROR: rank 0's error is a consequence
    lines = run.output.splitlines()
    assert "RankAssertionError: rank 1 of 2 failed: AssertionError: 1 != 0" in run.output
    assert any(line.startswith("rank 0 of 2 failed: DistributedTestingError: with_comms teardown (after the test "
                               "passed on this rank) failed: RuntimeError:") for line in lines), run.output
    assert "rank 1 failed first; the other failures may be consequences" in lines
    assert runner.leftovers() == []


def test_an_nccl_pool_without_gpus_skips_with_the_reason(runner: Runner) -> None:
    path = runner.write("""
        class TestNcclPool(MultiProcContinuousTest):
            world_size = 2

            @classmethod
            def backend_str(cls):
                return "nccl"

            def test_x(self):
                pass

        if __name__ == "__main__":
            run_tests()
        """)
    run = runner.run(str(path), "-v")
    assert run.returncode == 0, run.output
    reason = outcomes(run.output)["TestNcclPool.test_x"]
    assert reason.startswith("skipped 'needs ") and "nccl" in reason, run.output
    assert "AttributeError" not in run.output


def test_one_rank_skipping_says_which_and_that_the_others_passed(runner: Runner) -> None:
    path = runner.write("""
        class TestSkipOne(MultiProcessTestCase):
            world_size = 3

            def setUp(self):
                super().setUp()
                self._spawn_processes()

            def test_x(self):
                if self.rank == 1:
                    self.skipTest("not on rank 1")

        if __name__ == "__main__":
            run_tests()
        """)
    run = runner.run(str(path), "-v")
    assert run.returncode == 0, run.output
    assert outcomes(run.output)["TestSkipOne.test_x"] == "skipped 'skipped on rank 1: not on rank 1 (ranks 0, 2 passed)'"


def test_the_rerun_line_after_python_m_runs_the_test_again(runner: Runner) -> None:
    # The file does not call run_tests(): "python test_x.py TestX.test_y" would run nothing.
    path = runner.write("""
        class TestRerun(MultiProcessTestCase):
            world_size = 2

            def setUp(self):
                super().setUp()
                self._spawn_processes()

            def test_fails(self):
                self.assertEqual(self.rank, 0)

            def test_passes(self):
                pass
        """)
    run = runner.run("-m", "distributed_testing", str(path))
    assert run.returncode == 1, run.output
    line = next(text for text in run.output.splitlines() if text.startswith("Re-run: "))
    assert line == "Re-run: BACKEND=gloo WORLD_SIZE=2 python -m distributed_testing test_x.py TestRerun.test_fails"
    env = dict(part.split("=", 1) for part in line.split()[1:3])
    again = runner.run(*line.split()[4:], **env)
    assert again.returncode == 1 and "Ran 1 test" in again.output, again.output


PLAIN_PAIR = """
class TestPair(MultiProcessTestCase):
    world_size = 2

    def setUp(self):
        super().setUp()
        self._spawn_processes()

    def test_x(self):
        pass

if __name__ == "__main__":
    run_tests()
"""


def test_pytest_checks_the_environment_before_any_test_as_python_does(runner: Runner) -> None:
    path = runner.write(PLAIN_PAIR)
    python = runner.run(str(path), BACKEND="bogus")
    pytest_run = runner.pytest(str(path), BACKEND="bogus")
    assert python.returncode == 2 and pytest_run.returncode == 4, pytest_run.output
    message = "BACKEND must be one of gloo, nccl, ucc, mpi, xccl, got BACKEND='bogus'."
    assert message in python.stderr and message in pytest_run.stderr
    assert "passed" not in pytest_run.stdout and "failed" not in pytest_run.stdout  # no test ran
    option = runner.pytest(str(path), "--dt-backend", "bogus")
    assert option.returncode == 4 and "(the value came from --dt-backend)" in option.stderr, option.output


def test_a_debug_rank_no_selected_test_has_stops_the_run(runner: Runner) -> None:
    path = runner.write(PLAIN_PAIR)
    python = runner.run(str(path), DISTRIBUTED_TESTING_DEBUG_RANK="9")
    pytest_run = runner.pytest(str(path), DISTRIBUTED_TESTING_DEBUG_RANK="9")
    assert python.returncode == 2 and pytest_run.returncode == 4, pytest_run.output
    for run, module in ((python, "__main__"), (pytest_run, "test_x")):
        text = f"DISTRIBUTED_TESTING_DEBUG_RANK=9 is not a rank of {module}.TestPair.test_x, whose world size is 2"
        assert text in run.stderr, run.output


def test_a_method_bound_to_the_test_pickles_in_a_rank_as_rpc_suites_send_it(runner: Runner) -> None:
    # rpc_test.py's test_my_parameter_server sends self._trainer_func to its peers.
    path = runner.write("""
        import pickle

        class TestPickles(MultiProcessTestCase):
            world_size = 2

            def setUp(self):
                super().setUp()
                self._spawn_processes()

            def _double(self, x):
                return 2 * x

            def test_bound_method(self):
                again = pickle.loads(pickle.dumps(self._double))
                self.assertEqual(again(21), 42)

        if __name__ == "__main__":
            run_tests()
        """)
    run = runner.run(str(path), "-v")
    assert run.returncode == 0, run.output
    assert outcomes(run.output)["TestPickles.test_bound_method"] == "ok"


def test_fake_pg_reaches_a_run_override_as_on_pytorch(runner: Runner) -> None:
    path = runner.write("""
        from torch.testing._internal.distributed.fake_pg import FakeStore

        class TestFake(MultiProcessTestCase):
            world_size = 2
            fake_pg = True

            def setUp(self):
                super().setUp()
                self._spawn_processes()

            @classmethod
            def _run(cls, rank, test_name, file_name, parent_pipe, **kwargs):
                assert kwargs["fake_pg"] is True
                dist.init_process_group("fake", rank=rank, world_size=2, store=FakeStore())
                super()._run(rank, test_name, file_name, parent_pipe, **kwargs)

            def test_on_the_fake_group(self):
                t = torch.ones(2)
                dist.all_reduce(t)  # the fake group returns at once
                self.assertEqual(dist.get_backend(), "fake")

        if __name__ == "__main__":
            run_tests()
        """)
    run = runner.run(str(path), "-v")
    assert run.returncode == 0, run.output
    assert outcomes(run.output)["TestFake.test_on_the_fake_group"] == "ok"
