"""Shards across machines: disjoint parts whose union is the whole run, on every front end; merging them."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import unittest
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from conftest import PLAIN, Runner

from distributed_testing import _merge, _shard
from distributed_testing._errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent

FILE = """
class TestPlain(unittest.TestCase):
    def test_p1(self): pass
    def test_p2(self): pass
    def test_p3(self): pass
    def test_p4(self): pass
    def test_p5(self): pass
    def test_p6(self): pass

class TestRanks(MultiProcessTestCase):
    world_size = 2

    def setUp(self):
        super().setUp()
        self._spawn_processes()

    def test_r1(self):
        dist.init_process_group("gloo", init_method=f"file://{self.file_name}", rank=self.rank, world_size=2)
        dist.barrier()
        dist.destroy_process_group()

    def test_r2(self):
        pass

if __name__ == "__main__":
    run_tests()
"""
ALL = [f"test_x.TestPlain.test_p{i}" for i in range(1, 7)] + ["test_x.TestRanks.test_r1", "test_x.TestRanks.test_r2"]
# Durations that make LPT's shards known: r1 alone in one of 2 shards, the rest in the other.
DURATIONS = {**{key: 1.0 for key in ALL}, "test_x.TestRanks.test_r1": 20.0}


def _keys(path: Path) -> list[str]:
    return [test["key"] for test in json.loads(path.read_text())["tests"]]


def _hash_part(keys: list[str], index: int, count: int) -> set[str]:
    return {key for key in keys if _shard.hash_shard(key, count) == index - 1}


# -- the partition, in process ------------------------------------------------------------


@pytest.mark.parametrize("count", [1, 2, 3, 7])
def test_hash_shards_are_disjoint_and_whole(count: int) -> None:
    keys = [f"test_m{m}.TestC{c}.test_{t}" for m in range(4) for c in range(5) for t in range(10)]
    parts = [_shard.select(keys, (i, count)) for i in range(1, count + 1)]
    assert sum(len(part) for part in parts) == len(keys)
    assert set().union(*parts) == set(keys)
    assert all(len(part) > len(keys) / count / 2 for part in parts)  # spread, not lumped


def test_hash_shards_are_the_same_in_every_process() -> None:
    keys = [f"test_x.TestC.test_{i}" for i in range(50)]
    here = [_shard.hash_shard(key, 3) for key in keys]
    code = f"from distributed_testing._shard import hash_shard; print([hash_shard(k, 3) for k in {keys!r}])"
    for seed in ("0", "1", "12345"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
        assert json.loads(out.stdout) == here


def test_balanced_shards_are_within_a_quarter_of_the_mean() -> None:
    rng = random.Random(7)
    costs = {f"test_x.TestC.test_{i}": rng.lognormvariate(0, 1.2) for i in range(300)}
    for count in (2, 3, 5):
        loads = [0.0] * count
        for key, where in _shard.balanced_shards(costs, count).items():
            loads[where] += costs[key]
        mean = sum(loads) / count
        assert max(loads) <= 1.25 * mean and min(loads) >= 0.75 * mean, (count, loads)


def test_balanced_shards_weigh_world_size_and_give_missing_tests_the_mean(tmp_path: Path) -> None:
    record = {"tests": [
        {"id": "__main__.TestC.test_a", "key": "test_x.TestC.test_a", "seconds": 3.0, "ranks": [{}, {}, {}, {}]},
        {"id": "test_x.py::TestC::test_b", "seconds": 6.0},  # a pytest node id: its key is derived
        {"id": "test_x.py::TestC::test_b", "seconds": 4.0},  # recorded twice (repeats): the mean
    ]}
    path = tmp_path / "durations.json"
    path.write_text(json.dumps(record))
    durations = _shard.read_durations(str(path), "DURATIONS", "example")
    assert durations.costs == {"test_x.TestC.test_a": 12.0, "test_x.TestC.test_b": 5.0}
    keys = ["test_x.TestC.test_a", "test_x.TestC.test_b", "test_x.TestC.test_new"]  # new: the mean, 8.5
    parts = [_shard.select(keys, (i, 2), durations) for i in (1, 2)]
    assert parts == [{"test_x.TestC.test_a"}, {"test_x.TestC.test_b", "test_x.TestC.test_new"}]
    assert _shard.balanced_shards({"b": 1.0, "a": 1.0, "c": 1.0}, 2) == {"a": 0, "b": 1, "c": 0}  # ties by name


def test_stale_durations_name_the_tests_but_other_files_are_fine(tmp_path: Path) -> None:
    path = tmp_path / "durations.json"
    path.write_text(json.dumps({"test_x.TestC.test_gone": 1, "test_y.TestD.test_d": 2, "test_x.TestC.test_a": 3}))
    durations = _shard.read_durations(str(path), "--dt-durations", "pytest --dt-durations d.json")
    assert _shard.stale_keys(durations, ["test_x.TestC.test_a"]) == ["test_x.TestC.test_gone"]
    with pytest.raises(ConfigError) as info:
        _shard.select(["test_x.TestC.test_a"], (1, 2), durations, None, "--dt-durations", "pytest --dt-durations d.json")
    message = str(info.value)
    assert "--dt-durations names tests that no longer exist" in message and "test_x.TestC.test_gone" in message
    assert str(path) in message and "Example: pytest --dt-durations d.json" in message
    assert "test_y" not in message


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("[1, 2]", "neither a record"),
        ('{"tests": [{"id": "a.B.c", "seconds": "slow"}]}', "tests[0] (a.B.c) has no duration in seconds"),
        ('{"tests": [{"seconds": 1}]}', 'tests[0] has no "id"'),
        ('{"a.B.c": -1}', "'a.B.c' has no duration in seconds"),
    ],
)
def test_durations_of_the_wrong_shape_say_so(tmp_path: Path, text: str, problem: str) -> None:
    path = tmp_path / "durations.json"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        _shard.read_durations(str(path), "--dt-durations", "pytest --dt-durations d.json")
    assert problem in str(info.value)
    assert f"got --dt-durations={str(path)!r}" in str(info.value) and "Example: " in str(info.value)


class _Keyed(unittest.TestCase):
    __test__ = False  # only its key is wanted here

    def test_a(self) -> None:
        pass


def test_keys_are_the_same_for_unittest_and_pytest() -> None:
    assert _shard.unittest_key(_Keyed("test_a")) == "test_shards._Keyed.test_a"
    assert _shard.nodeid_key("test/test_shards.py::_Keyed::test_a") == "test_shards._Keyed.test_a"
    assert _shard.nodeid_key("test_x.py::test_f[1-a.b]") == "test_x.test_f[1-a.b]"
    assert _shard.id_key("test_x.py::TestC::test_a") == "test_x.TestC.test_a"


# -- merging, in process ------------------------------------------------------------------


def _record(path: Path, shard: tuple[int, int] | None, *tests: tuple[str, str], code: int = 0) -> str:
    entries = [{"id": key, "key": key, "outcome": outcome, "message": "", "seconds": 1.0} for key, outcome in tests]
    record: dict[str, object] = {"exit_code": code, "counts": {}, "tests": entries}
    if shard:
        record["shard"] = list(shard)
    path.write_text(json.dumps(record))
    return str(path)


def test_merging_records_keeps_each_test_once_and_recomputes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    one = _record(tmp_path / "1.json", (1, 2), ("t.C.a", "passed"), ("t.C.b", "skipped"))
    two = _record(tmp_path / "2.json", (2, 2), ("t.C.c", "failed"), code=1)
    out = tmp_path / "out" / "merged.json"
    assert _merge.main(["--json", str(out), one, two]) == 1  # a test failed
    merged = json.loads(out.read_text())
    assert [t["key"] for t in merged["tests"]] == ["t.C.a", "t.C.b", "t.C.c"]
    assert merged["counts"] == {"passed": 1, "failed": 1, "error": 0, "skipped": 1}
    assert merged["exit_code"] == 1
    assert capsys.readouterr().err == ""
    flaky = json.loads(Path(two).read_text())
    flaky["tests"][0].update(outcome="passed", flaky=True)
    Path(two).write_text(json.dumps(flaky))
    assert _merge.main(["--json", str(out), one, two]) == 0
    merged = json.loads(out.read_text())
    assert merged["exit_code"] == 0 and merged["also_counted"]["flaky"] == 1  # as a run's record counts it

    again = _record(tmp_path / "3.json", (2, 2), ("t.C.a", "failed"))
    assert _merge.main(["--json", str(out), one, again]) == 1  # a duplicate: not the run, each test once
    merged = json.loads(out.read_text())
    assert [(t["key"], t["outcome"]) for t in merged["tests"]] == [("t.C.a", "passed"), ("t.C.b", "skipped")]
    assert "t.C.a is in both" in capsys.readouterr().err

    assert _merge.main(["--json", str(out), one]) == 1
    assert "shard 2/2 missing" in capsys.readouterr().err
    stopped = _record(tmp_path / "4.json", (2, 2), code=2)  # a shard that stopped on a usage error
    assert _merge.main(["--json", str(out), one, stopped]) == 2


def test_merge_usage_errors_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "bad.json").write_text("nope")
    one = _record(tmp_path / "1.json", None, ("t.C.a", "passed"))
    assert _merge.main(["--json", str(tmp_path / "m.json"), str(tmp_path / "bad.json")]) == 2
    assert "is neither a JSON record nor a JUnit XML file" in capsys.readouterr().err
    assert _merge.main([one]) == 2
    assert "give --json OUT, --junit OUT or both" in capsys.readouterr().err
    assert _merge.main(["--junit", str(tmp_path / "m.xml"), one]) == 2
    assert "needs at least one JUnit XML file" in capsys.readouterr().err


def test_merging_matrix_junit_files(tmp_path: Path) -> None:
    from distributed_testing._matrix_plan import Config
    from distributed_testing._matrix_report import write_junit
    from distributed_testing._matrix_results import ConfigResult, FileRun, TestRecord

    def result(*names: str, failed: str = "") -> ConfigResult:
        tests = tuple(TestRecord("test_x.C", n, "failed" if n == failed else "passed", "", 1.5) for n in names)
        return ConfigResult(Config("gloo", 2, "file"), runs=[FileRun("test_x.py", "test_x", 0, 3.0, tests, "")])

    write_junit(str(tmp_path / "1.xml"), [result("test_a", "test_b")], 3.0)
    write_junit(str(tmp_path / "2.xml"), [result("test_c", failed="test_c")], 1.5)
    assert _merge.main(["--junit", str(tmp_path / "m.xml"), str(tmp_path / "1.xml"), str(tmp_path / "2.xml")]) == 1
    root = ET.parse(tmp_path / "m.xml").getroot()
    (suite,) = root.findall("testsuite")
    assert suite.get("name") == "gloo-ws2-file"
    assert [case.get("name") for case in suite.findall("testcase")] == ["test_a", "test_b", "test_c"]
    assert (suite.get("tests"), suite.get("failures"), suite.get("time")) == ("3", "1", "6.000")
    assert [p.get("name") for p in suite.findall("properties/property")] == ["BACKEND", "WORLD_SIZE", "INIT_METHOD"]
    assert (root.get("tests"), root.get("failures"), root.get("errors")) == ("3", "1", "0")


# -- real runs ----------------------------------------------------------------------------


@pytest.mark.slow
def test_run_tests_shards_are_disjoint_and_whole_and_merge(runner: Runner) -> None:
    path = runner.write(FILE)
    parts = []
    for i in (1, 2, 3):
        run = runner.run(str(path), DISTRIBUTED_TESTING_SHARD=f"{i}/3", DISTRIBUTED_TESTING_REPORT=f"r{i}.json")
        assert run.returncode == 0, run.output
        parts.append(_keys(runner.tmp_path / f"r{i}.json"))
        assert set(parts[-1]) == _hash_part(ALL, i, 3)
    assert sorted(key for part in parts for key in part) == sorted(ALL)
    run = runner.run("-m", "distributed_testing", "merge", "--json", "all.json", "r1.json", "r2.json", "r3.json")
    assert run.returncode == 0, run.output
    merged = json.loads((runner.tmp_path / "all.json").read_text())
    assert sorted(_keys(runner.tmp_path / "all.json")) == sorted(ALL)
    assert merged["counts"]["passed"] == 8 and merged["exit_code"] == 0
    assert runner.leftovers() == []


def _expected(keys: list[str], index: int, count: int, durations: Path) -> set[str]:
    """The shard the library computes from a durations file, for every key of the file's tests."""
    read = _shard.read_durations(str(durations), "durations", "")
    return _shard.select(keys, (index, count), read, ALL)


@pytest.mark.slow
def test_pytest_shards_take_the_k_selection_and_durations_from_run_tests(runner: Runner) -> None:
    path = runner.write(FILE)
    full = runner.run(str(path), DISTRIBUTED_TESTING_REPORT="full.json")  # durations recorded by run_tests
    assert full.returncode == 0, full.output
    selection = ["-k", "p1 or p2 or p3 or r1 or r2"]
    selected = [key for key in ALL if key[-2:] in ("p1", "p2", "p3", "r1", "r2")]
    whole = runner.pytest(str(path), "-q", *selection, "--dt-report", "whole.json")
    assert whole.returncode == 0, whole.output
    assert sorted(_keys(runner.tmp_path / "whole.json")) == sorted(selected)
    parts = []
    for i in (1, 2):
        args = ["--dt-shard", f"{i}/2", "--dt-durations", "full.json", "--dt-report", f"p{i}.json", f"--junitxml=p{i}.xml"]
        run = runner.pytest(str(path), "-q", *selection, *args)
        assert run.returncode == 0, run.output
        parts.append(set(_keys(runner.tmp_path / f"p{i}.json")))
        assert parts[-1] == _expected(selected, i, 2, runner.tmp_path / "full.json")
    assert parts[0] | parts[1] == set(selected) and not parts[0] & parts[1]
    ranks = {t["key"]: t.get("ranks") for t in json.loads((runner.tmp_path / "whole.json").read_text())["tests"]}
    assert [entry["outcome"] for entry in ranks["test_x.TestRanks.test_r1"]] == ["passed", "passed"]
    run = runner.run("-m", "distributed_testing", "merge", "--json", "m.json", "--junit", "m.xml",
                     "p1.json", "p2.json", "p1.xml", "p2.xml")
    assert run.returncode == 0, run.output
    assert sorted(_keys(runner.tmp_path / "m.json")) == sorted(selected)
    cases = ET.parse(runner.tmp_path / "m.xml").getroot().findall("testsuite/testcase")
    assert sorted(f"{c.get('classname')}.{c.get('name')}" for c in cases) == sorted(selected)
    # and back: a pytest record balances run_tests' shards
    run = runner.run(str(path), DISTRIBUTED_TESTING_SHARD="1/2", DISTRIBUTED_TESTING_DURATIONS="whole.json",
                     DISTRIBUTED_TESTING_REPORT="back.json")
    assert run.returncode == 0, run.output
    assert set(_keys(runner.tmp_path / "back.json")) == _expected(ALL, 1, 2, runner.tmp_path / "whole.json")
    assert runner.leftovers() == []


@pytest.mark.slow
def test_pytest_xdist_shards_are_the_same_shards(runner: Runner) -> None:
    """One shard under xdist (the one with the rank tests) runs the tests the shard function picks, as
    without xdist; the runs without xdist prove that the shards make up the whole."""
    pytest.importorskip("xdist")
    path = runner.write(FILE)
    run = runner.pytest(str(path), "-q", "-n", "2", "--dt-shard", "2/2", "--dt-report", "x2.json")
    assert run.returncode == 0, run.output
    part = set(_keys(runner.tmp_path / "x2.json"))
    assert part == _hash_part(ALL, 2, 2)
    assert part | _hash_part(ALL, 1, 2) == set(ALL)
    assert [p for p in runner.leftovers() if not p.startswith("pytest-of-")] == []  # xdist's basetemp is pytest's


@pytest.mark.slow
def test_python_m_shards_by_durations(runner: Runner) -> None:
    path = runner.write(FILE)
    (runner.tmp_path / "durations.json").write_text(json.dumps(DURATIONS))
    parts = []
    for i in (1, 2):
        run = runner.run("-m", "distributed_testing", "--shard", f"{i}/2", "--durations-file", "durations.json",
                         "--report", f"m{i}.json", str(path))
        assert run.returncode == 0, run.output
        parts.append(_keys(runner.tmp_path / f"m{i}.json"))
    assert parts[0] == ["test_x.TestRanks.test_r1"]
    assert sorted(parts[1]) == sorted(set(ALL) - {"test_x.TestRanks.test_r1"})
    assert runner.leftovers() == []


@pytest.mark.slow
def test_matrix_shards_merge(runner: Runner) -> None:
    path = runner.write(FILE)
    durations = runner.tmp_path / "durations.json"
    durations.write_text(json.dumps(DURATIONS))
    tool = str(ROOT / "tools" / "run_distributed_tests.py")
    for i in (1, 2):
        run = runner.run(tool, str(path), "--junit-xml", f"j{i}.xml", DISTRIBUTED_TESTING_SHARD=f"{i}/2",
                         DISTRIBUTED_TESTING_DURATIONS=str(durations))
        assert run.returncode == 0, run.output
    run = runner.run("-m", "distributed_testing", "merge", "--junit", "j.xml", "j1.xml", "j2.xml")
    assert run.returncode == 0, run.output
    (suite,) = ET.parse(runner.tmp_path / "j.xml").getroot().findall("testsuite")
    assert sorted(f"test_x.{c.get('classname', '').rsplit('.', 1)[-1]}.{c.get('name')}" for c in
                  suite.findall("testcase")) == sorted(ALL)
    assert suite.get("tests") == "8"


BAD = [
    ({"DISTRIBUTED_TESTING_SHARD": "4/3"}, ["--dt-shard", "4/3"], "DISTRIBUTED_TESTING_SHARD='4/3'"),
    ({"DISTRIBUTED_TESTING_SHARD": "0/3"}, ["--dt-shard", "0/3"], "DISTRIBUTED_TESTING_SHARD='0/3'"),
    ({"DISTRIBUTED_TESTING_SHARD": "a/b"}, ["--dt-shard", "a/b"], "DISTRIBUTED_TESTING_SHARD='a/b'"),
    ({"DISTRIBUTED_TESTING_DURATIONS": "bad.json"}, ["--dt-durations", "bad.json"], "which is not JSON"),
    ({"DISTRIBUTED_TESTING_DURATIONS": "stale.json"}, ["--dt-durations", "stale.json"], "test_x.TestPlain.test_gone"),
]


@pytest.mark.slow
@pytest.mark.parametrize(("env", "options", "said"), BAD, ids=["4/3", "0/3", "a/b", "not-json", "stale"])
def test_bad_shards_and_durations_stop_the_run(runner: Runner, env: dict[str, str], options: list[str], said: str) -> None:
    path = runner.write(FILE)
    (runner.tmp_path / "bad.json").write_text("{not json")
    (runner.tmp_path / "stale.json").write_text(json.dumps({**DURATIONS, "test_x.TestPlain.test_gone": 1}))
    stale = "gone" in said
    shard = {} if "DISTRIBUTED_TESTING_SHARD" in env else {"DISTRIBUTED_TESTING_SHARD": "1/2"}
    run = runner.run(str(path if stale else runner.write(PLAIN, "test_plain.py", header=False)), **shard, **env)
    assert run.returncode == 2, run.output
    assert said in run.output and "Example: " in run.output and "Ran " not in run.output
    more = [] if "--dt-shard" in options else ["--dt-shard", "1/2"]
    for xdist in ([], ["-n", "2"]) if stale else ([],):  # xdist: a worker finds it, the run says it
        run = runner.pytest(str(path), *xdist, *more, *options)
        assert run.returncode == 4, run.output
        assert said.split("=")[-1] in run.output and "Example: " in run.output and " passed" not in run.output
        assert options[0] in run.output
