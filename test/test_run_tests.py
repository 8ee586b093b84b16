"""run_tests(): environment validation, defaults, exit codes and DistBackendTestCase."""

from __future__ import annotations

import pytest
from conftest import Runner, outcomes, wait_gone

pytestmark = pytest.mark.slow

ENV_FILE = """
class TestEnv(DistBackendTestCase):
    def test_group(self):
        self.assertTrue(dist.is_initialized())
        self.assertEqual(dist.get_world_size(), self.world_size)
        self.assertEqual(dist.get_backend(), os.environ["BACKEND"])
        t = torch.ones(1)
        dist.all_reduce(t)
        self.assertEqual(t.item(), float(self.world_size))
        print(f"WORLD {self.world_size} TEMP_DIR {os.environ['TEMP_DIR']}")

    def test_barrier(self):
        for _ in range(3):
            self._barrier()

if __name__ == "__main__":
    run_tests()
"""


def _error_line(output: str) -> str:
    lines = [line for line in output.splitlines() if ": error: " in line]
    assert len(lines) == 1, output
    return lines[0].split(": error: ", 1)[1]


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"BACKEND": "bogus"},
            "BACKEND must be one of gloo, nccl, ucc, mpi, xccl, got BACKEND='bogus'. "
            "This torch build has: gloo. Example: BACKEND=gloo WORLD_SIZE=2 python test_x.py",
        ),
        (
            {"WORLD_SIZE": "two"},
            "WORLD_SIZE must be an integer >= 1, got WORLD_SIZE='two'. Example: WORLD_SIZE=2 python test_x.py",
        ),
        ({"WORLD_SIZE": "0"}, "WORLD_SIZE must be an integer >= 1, got WORLD_SIZE='0'."),
        ({"WORLD_SIZE": "-1"}, "WORLD_SIZE must be an integer >= 1, got WORLD_SIZE='-1'."),
        (
            {"TEMP_DIR": "/nonexistent/dt"},
            "TEMP_DIR must be an existing, writable directory, got TEMP_DIR='/nonexistent/dt', "
            "which does not exist. Example: mkdir -p /tmp/dt && TEMP_DIR=/tmp/dt BACKEND=gloo "
            "WORLD_SIZE=2 python test_x.py",
        ),
        ({"TEMP_DIR": "/etc/hostname"}, "got TEMP_DIR='/etc/hostname', which is not a directory."),
        ({"TEMP_DIR": "/proc"}, "got TEMP_DIR='/proc', which is not writable"),
        (
            {"INIT_METHOD": "ftp://x"},
            "INIT_METHOD must be file://, env:// or tcp://HOST:PORT, got INIT_METHOD='ftp://x'.",
        ),
        (
            {"DISTRIBUTED_TESTING_START_METHOD": "thread"},
            "DISTRIBUTED_TESTING_START_METHOD must be one of fork, spawn, got "
            "DISTRIBUTED_TESTING_START_METHOD='thread'.",
        ),
        ({"DISTRIBUTED_TESTING_TIMEOUT": "soon"}, "DISTRIBUTED_TESTING_TIMEOUT must be a number of seconds > 0"),
    ],
)
def test_bad_environment_stops_the_run_with_exit_code_2(runner: Runner, env, message):
    marker = runner.tmp_path / "ran"
    path = runner.write(f"""
        class TestNever(DistBackendTestCase):
            def test_x(self):
                open({str(marker)!r}, "w").close()

        if __name__ == "__main__":
            run_tests()
    """)
    run = runner.run(str(path), **env)
    assert run.returncode == 2, run.output
    assert message in _error_line(run.output)
    assert "Traceback" not in run.output
    assert not marker.exists()


def test_strict_env_names_every_missing_variable(runner: Runner):
    path = runner.write(ENV_FILE)
    run = runner.run(str(path), "--strict-env", BACKEND="gloo")
    assert run.returncode == 2
    assert _error_line(run.output).startswith(
        "--strict-env: WORLD_SIZE, TEMP_DIR are not set; strict mode needs each of BACKEND, WORLD_SIZE, TEMP_DIR."
    )


def test_strict_env_with_everything_set_runs(runner: Runner):
    temp = runner.tmp_path / "scratch"
    temp.mkdir()
    path = runner.write(ENV_FILE)
    run = runner.run(str(path), "--strict-env", "-v", BACKEND="gloo", WORLD_SIZE="3", TEMP_DIR=str(temp))
    assert run.returncode == 0, run.output
    assert outcomes(run.output) == {"TestEnv.test_group": "ok", "TestEnv.test_barrier": "ok"}
    assert "distributed_testing: defaults" in run.output  # INIT_METHOD was defaulted
    assert sorted(p.name for p in temp.iterdir()) == ["barrier", "test_dir"]
    assert list((temp / "barrier").iterdir()) == []  # barrier files removed after each test


def test_defaults_are_named_in_one_line_and_used(runner: Runner):
    path = runner.write(ENV_FILE)
    run = runner.run(str(path), "-v")
    assert run.returncode == 0, run.output
    notes = [line for line in run.output.splitlines() if line.startswith("distributed_testing: defaults")]
    assert notes == [
        "distributed_testing: defaults BACKEND=gloo, INIT_METHOD=file://, "
        "TEMP_DIR=<private, removed at exit>, WORLD_SIZE=<each class's own>"
    ]
    assert runner.leftovers() == []
    assert wait_gone(str(runner.tmp_path)) == []


def test_world_size_and_env_init_method_reach_the_ranks(runner: Runner):
    path = runner.write(ENV_FILE.replace("self.assertTrue(dist.is_initialized())", "assert dist.is_initialized()"))
    run = runner.run(str(path), "-v", WORLD_SIZE="4", INIT_METHOD="env://", DISTRIBUTED_TESTING_SHOW_OUTPUT="1")
    assert run.returncode == 0, run.output
    assert "[rank 3] WORLD 4 TEMP_DIR" in run.output


def test_a_world_size_property_that_is_not_an_int(runner: Runner):
    path = runner.write("""
        class TestBadSize(MultiProcessTestCase):
            @property
            def world_size(self):
                return "three"

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
    # Names the class and shows a class attribute: WORLD_SIZE=2 would change nothing here.
    assert _error_line(run.output) == (
        "TestBadSize.world_size must be an integer >= 1 (or 0, when no rank can run here: its tests skip), "
        "got TestBadSize.world_size='three'. Example: class TestBadSize(...): world_size = 2"
    )


def test_a_class_without_tests_is_not_a_silent_pass(runner: Runner):
    path = runner.write("""
        class TestEmpty(MultiProcessTestCase):
            def helper(self):
                pass

        if __name__ == "__main__":
            run_tests()
    """)
    run = runner.run(str(path))
    assert run.returncode == 5, run.output
    assert "test_x.py: no tests ran: test_x.py defines no test_* methods" in run.output


def test_a_filter_that_matches_nothing(runner: Runner):
    run = runner.run(str(runner.write(ENV_FILE)), "-k", "nothing_like_this")
    assert run.returncode == 5, run.output
    assert "no tests ran: no test matches -k *nothing_like_this*" in run.output


def test_a_test_name_that_does_not_exist(runner: Runner):
    run = runner.run(str(runner.write(ENV_FILE)), "TestEnv.test_nope")
    assert run.returncode == 2, run.output
    assert _error_line(run.output).startswith(
        "no test named 'TestEnv.test_nope' in test_x.py; available: TestEnv.test_barrier, TestEnv.test_group."
    )
    assert "Traceback" not in run.output


def test_k_selects_tests(runner: Runner):
    run = runner.run(str(runner.write(ENV_FILE)), "-v", "-k", "barrier")
    assert run.returncode == 0, run.output
    assert outcomes(run.output) == {"TestEnv.test_barrier": "ok"}


def test_the_example_file_from_the_readme(runner: Runner):
    from pathlib import Path

    example = Path(__file__).with_name("example_allreduce.py")
    run = runner.run(str(example), "-v")
    assert run.returncode == 0, run.output
    assert outcomes(run.output) == {
        "TestAllReduce.test_sum": "ok",
        "TestAllReduce.test_on_two_gpus": "skipped 'needs 2 CUDA devices, found 0'",
        "TestFromEnvironment.test_all_gather": "ok",
        "TestFromEnvironment.test_barrier": "ok",
    }
    assert runner.leftovers() == []


def test_a_file_init_method_directory_gives_each_test_its_own_file(runner: Runner):
    # PyTorch's run_test.py sets INIT_METHOD=file://$TEMP_DIR/ for test_distributed_spawn.py.
    shared = runner.tmp_path / "rendezvous"
    shared.mkdir()
    run = runner.run(str(runner.write(ENV_FILE)), "-v", INIT_METHOD=f"file://{shared}/")
    assert run.returncode == 0, run.output
    assert outcomes(run.output) == {"TestEnv.test_group": "ok", "TestEnv.test_barrier": "ok"}
    assert list(shared.iterdir()) == []  # each test's file is gone with its process group
