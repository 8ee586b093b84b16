"""Running one generated file or command, isolated and measured: the one runner of every scenario.

Every run gets a clean environment with its own TMPDIR and its own session;
the processes it leaves (in its session, or anywhere with their working
directory in the run's directory) are killed and reported as leaks, and so
are the files it leaves in its TMPDIR. Other work on the machine skews every
figure: each run's share of the CPUs used by other processes is measured
(``/proc/stat`` minus the run's own CPU time).
"""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field

MEMORY_VARIABLE = "DT_BENCH_MEMORY_DIR"  # where the trivial table's ranks write their VmHWM and Pss
# Variables that would change what the generated files do if they leaked in.
SCRUBBED_VARIABLES = (
    "BACKEND",
    "WORLD_SIZE",
    "TEMP_DIR",
    "INIT_METHOD",
    "RANK",
    "LOCAL_RANK",
    "LOCAL_WORLD_SIZE",
    "GROUP_RANK",
    "MASTER_ADDR",
    "MASTER_PORT",
    "TORCHELASTIC_RUN_ID",
    "PYTEST_CURRENT_TEST",
    "PYTEST_ADDOPTS",
    "DISTRIBUTED_TESTS_DEFAULT_TIMEOUT",
    MEMORY_VARIABLE,
)
SCRUBBED_PREFIXES = ("DISTRIBUTED_TESTING_",)
LEAK_GRACE = 3.0  # seconds a finished run's helper processes may take to exit


def clean_environment(tmpdir: str) -> dict[str, str]:
    """This process's environment without the variables the test files read."""
    env = {
        name: value
        for name, value in os.environ.items()
        if name not in SCRUBBED_VARIABLES and not name.startswith(SCRUBBED_PREFIXES)
    }
    env["TMPDIR"] = tmpdir  # every temp file of the run lands here, so leaks show up
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


# -- the run's processes ----------------------------------------------------------------


def run_members(session: int, workdir: str) -> list[int]:
    """Pids of the run's live processes (Linux /proc; empty elsewhere).

    Those in its session, and those that left it (a new session, a double
    fork) but still have their working directory in the run's ``workdir``.
    """
    pids = []
    workdir = os.path.realpath(workdir)
    try:
        entries = os.listdir("/proc")
    except OSError:
        return []
    for entry in entries:
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
            cwd = os.readlink(f"/proc/{entry}/cwd")
        except (OSError, IndexError):
            continue
        # After the command name: state, ppid, pgrp, session, ...
        if len(fields) < 4 or fields[0] == "Z":
            continue
        if int(fields[3]) == session or cwd == workdir or cwd.startswith(workdir + os.sep):
            pids.append(int(entry))
    return pids


def become_subreaper() -> None:
    """Adopt the runs' orphans (Linux): their CPU time then counts as the run's, and they are reaped here."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        pass


def reap_orphans() -> None:
    """Collect every finished child: adopted orphans included."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def reap_run(session: int, workdir: str) -> list[int]:
    """Wait briefly for a finished run's processes to go; kill and return the stragglers."""
    deadline = time.monotonic() + LEAK_GRACE
    reap_orphans()
    survivors = run_members(session, workdir)
    while survivors and time.monotonic() < deadline:
        time.sleep(0.05)
        reap_orphans()
        survivors = run_members(session, workdir)
    for pid in survivors:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    if survivors:
        time.sleep(0.1)
        reap_orphans()
    return survivors


def leftover_files(tmpdir: str) -> list[str]:
    """Names the run left in its TMPDIR (torch's per-user compile cache dirs excepted)."""
    try:
        names = sorted(os.listdir(tmpdir))
    except OSError:
        return []
    return [name for name in names if not name.startswith("torchinductor_")]


# -- other work on the machine ------------------------------------------------------------


def busy_cpu_seconds() -> float | None:
    """CPU time the whole machine spent busy since boot (Linux /proc/stat; None elsewhere)."""
    try:
        with open("/proc/stat") as stat:
            fields = [int(x) for x in stat.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    busy = sum(fields[:8]) - idle  # user nice system idle iowait irq softirq steal
    return busy / os.sysconf("SC_CLK_TCK")


def children_cpu_seconds() -> float:
    """CPU time of this process's finished children and their reaped descendants."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def load_average() -> str:
    """The 1, 5 and 15 minute load averages: other work on the machine skews every cell."""
    return " ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"


def busy_warning() -> str | None:
    """A warning when the machine already has work on it: other processes skew every figure."""
    if not hasattr(os, "getloadavg"):
        return None
    load, cpus = os.getloadavg()[0], os.cpu_count() or 1
    if load <= 0.25 * cpus:
        return None
    return f"warning: load average {load:.2f} on {cpus} CPUs before the first run: other work skews the figures"


# -- one run ----------------------------------------------------------------------------------


@dataclass
class Finished:
    """What one isolated run did."""

    code: int | None  # None: killed at its wall-clock limit
    wall: float  # seconds, from starting the subprocess to its exit
    foreign_cpu: float | None  # share of the CPUs other processes used meanwhile
    stdout: str = ""
    stderr: str = ""
    leaked: list[int] = field(default_factory=list)  # pids that outlived the run, killed
    left: list[str] = field(default_factory=list)  # names left in its TMPDIR (none read after a kill)


def run_isolated(argv: list[str], cwd: str, env: dict[str, str], limit: float) -> Finished:
    """Run ``argv`` in its own session, killed (with its whole group) after ``limit`` seconds.

    Output goes to files in ``cwd``, not pipes, so a leaked grandchild holding
    them open cannot stall the benchmark. A killed run leaves its temp files by
    necessity: they are not reported.
    """
    stdout_path, stderr_path = os.path.join(cwd, "stdout"), os.path.join(cwd, "stderr")
    busy_before, ours_before = busy_cpu_seconds(), children_cpu_seconds()
    with open(stdout_path, "w") as out, open(stderr_path, "w") as err:
        started = time.perf_counter()
        proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=out, stderr=err, start_new_session=True)
    code: int | None = None
    try:
        code = proc.wait(timeout=limit)
    except subprocess.TimeoutExpired:
        pass
    finally:
        wall = time.perf_counter() - started
        if proc.poll() is None:  # timed out or interrupted: stop the whole run we started
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        leaked = reap_run(proc.pid, cwd)
    busy, ours = busy_cpu_seconds(), children_cpu_seconds()
    foreign = None
    if busy is not None and busy_before is not None and wall > 0:
        foreign = max(0.0, (busy - busy_before) - (ours - ours_before)) / (wall * (os.cpu_count() or 1))
    finished = Finished(code, wall, foreign, leaked=leaked)
    if code is not None:
        finished.left = leftover_files(env.get("TMPDIR", ""))
    with open(stdout_path, errors="replace") as f:
        finished.stdout = f.read()
    with open(stderr_path, errors="replace") as f:
        finished.stderr = f.read()
    return finished


def leak_text(pids: list[int]) -> str:
    return f"{len(pids)} process(es) outlived the run and were killed: {pids}"


# -- progress ---------------------------------------------------------------------------------


def progress(text: str, end: str = " ") -> None:
    print(text, end=end, file=sys.stderr, flush=True)


def progress_done(status: str, wall: float) -> None:
    """The end of a progress line: what the run found and its wall time."""
    progress(f"{status} ({wall:.1f} s wall)", end="\n")


def warm_page_cache() -> None:
    """Import torch once, untimed, so the first row does not pay for a cold page cache."""
    progress("warming the page cache (import torch) ...")
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-c", "import torch, torch.distributed, torch.testing._internal.common_distributed"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        check=False,
    )
    progress(f"{time.perf_counter() - started:.1f} s", end="\n")
