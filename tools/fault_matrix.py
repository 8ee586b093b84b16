"""Run each fault in each mode of the library and print what the user sees, as Markdown.

Faults (rank 1 of 2 injects each): an assertion failure, an exception, SIGSEGV,
``os._exit(3)``, ``sys.exit(4)`` (rank 0 waiting in a barrier for each), a hang in a
collective with rank 0 in a barrier, a rank sleeping forever outside a collective (both
with a 5 s deadline), a skip, and an abort inside ``init_process_group``. Modes: one-shot
``MultiProcessTestCase``, ``DistBackendTestCase`` from the environment, the
``MultiProcContinuousTest`` pool, torchrun mode, and pytest. For each (fault, mode): the
verdict and exit code, the words that name the faulty rank, whether the fault's line is
named, the seconds from the fault to the verdict, and the processes and temp files left.
``--part catalogue`` runs the one-shot faults of ``test/test_faults.py`` instead (``all``:
both). The code is the package ``tools/faults``.

    .venv/bin/python tools/fault_matrix.py [-k SUBSTRING]... [--mode MODE]... [--part matrix|catalogue|all] [-j N]

Exits 1 when a cell misses what is expected (wrong verdict or exit code, rank or line not
named, a late report, anything left behind).
"""

from __future__ import annotations

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.join(os.path.dirname(HERE), "test")]  # tools/faults; test/conftest.py

from faults.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
