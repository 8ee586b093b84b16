"""The faults of the matrix and the test file each mode runs.

Every fault is one test method, the same in every mode; only the class around it differs
(``CLASSES``). The rank that injects a fault calls ``fault_here()`` just before, which
records the moment in ``FAULT_MARKS`` so that the report can be timed. Each fault's line
carries a ``# <marker>`` comment, so that its number can be looked up in the written file.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass

HEADER = """\
import os, signal, sys, time, unittest
import torch
import torch.distributed as dist
from distributed_testing import *
"""

PRELUDE = '''

def fault_here():
    """Record the moment of the fault (only when FAULT_MARKS names a directory)."""
    marks = os.environ.get("FAULT_MARKS")
    if marks:
        with open(os.path.join(marks, str(os.getpid())), "w") as handle:
            handle.write(repr(time.time()))


_init_process_group = dist.init_process_group


def init_process_group(*args, **kwargs):
    """With FAULT_INIT_CRASH=1, rank 1 aborts inside init_process_group, as C++ code would."""
    rank = kwargs.get("rank")
    rank = int(os.environ.get("RANK", "-1")) if rank is None or rank < 0 else rank
    if os.environ.get("FAULT_INIT_CRASH") == "1" and rank == 1:
        fault_here()
        os.abort()  # <init-crash>
    return _init_process_group(*args, **kwargs)


dist.init_process_group = init_process_group
'''

CLASS_NAMES = {"one-shot": "MultiProcessTestCase", "env": "DistBackendTestCase", "pool": "MultiProcContinuousTest"}

# The class around the faults, per kind of class; ``_ready`` starts the default group
# where the class does not.
CLASSES = {
    "one-shot": '''

class Faults(MultiProcessTestCase):
    world_size = 2

    def setUp(self):
        super().setUp()
        self._spawn_processes()

    def _ready(self):
        dist.init_process_group("gloo", init_method=f"file://{self.file_name}", rank=self.rank,
                                world_size=self.world_size)
''',
    "env": '''

class Faults(DistBackendTestCase):
    def _ready(self):
        pass
''',
    "pool": '''

class Faults(MultiProcContinuousTest):
    world_size = 2

    def _ready(self):
        pass
''',
}

METHODS = '''
    def test_assert(self):
        self._ready()
        if self.rank == 1:
            fault_here()
            self.assertEqual(self.rank, 0, "rank 1 disagrees")  # <assert>
        dist.barrier()

    def test_raise(self):
        self._ready()
        if self.rank == 1:
            fault_here()
            raise ValueError("rank 1 gives up")  # <raise>
        dist.barrier()

    def test_segfault(self):
        self._ready()
        if self.rank == 1:
            fault_here()
            os.kill(os.getpid(), signal.SIGSEGV)  # <segfault>
        dist.barrier()

    def test_os_exit(self):
        self._ready()
        if self.rank == 1:
            fault_here()
            os._exit(3)  # <os-exit>
        dist.barrier()

    def test_sys_exit(self):
        self._ready()
        if self.rank == 1:
            fault_here()
            sys.exit(4)  # <sys-exit>
        dist.barrier()

    def test_hang_in_collective(self):
        self._ready()
        group = dist.new_group([0, 1])
        if self.rank == 1:
            fault_here()
            dist.all_reduce(torch.ones(1), group=group)  # <collective>: rank 0 never joins
        dist.barrier()

    def test_sleep_forever(self):
        self._ready()
        if self.rank == 1:
            fault_here()
            time.sleep(600)  # <sleep>

    def test_skip(self):
        self._ready()
        if self.rank == 1:
            fault_here()
            self.skipTest("not on rank 1")  # <skip>

    def test_init_crash(self):
        self._ready()  # with FAULT_INIT_CRASH=1
        dist.barrier()


if __name__ == "__main__":
    run_tests()
'''

INIT_CRASH = (("FAULT_INIT_CRASH", "1"),)


@dataclass(frozen=True)
class Fault:
    """One fault: its test method, the line that injects it, and what its report must say."""

    key: str  # for -k
    name: str
    method: str
    marker: str  # on the fault's line: ``# <marker>``
    outcome: str  # unittest's verdict: "FAIL", "ERROR" or "skipped"
    line: bool = True  # the report must name the fault's line
    hang: bool = False  # run with the short deadline
    dies: bool = False  # the faulty rank's process dies
    env: tuple[tuple[str, str], ...] = ()

    @property
    def exit_code(self) -> int:
        """The run's exit code a user should get."""
        return 0 if self.outcome == "skipped" else 1


FAULTS = [
    Fault("assert", "assertion fails on rank 1, rank 0 in barrier", "test_assert", "assert", "FAIL"),
    Fault("raise", "exception on rank 1, rank 0 in barrier", "test_raise", "raise", "ERROR"),
    Fault("segfault", "SIGSEGV in rank 1, rank 0 in barrier", "test_segfault", "segfault", "ERROR", dies=True),
    # os._exit runs nothing: no traceback can say where it was called.
    Fault("os-exit", "os._exit(3) in rank 1, rank 0 in barrier", "test_os_exit", "os-exit", "ERROR", line=False,
          dies=True),
    Fault("sys-exit", "sys.exit(4) in rank 1, rank 0 in barrier", "test_sys_exit", "sys-exit", "ERROR"),
    Fault("hang-collective", "rank 1 hangs in all_reduce, rank 0 in barrier (deadline 5 s)",
          "test_hang_in_collective", "collective", "ERROR", hang=True),
    Fault("sleep-forever", "rank 1 sleeps forever, not in a collective (deadline 5 s)", "test_sleep_forever",
          "sleep", "ERROR", hang=True),
    Fault("skip", "skipTest on rank 1", "test_skip", "skip", "skipped", line=False),
    Fault("init-crash", "rank 1 aborts in init_process_group", "test_init_crash", "init-crash", "ERROR",
          dies=True, env=INIT_CRASH),
]


def source(kind: str) -> str:
    """The test file for a kind of class: "one-shot", "env" or "pool"."""
    return HEADER + textwrap.dedent(PRELUDE) + CLASSES[kind] + METHODS


def line_of(text: str, marker: str) -> int:
    """The number of the line of ``text`` that carries ``# <marker>``."""
    return next(number for number, line in enumerate(text.splitlines(), 1) if f"# <{marker}>" in line)
