"""Hardware accounting on this CPU-only machine: tests not run for lack of hardware (GPUs, a
backend) are counted apart from other skips, and fail under DISTRIBUTED_TESTING_REQUIRE_HARDWARE=1."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET

import pytest
from conftest import PLAIN, Runner


def _cpu_only() -> bool:
    import torch
    import torch.distributed as dist

    return torch.cuda.device_count() == 0 and not dist.is_nccl_available()


pytestmark = [pytest.mark.slow, pytest.mark.skipif(not _cpu_only(), reason="counts what a CPU-only machine lacks")]

HARDWARE = """
class TestHardware(DistributedTestBase):
    world_size = 2

    @skip_if_lt_x_gpu(2)
    def test_two_gpus(self):
        pass

    @requires_nccl()
    def test_nccl(self):
        pass

    def test_rank_exit(self):
        sys.exit(TEST_SKIPS["multi-gpu-2"].exit_code)

    @unittest.skip("not today")
    def test_plain_skip(self):
        pass

    def test_runs(self):
        pass


@skip_if_lt_x_gpu(4)
class TestFourGpus(DistributedTestBase):
    def test_big(self):
        pass


if __name__ == "__main__":
    run_tests()
"""

NEEDS = "needs 2 CUDA devices: 2, needs 4 CUDA devices: 1, needs backend nccl: 1"
HARDWARE_TESTS = {
    "test_two_gpus": "needs 2 CUDA devices",
    "test_nccl": "needs backend nccl",
    "test_rank_exit": "needs 2 CUDA devices",
    "test_big": "needs 4 CUDA devices",
}


def _tests(record) -> dict[str, dict]:
    return {t["id"].rsplit(".", 1)[-1].rsplit("::", 1)[-1]: t for t in json.loads(record.read_text())["tests"]}


def test_run_tests_counts_them_apart_from_other_skips(runner: Runner) -> None:
    path, record = runner.write(HARDWARE), runner.tmp_path / "record.json"
    run = runner.run(str(path), "-v", DISTRIBUTED_TESTING_REPORT=str(record))
    assert run.returncode == 0, run.output
    assert f"\nOK (skipped=5)\n4 tests not run for lack of hardware ({NEEDS})\n" in run.stderr
    assert "test_rank_exit (__main__.TestHardware.test_rank_exit) ... skipped 'Need at least 2 CUDA devices'" in run.stderr
    tests = _tests(record)
    assert {name: t["hardware"] for name, t in tests.items() if "hardware" in t} == HARDWARE_TESTS
    assert tests["test_plain_skip"]["outcome"] == "skipped"
    data = json.loads(record.read_text())
    assert data["also_counted"] == {"flaky": 0, "not_run_for_lack_of_hardware": 4}
    assert data["hardware_needs"] == {"needs 2 CUDA devices": 2, "needs 4 CUDA devices": 1, "needs backend nccl": 1}


@pytest.mark.parametrize("xdist", [False, True])
def test_pytest_counts_them_in_its_summary_and_junit(runner: Runner, xdist: bool) -> None:
    path, junit = runner.write(HARDWARE), runner.tmp_path / "j.xml"
    run = runner.pytest(str(path), *(["-n", "2"] if xdist else []), f"--junitxml={junit}")
    assert run.returncode == 0, run.output
    lines = run.stdout.splitlines()
    assert f"4 tests not run for lack of hardware ({NEEDS})" in lines
    assert re.search(r"^=+ 1 passed, 5 skipped in .* =+$", run.stdout, re.M), run.stdout
    found = {}
    for case in ET.parse(junit).getroot().iter("testcase"):
        found.update({case.get("name"): p.get("value") for p in case.iter("property") if p.get("name") == "dt_hardware"})
    assert found == HARDWARE_TESTS


def test_require_hardware_makes_them_failures(runner: Runner) -> None:
    path = runner.write(HARDWARE)
    run = runner.run(str(path), DISTRIBUTED_TESTING_REQUIRE_HARDWARE="1")
    assert run.returncode == 1, run.output
    assert f"\nFAILED (failures=4, skipped=1)\n4 tests failed for lack of hardware ({NEEDS}): " in run.stderr
    report = run.stderr.split("FAIL: test_two_gpus (__main__.TestHardware.test_two_gpus)\n", 1)[1].split("=" * 70)[0]
    assert "not run for lack of hardware (needs 2 CUDA devices): needs 2 CUDA devices, found 0; " in report
    assert "DISTRIBUTED_TESTING_REQUIRE_HARDWARE=1 (--dt-require-hardware) makes that a failure" in report

    run = runner.pytest(str(path), "--dt-require-hardware")
    assert run.returncode == 1, run.output
    # The class-level guard skips in pytest's setup: there it is an error, as any setup failure.
    assert re.search(r"^=+ 3 failed, 1 passed, 1 skipped, 1 error in .* =+$", run.stdout, re.M), run.stdout
    assert "not run for lack of hardware (needs backend nccl): needs the nccl backend" in run.stdout
    assert f"4 tests failed for lack of hardware ({NEEDS}): DISTRIBUTED_TESTING_REQUIRE_HARDWARE=1" in run.stdout


def test_a_bad_require_hardware_value_stops_the_run(runner: Runner) -> None:
    path, plain = runner.write(HARDWARE), runner.write(PLAIN, "test_plain.py", header=False)
    run = runner.run(str(plain), DISTRIBUTED_TESTING_REQUIRE_HARDWARE="maybe")
    assert run.returncode == 2, run.output
    assert "DISTRIBUTED_TESTING_REQUIRE_HARDWARE" in run.stderr and "'maybe'" in run.stderr
    run = runner.pytest(str(path), DISTRIBUTED_TESTING_REQUIRE_HARDWARE="maybe")
    assert run.returncode == 4, run.output
