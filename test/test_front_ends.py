"""Front ends through real subprocesses: the pytest plugin, python -m distributed_testing, --debug-rank."""

from __future__ import annotations

import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest
from conftest import Runner, outcomes, reports, wait_gone

pytestmark = pytest.mark.slow

SUITE = """
class TestPlugin(MultiProcessTestCase):
    def setUp(self):
        super().setUp()
        self._spawn_processes()

    @pytest.mark.world_size(2, 3)
    def test_marked(self):
        self.assertIn(self.world_size, (2, 3))
        dist.init_process_group("gloo", init_method=f"file://{self.file_name}", rank=self.rank,
                                world_size=self.world_size)
        self.assertEqual(dist.get_world_size(), int(self._testMethodName[-1]))

    def test_fails_on_rank_1(self):
        if self.rank == 1:
            raise ValueError("rank 1 disagrees")

    @skip_if_lt_x_gpu(2)
    def test_gpu(self):
        pass


class TestEnvOptions(DistBackendTestCase):
    def test_options_reach_the_ranks(self):
        self.assertEqual(dist.get_world_size(), int(os.environ["EXPECT_WORLD"]))
        self.assertEqual(os.environ["DISTRIBUTED_TESTING_TIMEOUT"], "77")
"""


def _suite(runner: Runner) -> str:
    return str(runner.write("import pytest\n" + SUITE, name="test_suite.py"))


def test_pytest_outcomes_options_and_junit(runner):
    path = _suite(runner)
    junit = runner.tmp_path / "junit.xml"
    run = runner.pytest(
        path, "-v", "-rs", "--dt-world-size", "3", "--dt-timeout", "77", f"--junitxml={junit}", EXPECT_WORLD="3"
    )
    assert run.returncode == 1, run.output
    for name in ("test_marked_world_size_2", "test_marked_world_size_3"):
        assert f"test_suite.py::TestPlugin::{name} PASSED" in run.output
    assert "test_suite.py::TestPlugin::test_fails_on_rank_1 FAILED" in run.output
    assert "test_suite.py::TestEnvOptions::test_options_reach_the_ranks PASSED" in run.output
    assert "needs 2 CUDA devices, found 0" in run.output
    # The failure is the rank report alone: no unittest frames before it.
    section = run.output.split("_ TestPlugin.test_fails_on_rank_1 _")[1]
    assert section.lstrip("_ \n").startswith("RankFailure: rank 1 of 3 failed: ValueError: rank 1 disagrees")
    assert "unittest/case.py" not in section.split("short test summary")[0]
    cases = {c.get("name"): c for c in ET.parse(junit).getroot().iter("testcase")}
    assert set(cases) == {
        "test_marked_world_size_2",
        "test_marked_world_size_3",
        "test_fails_on_rank_1",
        "test_gpu",
        "test_options_reach_the_ranks",
    }
    assert cases["test_fails_on_rank_1"].find("failure") is not None
    assert cases["test_gpu"].find("skipped") is not None
    assert wait_gone(str(runner.tmp_path)) == []


def test_pytest_k_and_x(runner):
    path = _suite(runner)
    run = runner.pytest(path, "-q", "-x", "-k", "fails or marked")
    assert run.returncode == 1, run.output
    assert "1 failed" in run.output
    assert "passed" not in run.output.splitlines()[-1] or "2 passed" in run.output


def test_pytest_xdist(runner):
    pytest.importorskip("xdist")
    path = _suite(runner)
    # One retry: gloo's connectFullMesh now and then fails on a loaded machine ("Connection closed
    # by peer" in init_process_group, its peer fine); a failure of ours fails both attempts.
    run = runner.pytest(path, "-q", "-n", "2", "--dt-timeout", "77", "--dt-retries", "1", "-k", "marked or options",
                        EXPECT_WORLD="2")
    assert run.returncode == 0, run.output
    assert "3 passed" in run.output
    assert wait_gone(str(runner.tmp_path)) == []


def test_pytest_bad_option_is_a_usage_error(runner):
    run = runner.pytest(_suite(runner), "--dt-world-size", "0")
    assert run.returncode == 4, run.output  # pytest's own code for usage errors
    assert "WORLD_SIZE must be an integer >= 1, got WORLD_SIZE='0'" in run.output


def test_the_plugin_does_not_import_torch_when_unused(runner):
    runner.write("def test_plain():\n    import sys\n    assert 'torch' not in sys.modules\n", "test_plain.py", header=False)
    run = runner.pytest("test_plain.py", "-q")
    assert run.returncode == 0, run.output


CLI_FILE = """
class TestCli(DistBackendTestCase):
    def test_world(self):
        self.assertEqual(dist.get_world_size(), int(os.environ["EXPECT_WORLD"]))
        self.assertEqual(os.environ["INIT_METHOD"], "env://")
"""


def test_python_m_sets_the_environment_and_runs_a_file_without_main(runner):
    path = runner.write(CLI_FILE, name="test_cli.py")
    run = runner.run("-m", "distributed_testing", "--world-size", "3", "--init-method", "env://", str(path), "-v",
                     EXPECT_WORLD="3")
    assert run.returncode == 0, run.output
    assert outcomes(run.output) == {"TestCli.test_world": "ok"}


def test_python_m_with_a_file_that_calls_run_tests(runner):
    path = runner.write(CLI_FILE + "\nif __name__ == '__main__':\n    run_tests()\n", name="test_cli.py")
    run = runner.run("-m", "distributed_testing", "--world-size", "2", "--init-method", "env://", str(path),
                     EXPECT_WORLD="2")
    assert run.returncode == 0, run.output


COMPILED = """\
# -*- coding: latin-1 -*-
import torch.distributed as dist
from distributed_testing import MultiProcessTestCase, run_tests


class TestCompiled(MultiProcessTestCase):
    world_size = 2

    def setUp(self):
        super().setUp()
        self._spawn_processes()

    def test_annotations_are_objects(self):
        def hook(state: object, bucket: dist.GradBucket) -> None:
            pass

        self.assertIs(hook.__annotations__["bucket"], dist.GradBucket)

    def test_the_coding_line_is_read(self):
        self.assertEqual(ord("\u00e9"), 0xE9)
"""


def test_python_m_compiles_the_file_as_python_does(runner):
    # Without the CLI module's own `from __future__ import annotations` (DDP's register_comm_hook
    # needs a hook's `bucket` annotation to be dist.GradBucket, not a string), and in the encoding
    # the file's coding line names.
    path = runner.tmp_path / "test_compiled.py"
    path.write_bytes(COMPILED.encode("latin-1"))
    run = runner.run("-m", "distributed_testing", str(path), "-v")
    assert run.returncode == 0, run.output
    assert outcomes(run.output) == {
        "TestCompiled.test_annotations_are_objects": "ok",
        "TestCompiled.test_the_coding_line_is_read": "ok",
    }


def test_python_m_help_documents_every_variable(runner):
    run = runner.run("-m", "distributed_testing", "--help")
    assert run.returncode == 0
    for variable in ("BACKEND", "WORLD_SIZE", "TEMP_DIR", "INIT_METHOD", "DISTRIBUTED_TESTING_START_METHOD",
                     "DISTRIBUTED_TESTING_TIMEOUT", "DISTRIBUTED_TESTING_DEBUG_RANK", "DISTRIBUTED_TESTING_SHOW_OUTPUT"):
        assert variable in run.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--world-size", "0", "test_cli.py"], "--world-size must be an integer >= 1, got --world-size '0'."),
        (["--backend", "mpi", "test_cli.py"], "--backend 'mpi' is not available in this torch build"),
        (["missing.py"], "FILE must be a Python test file, got 'missing.py', which does not exist."),
        (["--bogus", "test_cli.py"], "unrecognized arguments: --bogus"),
        (["--debug-rank", "x", "test_cli.py"], "--debug-rank must be a rank, an integer >= 0"),
    ],
)
def test_python_m_bad_input(runner, args, message):
    runner.write(CLI_FILE, name="test_cli.py")
    run = runner.run("-m", "distributed_testing", *args)
    assert run.returncode == 2, run.output
    assert message in run.stderr
    assert "Traceback" not in run.output


DEBUG = """
class TestDebug(MultiProcessTestCase):
    world_size = 3

    def setUp(self):
        super().setUp()
        self._spawn_processes()

    def test_x(self):
        print(f"rank {self.rank} in pid {os.getpid()}", flush=True)
        if self.rank == 1:
            raise ValueError("found it")

if __name__ == "__main__":
    print(f"main pid {os.getpid()}", flush=True)
    run_tests()
"""


def test_debug_rank_runs_in_the_main_process(runner):
    path = runner.write(DEBUG)
    run = runner.run(str(path), DISTRIBUTED_TESTING_DEBUG_RANK="1")
    assert run.returncode == 1, run.output
    main_pid = run.stdout.split("main pid ")[1].split()[0]
    assert f"rank 1 in pid {main_pid}" in run.stdout  # printed by the main process itself
    report = reports(run.output)["TestDebug.test_x"]
    assert "rank 1 of 3 failed: ValueError: found it" in report
    assert f"[rank 0] rank 0 in pid {main_pid}" not in report
    assert "[rank 2] rank 2 in pid" in report


def test_debug_rank_outside_the_world(runner):
    run = runner.run(str(runner.write(DEBUG)), DISTRIBUTED_TESTING_DEBUG_RANK="5")
    # Checked before any test runs: a usage error, not an error per test.
    assert run.returncode == 2, run.output
    assert "DISTRIBUTED_TESTING_DEBUG_RANK=5 is not a rank of __main__.TestDebug.test_x, whose world size is 3" \
        in run.output


def test_debug_rank_with_pdb(runner):
    path = runner.write(DEBUG.replace('raise ValueError("found it")', "breakpoint()"))
    proc = subprocess.run(
        [sys.executable, str(path)],
        cwd=runner.tmp_path,
        env=runner.env(DISTRIBUTED_TESTING_DEBUG_RANK="1", PYTHONBREAKPOINT="pdb.set_trace"),
        input="p self.rank\nc\n",
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "(Pdb) 1" in proc.stdout, proc.stdout + proc.stderr
    assert proc.returncode == 0, proc.stdout + proc.stderr
