"""The scenarios of ``tools/bench.py`` beyond its trivial-test table (``--scenario``).

Each scenario runs generated test files in fresh interpreters, PyTorch's class
and ours side by side in one run, and reports ratios: ``ddp``, ``dtensor`` and
``pytest`` (``scenario_ddp.py``), ``whole-file`` and ``memory``
(``scenario_overhead.py``); each module says what its scenarios measure.

Times come from the tests themselves (``scenario_files.py``). Figures: the
first test alone, and the median and mean of the tests from the second on that
passed (how many is said). A test that failed, that its class's own timeout
stopped (``DISTRIBUTED_TESTS_DEFAULT_TIMEOUT`` for PyTorch's,
``DISTRIBUTED_TESTING_TIMEOUT`` for ours, both ``--timeout``), or that was
still running when the run hit its wall-clock limit, is reported apart by name
and never enters a median or a mean. A scenario fails (exit code 1) when a test
of either side fails, dies or is still running at the wall-clock limit; a test
its class's own timeout stopped does not fail it (``scenario_ddp.py`` says why
DDP tests time out in both classes).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from collections.abc import Callable

from benchmarks.figures import Section
from benchmarks.runner import load_average
from benchmarks.scenario_ddp import scenario_ddp, scenario_dtensor, scenario_pytest
from benchmarks.scenario_overhead import scenario_memory, scenario_whole_file

RUNNERS: dict[str, Callable[[argparse.Namespace, str], Section]] = {
    "ddp": scenario_ddp,
    "dtensor": scenario_dtensor,
    "pytest": scenario_pytest,
    "whole-file": scenario_whole_file,
    "memory": scenario_memory,
}


def run_scenario(name: str, args: argparse.Namespace) -> Section:
    """Run one scenario in a fresh temporary directory; its report, with the load before and after."""
    root = tempfile.mkdtemp(prefix=f"dt-bench-{name}-")
    load_start = load_average()
    try:
        section = RUNNERS[name](args, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    section.lines.insert(0, f"load average at the start: {load_start}")
    section.lines.append(f"load average at the end: {load_average()}")
    return section
