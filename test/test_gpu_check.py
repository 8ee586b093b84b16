"""tools/gpu_check.py on a machine without CUDA: the environment, every check SKIP, its exit codes.

The GPU path needs a CUDA device; here the script runs with CUDA hidden
(``CUDA_VISIBLE_DEVICES=""``), so these tests pass on a GPU machine too.
"""

from __future__ import annotations

import re
import subprocess
import textwrap
from pathlib import Path

import pytest
from conftest import Run, Runner, load_tool, wait_gone

SCRIPT = Path(__file__).resolve().parent.parent / "tools" / "gpu_check.py"


gpu_check = load_tool("gpu_check")
NAMES = [check.name for check in gpu_check.CHECKS]


def run_script(runner: Runner, *args: str) -> Run:
    """The script from another directory (it finds the repository itself), CUDA hidden."""
    return runner.run(str(SCRIPT), *args, timeout=120, CUDA_VISIBLE_DEVICES="")


def table_rows(output: str) -> dict[str, str]:
    """The table's rows by check name."""
    return {m[1]: m[0] for m in re.finditer(r"^(\w+)  .*$", output, re.M) if m[1] in NAMES}


@pytest.mark.slow
def test_without_cuda_prints_the_environment_and_skips_every_check(runner):
    run = run_script(runner)
    assert run.returncode == 0, run.output
    head = run.stdout.split("\n\n")[0]
    assert head.startswith("environment:\n"), run.output
    import torch

    assert re.search(rf"^  torch +{re.escape(torch.__version__)}$", head, re.M), head
    assert re.search(r"^  cuda_available +False$", head, re.M), head
    assert re.search(r"^  device_count +0$", head, re.M), head
    assert re.search(rf"^  distributed_testing +{re.escape(str(SCRIPT.parent.parent))}/", head, re.M), head
    rows = table_rows(run.stdout)
    assert list(rows) == NAMES, run.output
    for row in rows.values():
        assert re.search(r"  no CUDA device +SKIP +0\.0$", row), row
    assert "no CUDA device: every check skipped" in run.stdout
    assert run.stderr == ""
    assert runner.leftovers() == []
    assert wait_gone(str(runner.tmp_path)) == []


@pytest.mark.slow
def test_require_gpu_without_cuda_exits_1(runner):
    run = run_script(runner, "--require-gpu", "--only", "gpu_skips", "nccl_hang_stacks")
    assert run.returncode == 1, run.output
    assert list(table_rows(run.stdout)) == ["gpu_skips", "nccl_hang_stacks"], run.output
    assert "gpu_check: no CUDA device, and --require-gpu was given" in run.stderr


@pytest.mark.slow
def test_an_unknown_check_is_a_usage_error_naming_the_checks(runner):
    run = run_script(runner, "--only", "bogus", "gpu_skips")
    assert run.returncode == 2, run.output
    assert f"error: unknown check 'bogus'; the checks are: {', '.join(NAMES)}" in run.stderr
    assert run.stdout == ""  # stopped before asking torch anything


@pytest.mark.slow
def test_a_bad_timeout_scale_is_a_usage_error(runner):
    run = run_script(runner, "--timeout-scale", "0")
    assert run.returncode == 2, run.output
    assert "--timeout-scale must be > 0, got 0.0" in run.stderr


def test_every_check_file_compiles_and_the_hang_judge_finds_its_line():
    for check in gpu_check.CHECKS:
        text = gpu_check.HEADER + textwrap.dedent(check.body).rstrip("\n") + gpu_check.FOOTER
        compile(text, f"{check.name}/test_x.py", "exec")
    hang = next(c for c in gpu_check.CHECKS if c.name == "nccl_hang_stacks")
    text = gpu_check.HEADER + textwrap.dedent(hang.body)
    line = next(n for n, source in enumerate(text.splitlines(), 1) if "dist.all_reduce(" in source)
    report = (
        "test_hang (__main__.TestHang.test_hang) ... ERROR\n"
        "RankFailure: __main__.TestHang.test_hang timed out after 20 s; ranks 0-1 still running\n"
        f"  rank 0: in all_reduce at test_x.py:{line}\n  rank 1: in test_hang at test_x.py:{line - 4}\n\n"
        "--- rank 0 stacks (most recent call first) ---\n"
    )
    got, missed = hang.judge(gpu_check.Run(1, report, text))
    assert missed == [], missed
    assert got == f"exit 1; test_hang ERROR; rank 0: in all_reduce at test_x.py:{line}"
    got, missed = hang.judge(gpu_check.Run(1, report.replace("all_reduce at", "init_process_group at"), text))
    assert missed == [f"rank 0's line is 'in init_process_group at test_x.py:{line}', "
                      f"expected 'in all_reduce at test_x.py:{line}'"]


def test_verdicts_are_read_through_warnings_printed_mid_line():
    output = (
        "test_a (__main__.TestSpawn.test_a) ... /x/_testcase.py:139: RuntimeWarning: distributed_testing: "
        f"{gpu_check.SPAWN_WARNING} (a forked CUDA context is unusable)\n  _oneshot.prepare(...)\nok\n"
        "test_b (__main__.TestSpawn.test_b) ... skipped 'needs 2 CUDA devices, found 1'\n"
        "test_c (__main__.TestSpawn.test_c) ... FAIL\n"
    )
    assert gpu_check.outcomes(output) == {
        "TestSpawn.test_a": "ok",
        "TestSpawn.test_b": "skipped 'needs 2 CUDA devices, found 1'",
        "TestSpawn.test_c": "FAIL",
    }


def test_verdicts_are_read_from_python_3_10_lines_too():
    """Python 3.10's unittest -v names the class only: ``test_a (__main__.TestSpawn) ... ok``."""
    output = "test_a (__main__.TestSpawn) ... ok\ntest_b (test_x.TestSpawn) ... ERROR\n"
    assert gpu_check.outcomes(output) == {"TestSpawn.test_a": "ok", "TestSpawn.test_b": "ERROR"}


def test_pytest_checks_name_the_plugin_only_when_its_entry_point_is_missing(tmp_path):
    import os
    import sys

    (lease,) = [check for check in gpu_check.CHECKS if check.name == "xdist_device_lease"]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    assert gpu_check._plugin_args(lease, env, tmp_path) == []  # installed here (pip install -e): its entry point
    # A Python that has torch but not this package installed: the checkout comes through PYTHONPATH.
    bare = tmp_path / "bare"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(bare)], check=True)
    named = gpu_check._plugin_args(lease, env, tmp_path, python=str(bare / "bin" / "python"))
    assert named == ["-p", "distributed_testing._pytest_plugin"]
    (skips,) = [check for check in gpu_check.CHECKS if check.name == "gpu_skips"]
    assert gpu_check._plugin_args(skips, env, tmp_path) == []
