"""The test matrix: run test files over backends, world sizes and init methods.

The logic of ``tools/run_distributed_tests.py``, as PyTorch's ``run_test.py``
runs ``test_distributed_spawn.py``: every configuration runs every file in its
own subprocess with ``BACKEND``, ``WORLD_SIZE``, ``INIT_METHOD`` and a fresh
``TEMP_DIR`` (holding ``barrier`` and ``test_dir``) set, and reads back the JSON
record ``run_tests()`` writes to ``DISTRIBUTED_TESTING_REPORT``. Prints progress,
a summary table and, on request, one JUnit XML file with a testsuite per
configuration. Exit codes as ``run_tests()``: 0 passed, 1 failed, 2 bad usage,
130 interrupted.

This module is the entry, ``main``; the parts live in

- ``_matrix_plan``: the command line, the configurations, skip reasons, usage errors;
- ``_matrix_run``: the test-file processes, the pool of configurations, progress;
- ``_matrix_results``: each test's, file's and configuration's outcome, read from a file's JSON record;
- ``_matrix_report``: the summary table and the JUnit XML.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import TextIO

from distributed_testing._matrix_plan import (
    INIT_URLS,
    Config,
    Options,
    Plan,
    UsageError,
    build_parser,
    check_options,
    configurations,
    nothing_to_run,
    print_skip_notes,
    skip_reason,
    usage_error,
)
from distributed_testing._matrix_report import format_table, junit_tree, report, write_junit
from distributed_testing._matrix_results import ConfigResult, FileRun, RankRecord, TestRecord
from distributed_testing._matrix_run import Progress, banner, child_environment, run_file, run_matrix
from distributed_testing._runner import EXIT_USAGE, interruptible

__all__ = [
    "INIT_URLS",
    "Config",
    "ConfigResult",
    "FileRun",
    "Options",
    "RankRecord",
    "TestRecord",
    "build_parser",
    "check_options",
    "child_environment",
    "configurations",
    "format_table",
    "junit_tree",
    "main",
    "run_file",
    "run_matrix",
    "skip_reason",
    "write_junit",
]


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """Run the matrix the command line asks for; return the exit code."""
    parser = build_parser(prog)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, or argparse's own usage error (already printed)
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    try:
        options = check_options(args, parser.prog)
        plan = [(config, skip_reason(config)) for config in configurations(options)]
        runnable = [config for config, why in plan if not why]
        if not runnable:
            raise UsageError(nothing_to_run(plan, options))
    except UsageError as exc:
        return usage_error(parser.prog, str(exc))
    out = sys.stdout
    print_skip_notes(plan, out)
    return _run_and_report(options, plan, out)


def _run_and_report(options: Options, plan: Plan, out: TextIO) -> int:
    root = tempfile.mkdtemp(prefix="dt-matrix-")
    runnable = [config for config, why in plan if not why]
    progress = Progress(len(runnable) * len(options.files), out)
    started = time.monotonic()
    print(banner(options, runnable), file=out, flush=True)
    try:
        with interruptible():
            results, usage, stopped = run_matrix(options, runnable, root, progress)
    finally:
        progress.close()
        if not options.keep_temp:
            shutil.rmtree(root, ignore_errors=True)
    if usage:
        return usage_error(options.prog, usage)
    everything = [results.get(c.name, ConfigResult(c, why)) for c, why in plan if why or c.name in results]
    return report(everything, options, root, time.monotonic() - started, out, stopped)
