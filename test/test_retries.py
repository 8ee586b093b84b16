"""Retries and repetitions: flaky tests as an outcome, under run_tests(), pytest and pytest-xdist.

The planted flakes count their attempts in files (the ranks are fresh processes
on every attempt, so only the file system remembers): a test that passes on
every third attempt, one that always fails, one that hangs once, one that fails
once on the warm pool, one that fails on its third repetition.
"""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from conftest import Runner, wait_gone

from distributed_testing._hardware import summary
from distributed_testing._retry import AttemptFailure, RetryRecord

FLAKES = """
COUNTERS = os.environ["COUNTERS"]


def bump(name):
    \"\"\"Count one more attempt of ``name``; return the count.\"\"\"
    path = os.path.join(COUNTERS, name)
    count = int(open(path).read()) + 1 if os.path.exists(path) else 1
    with open(path, "w") as handle:
        handle.write(str(count))
    return count


class TestRetry(DistributedTestBase):
    world_size = 2

    def test_flaky(self):
        if self.rank == 0:
            count = bump("flaky")
            self.assertEqual(count % 3, 0, f"planted flake on attempt {count}")

    def test_broken(self):
        if self.rank == 0:
            bump("broken")
        self.assertEqual(self.rank, -1, "broken for good")


class TestHang(DistributedTestBase):
    world_size = 2
    timeout = 3

    def test_hangs_once(self):
        if self.rank == 0 and bump("hang") == 1:
            time.sleep(120)


class TestPool(MultiProcContinuousTest):
    world_size = 2

    def test_fails_once_on_the_pool(self):
        if self.rank == 0:
            with open(os.path.join(COUNTERS, "pool_pids"), "a") as handle:
                handle.write(f"{os.getpid()}\\n")
            self.assertGreater(bump("pool"), 1, "the first attempt fails")
        dist.barrier()


if __name__ == "__main__":
    run_tests()
"""

REPEATED = """
def bump(name):
    path = os.path.join(os.environ["COUNTERS"], name)
    count = int(open(path).read()) + 1 if os.path.exists(path) else 1
    with open(path, "w") as handle:
        handle.write(str(count))
    return count


class TestRepeat(DistributedTestBase):
    world_size = 2

    def test_third_run_fails(self):
        if self.rank == 1:
            count = bump("third")
            self.assertNotEqual(count, 3, "fails on the third run only")

    def test_steady(self):
        if self.rank == 0:
            bump("steady")


if __name__ == "__main__":
    run_tests()
"""


def _counters(runner: Runner, name: str) -> Path:
    path = runner.tmp_path / name
    path.mkdir()
    return path


def _count(counters: Path, name: str) -> int:
    return int((counters / name).read_text())


def _tests(record: Path) -> dict[str, dict]:
    return {t["id"].rsplit(".", 1)[-1].rsplit("::", 1)[-1]: t for t in json.loads(record.read_text())["tests"]}


@pytest.mark.slow
def test_run_tests_reports_flaky_tests_and_keeps_deterministic_failures(runner: Runner) -> None:
    path = runner.write(FLAKES)
    counters, record = _counters(runner, "counters"), runner.tmp_path / "record.json"
    run = runner.run(str(path), "-v", COUNTERS=str(counters), DISTRIBUTED_TESTING_RETRIES="2",
                     DISTRIBUTED_TESTING_REPORT=str(record))
    assert run.returncode == 1, run.output
    err = run.stderr
    assert "test_flaky (__main__.TestRetry.test_flaky) ... ok (flaky: passed on attempt 3 of 3)" in err
    assert "test_hangs_once (__main__.TestHang.test_hangs_once) ... ok (flaky: passed on attempt 2 of 3)" in err
    assert "ok (flaky: passed on attempt 2 of 3)" in err.split("test_fails_once_on_the_pool", 1)[1]
    assert "test_broken (__main__.TestRetry.test_broken) ... FAIL" in err
    assert "\nFAILED (failures=1, flaky=3)\n" in err
    # The first failure's report is kept and shown after the failures.
    flaky = err.split("FLAKY: test_flaky (__main__.TestRetry.test_flaky)\n", 1)[1]
    assert flaky.split("\n", 2)[1] == "passed on attempt 3 of 3; first failure (attempt 1 of 3):"
    assert "AssertionError: 1 != 0 : planted flake on attempt 1" in flaky.split("=" * 70)[0]
    hang = err.split("FLAKY: test_hangs_once (__main__.TestHang.test_hangs_once)\n", 1)[1].split("=" * 70)[0]
    assert "timed out after 3 s" in hang and "test_x.py" in hang
    assert "distributed_testing: failed on each of 3 attempts (DISTRIBUTED_TESTING_RETRIES=2)" in err
    # Each attempt ran on fresh ranks: the pool too, after its failure.
    assert _count(counters, "flaky") == 3 and _count(counters, "broken") == 3
    assert _count(counters, "hang") == 2 and _count(counters, "pool") == 2
    assert len(set((counters / "pool_pids").read_text().split())) == 2
    tests = _tests(record)
    assert tests["test_flaky"]["outcome"] == "passed" and tests["test_flaky"]["flaky"] is True
    assert tests["test_flaky"]["attempts"] == 3
    first = tests["test_flaky"]["first_failure"]
    assert first["where"] == "attempt 1 of 3" and first["outcome"] == "failed"
    assert "planted flake on attempt 1" in first["message"]
    assert tests["test_broken"]["outcome"] == "failed" and tests["test_broken"]["flaky"] is False
    assert tests["test_broken"]["attempts"] == 3
    assert tests["test_hangs_once"]["first_failure"]["outcome"] == "error"
    assert json.loads(record.read_text())["also_counted"] == {"flaky": 3, "not_run_for_lack_of_hardware": 0}
    assert runner.leftovers() == []
    assert wait_gone(str(runner.tmp_path)) == []


@pytest.mark.slow
def test_a_run_whose_failures_all_passed_on_a_retry_exits_0(runner: Runner) -> None:
    path = runner.write(FLAKES)
    counters = _counters(runner, "counters")
    run = runner.run(str(path), "TestRetry.test_flaky", COUNTERS=str(counters), DISTRIBUTED_TESTING_RETRIES="2")
    assert run.returncode == 0, run.output
    assert run.stderr.rstrip().endswith("OK (flaky=1)")
    # Without retries the same planted flake is an ordinary failure.
    run = runner.run(str(path), "TestRetry.test_flaky", COUNTERS=str(counters))
    assert run.returncode == 1, run.output
    assert run.stderr.rstrip().endswith("FAILED (failures=1)")


@pytest.mark.slow
def test_pytest_reports_flaky_tests_in_its_summary_junit_and_record(runner: Runner) -> None:
    path = runner.write(FLAKES)
    counters, record, junit = _counters(runner, "counters"), runner.tmp_path / "record.json", runner.tmp_path / "j.xml"
    run = runner.pytest(str(path), "-v", "--dt-retries", "2", f"--junitxml={junit}",
                        COUNTERS=str(counters), DISTRIBUTED_TESTING_REPORT=str(record))
    assert run.returncode == 1, run.output
    out = run.stdout
    assert re.search(r"test_x.py::TestRetry::test_flaky FLAKY", out), out
    assert re.search(r"^=+ 1 failed, 3 flaky in .* =+$", out, re.M), out
    flaky = out.split("= flaky tests =", 1)[1]
    assert "FLAKY test_x.py::TestRetry::test_flaky: passed on attempt 3 of 3; first failure (attempt 1 of 3):" in flaky
    assert "planted flake on attempt 1" in flaky
    assert "distributed_testing: failed on each of 3 attempts (DISTRIBUTED_TESTING_RETRIES=2)" in out
    cases = {case.get("name"): case for case in ET.parse(junit).getroot().iter("testcase")}
    flaky_case = cases["test_flaky"]
    properties = {p.get("name"): p.get("value") for p in flaky_case.iter("property")}
    assert properties == {"dt_attempts": "3", "dt_flaky": "true"}
    entries = flaky_case.findall("flakyFailure")
    assert len(entries) == 2 and flaky_case.find("failure") is None
    assert entries[0].get("type") == "RankAssertionError"
    assert "planted flake on attempt 1" in (entries[0].findtext("stackTrace") or "")
    assert [e.tag for e in cases["test_hangs_once"] if e.tag.startswith("flaky")] == ["flakyError"]
    broken = cases["test_broken"]
    assert [e.tag for e in broken if e.tag != "properties"] == ["failure", "rerunFailure", "rerunFailure"]
    tests = _tests(record)
    assert tests["test_flaky"]["flaky"] is True and tests["test_flaky"]["attempts"] == 3
    assert tests["test_flaky"]["outcome"] == "passed"
    assert tests["test_broken"]["outcome"] == "failed" and tests["test_broken"]["attempts"] == 3


@pytest.mark.slow
def test_pytest_xdist_counts_flaky_tests_and_exits_0(runner: Runner) -> None:
    path = runner.write(FLAKES)
    counters = _counters(runner, "counters")
    run = runner.pytest(str(path), "-n", "2", "--dt-retries", "2", "-k", "not broken",
                        COUNTERS=str(counters))
    assert run.returncode == 0, run.output
    assert re.search(r"^=+ 3 flaky in .* =+$", run.stdout, re.M), run.stdout


@pytest.mark.slow
@pytest.mark.parametrize("front_end", ["python", "pytest"])
def test_repeat_finds_a_failure_on_one_repetition(runner: Runner, front_end: str) -> None:
    path = runner.write(REPEATED)
    counters, record = _counters(runner, "counters"), runner.tmp_path / "record.json"
    env = {"COUNTERS": str(counters), "DISTRIBUTED_TESTING_REPORT": str(record)}
    if front_end == "python":
        run = runner.run(str(path), **env, DISTRIBUTED_TESTING_REPEAT="4")
    else:
        run = runner.pytest(str(path), "--dt-repeat", "4", **env)
    assert run.returncode == 1, run.output
    assert "distributed_testing: failed on repetition 3 of 4 (DISTRIBUTED_TESTING_REPEAT=4)" in run.output
    assert "fails on the third run only" in run.output
    assert _count(counters, "third") == 3 and _count(counters, "steady") == 4
    tests = _tests(record)
    assert tests["test_third_run_fails"]["outcome"] == "failed"
    assert tests["test_third_run_fails"]["failed_repetition"] == 3
    assert tests["test_steady"]["outcome"] == "passed" and tests["test_steady"]["attempts"] == 4


# run_tests() stops on a bad setting before any test, whatever the file imports: one without torch
# shows it in a fraction of the time.
PLAIN = """
import os
import unittest

from distributed_testing import run_tests


class TestPlain(unittest.TestCase):
    def test_steady(self):
        open(os.path.join(os.environ["COUNTERS"], "steady"), "w").close()


if __name__ == "__main__":
    run_tests()
"""


@pytest.mark.slow
@pytest.mark.parametrize(
    ("args", "env", "code", "message"),
    [
        (("--dt-retries", "-1"), {}, 4, "DISTRIBUTED_TESTING_RETRIES must be an integer >= 0, got "),
        (("--dt-repeat", "0"), {}, 4, "DISTRIBUTED_TESTING_REPEAT must be an integer >= 1, got "),
        ((), {"DISTRIBUTED_TESTING_RETRIES": "-1"}, 2, "DISTRIBUTED_TESTING_RETRIES must be an integer >= 0"),
        ((), {"DISTRIBUTED_TESTING_REPEAT": "twice"}, 2, "DISTRIBUTED_TESTING_REPEAT must be an integer >= 1"),
    ],
)
def test_bad_retries_or_repeat_stop_the_run(runner: Runner, args, env, code, message) -> None:
    counters = _counters(runner, "counters")
    if code == 4:
        run = runner.pytest(str(runner.write(REPEATED)), *args, COUNTERS=str(counters), **env)
    else:
        run = runner.run(str(runner.write(PLAIN, "test_plain.py", header=False)), COUNTERS=str(counters), **env)
    assert run.returncode == code, run.output
    assert message in run.output
    assert list(counters.iterdir()) == []  # no test ran


def _failure(repetition: int, attempt: int) -> AttemptFailure:
    return AttemptFailure(repetition, attempt, "failed", "RankAssertionError", "rank 0 of 2 failed: boom", "report")


def test_a_record_says_how_the_attempts_went() -> None:
    flaky = RetryRecord(2, 1, 3, (_failure(1, 1), _failure(1, 2)), passed_attempt=3)
    assert flaky.flaky and flaky.describe() == "passed on attempt 3 of 3"
    assert flaky.where(flaky.failures[1]) == "attempt 2 of 3"
    assert flaky.as_record() == {
        "flaky": True,
        "attempts": 3,
        "first_failure": {"where": "attempt 1 of 3", "outcome": "failed", "exc_type": "RankAssertionError",
                          "message": "rank 0 of 2 failed: boom"},
    }
    broken = RetryRecord(2, 1, 3, tuple(_failure(1, a) for a in (1, 2, 3)), failed_repetition=1)
    assert not broken.flaky
    assert broken.note() == (
        "distributed_testing: failed on each of 3 attempts (DISTRIBUTED_TESTING_RETRIES=2); not flaky: it never passed"
    )
    repeated = RetryRecord(0, 20, 4, (_failure(4, 1),), failed_repetition=4)
    assert repeated.note() == "distributed_testing: failed on repetition 4 of 20 (DISTRIBUTED_TESTING_REPEAT=20)"
    assert repeated.as_record()["failed_repetition"] == 4
    retried = RetryRecord(1, 5, 6, (_failure(2, 1),), passed_attempt=2)
    assert retried.describe() == "1 of 5 repetitions passed only on a retry"
    assert retried.where(retried.failures[0]) == "repetition 2 of 5, attempt 1 of 2"


def test_the_hardware_summary_counts_each_need() -> None:
    needs = ["needs 4 CUDA devices", "needs 2 CUDA devices", "needs backend nccl", "needs 2 CUDA devices"]
    assert summary(needs) == (
        "4 tests not run for lack of hardware (needs 2 CUDA devices: 2, needs 4 CUDA devices: 1, needs backend nccl: 1)"
    )
    assert summary(["needs CUDA"], failed=True) == (
        "1 test failed for lack of hardware (needs CUDA: 1): DISTRIBUTED_TESTING_REQUIRE_HARDWARE=1"
    )
    assert summary([]) == ""


def test_the_matrix_junit_shows_a_flaky_test_as_surefire_does() -> None:
    from distributed_testing._matrix_report import _case
    from distributed_testing._matrix_results import _record

    entry = {"id": "__main__.TestX.test_y", "outcome": "passed", "message": "", "seconds": 1.0, "flaky": True,
             "attempts": 3, "first_failure": {"where": "attempt 1 of 3", "outcome": "failed",
                                              "exc_type": "RankAssertionError", "message": "rank 0 of 2 failed: boom"}}
    suite = ET.Element("testsuite")
    _case(suite, "test_x.py", _record("gloo-2", entry))
    case = suite.find("testcase")
    assert case is not None
    assert {p.get("name"): p.get("value") for p in case.iter("property")} == {"dt_flaky": "true", "dt_attempts": "3"}
    flaky = case.find("flakyFailure")
    assert flaky is not None and flaky.get("type") == "RankAssertionError"
    assert flaky.findtext("stackTrace") == "rank 0 of 2 failed: boom"
    assert case.find("failure") is None
