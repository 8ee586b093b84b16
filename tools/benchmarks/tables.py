"""How figures are written: numbers, ratios, tables, and the preamble that says where they were taken."""

from __future__ import annotations

import datetime
import functools
import importlib.metadata
import os
import platform
import shlex
import subprocess
import sys
import tempfile
from collections.abc import Sequence

from benchmarks.runner import clean_environment, load_average


def format_ms(ms: float) -> str:
    return f"{ms:,.0f}" if abs(ms) >= 100 else f"{ms:.1f}" if abs(ms) >= 10 else f"{ms:.2f}"


def format_mib(kb: float) -> str:
    return f"{kb / 1024:,.0f}" if kb > 0 else "n/a"


def ratio_text(ours: float | None, theirs: float | None, better: str = "faster", worse: str = "slower") -> str:
    """How ours compares with theirs, as ``2.0x faster`` or ``1.5x slower``; ``-`` without both."""
    if ours is None or theirs is None or ours <= 0 or theirs <= 0:
        return "-"
    ratio = theirs / ours
    return f"{ratio:.1f}x {better}" if ratio >= 1 else f"{1 / ratio:.1f}x {worse}"


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def render_table(header: list[str], rows: list[list[str]], fmt: str) -> str:
    """A table as aligned text, GitHub markdown or an rst simple table."""
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str], sep: str = "  ") -> str:
        parts = [c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))]
        return sep.join(parts).rstrip()

    if fmt == "markdown":
        rule = "|" + "|".join("-" * (w + 1) + (":" if i else "-") for i, w in enumerate(widths)) + "|"
        body = ["| " + line(r, " | ") + " |" for r in [header, *rows]]
        return "\n".join([body[0], rule, *body[1:]])
    if fmt == "rst":
        rule = "  ".join("=" * w for w in widths)
        return "\n".join([rule, line(header), rule, *(line(r) for r in rows), rule])
    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(header), rule, *(line(r) for r in rows)])


# -- the preamble -------------------------------------------------------------------------------


def proc_value(path: str, key: str) -> str | None:
    """What follows the colon on the first line of a /proc file that starts with ``key`` (None on Linux's absence)."""
    try:
        with open(path) as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith(key)), None)
    except OSError:
        return None


def cpu_model() -> str:
    return proc_value("/proc/cpuinfo", "model name") or platform.processor() or "unknown CPU"


def memory_total() -> str:
    total = proc_value("/proc/meminfo", "MemTotal:")  # "24642412 kB"
    return "RAM unknown" if total is None else f"{int(total.split()[0]) / 1024 / 1024:.1f} GiB RAM"


def version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def library() -> str:
    """Which distributed_testing the test files import: version, place, and git state."""
    with tempfile.TemporaryDirectory(prefix="dt-bench-") as tmp:
        found = subprocess.run(
            [sys.executable, "-c", "import importlib.util as u; print(u.find_spec('distributed_testing').origin)"],
            capture_output=True,
            text=True,
            cwd=tmp,
            env=clean_environment(tmp),
            check=False,
        )
    if found.returncode != 0:
        return "distributed_testing not importable"
    package = os.path.dirname(found.stdout.strip())
    text = f"distributed_testing {version('distributed_testing')} from {package}"
    try:
        run = functools.partial(subprocess.run, capture_output=True, text=True, check=True, cwd=package, timeout=10)
        commit = run(["git", "log", "-1", "--format=%h %cs"]).stdout.strip()
        changed = run(["git", "status", "--porcelain", "--", "."]).stdout.splitlines()
    except (OSError, subprocess.SubprocessError):
        return text
    state = f"{len(changed)} uncommitted change(s) in the package" if changed else "the package as committed"
    return f"{text} (git {commit}, {state})"


def command(argv: Sequence[str]) -> str:
    """This run's command line, with the variable that chooses which library the test files import."""
    words = [sys.executable, sys.argv[0], *argv]
    if os.environ.get("PYTHONPATH"):
        words.insert(0, f"PYTHONPATH={os.environ['PYTHONPATH']}")
    return shlex.join(words)


def preamble(argv: Sequence[str]) -> list[str]:
    """Date, machine, versions and the command line, printed before anything runs."""
    return [
        f"date:    {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"command: {command(argv)}",
        f"machine: {platform.system()} {platform.release()}, {cpu_model()}, nproc {os.cpu_count()}, "
        f"{memory_total()}, load average {load_average()}",
        f"python:  {platform.python_version()}, torch {version('torch')}",
        f"library: {library()}",
    ]
