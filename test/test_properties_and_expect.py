"""Hypothesis, expecttest and cross-rank assertions inside distributed tests, through real ranks."""

from __future__ import annotations

import ast
import json

import pytest
from conftest import Runner, outcomes, reports, wait_gone

pytestmark = pytest.mark.slow

PROPERTIES = """
from hypothesis import given, settings, strategies as st

DRAWN = os.path.join(os.environ["MARKER_DIR"], "drawn")


class TestPoolProperties(MultiProcContinuousTest):
    world_size = 2

    @settings(max_examples=100, deadline=None, database=None)
    @given(st.integers(-10**6, 10**6))
    def test_all_reduce_is_world_size_times(self, x):
        with open(f"{DRAWN}-{self.rank}", "a") as handle:
            handle.write(f"{x}\\n")
        t = torch.tensor([x])
        dist.all_reduce(t)
        self.assertEqual(t.item(), self.world_size * x)

    @settings(max_examples=200, deadline=None, database=None)
    @given(st.integers(0, 10_000))
    def test_fails_only_on_rank_1_above_threshold(self, x):
        dist.barrier()
        if self.rank == 1:
            self.assertLess(x, 137)


class TestFreshProperties(MultiProcessTestCase):
    world_size = 2

    def setUp(self):
        super().setUp()
        self._spawn_processes()

    @settings(max_examples=8, deadline=None, database=None)
    @given(st.lists(st.integers(), max_size=4))
    def test_every_rank_gets_the_same_example(self, xs):
        dist.init_process_group("gloo", init_method=f"file://{self.file_name}", rank=self.rank,
                                world_size=self.world_size)
        self.assertSameOnAllRanks(xs)


if __name__ == "__main__":
    run_tests()
"""


@pytest.fixture(scope="module")
def properties(tmp_path_factory: pytest.TempPathFactory):
    runner = Runner(tmp_path_factory.mktemp("properties"))
    markers = runner.tmp_path / "markers"
    markers.mkdir()
    run = runner.run(str(runner.write(PROPERTIES)), "-v", MARKER_DIR=str(markers))
    return run, runner, markers


def test_property_outcomes(properties):
    assert outcomes(properties[0].output) == {
        "TestPoolProperties.test_all_reduce_is_world_size_times": "ok",
        "TestPoolProperties.test_fails_only_on_rank_1_above_threshold": "FAIL",
        "TestFreshProperties.test_every_rank_gets_the_same_example": "ok",
    }, properties[0].output


def test_every_rank_runs_the_same_examples_in_the_same_order(properties):
    drawn = [(properties[2] / f"drawn-{rank}").read_text().split() for rank in (0, 1)]
    assert len(drawn[0]) >= 50
    assert drawn[0] == drawn[1]


def test_a_failure_on_one_rank_shrinks_to_the_threshold(properties):
    report = reports(properties[0].output)["TestPoolProperties.test_fails_only_on_rank_1_above_threshold"]
    assert "rank 1 of 2 failed: AssertionError: 137 not less than 137" in report
    assert "test_fails_only_on_rank_1_above_threshold(" in report and "x=137," in report  # hypothesis's own report
    # hypothesis's explain phase traces the parent, where the test's lines never run: it is left out
    assert "always and only run by failing test cases" not in report, report


def test_under_pytest_with_hypothesis_plugin(tmp_path):
    """The one child pytest run with hypothesis's plugin: it and ours share each test's report."""
    runner = Runner(tmp_path)
    (markers := tmp_path / "markers").mkdir()
    path = runner.write(PROPERTIES)
    run = runner.pytest(str(path), "-v", "-k", "threshold or same_example", hypothesis=True, MARKER_DIR=str(markers))
    assert run.returncode == 1, run.output
    assert "test_fails_only_on_rank_1_above_threshold FAILED" in run.stdout
    assert "test_every_rank_gets_the_same_example PASSED" in run.stdout
    assert "rank 1 of 2 failed: AssertionError: 137 not less than 137" in run.stdout
    assert "test_fails_only_on_rank_1_above_threshold(" in run.stdout and "x=137," in run.stdout, run.stdout
    assert "always and only run by failing test cases" not in run.stdout, run.stdout
    assert runner.leftovers() == []
    assert wait_gone(str(tmp_path)) == []


def test_nothing_is_left_behind(properties):
    assert properties[1].leftovers() == []
    assert wait_gone(str(properties[1].tmp_path)) == []


EXPECT = '''
class TestExpectPool(MultiProcContinuousTest):
    world_size = 2

    def test_passes(self):
        self.assertExpectedInline(str(torch.ones(2)), """tensor([1., 1.])""")

    def test_needs_accepting(self):
        self.assertExpectedInline("new\\nvalue", """old""")

    def test_ranks_disagree(self):
        self.assertExpectedInline(f"rank {self.rank}", """rank 0""")


class TestExpectFresh(MultiProcessTestCase):
    world_size = 3

    def setUp(self):
        super().setUp()
        self._spawn_processes()

    def test_after_a_shifting_accept(self):
        self.assertExpectedInline("three", """3""")


if __name__ == "__main__":
    run_tests()
'''


def test_expect_checks_on_every_rank(runner):
    run = runner.run(str(runner.write(EXPECT)), "-v")
    assert outcomes(run.output) == {
        "TestExpectPool.test_passes": "ok",
        "TestExpectPool.test_needs_accepting": "FAIL",
        "TestExpectPool.test_ranks_disagree": "FAIL",
        "TestExpectFresh.test_after_a_shifting_accept": "FAIL",
    }, run.output
    report = reports(run.output)["TestExpectPool.test_ranks_disagree"]
    assert "ranks disagree on assertExpectedInline at test_x.py:" in report
    assert "  rank 0: 'rank 0'\n  rank 1: 'rank 1'" in report
    assert "EXPECTTEST_ACCEPT=1" in reports(run.output)["TestExpectPool.test_needs_accepting"]


def test_accept_rewrites_the_file_exactly_once(runner):
    path = runner.write(EXPECT)
    run = runner.run(str(path), "-v", EXPECTTEST_ACCEPT="1")
    found = outcomes(run.output)
    assert found["TestExpectPool.test_needs_accepting"] == "ok", run.output
    assert found["TestExpectFresh.test_after_a_shifting_accept"] == "ok"
    assert found["TestExpectPool.test_ranks_disagree"] == "FAIL"  # never accept values ranks disagree on
    source = path.read_text()
    ast.parse(source)
    assert source.count('"""\\\nnew\nvalue"""') == 1
    assert 'self.assertExpectedInline("three", """three""")' in source
    assert '"""rank 0"""' in source
    again = runner.run(str(path), "-v", "TestExpectPool.test_needs_accepting", "TestExpectFresh")
    assert again.returncode == 0, again.output


CROSS = """
class TestCrossRank(MultiProcContinuousTest):
    world_size = 3

    def test_same(self):
        self.assertSameOnAllRanks({"t": torch.arange(4), "n": [1, 2]})

    def test_tensor_differs_on_rank_2(self):
        t = torch.arange(6.0)
        if self.rank == 2:
            t[4] = -1.0
        assert_same_on_all_ranks(t)

    def test_object_differs(self):
        self.assertSameOnAllRanks({"rank_parity": self.rank % 2})

    def test_on_rank(self):
        self.assertEqualOnRank(self.rank, 1, rank=1)
        self.assertNotEqualOnRank(self.rank, 0, rank=2)


if __name__ == "__main__":
    run_tests()
"""


def test_cross_rank_assertions(runner):
    run = runner.run(str(runner.write(CROSS)), "-v")
    assert outcomes(run.output) == {
        "TestCrossRank.test_same": "ok",
        "TestCrossRank.test_tensor_differs_on_rank_2": "FAIL",
        "TestCrossRank.test_object_differs": "FAIL",
        "TestCrossRank.test_on_rank": "ok",
    }, run.output
    tensor = reports(run.output)["TestCrossRank.test_tensor_differs_on_rank_2"]
    assert "ranks 0-2 of 3 failed: same AssertionError: rank 2 differs from rank 0 (of 3 ranks)" in tensor
    assert "rank 2: first differs at index (4,): -1.0 (rank 0: 4.0)" in tensor
    objects = reports(run.output)["TestCrossRank.test_object_differs"]
    assert "rank 1 differs from rank 0 (of 3 ranks)" in objects
    assert "rank 1: {'rank_parity': 1}" in objects


def test_json_report_of_a_property_run(runner):
    report = runner.tmp_path / "report.json"
    path = runner.write(PROPERTIES)
    markers = runner.tmp_path / "markers"
    markers.mkdir()
    run = runner.run(str(path), "TestPoolProperties.test_all_reduce_is_world_size_times",
                     MARKER_DIR=str(markers), DISTRIBUTED_TESTING_REPORT=str(report))
    assert run.returncode == 0, run.output
    assert json.loads(report.read_text())["counts"]["passed"] == 1
