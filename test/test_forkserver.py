"""The fork server: ranks see the parent as it is, the server preloads and learns, nothing is lost.

Each generated file runs once (per start method where both must agree); the
tests assert on outcomes, report text and what the ranks wrote down.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import Runner, outcomes, reports, wait_gone

pytestmark = pytest.mark.slow

STATE_FILE = """
import socket, tempfile
MARKS = os.environ["MARK_DIR"]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TestState(MultiProcessTestCase):
    world_size = 2

    def setUp(self):
        super().setUp()
        name = self._testMethodName
        self.saved = (os.getcwd(), list(sys.path), dict(os.environ), os.umask(0o022))
        os.umask(self.saved[3])
        os.environ["PER_TEST"] = name  # every test sets its own value
        os.environ.pop("REMOVED_IN_SETUP", None)
        if name == "test_chdir":
            os.chdir(tempfile.mkdtemp(dir=MARKS, prefix="cwd-"))
        if name == "test_sys_path":
            folder = tempfile.mkdtemp(dir=MARKS, prefix="path-")
            with open(os.path.join(folder, "added_in_setup.py"), "w") as f:
                f.write("VALUE = 42\\n")
            sys.path.insert(0, folder)
        if name == "test_umask":
            os.umask(0o077)
        if name == "test_no_path":
            del os.environ["PATH"]
        if name == "test_huge_value":
            os.environ["HUGE"] = "x" * 100_000
        if name.startswith("test_env_init"):
            port = str(free_port())
            os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
            with open(os.path.join(MARKS, name + ".port"), "w") as f:
                f.write(port)
        with open(os.path.join(MARKS, name + ".parent"), "w") as f:
            f.write(repr((os.getcwd(), sys.path, os.umask(0))))
        os.umask(0o077 if name == "test_umask" else self.saved[3])
        self._spawn_processes()

    def tearDown(self):
        super().tearDown()
        cwd, path, environ, umask = self.saved
        os.chdir(cwd)
        sys.path[:] = path
        os.environ.clear()
        os.environ.update(environ)
        os.umask(umask)

    def _parent(self):
        with open(os.path.join(MARKS, self._testMethodName + ".parent")) as f:
            return eval(f.read())

    def test_variable_a(self):
        self.assertEqual(os.environ["PER_TEST"], "test_variable_a")

    def test_variable_b(self):
        self.assertEqual(os.environ["PER_TEST"], "test_variable_b")

    def test_variable_c(self):
        self.assertEqual(os.environ["PER_TEST"], "test_variable_c")

    def test_removed_variable(self):
        self.assertNotIn("REMOVED_IN_SETUP", os.environ)

    def test_chdir(self):
        self.assertEqual(os.getcwd(), self._parent()[0])
        self.assertTrue(os.path.basename(os.getcwd()).startswith("cwd-"))

    def test_sys_path(self):
        self.assertEqual(sys.path, self._parent()[1])
        import added_in_setup
        self.assertEqual(added_in_setup.VALUE, 42)

    def test_umask(self):
        self.assertEqual(os.umask(0o077), 0o077)

    def test_no_path(self):
        self.assertNotIn("PATH", os.environ)

    def test_huge_value(self):
        self.assertEqual(os.environ["HUGE"], "x" * 100_000)

    def _env_init(self):
        with open(os.path.join(MARKS, self._testMethodName + ".port")) as f:
            self.assertEqual(os.environ["MASTER_PORT"], f.read())
        dist.init_process_group("gloo", init_method="env://", rank=self.rank, world_size=2)
        t = torch.ones(2)
        dist.all_reduce(t)
        self.assertEqual(t.tolist(), [2.0, 2.0])

    def test_env_init_1(self):
        self._env_init()

    def test_env_init_2(self):
        self._env_init()

    def test_env_init_3(self):
        self._env_init()


class TestPoolState(MultiProcContinuousTest):
    world_size = 2

    @classmethod
    def setUpClass(cls):
        os.environ["BEFORE_POOL"] = "set in setUpClass"
        super().setUpClass()

    def test_pool_takes_the_environment_when_it_starts(self):
        self.assertEqual(os.environ.get("BEFORE_POOL"), "set in setUpClass")


if __name__ == "__main__":
    run_tests()
"""


@pytest.fixture(scope="module", params=["fork", "spawn"])
def state_run(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    runner = Runner(tmp_path_factory.mktemp(f"state-{request.param}"))
    marks = runner.tmp_path / "marks"
    marks.mkdir()
    run = runner.run(
        str(runner.write(STATE_FILE)),
        "-v",
        MARK_DIR=str(marks),
        REMOVED_IN_SETUP="1",
        DISTRIBUTED_TESTING_START_METHOD=request.param,
    )
    return runner, run


STATE_TESTS = [
    "test_variable_a",
    "test_variable_b",
    "test_variable_c",
    "test_removed_variable",
    "test_chdir",
    "test_sys_path",
    "test_umask",
    "test_no_path",
    "test_huge_value",
    "test_env_init_1",
    "test_env_init_2",
    "test_env_init_3",
]


@pytest.mark.parametrize("test", STATE_TESTS)
def test_ranks_see_the_parent_as_it_is_when_their_test_starts(state_run, test: str) -> None:
    _, run = state_run
    assert outcomes(run.output).get(f"TestState.{test}") == "ok", reports(run.output).get(f"TestState.{test}", run.output)


def test_the_pool_takes_the_environment_when_it_starts(state_run) -> None:
    _, run = state_run
    key = "TestPoolState.test_pool_takes_the_environment_when_it_starts"
    assert outcomes(run.output).get(key) == "ok", run.output


def test_a_faithful_run_passes_and_leaves_nothing(state_run) -> None:
    runner, run = state_run
    assert run.returncode == 0, run.output
    assert wait_gone(str(runner.tmp_path)) == []
    assert runner.leftovers() == []


LEARN_FILE = """
import logging

logging.basicConfig(level=logging.DEBUG, format="LOG %(name)s: %(message)s")
MARKS = os.environ["MARK_DIR"]


def imports_of(name):
    with open(os.path.join(MARKS, name + ".log")) as f:
        return len(f.read().split())


class TestLearn(MultiProcessTestCase):
    world_size = 2

    def setUp(self):
        super().setUp()
        os.environ["ALLOW_IMPORT"] = "1"  # only ranks have it: the server's import raises
        os.environ["PER_TEST"] = self._testMethodName
        self._spawn_processes()

    def tearDown(self):
        super().tearDown()
        os.environ.pop("ALLOW_IMPORT", None)
        os.environ.pop("PER_TEST", None)

    def _use(self):
        import counted, threaded, needs_env
        self.assertEqual(counted.VALUE, 1)
        self.assertTrue(threaded.THREAD.is_alive())
        self.assertEqual(needs_env.VALUE, 3)

    def test_1(self):
        self._use()

    def test_2(self):
        self._use()

    def test_3(self):
        self._use()

    def test_4(self):
        self._use()


if __name__ == "__main__":
    run_tests()
"""

COUNTED = """
import os
with open(os.path.join(os.environ["MARK_DIR"], "{name}.log"), "a") as f:
    f.write(os.environ.get("PER_TEST", "server") + "\\n")  # who imported it: a test's rank, or the server
"""

HELPERS = {
    "counted": COUNTED.format(name="counted") + "VALUE = 1\n",
    "threaded": COUNTED.format(name="threaded")
    + "import threading, time\nTHREAD = threading.Thread(target=time.sleep, args=(600,), daemon=True)\nTHREAD.start()\n",
    "needs_env": COUNTED.format(name="needs_env")
    + "if os.environ.get('ALLOW_IMPORT') != '1':\n    raise RuntimeError('needs ALLOW_IMPORT')\nVALUE = 3\n",
}


@pytest.fixture(scope="module")
def learn_run(tmp_path_factory: pytest.TempPathFactory):
    runner = Runner(tmp_path_factory.mktemp("learn"))
    marks = runner.tmp_path / "marks"
    marks.mkdir()
    for name, body in HELPERS.items():
        runner.write(body, name=f"{name}.py", header=False)
    run = runner.run(str(runner.write(LEARN_FILE)), "-v", MARK_DIR=str(marks))
    imports = {name: sorted((marks / f"{name}.log").read_text().split()) for name in HELPERS}
    return runner, run, imports


def test_a_module_ranks_imported_is_preloaded_for_the_next_tests(learn_run) -> None:
    _, run, imports = learn_run
    assert run.returncode == 0, run.output
    # Test 1's two ranks import it, then the server; the ranks of tests 2-4 find it there.
    assert [who for who in imports["counted"] if who != "server"] == ["test_1", "test_1"], run.output
    assert re.search(r"\(learned\): preloaded .*\bcounted \(", run.output), run.output


def test_a_module_that_starts_a_thread_is_not_preloaded(learn_run) -> None:
    _, run, imports = learn_run
    ranks = [who for who in imports["threaded"] if who != "server"]
    assert ranks == sorted(f"test_{i}" for i in range(1, 5) for _ in range(2)), run.output  # each imports it
    assert "did not preload threaded: it started a Python thread" in run.output
    assert "serves now" in run.output  # the server's backup took over: no fresh interpreter
    assert "fresh interpreter" not in run.output


def test_a_module_whose_import_raises_in_the_server_is_imported_by_the_ranks(learn_run) -> None:
    _, run, imports = learn_run
    ranks = [who for who in imports["needs_env"] if who != "server"]
    assert ranks == sorted(f"test_{i}" for i in range(1, 5) for _ in range(2)), run.output
    assert "did not preload needs_env: importing it raised RuntimeError: needs ALLOW_IMPORT" in run.output
    assert run.returncode == 0 and "Ran 4 tests" in run.output, run.output


def test_learning_leaves_nothing(learn_run) -> None:
    runner, _, _ = learn_run
    assert wait_gone(str(runner.tmp_path)) == []
    assert runner.leftovers() == []


SERVER_KIND = """
MARKS = os.environ["MARK_DIR"]
{prelude}

class TestKind(MultiProcessTestCase):
    world_size = 2

    def setUp(self):
        super().setUp()
        self._spawn_processes()

    def test_server(self):
        with open(f"/proc/{{os.getppid()}}/cmdline", "rb") as f:
            server = f.read().replace(b"\\0", b" ").decode()
        with open(os.path.join(MARKS, f"server{{self.rank}}"), "w") as f:
            f.write(server)
        t = torch.ones(1 << 20).add_(1)  # a parallel op: hangs in a rank forked after one
        self.assertEqual(float(t.sum()), float(2 << 20))

    def test_again(self):
        self.test_server()


if __name__ == "__main__":
    {main}
"""

KINDS = {
    "zygote": ("", "run_tests()"),
    "parallel-op-before-tests": ("torch.ones(1 << 20).add_(1).sum()", "run_tests()"),
    "thread-in-parent": (
        "import threading\nthreading.Thread(target=time.sleep, args=(600,), daemon=True).start()",
        "run_tests()",
    ),
    "unittest-main": ("", "unittest.main()"),
}


@pytest.mark.parametrize("kind", KINDS)
def test_a_zygote_serves_only_when_forking_the_test_process_is_safe(runner: Runner, kind: str) -> None:
    prelude, main = KINDS[kind]
    marks = runner.tmp_path / "marks"
    marks.mkdir()
    run = runner.run(str(runner.write(SERVER_KIND.format(prelude=prelude, main=main))), "-v", MARK_DIR=str(marks))
    assert run.returncode == 0, run.output
    servers = {(marks / f"server{rank}").read_text() for rank in (0, 1)}
    assert len(servers) == 1, servers
    fresh = "distributed_testing._server" in servers.pop()
    import torch

    parallel = torch.get_num_threads() > 1  # with one thread no OpenMP pool exists to break
    expect_fresh = kind in ("thread-in-parent", "unittest-main") or (kind == "parallel-op-before-tests" and parallel)
    assert fresh == expect_fresh, run.output
    assert wait_gone(str(runner.tmp_path)) == []


LOST_FILE = """
import os, unittest
import torch.distributed as dist
from distributed_testing import MultiProcessTestCase

if os.environ.get("BREAK_IMPORT") == "1":
    raise RuntimeError("this module cannot be imported in a rank")


class TestLost(MultiProcessTestCase):
    world_size = 2

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if os.environ.get("BREAK_INIT") == "1":
            raise ValueError("this case cannot be built in a rank")

    def setUp(self):
        super().setUp()
        os.environ[self._testMethodName.upper()[5:]] = "1"
        self._spawn_processes()

    def tearDown(self):
        super().tearDown()
        os.environ.pop(self._testMethodName.upper()[5:], None)

    def test_break_init(self):
        pass

    def test_break_import(self):
        pass
"""

LOST_RUNNER = """
import sys, unittest
import lost_cases

if __name__ == "__main__":
    program = unittest.main(module=lost_cases, argv=["runner", "-v", *sys.argv[1:]], exit=False)
    sys.exit(not program.result.wasSuccessful())
"""


@pytest.mark.parametrize("start_method", ["fork", "spawn"])
def test_a_rank_that_fails_before_it_reports_shows_its_traceback(runner: Runner, start_method: str) -> None:
    runner.write(LOST_FILE, name="lost_cases.py", header=False)
    run = runner.run(
        str(runner.write(LOST_RUNNER, name="runner.py", header=False)), DISTRIBUTED_TESTING_START_METHOD=start_method
    )
    found = reports(run.output)
    assert run.returncode == 1, run.output
    imported = found["TestLost.test_break_import"]
    assert "before reporting a result" in imported, imported
    assert "RuntimeError: this module cannot be imported in a rank" in imported, imported
    built = found["TestLost.test_break_init"]
    assert "ValueError: this case cannot be built in a rank" in built, built
    assert wait_gone(str(runner.tmp_path)) == []
    assert runner.leftovers() == []


def test_a_long_tmpdir_works(runner: Runner, tmp_path: Path) -> None:
    long_dir = runner.scratch / ("d" * 60) / ("e" * 60)
    long_dir.mkdir(parents=True)
    path = runner.write(
        """
        class TestLong(MultiProcessTestCase):
            world_size = 2

            def setUp(self):
                super().setUp()
                self._spawn_processes()

            def test_pass(self):
                dist.init_process_group("gloo", init_method=f"file://{self.file_name}", rank=self.rank, world_size=2)
                dist.barrier()

        if __name__ == "__main__":
            run_tests()
        """
    )
    run = runner.run(str(path), "-v", TMPDIR=str(long_dir))
    assert run.returncode == 0, run.output
    assert outcomes(run.output) == {"TestLong.test_pass": "ok"}
    assert list(long_dir.iterdir()) == []


TWO_FILES = """
MARKS = os.environ["MARK_DIR"]


class Test{name}(MultiProcessTestCase):
    world_size = 2

    def setUp(self):
        super().setUp()
        self._spawn_processes()

    def test_preloaded(self):
        from distributed_testing import _rank

        with open(os.path.join(MARKS, f"{name}-{{self.rank}}"), "w") as f:
            f.write(str(__name__ in _rank.modules_at_start))
"""


def test_pytest_preloads_every_collected_file(runner: Runner) -> None:
    marks = runner.tmp_path / "marks"
    marks.mkdir()
    for name in ("First", "Second"):
        runner.write(TWO_FILES.format(name=name), name=f"test_{name.lower()}.py")
    run = runner.pytest("-q", "test_first.py", "test_second.py", MARK_DIR=str(marks))
    assert run.returncode == 0, run.output
    seen = {path.name: path.read_text() for path in marks.iterdir()}
    assert seen == {f"{name}-{rank}": "True" for name in ("First", "Second") for rank in (0, 1)}, seen
    assert wait_gone(str(runner.tmp_path)) == []


def test_python_m_preloads_the_file(runner: Runner) -> None:
    marks = runner.tmp_path / "marks"
    marks.mkdir()
    path = runner.write(TWO_FILES.format(name="Cli") + "\nif __name__ == '__main__':\n    run_tests()\n")
    proc = subprocess.run(
        [sys.executable, "-m", "distributed_testing", str(path)],
        cwd=runner.tmp_path,
        env=runner.env(MARK_DIR=str(marks)),
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert {p.read_text() for p in marks.iterdir()} == {"True"}
    assert os.listdir(runner.scratch) == []
