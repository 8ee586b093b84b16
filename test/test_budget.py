"""The rank budget and device leases under pytest-xdist (issue 15, items 1 and 2).

Pure tests of the arithmetic (``_leases``) over simulated device counts; the
lease directory across real processes (``_lease_file``); and real
``pytest -n`` runs whose ranks record when they ran, checked for the invariant
(never more ranks alive than the budget), never for durations.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import NO_HYPOTHESIS, Run, Runner, load_tool, wait_gone

from distributed_testing import (
    MultiProcContinuousTest,
    MultiProcessTestCase,
    _config,
    _lease_file,
    _run,
    skip_if_lt_x_gpu,
)
from distributed_testing._errors import ConfigError
from distributed_testing._leases import (
    CVD,
    GPUS_ATTR,
    Holding,
    Limits,
    allocate,
    decide,
    device_need,
    visible_devices,
    weight,
)

ROOT = Path(__file__).resolve().parent.parent
UUIDS = ["GPU-1111aaaa-0000", "GPU-2222bbbb-0000", "GPU-2222cccc-0000"]


# -- allocation and the budget, pure ------------------------------------------


def test_allocate_takes_the_first_free_devices_in_visible_order():
    assert allocate(["3", "5", "6"], 2) == ("3", "5")
    assert allocate(["GPU-b", "GPU-a"], 1) == ("GPU-b",)
    assert allocate(["0"], 0) == ()
    assert allocate([], 0) == ()
    assert allocate(["0"], 2) is None


@pytest.mark.parametrize(
    ("size", "gpu", "marked", "count", "need"),
    [
        (2, True, 0, 8, 2),  # nccl: a device per rank
        (2, False, 0, 8, 0),  # gloo: none
        (2, False, 4, 8, 4),  # skip_if_lt_x_gpu(4) on a gloo test
        (4, True, 0, 2, 2),  # no more than there are
        (2, True, 0, 0, 0),  # a CPU machine
    ],
)
def test_device_need(size, gpu, marked, count, need):
    assert device_need(size, gpu, marked, count) == need


def test_weight_is_the_world_size_and_gpu_tests_count_only_against_a_given_budget():
    assert weight(4, 0, budget_given=False) == 4
    assert weight(4, 0, budget_given=True) == 4
    assert weight(4, 4, budget_given=False) == 0
    assert weight(4, 4, budget_given=True) == 4


def test_first_come_first_served_within_the_budget():
    limits = Limits(4, True, ())
    held = [Holding("a", 1, 2)]
    assert decide(limits, held, ["b", "c"], "b", 2, 2, 0) is not None
    assert decide(limits, held, ["b", "c"], "c", 3, 2, 0) is None  # fits, but b is first
    held.append(Holding("b", 2, 2))
    assert decide(limits, held, ["c"], "c", 3, 2, 0) is None  # 6 > 4


def test_a_request_wider_than_the_budget_waits_for_all_others_then_runs_alone():
    limits = Limits(4, True, ())
    assert decide(limits, [Holding("a", 1, 1)], ["w"], "w", 2, 6, 0) is None
    grant = decide(limits, [], ["w", "x"], "w", 2, 6, 0)
    assert grant is not None and grant.alone and not grant.over
    assert decide(limits, [Holding("w", 2, 6)], ["x"], "x", 3, 1, 0) is None


def test_a_process_never_waits_for_its_own_leases():
    limits = Limits(4, True, ("0", "1"))
    mine = [Holding("pool", 7, 4, ("0", "1"))]
    grant = decide(limits, mine, ["other", "t"], "t", 7, 2, 1)  # behind another, over the budget
    assert grant is not None and grant.over and grant.devices == ("0",)
    grant = decide(limits, [Holding("pool", 7, 2)], ["t"], "t", 7, 2, 0)
    assert grant is not None and not grant.over


def test_devices_map_through_the_outer_list():
    limits = Limits(8, True, ("GPU-x", "MIG-y", "5"))
    grant = decide(limits, [Holding("a", 1, 1, ("GPU-x",))], ["b"], "b", 2, 2, 2)
    assert grant is not None and grant.devices == ("MIG-y", "5")
    assert decide(limits, [Holding("a", 1, 1, ("GPU-x",))], ["b"], "b", 2, 2, 3) is None


@pytest.mark.parametrize("devices", [0, 1, 2, 3, 8])
@pytest.mark.parametrize("seed", range(5))
def test_simulated_runs_keep_the_budget_and_disjoint_devices_and_finish(devices, seed):
    """Random arrivals and releases of tests of world size 1-6 on a budget of 4."""
    rng = random.Random(seed * 100 + devices)
    limits = Limits(4, True, tuple(str(i) for i in range(devices)))
    arrivals = [(f"t{i}", 100 + i, rng.randint(1, 6), rng.choice([0, 0, 1, 2, 3])) for i in range(40)]
    needs = {t: min(n, devices) for t, _, _, n in arrivals}
    queue: list[tuple[str, int, int]] = []
    holdings: list[Holding] = []
    granted = 0
    for _ in range(10_000):
        if arrivals and (not holdings or rng.random() < 0.5):
            ticket, pid, want, _need = arrivals.pop(0)
            queue.append((ticket, pid, want))
        elif holdings:
            holdings.pop(rng.randrange(len(holdings)))
        while queue:  # every waiter looks again; only the head can be granted
            ticket, pid, want = queue[0]
            grant = decide(limits, holdings, [q[0] for q in queue], ticket, pid, want, needs[ticket])
            if grant is None:
                break
            queue.pop(0)
            granted += 1
            holdings.append(Holding(ticket, pid, want, grant.devices))
            assert len(grant.devices) == needs[ticket] and not grant.over
            assert grant.alone == (want > limits.budget)
            used = [d for h in holdings for d in h.devices]
            assert len(used) == len(set(used)), holdings  # disjoint
            ranks = sum(h.weight for h in holdings)
            assert ranks <= limits.budget or (len(holdings) == 1 and grant.alone), holdings
        if not arrivals and not queue and not holdings:
            break
    assert granted == 40


# -- CUDA_VISIBLE_DEVICES ------------------------------------------------------


def test_visible_devices_unset_is_every_physical_device():
    assert visible_devices(None, UUIDS, "pytest -n 2") == ("0", "1", "2")
    assert visible_devices(None, [], "pytest -n 2") == ()
    assert visible_devices(None, None, "pytest -n 2") == ()


@pytest.mark.parametrize(
    ("value", "devices"),
    [
        ("", ()),
        ("-1", ()),
        ("2, 0", ("2", "0")),
        ("1,-1,0", ("1",)),  # CUDA stops at -1
        ("GPU-1111", ("GPU-1111",)),  # a unique prefix of a UUID
        ("MIG-abc,0", ("MIG-abc", "0")),
    ],
)
def test_visible_devices_takes_the_outer_entries(value, devices):
    assert visible_devices(value, UUIDS, "pytest -n 2") == devices


@pytest.mark.parametrize(
    ("value", "physical", "problem"),
    [
        ("0,3", UUIDS, "names device 3, which does not exist: this machine has 3 CUDA devices"),
        ("1,1", UUIDS, "names device '1' twice"),
        ("0,GPU-1111", UUIDS, "names device 'GPU-1111' twice (as '0' before)"),
        ("GPU-2222", UUIDS, "matches more than one GPU's UUID"),
        ("GPU-9", UUIDS, "matches no GPU's UUID"),
        ("0,,1", UUIDS, "names an empty entry"),
        ("cuda:0", UUIDS, "neither a device index nor a GPU-/MIG- UUID"),
        ("0", [], "names device 0, which does not exist: this machine has 0 CUDA devices"),
    ],
)
def test_visible_devices_naming_no_device_is_an_error_with_an_example(value, physical, problem):
    with pytest.raises(ConfigError) as caught:
        visible_devices(value, physical, "pytest -n 2 ...")
    message = str(caught.value)
    assert message.startswith(f"{CVD}={value!r} names "), message
    assert problem in message
    assert (caught.value.name, caught.value.value) == (CVD, value)
    assert "Allowed: " in message
    example = f"Example: {CVD}=0,1 pytest -n 2 ..." if physical else f"Example: {CVD}= pytest -n 2 ..."
    assert message.endswith(example), message


def test_an_outer_value_is_taken_as_is_where_devices_cannot_be_counted():
    assert visible_devices("0,7", None, "pytest -n 2") == ("0", "7")


def test_skip_if_lt_x_gpu_says_how_many_gpus_a_test_uses():
    from distributed_testing import skip_if_lt_x_gpu

    @skip_if_lt_x_gpu(2)
    def test_two(self):
        pass

    assert getattr(test_two, GPUS_ATTR) == 2


# -- the lease directory across real processes ---------------------------------

HOLDER = """
import sys
from distributed_testing import _lease_file  # only this: importing torch would cost each holder seconds
_lease_file.activate(sys.argv[1])
lease = _lease_file.acquire("holder", int(sys.argv[2]), int(sys.argv[3]))
print("granted", ",".join(lease.devices), flush=True)
sys.stdin.readline()
_lease_file.release(lease)
"""


@pytest.fixture
def lease_dir(tmp_path: Path) -> Iterator[str]:
    directory = _lease_file.create(Limits(2, True, ("GPU-a", "GPU-b", "GPU-c")), str(tmp_path))
    yield directory
    _lease_file.remove(directory)
    assert not os.path.exists(directory)


def start_holder(directory: str, want: int, need: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", HOLDER, directory, str(want), str(need)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT,
    )


def granted(holder: subprocess.Popen[str]) -> list[str]:
    assert holder.stdout is not None
    line = holder.stdout.readline().split()  # blocks until the holder is granted
    assert line and line[0] == "granted", line
    return line[1].split(",") if len(line) > 1 else []


def queued(directory: str) -> int:
    """Tickets waiting once the state shows one (the holder wrote it under the lock)."""
    for _ in range(300):
        with open(os.path.join(directory, "state.json")) as handle:
            waiting = len(json.load(handle)["queue"])
        if waiting:
            return waiting
        time.sleep(0.05)
    return 0


def finish(*holders: subprocess.Popen[str]) -> None:
    for holder in holders:
        if holder.poll() is None:
            assert holder.stdin is not None and holder.stdout is not None
            holder.stdin.write("\n")
            holder.stdin.close()
        holder.wait(timeout=30)
        for pipe in (holder.stdin, holder.stdout):
            if pipe is not None and not pipe.closed:
                pipe.close()


def test_a_waiter_is_granted_when_the_holder_releases(lease_dir):
    first = start_holder(lease_dir, 2, 2)
    assert granted(first) == ["GPU-a", "GPU-b"]
    second = start_holder(lease_dir, 1, 1)
    assert queued(lease_dir) == 1  # 2 + 1 ranks > 2: it waits
    finish(first)
    assert granted(second) == ["GPU-a"]
    finish(second)
    assert not [n for n in os.listdir(lease_dir) if n.startswith("wake-")]


def test_devices_of_concurrent_holders_are_disjoint(lease_dir):
    first, second = start_holder(lease_dir, 1, 2), None
    try:
        assert granted(first) == ["GPU-a", "GPU-b"]
        second = start_holder(lease_dir, 1, 1)
        assert granted(second) == ["GPU-c"]
    finally:
        finish(first, *(h for h in (second,) if h is not None))


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_a_waiter_sleeps_instead_of_spinning(lease_dir):
    first = start_holder(lease_dir, 2, 0)
    granted(first)
    second = start_holder(lease_dir, 2, 0)
    assert queued(lease_dir) == 1
    before = cpu_seconds(second.pid)
    time.sleep(2)  # a busy loop would use about this much CPU
    assert cpu_seconds(second.pid) - before < 0.5
    finish(first, second)


def test_a_killed_holders_lease_is_reclaimed(lease_dir):
    first = start_holder(lease_dir, 2, 0)
    granted(first)
    second = start_holder(lease_dir, 2, 0)
    assert queued(lease_dir) == 1
    first.kill()
    first.wait()
    assert granted(second) == []  # within a poll of the holder's death
    finish(first, second)


class _Gpus(MultiProcessTestCase):
    __test__ = False  # only built here, never run
    world_size = 2

    @skip_if_lt_x_gpu(2)
    def test_two(self):
        pass

    def test_plain(self):
        pass


class _NcclPool(MultiProcContinuousTest):
    __test__ = False
    @classmethod
    def backend_str(cls):
        return "nccl"


def test_a_test_and_a_pool_lease_what_they_use(tmp_path):
    """The glue in the test process, on simulated devices: a test marked skip_if_lt_x_gpu(2) leases
    two (counting against no default budget), a plain gloo test none, an nccl pool one per rank."""
    directory = _lease_file.create(Limits(2, False, ("GPU-a", "GPU-b", "GPU-c")), str(tmp_path))
    _lease_file.activate(directory)
    try:
        settings = _config.load({})
        runs = []
        for name in ("test_two", "test_plain"):
            run = _run.TestRun(f"t.{name}", str(tmp_path), "rendezvous", world_size=2)
            _lease_file.hold_for_test(run, _Gpus(name), settings)
            runs.append(run)
        assert [r.lease.devices for r in runs] == [("GPU-a", "GPU-b"), ()]
        assert [r.lease.weight for r in runs] == [0, 2]
        assert runs[0].rank_env == {CVD: "GPU-a,GPU-b"} and runs[1].rank_env == {}
        env: dict[str, str] = {}
        pool = _lease_file.hold_for_pool(_NcclPool, 1, env, lambda: None)
        assert pool is not None and env == {CVD: "GPU-c"}
        for lease in (*(r.lease for r in runs), pool):
            _lease_file.release(lease)
        with open(os.path.join(directory, "state.json")) as handle:
            assert json.load(handle) == {"holdings": [], "queue": []}
    finally:
        _lease_file.deactivate()
        _lease_file.remove(directory)


def test_without_a_lease_directory_nothing_is_leased():
    _lease_file.deactivate()
    assert _lease_file.acquire("t", 100, 8) is None
    _lease_file.release(None)


# -- real pytest -n runs -------------------------------------------------------

RECORDING = """
import json


def record(test):
    began = time.time()
    time.sleep(test.sleep)
    with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "times",
                           f"{test.id()}.{test.rank}"), "w") as handle:
        json.dump([began, time.time(), os.environ.get("CUDA_VISIBLE_DEVICES")], handle)


class Recorded(MultiProcessTestCase):
    sleep = SLEEP

    def setUp(self):
        super().setUp()
        self._spawn_processes()

    def work(self):
        record(self)


class RecordedPool(MultiProcContinuousTest):
    sleep = 0.3

    def work(self):
        record(self)
"""


def write_recording(runner: Runner, tests: int, classes: int = 1, wide: int = 0, pools: int = 0,
                    sleep: float = 0.5) -> None:
    """``classes`` classes of ``tests`` 2-rank tests (TestNarrow, or TestNarrow0, TestNarrow1, ...); a
    ``wide``-rank TestWide; warm pools TestPoolA and TestPoolB of ``pools`` ranks, 3 tests each."""
    body = RECORDING.replace("SLEEP", str(sleep))
    for c in range(classes):
        body += f"\n\nclass TestNarrow{c if classes > 1 else ''}(Recorded):\n    world_size = 2\n"
        body += "".join(f"\n    def test_{i:02d}(self):\n        self.work()\n" for i in range(tests))
    if wide:
        body += f"\n\nclass TestWide(Recorded):\n    world_size = {wide}\n\n    def test_wide(self):\n        self.work()\n"
    for name in "AB" if pools else "":
        body += f"\n\nclass TestPool{name}(RecordedPool):\n    world_size = {pools}\n"
        body += "".join(f"\n    def test_{i}(self):\n        self.work()\n" for i in range(3))
    runner.write(body)
    (runner.tmp_path / "times").mkdir()


def intervals(runner: Runner) -> list[tuple[float, float, str]]:
    """(start, end, test id) per rank, as the ranks wrote them."""
    found = []
    for path in (runner.tmp_path / "times").iterdir():
        began, ended, _ = json.loads(path.read_text())
        found.append((began, ended, path.name.rsplit(".", 1)[0]))
    return found


def most_alive(spans: list[tuple[float, float, str]]) -> int:
    events = sorted([(b, 1) for b, _, _ in spans] + [(e, -1) for _, e, _ in spans])
    alive = most = 0
    for _, step in events:
        alive += step
        most = max(most, alive)
    return most


def extent(spans: list[tuple[float, float, str]]) -> tuple[float, float]:
    return min(s[0] for s in spans), max(s[1] for s in spans)


def xdist(runner: Runner, *args: str, **env: str) -> Run:
    """``pytest ARGS``, pytest's own temp dir (for its workers) outside the run's TMPDIR."""
    return runner.pytest("--basetemp", str(runner.tmp_path / "basetemp"), *args, timeout=400, **env)


def assert_clean(runner: Runner, run: Run) -> None:
    assert runner.leftovers() == [], run.output  # the lease directory among them
    assert wait_gone(str(runner.tmp_path)) == []


@pytest.mark.slow
def test_xdist_keeps_ranks_within_the_budget_runs_a_wider_test_alone_and_pools_hold_their_lease(runner):
    """One ``pytest -n 3 --dist loadscope --dt-max-ranks 4`` run: three classes of four 2-rank tests,
    which the three workers start at once (6 ranks), then two warm pools of 3 ranks (6 together) and
    a 5-rank test. One test, not two on a shared fixture: xdist may hand those to different workers."""
    write_recording(runner, tests=4, classes=3, wide=5, pools=3)
    run = xdist(runner, "-n", "3", "--dist", "loadscope", "--dt-max-ranks", "4", "test_x.py")
    assert run.returncode == 0, run.output
    assert "19 passed" in run.output
    spans = intervals(runner)
    narrow = [s for s in spans if "TestNarrow" in s[2]]
    wide = [s for s in spans if "TestWide" in s[2]]
    assert (len(narrow), len(wide)) == (12 * 2, 5)
    assert most_alive(narrow) <= 4
    began, ended = extent(wide)
    assert not [s for s in narrow if s[0] < ended and s[1] > began], "the wide test did not run alone"
    assert "distributed_testing rank budget" in run.output
    assert (
        "test_x.TestWide.test_wide has 5 ranks, more than the rank budget of 4 "
        "(--dt-max-ranks / DISTRIBUTED_TESTING_MAX_RANKS): it ran alone"
    ) in run.output
    # Each warm pool holds its lease from its first test to its last.
    spans_a = [s for s in spans if "TestPoolA" in s[2]]
    spans_b = [s for s in spans if "TestPoolB" in s[2]]
    assert len(spans_a) == len(spans_b) == 3 * 3
    (a_began, a_ended), (b_began, b_ended) = extent(spans_a), extent(spans_b)
    assert a_ended <= b_began or b_ended <= a_began, "two pools of 3 ranks lived at once on a budget of 4"
    assert_clean(runner, run)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (("--dt-max-ranks", "0"), {}, "(the value came from --dt-max-ranks)"),
        ((), {"DISTRIBUTED_TESTING_MAX_RANKS": "0"}, "DISTRIBUTED_TESTING_MAX_RANKS"),
        (
            (),
            {CVD: "99"},
            f"{CVD}='99' names device 99, which does not exist: this machine has ",
        ),
    ],
)
def test_bad_limits_are_a_usage_error_before_any_test(runner, args, env, message):
    write_recording(runner, tests=1)
    run = xdist(runner, "-n", "2", *args, "test_x.py", **env)
    assert run.returncode == 4, run.output
    assert message in run.stderr, run.output
    assert "Example: " in run.stderr
    assert not list((runner.tmp_path / "times").iterdir())
    assert_clean(runner, run)


@pytest.mark.slow
def test_without_several_workers_nothing_changes(runner):
    """-n 1: no lease directory, and an outer CUDA_VISIBLE_DEVICES is the ranks' as it is."""
    write_recording(runner, tests=1, sleep=0)
    run = xdist(runner, "-n", "1", "test_x.py", **{CVD: "99"})
    assert run.returncode == 0, run.output
    (_, _, seen), *_ = (json.loads(p.read_text()) for p in (runner.tmp_path / "times").iterdir())
    assert seen == "99"
    assert_clean(runner, run)


# -- tools/gpu_check.py's lease case ---------------------------------------------


gpu_check = load_tool("gpu_check")
LEASE_CHECK = next(c for c in gpu_check.CHECKS if c.name == "xdist_device_lease")
PASSED = "[gw1] [ 50%] PASSED test_x.py::TestLease::test_b \n[gw0] [100%] PASSED test_x.py::TestLease::test_a \n"


@pytest.mark.parametrize(
    ("spans", "devices", "missed"),
    [
        (((1.0, 3.0), (3.5, 5.0)), (gpu_check.ONE_GPU,) * 2, []),
        (((1.0, 3.0), (2.5, 5.0)), (gpu_check.ONE_GPU,) * 2, ["the two tests held the GPU at once"]),
        (((1.0, 3.0), (3.5, 5.0)), (gpu_check.ONE_GPU, "7"), ["a rank's CUDA_VISIBLE_DEVICES was"]),
    ],
)
def test_the_gpu_check_lease_judge(tmp_path, spans, devices, missed):
    for name, (began, ended), device in zip("ab", spans, devices, strict=True):
        (tmp_path / f"test_x.TestLease.test_{name}").write_text(f"{began} {ended} {device}")
    got, found = LEASE_CHECK.judge(gpu_check.Run(0, PASSED, "", workdir=tmp_path))
    assert len(found) == len(missed) and all(f.startswith(m) for f, m in zip(found, missed, strict=True)), found
    assert got.startswith("exit 0; passed ['test_a', 'test_b']")


@pytest.mark.slow
def test_the_gpu_check_lease_case_runs_its_harness_on_cpu(tmp_path, monkeypatch):
    """The check's pytest -n 2 run, with the GPU swapped for the CPU and a budget of one rank
    serialising the two tests as the one device would."""
    body = (LEASE_CHECK.body.replace('device="cuda"', 'device="cpu"').replace("skip_if_lt_x_gpu(1)(hold)", "hold")
            .replace("time.sleep(2)", "time.sleep(0.5)"))  # still overlapping, were the lease not taken in turn
    check = dataclasses.replace(
        LEASE_CHECK, body=body, argv=(*LEASE_CHECK.argv[:-1], *NO_HYPOTHESIS, "--dt-max-ranks", "1", "test_x.py"),
        env=((CVD, ""),),
    )
    monkeypatch.setattr(gpu_check, "ONE_GPU", "")
    run = gpu_check.run_check(check, tmp_path, 300)
    got, missed = gpu_check.judge(check, run)
    assert missed == [], (got, run.output)
