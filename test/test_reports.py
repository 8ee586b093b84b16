"""Outcomes as data at the edges: the JSON record per rank, pytest's sections per rank, full tracebacks."""

from __future__ import annotations

import json

from conftest import Runner

FAILING = """
class TestReported(MultiProcessTestCase):
    def setUp(self):
        super().setUp()
        self._spawn_processes()

    @property
    def world_size(self):
        return 2

    def test_rank_1_raises(self):
        print(f"hello from rank {self.rank}")
        if self.rank == 1:
            raise ValueError("only rank 1")

    def test_passes(self):
        pass

if __name__ == "__main__":
    run_tests()
"""


def test_the_json_record_of_a_failing_test_holds_every_rank(runner: Runner) -> None:
    path = runner.write(FAILING)
    record_path = runner.tmp_path / "record.json"
    run = runner.run(str(path), DISTRIBUTED_TESTING_REPORT=str(record_path))
    assert run.returncode == 1, run.output
    tests = {t["id"].rsplit(".", 1)[-1]: t for t in json.loads(record_path.read_text())["tests"]}
    failed = tests["test_rank_1_raises"]
    assert failed["outcome"] == "error"
    assert failed["message"].startswith("rank 1 of 2 failed: ValueError: only rank 1")
    ranks = {entry["rank"]: entry for entry in failed["ranks"]}
    assert ranks[0]["outcome"] == "passed"
    assert ranks[0]["traceback"] == ""
    assert ranks[0]["output"] == "hello from rank 0\n"
    assert ranks[1]["outcome"] == "failed"
    assert ranks[1]["exc_type"] == "ValueError"
    assert ranks[1]["summary"] == "ValueError: only rank 1"
    assert 'raise ValueError("only rank 1")' in ranks[1]["traceback"]
    assert ranks[1]["output"] == "hello from rank 1\n"
    assert [entry["outcome"] for entry in tests["test_passes"]["ranks"]] == ["passed", "passed"]
    assert runner.leftovers() == []


def test_pytest_shows_each_rank_as_its_own_section(runner: Runner) -> None:
    path = runner.write(FAILING)
    run = runner.pytest(str(path), "-rA")
    assert run.returncode == 1, run.output
    out = run.stdout
    # The report's headline, then one section per rank (traceback and output), as pytest shows captured output.
    assert "RankFailure: rank 1 of 2 failed: ValueError: only rank 1" in out
    assert "rank 0: passed" in out
    assert "rank 1: failed: ValueError: only rank 1" in out
    rank_1 = out[out.index("rank 1: failed: ValueError: only rank 1") :]
    assert 'raise ValueError("only rank 1")' in rank_1
    assert "hello from rank 1" in rank_1
    assert out.count('raise ValueError("only rank 1")') == 1
    assert "Re-run: BACKEND=gloo WORLD_SIZE=2 pytest test_x.py::TestReported::test_rank_1_raises" in out
    assert runner.leftovers() == []


def test_full_tracebacks_keep_the_framework_frames(runner: Runner) -> None:
    path = runner.write(FAILING)
    trimmed = runner.run(str(path), "TestReported.test_rank_1_raises")
    full = runner.run(str(path), "TestReported.test_rank_1_raises", DISTRIBUTED_TESTING_FULL_TRACEBACKS="1")
    assert trimmed.returncode == full.returncode == 1, full.output
    assert 'raise ValueError("only rank 1")' in trimmed.output
    assert "distributed_testing/_testcase.py" not in trimmed.output
    assert 'raise ValueError("only rank 1")' in full.output
    assert "distributed_testing/_testcase.py" in full.output


def test_debug_logging_says_what_the_library_did_to_the_ranks(runner: Runner) -> None:
    path = runner.write("""
        class TestStopped(MultiProcessTestCase):
            def setUp(self):
                super().setUp()
                self._spawn_processes()

            @property
            def world_size(self):
                return 2

            def test_rank_0_waits_for_a_peer_that_failed(self):
                if self.rank == 1:
                    raise ValueError("rank 1 fails")
                time.sleep(60)

        if __name__ == "__main__":
            run_tests()
        """)
    quiet = runner.run(str(path))
    logged = runner.run(str(path), DISTRIBUTED_TESTING_LOG="debug")
    assert quiet.returncode == logged.returncode == 1, logged.output
    assert " DEBUG: " not in quiet.stderr
    lines = logged.stderr.splitlines()
    assert any("distributed_testing._launcher DEBUG: started rank 1 (pid" in line for line in lines), logged.stderr
    assert any(
        "distributed_testing._launcher DEBUG: rank 0 (pid" in line and "still running: SIGTERM" in line for line in lines
    ), logged.stderr
    assert "rank 1 of 2 failed: ValueError: rank 1 fails" in logged.stderr
