"""torch_compat: PyTorch-style files (importing from common_distributed) run on our engine."""

from __future__ import annotations

import argparse
import ast
import importlib
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import Runner, outcomes, reports, wait_gone

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]

INSTALL = """\
from distributed_testing import torch_compat
torch_compat.install()
"""

# A file written for PyTorch's framework: everything comes from PyTorch's modules.
PYTORCH_STYLE = """\
import os, sys
import torch
import torch.distributed as dist
from torch.testing._internal.common_distributed import (
    TEST_SKIPS,
    DistributedTestBase,
    MultiProcContinuousTest,
    MultiProcessTestCase,
    requires_gloo,
    skip_if_lt_x_gpu,
)
from torch.testing._internal.common_utils import run_tests


class TestCompat(MultiProcessTestCase):
    @property
    def world_size(self):
        return 2

    def setUp(self):
        super().setUp()
        self._spawn_processes()

    @requires_gloo()
    def test_all_reduce(self):
        dist.init_process_group("gloo", init_method=f"file://{self.file_name}", rank=self.rank,
                                world_size=self.world_size)
        t = torch.tensor([float(self.rank)])
        dist.all_reduce(t)
        # PyTorch's assertEqual and friends, from common_utils.TestCase
        self.assertEqual(t, [1.0])
        self.assertEqual(t.double(), torch.tensor([1.0]), exact_dtype=False, atol=0, rtol=0)
        self.assertEqualIgnoreType(t, torch.tensor([1]))
        self.assertGreaterAlmostEqual(1.05, 1.0, delta=0.1)

    def test_fails_on_rank_1(self):
        if self.rank == 1:
            raise ValueError("rank 1 disagrees")

    def test_rank_1_dies(self):
        if self.rank == 1:
            os._exit(3)  # PyTorch's framework passes this test: it checks rank 0's exit code only

    @skip_if_lt_x_gpu(2)
    def test_gpu(self):
        pass

    def test_skip_exit_code(self):
        sys.exit(TEST_SKIPS["multi-gpu-2"].exit_code)

    def test_names_are_ours(self):
        import distributed_testing
        from torch.testing._internal import common_distributed, common_utils

        assert isinstance(self, distributed_testing.MultiProcessTestCase)
        assert isinstance(self, common_utils.TestCase)
        assert common_distributed.TEST_SKIPS is distributed_testing.TEST_SKIPS
        assert common_distributed.requires_gloo is distributed_testing.requires_gloo
        assert run_tests.__module__ == "distributed_testing.torch_compat"


class TestBase(DistributedTestBase):
    @property
    def world_size(self):
        return 2

    def test_create_pg(self):
        self.create_pg("cpu")
        t = torch.ones(2)
        dist.all_reduce(t)
        self.assertEqual(t, torch.full((2,), 2.0))


class TestContinuous(MultiProcContinuousTest):
    world_size = 2

    @classmethod
    def backend_str(cls):
        return "gloo"

    def test_all_reduce(self):
        t = torch.ones(1)
        dist.all_reduce(t)
        self.assertEqual(t.item(), 2.0)


if __name__ == "__main__":
    run_tests()
"""

EXPECTED = {
    "TestCompat.test_all_reduce": "ok",
    "TestCompat.test_fails_on_rank_1": "ERROR",
    "TestCompat.test_rank_1_dies": "ERROR",
    "TestCompat.test_gpu": "skipped 'needs 2 CUDA devices, found 0'",
    "TestCompat.test_skip_exit_code": "skipped 'Need at least 2 CUDA devices'",
    "TestCompat.test_names_are_ours": "ok",
    "TestBase.test_create_pg": "ok",
    "TestContinuous.test_all_reduce": "ok",
}


def _check_run(runner: Runner, run) -> None:
    assert run.returncode == 1, run.output
    assert outcomes(run.output) == EXPECTED, run.output
    found = reports(run.output)
    # Our reports, not PyTorch's ("Process 1 exited with error code 10 and exception: ...").
    assert "rank 1 of 2 failed: ValueError: rank 1 disagrees" in found["TestCompat.test_fails_on_rank_1"]
    assert "rank 1 of 2 failed: exited with code 3" in found["TestCompat.test_rank_1_dies"]
    assert wait_gone(str(runner.tmp_path)) == []
    assert runner.leftovers() == []


def test_install_at_the_top_of_a_pytorch_style_file(runner):
    path = runner.write(INSTALL + PYTORCH_STYLE, header=False)
    _check_run(runner, runner.run(str(path), "-v"))


def test_python_m_torch_compat_runs_an_unmodified_file(runner):
    path = runner.write(PYTORCH_STYLE, header=False)
    run = runner.run("-m", "distributed_testing", "--torch-compat", str(path), "-v")
    _check_run(runner, run)  # the sitecustomize directory for the ranks is gone too


def test_pytorch_framework_passes_a_test_whose_rank_1_dies(runner):
    """The one outcome README documents as different: PyTorch reads rank 0's exit code only."""
    path = runner.write(PYTORCH_STYLE, header=False)
    run = runner.run(str(path), "-v", "TestCompat.test_rank_1_dies")
    assert run.returncode == 0, run.output
    # (PyTorch's log lines come between the test's name and its "ok")
    assert "Ran 1 test" in run.output and run.output.rstrip().endswith("OK"), run.output


def test_install_is_idempotent_and_uninstall_restores_pytorch(runner):
    path = runner.write(
        """
        import os
        import torch.testing._internal.common_distributed as cd
        import torch.testing._internal.common_utils as cu
        from torch.testing._internal.distributed._tensor import common_dtensor as dt
        from distributed_testing import torch_compat
        import distributed_testing

        originals = {name: getattr(cd, name) for name in torch_compat.REPLACED}
        run_tests = cu.run_tests
        helper = dt.run_subtests, dt.DTensorTestBase.__bases__
        torch_compat.install()
        torch_compat.install()
        assert torch_compat.installed()
        assert cd.MultiProcessTestCase is torch_compat.MultiProcessTestCase
        assert issubclass(cd.MultiProcessTestCase, distributed_testing.MultiProcessTestCase)
        assert issubclass(cd.MultiProcessTestCase, cu.TestCase)
        assert cd.skip_if_lt_x_gpu is distributed_testing.skip_if_lt_x_gpu
        assert cu.run_tests is torch_compat.run_tests
        assert cd.DistTestCases is not None and cd.init_multigpu_helper.__module__ == cd.__name__  # data stays
        # a helper imported before install(): its globals and classes take ours
        assert dt.run_subtests is cd.run_subtests and dt.TEST_SKIPS is cd.TEST_SKIPS
        assert issubclass(dt.DTensorTestBase, distributed_testing.MultiProcessTestCase)
        assert os.environ["DISTRIBUTED_TESTING_TIMEOUT"] == "45"  # PyTorch's DISTRIBUTED_TESTS_DEFAULT_TIMEOUT
        torch_compat.uninstall()
        assert not torch_compat.installed()
        assert {name: getattr(cd, name) for name in torch_compat.REPLACED} == originals
        assert cu.run_tests is run_tests
        assert (dt.run_subtests, dt.DTensorTestBase.__bases__) == helper
        assert os.environ["DISTRIBUTED_TESTING_TIMEOUT"] == ""
        print("COMPAT OK")
        """,
        name="check.py",
        header=False,
    )
    run = runner.run(str(path), DISTRIBUTED_TESTS_DEFAULT_TIMEOUT="45", DISTRIBUTED_TESTING_TIMEOUT="")
    assert run.returncode == 0, run.output
    assert "COMPAT OK" in run.stdout


def test_pytorch_distributed_test_suite_through_torch_suite_tool(runner):
    """A handful of PyTorch's own distributed_test.py tests pass on our engine."""
    report = runner.tmp_path / "compare.json"
    cmd = [
        sys.executable,
        str(REPO / "tools" / "torch_suite.py"),
        "--only",
        "ours",
        "-k",
        "test_all_reduce_sum",
        "-k",
        "test_broadcast_full_group",
        "-k",
        "test_barrier_timeout_global",
        "--json",
        str(report),
    ]
    proc = subprocess.run(cmd, env=runner.env(), capture_output=True, text=True, timeout=240, cwd=runner.tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (summary,) = json.loads(report.read_text())
    counts = summary["runs"][0]["counts"]
    # test_all_reduce_sum{,_async,_complex}, test_broadcast_full_group and
    # test_barrier_timeout_global (which re-initialises from INIT_METHOD) pass;
    # the three _cuda variants skip.
    assert counts == {"passed": 5, "failed": 0, "error": 0, "skipped": 3, "missing": 0}, proc.stdout
    assert wait_gone(str(runner.tmp_path)) == []
    assert not os.listdir(runner.scratch)


# -- the PyTorch names torch_compat relies on exist in the installed torch ----------


def _top_level_names(module_name: str) -> set[str]:
    """The globals a module's source defines at its top level (in if/try blocks too), without importing it."""
    spec = importlib.util.find_spec(module_name)
    assert spec is not None and spec.origin, f"torch has no module {module_name}"
    names: set[str] = set()
    todo = list(ast.parse(Path(spec.origin).read_text()).body)
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.If, ast.Try)):
            todo.extend([*node.body, *node.orelse, *getattr(node, "finalbody", []), *getattr(node, "handlers", [])])
        elif isinstance(node, ast.ExceptHandler):
            todo.extend(node.body)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name))
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((alias.asname or alias.name).split(".")[0] for alias in node.names)
    return names


def _torch_has(module_name: str, dotted: str) -> bool:
    from distributed_testing import torch_compat

    if module_name not in (torch_compat.TORCH_MODULE, torch_compat.UTILS_MODULE):
        # a suite module (distributed_test.py) reads the environment at import: read its source
        return dotted in _top_level_names(module_name)
    value: object = importlib.import_module(module_name)
    for part in dotted.split("."):
        if not hasattr(value, part):
            return False
        value = getattr(value, part)
    return True


def test_every_pytorch_name_torch_compat_uses_exists_in_this_torch():
    import torch

    from distributed_testing import torch_compat

    assert not torch_compat.installed(), "install() adds the names it replaces: check PyTorch's own"
    wanted = [(torch_compat.TORCH_MODULE, name) for name in torch_compat.REPLACED]
    wanted += [(torch_compat.UTILS_MODULE, "run_tests"), *torch_compat._TORCH_NAMES_USED]
    missing = [f"{module}.{name}" for module, name in wanted if not _torch_has(module, name)]
    assert missing == [], f"torch {torch.__version__} no longer has what torch_compat replaces or reads: {missing}"


def test_torch_compat_declares_every_common_utils_name_it_reads():
    """What torch_compat.py reads off ``utils`` (common_utils) or ``torch_case`` (its TestCase) is in
    _TORCH_NAMES_USED, so the test above checks it."""
    from distributed_testing import torch_compat

    prefixes = {"utils": "", "torch_case": "TestCase."}
    used: set[str] = set()
    for node in ast.walk(ast.parse(Path(torch_compat.__file__).read_text())):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in prefixes:
            used.add(prefixes[node.value.id] + node.attr)
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in ("getattr", "hasattr", "setattr")
            and len(node.args) >= 2
            and isinstance(node.args[0], ast.Name)
            and node.args[0].id in prefixes
            and isinstance(node.args[1], ast.Constant)
        ):
            used.add(prefixes[node.args[0].id] + str(node.args[1].value))
    assert used, "found no reads: the names utils / torch_case changed in torch_compat.py"
    declared = {name for module, name in torch_compat._TORCH_NAMES_USED if module == torch_compat.UTILS_MODULE}
    assert sorted(used - declared) == []


def test_the_name_check_names_what_is_missing(monkeypatch):
    from distributed_testing import torch_compat

    monkeypatch.setattr(torch_compat, "REPLACED", (*torch_compat.REPLACED, "no_such_guard"))
    monkeypatch.setattr(
        torch_compat, "_TORCH_NAMES_USED", (*torch_compat._TORCH_NAMES_USED, (torch_compat.UTILS_MODULE, "TestCase.nope"))
    )
    with pytest.raises(AssertionError) as failure:
        test_every_pytorch_name_torch_compat_uses_exists_in_this_torch()
    message = str(failure.value)
    assert "torch.testing._internal.common_distributed.no_such_guard" in message
    assert "torch.testing._internal.common_utils.TestCase.nope" in message



# PyTorch's test_c10d_logger.py sets BACKEND in setUp; PyTorch's class never reads it.
SETS_BACKEND = """\
import os
from torch.testing._internal.common_distributed import MultiProcessTestCase, skip_if_lt_x_gpu
from torch.testing._internal.common_utils import run_tests


class TestSetsBackend(MultiProcessTestCase):
    @property
    def world_size(self):
        return 2

    def setUp(self):
        super().setUp()
        os.environ["WORLD_SIZE"] = str(self.world_size)
        os.environ["BACKEND"] = "nccl"
        self._spawn_processes()

    @skip_if_lt_x_gpu(2)
    def test_needs_gpus(self):
        pass

    def test_ranks_see_the_backend_the_test_set(self):
        assert os.environ["BACKEND"] == "nccl", os.environ["BACKEND"]


if __name__ == "__main__":
    run_tests()
"""


def test_a_backend_set_in_setup_gives_pytorch_s_outcomes(runner):
    path = runner.write(SETS_BACKEND, header=False)
    ours = runner.run("-m", "distributed_testing", "--torch-compat", str(path), "-v")
    assert runner.leftovers() == []
    theirs = runner.run(str(path), "-v")  # (PyTorch's framework leaves temp files behind)
    expected = {"TestSetsBackend.test_needs_gpus": "skipped", "TestSetsBackend.test_ranks_see_the_backend_the_test_set": "ok"}
    for run in (theirs, ours):  # (PyTorch's log lines come between a test's name and its outcome)
        assert run.returncode == 0, run.output
        assert "Ran 2 tests" in run.output and "OK (skipped=1)" in run.output, run.output
    assert {k: v.split(" ")[0] for k, v in outcomes(ours.output).items()} == expected, ours.output
    assert "ConfigError" not in ours.output


# PyTorch's helpers imported before install(): their classes were derived from PyTorch's bases.
DERIVED_BEFORE_INSTALL = """\
import torch
from torch.testing._internal.common_distributed import DynamoDistributedMultiProcTestCase
from torch.testing._internal.distributed._tensor.common_dtensor import DTensorTestBase, with_comms

from distributed_testing import torch_compat

torch_compat.install()

import distributed_testing
from torch.testing._internal.common_utils import run_tests


class TestDTensor(DTensorTestBase):
    @property
    def world_size(self):
        return 2

    @with_comms
    def test_on_our_engine(self):
        assert isinstance(self, distributed_testing.MultiProcessTestCase)
        t = torch.ones(1)
        torch.distributed.all_reduce(t)
        self.assertEqual(t.item(), 2.0)

    @with_comms
    def test_fails_on_rank_1(self):
        assert self.rank != 1, "rank 1 disagrees"


class TestDynamo(DynamoDistributedMultiProcTestCase):
    def test_needs_accelerators(self):
        pass


if __name__ == "__main__":
    run_tests()
"""


def test_classes_pytorch_derived_before_install_run_on_our_engine(runner):
    path = runner.write(DERIVED_BEFORE_INSTALL, header=False)
    run = runner.run(str(path), "-v")
    assert run.returncode == 1, run.output
    assert outcomes(run.output) == {
        "TestDTensor.test_on_our_engine": "ok",
        "TestDTensor.test_fails_on_rank_1": "FAIL",  # rank 0's "connection reset" in teardown is a consequence
        "TestDynamo.test_needs_accelerators": "skipped 'TestDynamo.world_size is 0: torch.cuda.device_count() is 0 "
        "here; no rank to run'",
    }, run.output
    assert "rank 1 of 2 failed: AssertionError: rank 1 disagrees" in reports(run.output)["TestDTensor.test_fails_on_rank_1"]
    assert wait_gone(str(runner.tmp_path)) == []
    assert runner.leftovers() == []


def test_torch_suite_every_keeps_each_suites_share(monkeypatch):
    """``--every K``: one in K tests of each suite, evenly spread, at least one: the total estimates a full run."""
    monkeypatch.syspath_prepend(str(REPO / "tools"))
    from torch_suites.compare import select

    def pick(count: int, every: int | None) -> list[str]:
        args = argparse.Namespace(patterns=[], limit=None, sample=None, every=every)
        return select([f"t{i}" for i in range(count)], args)

    assert pick(10, 5) == ["t2", "t7"]
    assert pick(3, 5) == ["t1"]
    assert pick(11, 5) == ["t1", "t5", "t9"]
    assert pick(0, 5) == []
    assert pick(4, 1) == pick(4, None) == ["t0", "t1", "t2", "t3"]


# PyTorch's own test_multi_threaded_pg.py once had such a class: PyTorch's framework passes its tests unrun.
UNSPAWNED = """
from torch.testing._internal.common_distributed import MultiProcessTestCase, MultiThreadedTestCase
from torch.testing._internal.common_utils import run_tests


class TestProcesses(MultiProcessTestCase):
    def test_body_never_runs(self):
        raise ValueError("the body ran")


class TestThreads(MultiThreadedTestCase):
    def test_body_never_runs(self):
        raise ValueError("the body ran")


if __name__ == "__main__":
    run_tests()
"""


def test_a_setup_that_starts_no_rank_skips_saying_so(runner):
    """PyTorch's framework reports such a test passed; ours a skip that says why (our own classes: an error)."""
    path = runner.write(UNSPAWNED, header=False)
    run = runner.run("-m", "distributed_testing", "--torch-compat", str(path), "-v")
    assert run.returncode == 0, run.output
    for kind in ("Processes", "Threads"):
        reason = outcomes(run.output)[f"Test{kind}.test_body_never_runs"]
        assert reason.startswith("skipped"), run.output
        assert f"setUp started no rank {kind.lower()} (it does not call self._spawn_{kind.lower()}())" in reason
    assert "the body ran" not in run.output
    assert runner.leftovers() == []
    theirs = runner.run(str(path), "-v")  # (PyTorch's framework leaves a temp directory behind)
    assert theirs.returncode == 0 and "Ran 2 tests" in theirs.output, theirs.output


def test_torch_suite_compares_a_pytorch_test_file_as_it_is(runner):
    """``--file``: a test file run where it is on both frameworks, its differences classified."""
    path = runner.write(UNSPAWNED, name="test_c10d_like.py", header=False)
    report = runner.tmp_path / "compare.json"
    cmd = [sys.executable, str(REPO / "tools" / "torch_suite.py"), "--file", str(path), "--json", str(report)]
    proc = subprocess.run(cmd, env=runner.env(), capture_output=True, text=True, timeout=240, cwd=runner.tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr  # no defect
    (summary,) = json.loads(report.read_text())
    assert summary["suite"] == "test_c10d_like" and summary["tests"] == 2, summary
    theirs, ours = (run["counts"] for run in summary["runs"])
    assert theirs == {"passed": 2, "failed": 0, "error": 0, "skipped": 0, "missing": 0}, proc.stdout
    assert ours == {"passed": 0, "failed": 0, "error": 0, "skipped": 2, "missing": 0}, proc.stdout
    assert {d["test"]: d["kind"] for d in summary["differences"]} == {
        "TestProcesses.test_body_never_runs": "no rank started",
        "TestThreads.test_body_never_runs": "no rank started",
    }
    assert wait_gone(str(runner.tmp_path)) == []
    missing = subprocess.run(
        [*cmd[:2], "--file", "nowhere.py"], env=runner.env(), capture_output=True, text=True, cwd=runner.tmp_path
    )
    assert missing.returncode == 2 and "--file: no such file: nowhere.py" in missing.stderr


def test_torch_suite_classifies_differences(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "tools"))
    from torch_suites.compare import classify

    assert classify("error", "failed", "Process 0 exited with error code 10", "", None) == "both fail"
    assert classify("failed", "error", "", "timed out after 300 s", None) == "defect"  # an error of ours: look
    assert classify("error", "passed", "", "", None) == "defect"  # passes only here: a false pass?
    assert classify("passed", "failed", "", "", [{"rank": 0, "outcome": "failed"}]) == "defect"
    assert classify("passed", "skipped", "", "needs 2 CUDA devices", None) == "defect"
