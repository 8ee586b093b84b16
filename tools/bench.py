"""Side-by-side overhead benchmark: PyTorch's distributed test classes against ours.

The default scenario, ``trivial``, is a table: rows are PyTorch's
``MultiProcessTestCase``, ``MultiProcContinuousTest`` and
``MultiThreadedTestCase`` and ours (``MultiProcessTestCase`` with spawn and with
fork, ``MultiProcContinuousTest``'s warm pool); columns are world sizes
(default 2, 4, 8); figures are start-up, per-test time and the peak RSS of a
rank for the same trivial test, with ratios, then the pool's targets. Every
file runs in a fresh interpreter with a clean environment, its own TMPDIR and
its own session; leaked processes and files are reported, and so is how much
of the CPUs other work used meanwhile.

Scenarios (``--scenario``; ``trivial`` is the default): ``ddp`` (a
DistributedDataParallel test at world size 2), ``dtensor`` (DTensorTestBase and
with_comms at world size 4), ``pytest`` (two files of ddp tests in one pytest
run), ``whole-file`` (``python file.py`` against ``python -c "import torch"``)
and ``memory`` (each rank's RSS and USS); ``all`` runs every one. Each runs
PyTorch's class and ours side by side. They are not in the default run: the
table and its targets take about six minutes on two cores already, and the
five scenarios together take about five more on an idle machine, plus a minute
for each DDP test that hangs (PyTorch's spawned DDP and DTensor tests take
seconds each, and DDP tests of both classes hang in torch now and then until
their timeout, ``--timeout``, 60 s by default; a full run on 2 cores took 16
minutes with 13 such hangs).

The code is the package ``tools/benchmarks``, whose modules say what each part
measures: ``runner`` (one isolated, measured run), ``tables`` (numbers, ratios,
tables, the preamble), ``trivial_files``, ``trivial_runs`` and
``trivial_report`` (the table and its targets), ``scenarios`` with
``scenario_files``, ``outcomes``, ``figures``, ``scenario_ddp`` and
``scenario_overhead`` (the other scenarios), and ``cli`` (this command line).

Usage::

    python tools/bench.py                      # every row, world sizes 2 4 8, the targets
    python tools/bench.py --quick              # smoke run: world size 2, few tests
    python tools/bench.py --methods fork pool --world-sizes 2 8 --no-targets
    python tools/bench.py --format markdown    # or rst
    python tools/bench.py --readme README.rst  # also write the results into its Benchmarks section
    python tools/bench.py --scenario ddp       # one scenario alone; several: --scenario ddp memory
    python tools/bench.py --scenario all --timeout 60

Benchmarks are not unit tests: a missed target is reported, not failed. The
exit code is 0 when every run passed, 1 when a run failed or hung, 2 on bad
usage; in the scenarios, a test its class's own timeout stopped is reported
apart and is not a failure.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # the benchmarks package, however this is run

from benchmarks.cli import main

if __name__ == "__main__":
    sys.exit(main())
