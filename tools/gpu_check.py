"""Check on a machine with an NVIDIA GPU what CPU machines cannot: CUDA and NCCL paths.

Each check writes a small test file into a private temp dir and runs it as a user would
(``python test_x.py -v``, the repository root on PYTHONPATH) with its own timeout, then
asserts on the exit code and the report text. Prints the environment, then a table; exits 1
if a check missed. Without CUDA every check is SKIP, exit 0 (1 with ``--require-gpu``).

    python tools/gpu_check.py [--only NAME...] [--timeout-scale F] [--keep] [--require-gpu]
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BUDGET_S = 420.0  # the whole run, at --timeout-scale 1: under the 8 minutes, with room for settling
HEADER = """\
import os, sys, time, unittest
import torch, torch.distributed as dist
from distributed_testing import *
class Spawning(MultiProcessTestCase):  # ranks start in setUp, as PyTorch's tests write it
    def setUp(self): super().setUp(); self._spawn_processes()
"""
FOOTER = '\n\n\nif __name__ == "__main__":\n    run_tests()\n'
# The outer environment's configuration must not leak into the files under test.
# NCCL's and c10d's own switches change how a rank blocks (DETAIL wraps NCCL in a gloo-checked group).
SCRUB = ("BACKEND", "WORLD_SIZE", "TEMP_DIR", "INIT_METHOD", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT",
         "PYTHONWARNINGS", "PYTEST_ADDOPTS", "TORCH_DIST_INIT_BARRIER", "TORCH_DISTRIBUTED_DEBUG",
         "TORCH_NCCL_BLOCKING_WAIT", "TORCH_NCCL_ASYNC_ERROR_HANDLING", "NCCL_ASYNC_ERROR_HANDLING",
         "TORCH_NCCL_USE_COMM_NONBLOCKING", "CUDA_LAUNCH_BLOCKING")
# The one GPU of every check (the skip messages and device maps expect a count of 1): the first outer one.
ONE_GPU = os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0].strip() or "0"
SPAWN_WARNING = "CUDA is initialised in this process, so ranks start with spawn instead of fork"
PROBE = """
import json, sys
info = {"python": sys.version.split()[0], "executable": sys.executable}
try:
    import torch, torch.distributed as dist
except Exception as exc:
    print(json.dumps({**info, "error": f"torch is not importable: {exc!r}"})); sys.exit(0)
info.update(torch=torch.__version__, torch_cuda=torch.version.cuda, cuda_available=torch.cuda.is_available(),
            device_count=torch.cuda.device_count(), nccl_available=dist.is_available() and dist.is_nccl_available())
if info["cuda_available"]:
    info["devices"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    if info["nccl_available"]:
        info["nccl"] = ".".join(map(str, torch.cuda.nccl.version()))
try:
    import distributed_testing
    from distributed_testing import DTensorTestBase, MultiProcContinuousTest, MultiProcessTestCase, run_tests
    info["distributed_testing"] = distributed_testing.__file__
except Exception as exc:
    info["error"] = f"distributed_testing is not importable: {exc!r}"
print(json.dumps(info))
"""


@dataclass
class Run:
    """A finished test file: exit code (None: killed at our timeout), output, leftovers."""
    returncode: int | None
    output: str
    text: str  # the test file as written
    left_processes: list[str] = field(default_factory=list)
    left_files: list[str] = field(default_factory=list)
    workdir: Path = Path()  # the check's directory: its test_x.py and what the test wrote there


@dataclass(frozen=True)
class Check:
    name: str
    expected: str
    body: str
    timeout: float
    judge: Callable[[Run], tuple[str, list[str]]]  # -> (what we got, what missed)
    env: tuple[tuple[str, str], ...] = ()
    argv: tuple[str, ...] = ("test_x.py", "-v")  # after ``python``
    requires: str = ""  # a module the check needs (else SKIP)


_START = re.compile(r"^(test\w*) \(([\w.]+)\) \.\.\. ", re.M)
_VERDICT = re.compile(r"^(ok|FAIL|ERROR|skipped .*|expected failure|unexpected success)$")


def outcomes(output: str) -> dict[str, str]:
    """unittest -v verdicts by "TestX.test_y"; robust to warnings printed between a test's name and its verdict."""
    found: dict[str, str] = {}
    starts = list(_START.finditer(output))
    for i, match in enumerate(starts):
        end = starts[i + 1].start() if i + 1 < len(starts) else len(output)
        parts = match[2].split(".")  # "__main__.TestX.test_y" (Python 3.11+) or "__main__.TestX" (3.10)
        key = f"{parts[-2] if parts[-1] == match[1] else parts[-1]}.{match[1]}"
        for line in output[match.end() : end].splitlines():
            if _VERDICT.match(line):
                found[key] = line
                break
    return found


def judge_outcomes(run: Run, rc: int, wanted: dict[str, str]) -> tuple[str, list[str]]:
    """Exit code ``rc`` and each test's verdict matching its pattern in ``wanted``."""
    found = outcomes(run.output)
    got = [f"exit {run.returncode}"] + [f"{k.split('.')[-1]} {v}" for k, v in sorted(found.items())]
    missed = [] if run.returncode == rc else [f"exit code {run.returncode}, expected {rc}"]
    for key, pattern in wanted.items():
        if not re.fullmatch(pattern, found.get(key, "<no verdict>")):
            missed.append(f"{key}: {found.get(key, '<no verdict>')!r}, expected {pattern!r}")
    return "; ".join(got), missed


def passes(*tests: str) -> Callable[[Run], tuple[str, list[str]]]:
    return lambda run: judge_outcomes(run, 0, {t: "ok" for t in tests})


def judge_spawn(run: Run) -> tuple[str, list[str]]:
    got, missed = judge_outcomes(run, 0, {"TestSpawn.test_cuda_in_rank": "ok", "TestSpawn.test_again": "ok"})
    count = run.output.count(SPAWN_WARNING)
    if count != 1 or "RuntimeWarning" not in run.output:
        missed.append(f"the spawn RuntimeWarning was printed {count} times, expected once")
    return f"{got}; warning x{count}", missed


def judge_skips(run: Run) -> tuple[str, list[str]]:
    got, missed = judge_outcomes(run, 0, {"TestSkips.test_runs": "ok",
                                          "TestSkips.test_two_gpus": r"skipped 'needs 2 CUDA devices, found 1'",
                                          "TestSkips.test_nccl_99": r"skipped 'needs NCCL >= 99\.0, found \S+: why'"})
    if "CUDA initialised after the guards: False" not in run.output:
        missed.append("the guards initialised CUDA in the test process (or the line is missing)")
    if SPAWN_WARNING in run.output:
        missed.append("ranks fell back to spawn: something initialised CUDA in the test process")
    return got, missed


def judge_hang(run: Run) -> tuple[str, list[str]]:
    got, missed = judge_outcomes(run, 1, {"TestHang.test_hang": "ERROR"})
    line = next(n for n, text in enumerate(run.text.splitlines(), 1) if "dist.all_reduce(" in text)
    if "TestHang.test_hang timed out after 20 s" not in run.output:
        missed.append("no 'TestHang.test_hang timed out after 20 s' in the report")
    where = re.search(r"^  rank 0: (.*)$", run.output, re.M)
    # "in all_reduce (collective #1 of the default group) at test_x.py:N", or "in synchronize at
    # test_x.py:N (after collective #1); flight recorder: all_reduce #1 not completed, ..."
    if where is None or not re.match(rf"in (all_reduce|synchronize)\b.*? at test_x\.py:{line}\b", where[1]):
        missed.append(f"rank 0's line is {where[1] if where else None!r}, expected 'in all_reduce at test_x.py:{line}'")
    if "--- rank 0 stacks (most recent call first) ---" not in run.output:
        missed.append("no stacks section for rank 0")
    return f"{got}; rank 0: {where[1] if where else '<none>'}", missed


SPAWN = """
torch.cuda.init()  # CUDA initialised in the test process before any test runs
class TestSpawn(Spawning):
    world_size = 1
    def test_cuda_in_rank(self):
        # A forked copy of an initialised CUDA context cannot run this; a spawned rank can.
        self.assertEqual(torch.ones(4, device="cuda").sum().item(), 4.0)
    def test_again(self):  # the warning is said once per process, not per test
        self.assertEqual(torch.cuda.device_count(), 1)
"""

NCCL_MULTIPROCESS = """
class TestNccl(Spawning):
    world_size = 1
    @requires_nccl()
    def test_all_reduce(self):
        torch.cuda.set_device(0)
        dist.init_process_group("nccl", init_method=f"file://{self.file_name}", rank=self.rank, world_size=1)
        self.assertEqual(dist.get_backend(), "nccl")
        t = torch.full((4,), 3.0, device="cuda:0")
        dist.all_reduce(t)
        torch.testing.assert_close(t.cpu(), torch.full((4,), 3.0))
        dist.destroy_process_group()
"""

NCCL_DTENSOR = """
from torch.distributed.tensor import DTensor, Replicate, Shard, distribute_tensor
class TestDTensor(DTensorTestBase):
    world_size = 1
    @with_comms
    def test_dtensor_op(self):
        self.assertEqual(self.device_type, "cuda")
        self.assertEqual(dist.get_backend(), "nccl")
        mesh = self.build_device_mesh()
        local = torch.arange(16.0).reshape(4, 4)
        dt = distribute_tensor(local.to(self.device_type), mesh, [Shard(0)])
        product = dt @ dt.T
        self.assertIsInstance(product, DTensor)
        torch.testing.assert_close(product.full_tensor(), (local @ local.T).to("cuda"))  # checks the device too
        torch.testing.assert_close(dt.redistribute(mesh, [Replicate()]).to_local().cpu(), local)
"""

NCCL_CONTINUOUS = """
class TestPool(MultiProcContinuousTest):
    world_size = 1
    @classmethod
    def backend_str(cls):
        return "nccl"
    def test_1_all_reduce(self):
        self.assertEqual(dist.get_backend(), "nccl")
        self.assertEqual(self.device_type(), "cuda")
        t = torch.full((4,), 2.0, device="cuda")
        dist.all_reduce(t)
        torch.testing.assert_close(t.cpu(), torch.full((4,), 2.0))
    def test_2_same_group(self):
        dist.barrier()
        t = torch.ones(2, device="cuda")
        dist.all_reduce(t)
        torch.testing.assert_close(t.cpu(), torch.ones(2))
"""

SKIPS = """
class TestSkips(Spawning):
    world_size = 1
    @skip_if_lt_x_gpu(2)
    def test_two_gpus(self): pass
    @requires_nccl_version((99, 0), "why")
    def test_nccl_99(self): pass
    def test_runs(self):  # ranks still fork: the guards did not initialise CUDA, so a rank can
        self.assertEqual(torch.cuda.device_count(), 1)
        self.assertEqual(torch.ones(1, device="cuda").item(), 1.0)
print("CUDA initialised after the guards:", torch.cuda.is_initialized(), flush=True)"""

CREATE_PG = """
class TestCreatePg(DistributedTestBase):
    world_size = 1
    def test_create_pg(self):
        pg = self.create_pg("cuda")
        self.assertEqual(self.backend("cuda"), "nccl")
        self.assertEqual(dist.get_backend(pg), "nccl")
        self.assertEqual(self.rank_to_device("cuda"), {0: [0]})
        self.assertEqual(torch.cuda.current_device(), 0)
        t = torch.ones(3, device="cuda")
        dist.all_reduce(t, group=pg)
        torch.testing.assert_close(t.cpu(), torch.ones(3))
"""

# NCCL refuses two ranks of one communicator on one device, and there is one GPU. So only rank 0
# uses NCCL: world size 2, rank 1 never joins (it sleeps), and rank 0's first collective blocks in
# C++ creating the communicator (ncclCommInitRank waits for rank 1; init is lazy, so init_process_group
# returns). synchronize() shares the line in case the collective is only enqueued and waits on the GPU.
HANG = """
class TestHang(Spawning):
    world_size = 2
    def test_hang(self):
        if self.rank == 1:
            time.sleep(600)
        torch.cuda.set_device(0)
        dist.init_process_group("nccl", init_method=f"file://{self.file_name}", rank=self.rank, world_size=2)
        t = torch.ones(4, device="cuda:0")
        dist.all_reduce(t); torch.cuda.synchronize()
"""

# pytest -n 2, two tests that need the one GPU: each leases it in turn; its rank sees the outer device.
LEASE = """
from pathlib import Path
class TestLease(Spawning):
    world_size = 1
    def hold(self):
        began = time.time(); t = torch.ones(4, device="cuda"); time.sleep(2); t.sum().item()
        Path(__file__).with_name(self.id()).write_text(f"{began} {time.time()} {os.environ['CUDA_VISIBLE_DEVICES']}")
    test_a = test_b = skip_if_lt_x_gpu(1)(hold)
"""


def judge_lease(run: Run) -> tuple[str, list[str]]:
    passed = sorted(re.findall(r"\bPASSED \S*::TestLease::(test_\w+)", run.output))  # xdist's -v lines
    held = [p.read_text().split(" ", 2) for p in sorted(run.workdir.glob("test_x.TestLease.*"))]
    missed = [] if run.returncode == 0 else [f"exit code {run.returncode}, expected 0"]
    if passed != ["test_a", "test_b"] or len(held) != 2:
        missed.append(f"passed {passed}, {len(held)} of 2 tests recorded their lease")
    elif float(held[0][0]) < float(held[1][1]) and float(held[1][0]) < float(held[0][1]):
        missed.append(f"the two tests held the GPU at once: {held}")
    if any(h[2] != ONE_GPU for h in held):
        missed.append(f"a rank's CUDA_VISIBLE_DEVICES was {[h[2] for h in held]}, expected {ONE_GPU!r}")
    return f"exit {run.returncode}; passed {passed}; devices {[h[2] for h in held]}", missed


CHECKS = (
    Check("cuda_init_spawn", f"exit 0; 2 ok; RuntimeWarning '{SPAWN_WARNING}' once", SPAWN, 75, judge_spawn),
    Check("nccl_multiprocess", "exit 0; MultiProcessTestCase nccl all_reduce on cuda:0 ok", NCCL_MULTIPROCESS, 60,
          passes("TestNccl.test_all_reduce")),
    Check("nccl_dtensor", "exit 0; DTensorTestBase + with_comms, cuda/nccl, DTensor matmul ok", NCCL_DTENSOR, 75,
          passes("TestDTensor.test_dtensor_op")),
    Check("nccl_continuous", "exit 0; MultiProcContinuousTest backend_str() nccl, 2 ok", NCCL_CONTINUOUS, 60,
          passes("TestPool.test_1_all_reduce", "TestPool.test_2_same_group")),
    Check("gpu_skips", "exit 0; skipped 'needs 2 CUDA devices, found 1', 'needs NCCL >= 99.0, found X: why'; "
          "CUDA not initialised by guards", SKIPS, 45, judge_skips),
    Check("create_pg_cuda", "exit 0; create_pg('cuda') is nccl, rank_to_device {0: [0]}", CREATE_PG, 60,
          passes("TestCreatePg.test_create_pg")),
    Check("nccl_hang_stacks", "exit 1; ERROR 'timed out after 20 s'; 'rank 0: in all_reduce at test_x.py:N'; stacks",
          HANG, 80, judge_hang, (("DISTRIBUTED_TESTING_TIMEOUT", "20"),)),
    Check("xdist_device_lease", "exit 0; pytest -n 2: 2 ok, one GPU leased in turn, CUDA_VISIBLE_DEVICES its own",
          LEASE, 120, judge_lease, argv=("-m", "pytest", "-p", "no:cacheprovider", "-v", "-n", "2",
                                         "--basetemp=basetemp", "test_x.py"), requires="xdist"),
)
NAMES = [c.name for c in CHECKS]


def live_processes(marker: str) -> list[tuple[int, str]]:
    """Our processes still alive: every process a check starts inherits TMPDIR=marker."""
    alive = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            environ = Path(f"/proc/{entry}/environ").read_bytes().decode(errors="replace")
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, ValueError):
            continue
        if f"TMPDIR={marker}\0" in environ and int(entry) != os.getpid():
            alive.append((int(entry), cmdline.strip()))
    return alive


def child_env(scratch: Path, extra: tuple[tuple[str, str], ...], timeout: float) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in SCRUB and not k.startswith("DISTRIBUTED_TESTING_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    env["TMPDIR"] = str(scratch)
    env["CUDA_VISIBLE_DEVICES"] = ONE_GPU
    env["TORCHINDUCTOR_CACHE_DIR"] = str(scratch.parent / "inductor")  # torch's cache, not a leftover of ours
    env.setdefault("NCCL_DEBUG", "WARN")
    env["DISTRIBUTED_TESTING_TIMEOUT"] = str(max(10, int(timeout / 2)))  # a hang reports before we kill it
    env.update(extra)
    return env


_HAS_ENTRY_POINT = (
    "from importlib.metadata import entry_points as e; "
    "print(any(p.name == 'distributed_testing' for p in e(group='pytest11')))"
)


def _plugin_args(check: Check, env: dict[str, str], cwd: Path, python: str = sys.executable) -> list[str]:
    """pytest loads this library's plugin through its entry point, which only an installed
    package has; from a checkout on PYTHONPATH, name it (twice would be a pytest error).
    Asked of a child where the check runs, with its environment (PYTHONPATH decides what it sees)."""
    if "pytest" not in check.argv:
        return []
    proc = subprocess.run([python, "-c", _HAS_ENTRY_POINT], env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=60)
    return [] if proc.stdout.strip() == "True" else ["-p", "distributed_testing._pytest_plugin"]


def run_check(check: Check, root: Path, timeout: float) -> Run:
    """Write the check's test file into its own directory and run ``python test_x.py -v`` there."""
    workdir, scratch = root / check.name, root / check.name / "tmp"
    scratch.mkdir(parents=True)
    text = HEADER + textwrap.dedent(check.body).rstrip("\n") + FOOTER
    (workdir / "test_x.py").write_text(text)
    env = child_env(scratch, check.env, timeout)
    proc = subprocess.Popen([sys.executable, *check.argv, *_plugin_args(check, env, workdir)], cwd=workdir, env=env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            errors="replace", start_new_session=True)
    code: int | None = None
    try:
        output, _ = proc.communicate(timeout=timeout)
        code = proc.returncode
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # the session we started for it
        output = proc.communicate()[0] + f"\n[gpu_check: killed after {timeout:.0f} s]"
    except BaseException:  # Ctrl-C: take the test file's processes down with us
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise
    (workdir / "output.txt").write_text(output)
    run = Run(code, output, text, workdir=workdir)
    settle = time.monotonic() + 10  # helpers exit a moment after the run
    while live_processes(str(scratch)) and time.monotonic() < settle:
        time.sleep(0.1)
    for pid, cmdline in live_processes(str(scratch)):
        run.left_processes.append(f"{pid}: {cmdline[:100]}")
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)  # ours: it carries this check's private TMPDIR
    run.left_files = sorted(str(p.relative_to(scratch)) for p in scratch.rglob("*"))
    return run


@dataclass
class Row:
    check: str
    expected: str
    got: str
    result: str  # PASS, FAIL or SKIP
    seconds: float
    missed: list[str] = field(default_factory=list)
    output: str = ""


def judge(check: Check, run: Run) -> tuple[str, list[str]]:
    try:
        got, missed = check.judge(run)
    except Exception as exc:  # a judge that trips on odd output is a miss, not a crash
        got, missed = f"exit {run.returncode}", [f"could not judge the output: {exc!r}"]
    if run.left_processes:
        missed.append(f"{len(run.left_processes)} processes left running: {run.left_processes}")
    if run.left_files:
        missed.append(f"files left in TMPDIR: {run.left_files[:10]}")
    return got, missed


def probe() -> dict[str, object]:
    """The environment, asked of a child (a broken CUDA cannot take this script down)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)}
    mine = {"python": sys.version.split()[0], "executable": sys.executable}
    try:
        proc = subprocess.run([sys.executable, "-c", PROBE], env=env, cwd=tempfile.gettempdir(), capture_output=True,
                              text=True, timeout=120, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return {**mine, "error": "asking torch about the machine took over 120 s"}
    try:
        return dict(json.loads(proc.stdout.strip().splitlines()[-1]))
    except (ValueError, IndexError):
        return {**mine, "error": f"the probe exited {proc.returncode}: {proc.stderr.strip()[-800:]}"}


def print_environment(info: dict[str, object]) -> None:
    keys = ("executable", "python", "torch", "torch_cuda", "cuda_available", "device_count", "devices",
            "nccl_available", "nccl", "distributed_testing", "repo")
    shown = {**info, "repo": REPO}
    print("environment:\n" + "\n".join(f"  {k:<20} {shown[k]}" for k in keys if k in shown), flush=True)


def how_to_run(problem: str) -> str:
    return (f"gpu_check: {problem}\nRun it with a Python that has torch (a CUDA build), expecttest and hypothesis "
            f"(pip install expecttest hypothesis), from the repository root:\n  cd {REPO} && python tools/gpu_check.py"
            f"\nor with the project's venv: .venv/bin/python tools/gpu_check.py ({REPO} goes on PYTHONPATH itself)")


def print_table(rows: list[Row]) -> None:
    headers = ("check", "expected", "got", "result", "seconds")
    clip = [(t if len(t) <= 60 else t[:57] + "...") for r in rows for t in (r.expected, r.got)]
    cells = [(r.check, *clip[2 * i : 2 * i + 2], r.result, f"{r.seconds:.1f}") for i, r in enumerate(rows)]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(headers)]
    line = "  ".join("-" * w for w in widths)
    text = ["  ".join(v.ljust(w) for v, w in zip(c, widths, strict=True)).rstrip() for c in (headers, *cells)]
    print("\n" + "\n".join([text[0], line, *text[1:], line]))


def print_misses(rows: list[Row]) -> None:
    for row in (r for r in rows if r.result == "FAIL"):
        print(f"\n=== {row.check}: FAIL ===\nexpected: {row.expected}\ngot:      {row.got}")
        print("".join(f"  - {why}\n" for why in row.missed), end="")
        if row.output:
            print("--- the run's output (last 60 lines) ---\n" + "\n".join(row.output.splitlines()[-60:]))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", metavar="NAME", help=f"run only these checks: {', '.join(NAMES)}")
    parser.add_argument("--timeout-scale", type=float, default=1.0, metavar="F",
                        help=f"multiply every timeout, and the {BUDGET_S:.0f} s budget, by F (> 0)")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir with each check's file and output")
    parser.add_argument("--require-gpu", action="store_true", help="exit 1 when there is no CUDA device")
    args = parser.parse_args(argv)
    if unknown := [n for n in args.only or () if n not in NAMES]:
        parser.error(f"unknown check {', '.join(map(repr, unknown))}; the checks are: {', '.join(NAMES)}")
    if not args.timeout_scale > 0:
        parser.error(f"--timeout-scale must be > 0, got {args.timeout_scale}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    selected = [c for c in CHECKS if not args.only or c.name in args.only]
    info = probe()
    print_environment(info)
    if "error" in info:
        print(how_to_run(str(info["error"])), file=sys.stderr)
        return 2
    if not info.get("cuda_available") or not info.get("device_count"):
        print_table([Row(c.name, c.expected, "no CUDA device", "SKIP", 0.0) for c in selected])
        if args.require_gpu:
            print("gpu_check: no CUDA device, and --require-gpu was given", file=sys.stderr)
            return 1
        print("no CUDA device: every check skipped")
        return 0
    rows: list[Row] = []
    root = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    deadline = started + BUDGET_S * args.timeout_scale
    try:
        for check in selected:
            print(f"{check.name} ...", end=" ", flush=True)
            timeout = min(check.timeout * args.timeout_scale, deadline - time.monotonic())
            if check.requires and importlib.util.find_spec(check.requires) is None:
                rows.append(Row(check.name, check.expected, f"{check.requires} is not installed", "SKIP", 0.0))
            elif deadline - time.monotonic() < 15:
                rows.append(Row(check.name, check.expected, "not run", "FAIL", 0.0,
                                [f"the run's {BUDGET_S * args.timeout_scale:.0f} s budget was spent"]))
            else:
                begin = time.monotonic()
                run = run_check(check, root, timeout)
                got, missed = judge(check, run)
                rows.append(Row(check.name, check.expected, got, "FAIL" if missed else "PASS",
                                time.monotonic() - begin, missed, run.output))
            print(f"{rows[-1].result} ({rows[-1].seconds:.1f} s)", flush=True)
    finally:
        if args.keep:
            print(f"kept: {root} (a directory per check: test_x.py, output.txt)")
        else:
            shutil.rmtree(root, ignore_errors=True)
    print_table(rows)
    print_misses(rows)
    failed = [r.check for r in rows if r.result == "FAIL"]
    print(f"\n{len(rows) - len(failed)} of {len(rows)} checks passed in {time.monotonic() - started:.0f} s"
          + (f"; missed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
