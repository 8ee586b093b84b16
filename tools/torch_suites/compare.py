"""Run one suite's generated file on both frameworks and compare the outcomes test by test."""

from __future__ import annotations

import argparse
import fnmatch
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import IO, Any

from torch_suites.catalog import FILE_RUNNER, SUITES, Suite

RECORD_ENV = "TORCH_SUITE_RECORD"  # where the generated file records PyTorch's runner's outcomes
_GENERATED = "test_torch_suite_"  # the generated files' names: test_torch_suite_<suite>.py
OUTCOMES = ("passed", "failed", "error", "skipped")

# Differences where ours is right by design (README, "Moving from PyTorch"), each with how it is recognised.
BY_DESIGN = {
    "non-zero rank failed": "PyTorch reads only rank 0's exit code; here rank 0 passed and another rank did not",
    "world_size 0": "a class whose world_size is 0 skips here; PyTorch starts no rank and reports it passed",
    "requires_world_size": "requires_world_size(n) skips only with nccl here; PyTorch skips without n GPUs",
    "no rank started": "setUp starts no rank: a skip that says so here; PyTorch passes the test without running it",
    "both fail": "fails on both: an assertion failing in the ranks is FAIL here, an ERROR (RuntimeError) on PyTorch's",
}

_LISTER = """
import importlib.util, os, sys, unittest
sys.path.insert(0, os.path.dirname(os.path.abspath(sys.argv[1])))  # as python FILE: its siblings import
spec = importlib.util.spec_from_file_location("__suite__", sys.argv[1])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
def walk(suite):
    for item in suite:
        if isinstance(item, unittest.TestSuite):
            yield from walk(item)
        else:
            yield item
for test in walk(unittest.defaultTestLoader.loadTestsFromModule(module)):
    try:
        size = int(test.world_size)
    except Exception:
        size = 0
    print(test.id().split(".", 1)[1], size, sep="\\t")
"""


@dataclass
class Run:
    """One framework's run of the selected tests."""

    name: str
    seconds: float
    returncode: int
    outcomes: dict[str, str] = field(default_factory=dict)  # "Class.test" -> outcome
    messages: dict[str, str] = field(default_factory=dict)
    ranks: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # ours: each rank's part
    log: str = ""
    left_behind: int = 0  # files the run left in its TMPDIR

    def count(self, outcome: str) -> int:
        return sum(1 for o in self.outcomes.values() if o == outcome)

    def counts(self) -> dict[str, int]:
        return {o: self.count(o) for o in (*OUTCOMES, "missing")}


def compare(
    args: argparse.Namespace, suite_name: str, world_size: int, work: str, suite: Suite | None = None
) -> dict[str, Any] | None:
    """Run both frameworks on one suite (at one WORLD_SIZE); print and return the comparison."""
    suite = suite or SUITES[suite_name]
    if suite.file:
        path = suite.file
    else:
        path = os.path.join(work, f"test_torch_suite_{suite_name}.py")
        with open(path, "w") as handle:
            handle.write(suite.source)
    listed = list_tests(path, world_size, work)
    names = select(list(listed), args)
    expected = shard_names(path, names, listed, args)  # the tests a run of this shard runs
    env_note = f"WORLD_SIZE={world_size} " if suite.world_sizes_from_env else ""
    sizes = sorted({listed[n] for n in names})
    if not names:
        print(f"\n== {suite_name}: no test matches -k {' -k '.join(args.patterns)}", flush=True)
        return None
    print(
        f"\n== PyTorch's {suite.title} [{suite_name}, as {suite.mirrors}], BACKEND=gloo {env_note}"
        f"INIT_METHOD={args.init_method}://, {len(names)} of {len(listed)} tests, world size "
        f"{'/'.join(map(str, sizes))}",
        flush=True,
    )
    if getattr(args, "shard", None):
        print(f"shard {args.shard[0]}/{args.shard[1]}: {len(expected)} of the {len(names)} selected tests", flush=True)
    runs = []
    if args.only in (None, "torch"):  # PyTorch's framework has no shards: it is given this shard's tests
        runs.append(run_framework("torch", path, expected, world_size, args, work, expected))
    if args.only in (None, "ours"):  # ours picks its shard of the selection itself
        runs.append(run_framework("ours", path, names, world_size, args, work, expected))
    print_table(runs, len(expected))
    differences = diff(runs) if len(runs) == 2 else []
    if len(runs) == 2:
        print_differences(differences)
    return {
        "suite": suite_name,
        "world_size": world_size if suite.world_sizes_from_env else None,
        "world_sizes": sizes,
        "tests": len(expected),
        "shard": list(args.shard) if getattr(args, "shard", None) else None,
        "tests_in_suite": len(listed),
        "runs": [
            {
                "framework": r.name,
                "seconds": round(r.seconds, 2),
                "returncode": r.returncode,
                "files_left_in_tmpdir": r.left_behind,
                "counts": r.counts(),
            }
            for r in runs
        ],
        "differences": differences,
        "by_design": [d for d in differences if d["kind"] != "defect"],
        "defects": [d for d in differences if d["kind"] == "defect"],
    }


def suite_env(world_size: int, init_method: str, temp_dir: str) -> dict[str, str]:
    """The environment run_test.py gives a distributed test file, with a fresh TEMP_DIR."""
    for sub in ("barrier", "test_dir"):
        os.makedirs(os.path.join(temp_dir, sub), exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISTRIBUTED_TESTING_")}
    env.update(
        BACKEND="gloo",
        WORLD_SIZE=str(world_size),
        TEMP_DIR=temp_dir,
        INIT_METHOD=f"file://{temp_dir}/" if init_method == "file" else "env://",
        PYTHONWARNINGS="ignore",
    )
    return env


def list_tests(path: str, world_size: int, work: str) -> dict[str, int]:
    """The suite's tests in the loader's order, each with its class's world size."""
    temp_dir = tempfile.mkdtemp(prefix="list-", dir=work)
    env = suite_env(world_size, "file", temp_dir)
    env["TMPDIR"] = temp_dir
    proc = subprocess.run([sys.executable, "-c", _LISTER, path], env=env, capture_output=True, text=True, timeout=600)
    shutil.rmtree(temp_dir, ignore_errors=True)
    if proc.returncode != 0:
        raise SystemExit(f"torch_suite: could not list the tests of {path}:\n{proc.stderr[-3000:]}")
    found = {}
    for line in proc.stdout.splitlines():
        name, _, size = line.strip().partition("\t")
        if name:
            found[name] = int(size or 0)
    return found


def select(names: list[str], args: argparse.Namespace) -> list[str]:
    """unittest's -k rules (a substring, or a glob with *), then --limit, --sample or --every."""
    if args.patterns:
        globs = [p if "*" in p else f"*{p}*" for p in args.patterns]
        names = [n for n in names if any(fnmatch.fnmatchcase(n, g) for g in globs)]
    if args.limit is not None:
        names = names[: args.limit]
    if args.sample is not None and 0 < args.sample < len(names):
        step = len(names) / args.sample
        names = [names[int(i * step)] for i in range(args.sample)]
    every = getattr(args, "every", None)
    if every is not None and every > 1 and names:
        count = math.ceil(len(names) / every)  # at least one; each suite keeps its share of the whole
        step = len(names) / count
        names = [names[int((i + 0.5) * step)] for i in range(count)]
    return names


def shard_names(path: str, names: list[str], listed: dict[str, int], args: argparse.Namespace) -> list[str]:
    """``names`` in ``--shard`` (all of them without one), as this library chooses them: its keys
    are ``<file stem>.<Class>.<test>``, balanced by ``--durations`` against every listed test."""
    if not getattr(args, "shard", None):
        return names
    from distributed_testing import _shard

    stem = os.path.basename(path)[:-3]
    durations = _shard.read_durations(args.durations, "--durations", "") if args.durations else None
    every = [f"{stem}.{name}" for name in listed]
    chosen = _shard.select([f"{stem}.{name}" for name in names], args.shard, durations, every, "--durations", "")
    return [name for name in names if f"{stem}.{name}" in chosen]


def run_framework(
    which: str,
    path: str,
    names: list[str],
    world_size: int,
    args: argparse.Namespace,
    work: str,
    expected: list[str] | None = None,
) -> Run:
    """Run ``names`` of the file at ``path`` in a fresh subprocess on one framework; ``expected``:
    the tests it should run (``names`` unless it shards them itself), the others it runs not missing."""
    stem = os.path.basename(path)[:-3]
    tag = f"{which}-{stem.removeprefix(_GENERATED)}-ws{world_size}"
    temp_dir = tempfile.mkdtemp(prefix=f"{tag}-", dir=work)
    report = os.path.join(work, f"{tag}.json")
    env = suite_env(world_size, args.init_method, temp_dir)
    if which == "torch":
        cmd = [sys.executable, path, "-v", *names]
        if not os.path.basename(path).startswith(_GENERATED):  # --file: recorded by a runner
            runner = os.path.join(work, "torch_suite_file_runner.py")
            with open(runner, "w") as handle:
                handle.write(FILE_RUNNER)
            cmd.insert(1, runner)
        env[RECORD_ENV] = report
        label = "PyTorch common_distributed (spawn)"
    else:
        cmd = [sys.executable, "-m", "distributed_testing", "--torch-compat", path, "-v", *names]
        env["DISTRIBUTED_TESTING_REPORT"] = report
        env["DISTRIBUTED_TESTING_START_METHOD"] = args.start_method
        if getattr(args, "shard", None):
            env["DISTRIBUTED_TESTING_SHARD"] = "/".join(map(str, args.shard))
            if args.durations:
                env["DISTRIBUTED_TESTING_DURATIONS"] = args.durations
        label = f"distributed_testing ({args.start_method})"
    scratch = _scratch_dir(tag)
    env["TMPDIR"] = scratch  # what a framework leaves in its temp dir is counted, then removed
    log_path = os.path.join(work, f"{tag}.log")
    print(f"-- {label}: running {len(names)} tests (log: {log_path})", flush=True)
    start = time.monotonic()
    with open(log_path, "w") as log:
        code = _run_in_session(cmd, env, work, log, args.timeout)
    seconds = time.monotonic() - start
    run = Run(label, seconds, code, log=log_path, left_behind=_count_files(scratch))
    for record in _read_records(report):
        key = record["id"].split(".", 1)[1]
        run.outcomes[key] = record["outcome"]
        run.messages[key] = record.get("message", "")
        if record.get("ranks"):
            run.ranks[key] = record["ranks"]
    for name in names if expected is None else expected:
        run.outcomes.setdefault(name, "missing")
    for where in (temp_dir, scratch):
        shutil.rmtree(where, ignore_errors=True)
    return run


def _run_in_session(cmd: list[str], env: dict[str, str], cwd: str, log: IO[str], timeout: float) -> int:
    """Run ``cmd`` in its own session; on timeout kill the whole session (ranks included)."""
    proc = subprocess.Popen(
        cmd, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
    )
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        return -1


def _scratch_dir(tag: str) -> str:
    """A fresh TMPDIR for one run, short enough for multiprocessing's socket paths.

    The fork server listens on a socket in TMPDIR, and a socket path may not
    exceed 107 bytes: a long TMPDIR (a pytest tmp_path) fails every rank start.
    """
    base = tempfile.gettempdir()
    if len(base) > 40 and os.path.isdir("/tmp"):
        base = "/tmp"
    return tempfile.mkdtemp(prefix=f"ts-{tag}-", dir=base)


def _count_files(directory: str) -> int:
    return sum(len(files) for _, _, files in os.walk(directory))


def _read_records(path: str) -> list[dict[str, Any]]:
    try:
        with open(path) as handle:
            return list(json.load(handle)["tests"])
    except (OSError, ValueError, KeyError):
        return []


def print_table(runs: list[Run], total: int) -> None:
    header = (
        f"{'framework':38} {'tests':>5} {'passed':>6} {'failed':>6} {'errors':>6} {'skipped':>7} {'wall s':>8} "
        f"{'files left':>10}"
    )
    print(header)
    print("-" * len(header))
    for run in runs:
        missing = run.count("missing")
        extra = f"  ({missing} did not run; exit code {run.returncode})" if missing else ""
        print(
            f"{run.name:38} {total:5} {run.count('passed'):6} {run.count('failed'):6} {run.count('error'):6} "
            f"{run.count('skipped'):7} {run.seconds:8.1f} {run.left_behind:10}{extra}"
        )
    if len(runs) == 2 and runs[1].seconds > 0:
        print(f"speed-up end to end: {runs[0].seconds / runs[1].seconds:.1f}x")


def diff(runs: list[Run]) -> list[dict[str, str]]:
    """Every test whose outcome differs, each classified: a difference by design, or a defect."""
    torch_run, ours = runs
    found = []
    for name in sorted(torch_run.outcomes):
        theirs, mine = torch_run.outcomes[name], ours.outcomes.get(name, "missing")
        if theirs == mine:
            continue
        kind = classify(
            theirs, mine, torch_run.messages.get(name, ""), ours.messages.get(name, ""), ours.ranks.get(name)
        )
        found.append(
            {
                "test": name,
                "torch": theirs,
                "ours": mine,
                "kind": kind,
                "torch_message": _first_line(torch_run.messages.get(name, "")),
                "ours_message": _ours_summary(ours.messages.get(name, ""), ours.ranks.get(name)),
            }
        )
    return found


def classify(theirs: str, mine: str, torch_message: str, ours_message: str, ranks: list[dict[str, Any]] | None) -> str:
    """The README's differences by design, recognised from both records; anything else is a defect."""
    if theirs == "passed" and mine in ("failed", "error") and ranks:
        first = [r for r in ranks if r.get("rank") == 0]
        others_bad = [r for r in ranks if r.get("rank") != 0 and r.get("outcome") not in ("passed", "skipped")]
        if first and first[0].get("outcome") == "passed" and others_bad:
            return "non-zero rank failed"
    if theirs == "passed" and mine == "skipped" and "world_size is 0" in ours_message:
        return "world_size 0"
    if theirs == "skipped" and mine != "skipped" and re.match(r"requires \d+ GPUs, found \d+", torch_message):
        return "requires_world_size"
    if theirs == "passed" and mine == "skipped" and "setUp started no rank" in ours_message:
        return "no rank started"
    if theirs == "error" and mine == "failed":  # a passing test here that fails there stays a defect: a false pass?
        return "both fail"
    return "defect"


def _ours_summary(message: str, ranks: list[dict[str, Any]] | None) -> str:
    """Our message's first line, with the ranks that did not pass when the record has them."""
    text = _first_line(message)
    bad = [r for r in ranks or [] if r.get("outcome") not in ("passed", "skipped")]
    if bad and len(bad) < len(ranks or []):  # some ranks passed: say which did not
        parts = "; ".join(f"rank {r.get('rank')} {r.get('outcome')}: {(r.get('summary') or '')[:120]}" for r in bad)
        text = f"{text} [{parts}]" if text else parts
    return text


def _first_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[0][:200] if lines else ""


def print_differences(differences: list[dict[str, str]]) -> None:
    if not differences:
        print("outcomes: identical")
        return
    by_design = [d for d in differences if d["kind"] != "defect"]
    defects = [d for d in differences if d["kind"] == "defect"]
    for title, group in (("differences by design", by_design), ("defects", defects)):
        if not group:
            continue
        print(f"{title} ({len(group)}):")
        for d in group:
            why = f" [{d['kind']}: {BY_DESIGN[d['kind']]}]" if d["kind"] in BY_DESIGN else ""
            print(f"  {d['test']}: PyTorch {d['torch']}, ours {d['ours']}{why}")
            for side in ("torch", "ours"):
                if d[f"{side}_message"]:
                    print(f"      {side}: {d[f'{side}_message']}")
