"""torchrun mode's launch: the store the ranks agree through, and the launch directory.

The ranks agree on each test through the launcher's store. Under
``distributed_testing/<run id>/``, for the test whose key is K:

``stop/K``
    The first rank whose test failed, skipped or was still running at the
    deadline ("1 failed"), set once (compare-and-set). Barriers wait for "every
    rank arrived, or stop/K is set", so no rank waits for a peer that is done
    with the test. A rank still in the test body a moment after a peer stopped
    is interrupted (:class:`PeerStopped`) and reported as stopped; a failed
    test's default process group is aborted, which ends the collectives its
    peers wait in.
``barrier/K/N/R``
    Rank R reached barrier N of the test (``DistBackendTestCase._barrier``, its set-up
    and tear-down).
``stacks/K/R``, ``seen/K/R``
    Rank R's stack at the deadline: it was still running the test (not waiting
    for a peer). Its watchdog thread takes the stack, sets stop/K, and interrupts
    the test (:class:`Deadline`); the report shows the rank as hung, with that
    stack, and the run goes on with the next test. The first rank at its deadline
    waits (``ACK_WAIT``) until every peer saw it (seen/K/R), having taken its own
    stack if it was still in the test: the deadline is everyone's.
``result/K/R``
    Rank R's result. Every rank folds all of them the same way, so every rank
    reaches the same outcome and exits with the same code. The lowest rank still
    running prints the full report; the others say where to find it.
``gone``, ``gone/R``
    Why the run cannot go on, and which ranks left it: a rank that could not leave a
    test within ``STUCK_GRACE`` of its deadline (stuck in C code that no signal
    interrupts) posts its result, waits for its peers and exits; they report the
    remaining tests as not run, and say why.
``done/R``
    Rank R is at exit. Local rank 0 removes the launch's directory once every rank
    is (a killed run's directory is removed by the janitor).
"""

from __future__ import annotations

import atexit
import dataclasses
import hashlib
import os
import pickle
import shutil
import signal
import socket
import sys
import tempfile
import time
from datetime import timedelta
from typing import Any

from distributed_testing import _config, _janitor, _outcomes, _rank
from distributed_testing._errors import DistributedTestingError
from distributed_testing._protocol import RankResult

__unittest = True

__all__ = ["Deadline", "LaunchedRun", "PeerStopped", "Stop", "current", "waiting"]

PEER_GRACE = 1.0  # seconds a rank still in the test body gets, once a peer stopped, before it is interrupted
STUCK_GRACE = 10.0  # seconds a rank interrupted at the deadline gets to leave the test before it counts as stuck
STUCK_DEFER = 5.0  # more seconds for a stuck rank waiting in a collective (its stuck peer leaves first)
BARRIER_MARGIN = 5.0  # seconds past the deadline a barrier waits for a peer to arrive or say it stopped
EXCHANGE_MARGIN = 5.0  # seconds past the latest time a peer can post its result
LAST_RESORT = 30.0  # seconds past the watchdog's last word: faulthandler ends a rank whose watchdog cannot run
FINISH_WAIT = 30.0  # seconds a rank at exit waits for its peers (they use the launch directory)
LEAVE_WAIT = 10.0  # seconds a stuck rank waits for its peers' processes to exit before its own
ACK_WAIT = 2.0  # seconds the first rank at its deadline waits for its peers to take their stacks
POLL = 0.01  # seconds between looks at the store while waiting
WATCH_POLL = 0.05  # seconds between the watchdog's looks
INTERRUPT_SIGNAL = signal.SIGUSR2  # sent to the test's thread to interrupt it (raises in Python code only)
STOP_FAILED, STOP_SKIPPED, STOP_TIMEOUT = "failed", "skipped", "timeout"
EXIT_FAILED = 1  # a rank that leaves the run

# Frames an interruption must not raise in: the machinery around the test, whose
# exceptions unittest does not catch. The signal is sent again a moment later.


class PeerStopped(BaseException):
    """Raised in a rank's test when a peer failed, skipped or timed out and will not come."""


class Deadline(BaseException):
    """Raised in a rank's test still running at its deadline (its stack is taken first)."""


class waiting:  # noqa: N801  # a context manager, named as a function
    """Marks the test's thread as waiting for its peers: not hung, whatever the clock says."""

    def __init__(self, watch: Any) -> None:
        self.watch = watch

    def __enter__(self) -> None:
        if self.watch is not None:
            self.watch.waiting += 1

    def __exit__(self, *exc: object) -> None:
        if self.watch is not None:
            self.watch.waiting -= 1


@dataclasses.dataclass(frozen=True)
class Stop:
    """The first rank of a test that stopped, and how."""

    rank: int
    kind: str  # failed, skipped, timeout

    @classmethod
    def parse(cls, raw: bytes) -> Stop:
        rank, kind = raw.decode().split(" ", 1)
        return cls(int(rank), kind)

    def __str__(self) -> str:
        says = {STOP_FAILED: "failed", STOP_SKIPPED: "skipped", STOP_TIMEOUT: "was still running at the deadline"}
        return f"rank {self.rank} {says.get(self.kind, self.kind)}"


class LaunchedRun:
    """This process's place in a launched run: its store, its tests' rendezvous files."""

    def __init__(self, launch: _config.Launch) -> None:
        import torch.distributed as dist

        self.launch = launch
        self.sequence = 0  # every rank runs the same tests in the same order
        base = dist.TCPStore(  # type: ignore[attr-defined]
            launch.master_addr,
            launch.master_port,
            launch.world_size,
            is_master=launch.rank == 0 and not launch.agent_store,
            timeout=timedelta(seconds=300),
            wait_for_workers=False,
            # Without torchrun's agent store (srun), this server is at MASTER_ADDR:MASTER_PORT:
            # env:// in rank 0's tests must share it, not fail to listen there.
            multi_tenant=True,
        )
        self.store = dist.PrefixStore(self._prefix(), base)  # type: ignore[attr-defined]
        self._watch_store: Any = None  # the watchdog's own connection (the test's may be blocked)
        self.broken = ""  # why the remaining tests cannot run (a rank is gone)
        self.gone: set[int] = set()
        self.not_run: list[str] = []
        self._finished = False
        self.interrupted = False  # Ctrl-C, or the launcher's SIGTERM: exit without waiting for peers
        self.directory = os.path.join(tempfile.gettempdir(), f"dt-launch-{_safe(launch.run_id)}")
        os.makedirs(self.directory, exist_ok=True)
        if launch.local_rank == 0:
            _janitor.register(self.directory)  # removed even if this rank is killed
        atexit.register(self.finish)

    def _prefix(self) -> str:
        return f"distributed_testing/{self.launch.run_id}/"

    def watch_store(self) -> Any:
        """A second connection to the store, for the watchdog thread."""
        import torch.distributed as dist

        if self._watch_store is None:
            base = dist.TCPStore(  # type: ignore[attr-defined]
                self.launch.master_addr,
                self.launch.master_port,
                None,
                is_master=False,
                timeout=timedelta(seconds=60),
                wait_for_workers=False,
            )
            self._watch_store = dist.PrefixStore(self._prefix(), base)  # type: ignore[attr-defined]
        return self._watch_store

    @property
    def printer(self) -> int:
        """The rank that prints full reports: the lowest one still running."""
        return min((r for r in range(self.launch.world_size) if r not in self.gone), default=0)

    def next_test(self, test_id: str) -> str:
        """A key for the next test, the same on every rank."""
        self.sequence += 1
        return f"{self.sequence}:{test_id}"

    def rendezvous_file(self, key: str) -> str:
        """A per-test file every rank on this machine agrees on (``self.file_name``)."""
        return os.path.join(self.directory, hashlib.sha1(key.encode()).hexdigest()[:16])

    def test_store(self, key: str) -> Any:
        """A store namespace private to one test, for its default process group."""
        import torch.distributed as dist

        return dist.PrefixStore(f"pg/{key}/", self.store)  # type: ignore[attr-defined]

    # -- stopping early -------------------------------------------------------

    def announce(self, key: str, kind: str, store: Any = None) -> Stop:
        """Say this rank stopped the test (failed, skipped, timed out); the first to say so wins."""
        raw = (store or self.store).compare_set(f"stop/{key}", "", f"{self.launch.rank} {kind}")
        return Stop.parse(raw)

    def stop_of(self, key: str, store: Any = None) -> Stop | None:
        """The first rank that stopped the test, if one did."""
        store = store or self.store
        name = f"stop/{key}"
        return Stop.parse(store.get(name)) if store.check([name]) else None

    def barrier(self, key: str, name: str, timeout: float, tolerate_stop: bool = False) -> Stop | None:
        """Wait until every rank arrives here, or one stops the test (then: raise PeerStopped,
        or return how it stopped with ``tolerate_stop``, as a tear-down does)."""
        me, size = self.launch.rank, self.launch.world_size
        prefix = f"barrier/{key}/{name}"
        self.store.set(f"{prefix}/{me}", "1")
        arrivals = [f"{prefix}/{r}" for r in range(size)]
        end = time.monotonic() + timeout
        watch = active
        if watch is not None:
            end = min(end, watch.deadline + BARRIER_MARGIN)
        with waiting(watch):
            while True:
                if self.store.check(arrivals):
                    return None
                stop = self.stop_of(key)
                if stop is not None and self.store.check(arrivals):
                    return None  # every rank arrived before one stopped
                if stop is not None:
                    if tolerate_stop or stop.rank == me:
                        return stop
                    raise PeerStopped(f"{stop}, so it never reaches barrier {name}")
                if time.monotonic() > end:
                    missing = [r for r, k in enumerate(arrivals) if not self.store.check([k])]
                    raise DistributedTestingError(
                        f"barrier {name} timed out after {timeout:g} s in rank {me}: "
                        f"rank(s) {_outcomes.rank_list(missing)} never arrived"
                    )
                time.sleep(POLL)

    # -- results --------------------------------------------------------------

    def exchange(self, key: str, result: RankResult, until: float) -> dict[int, RankResult | None]:
        """Post this rank's result and read everyone's (None: a rank posted none by ``until``)."""
        me = self.launch.rank
        self.store.set(f"result/{key}/{me}", pickle.dumps(result))  # type: ignore[arg-type]
        results: dict[int, RankResult | None] = {}
        for rank in range(self.launch.world_size):
            name = f"result/{key}/{rank}"
            while not self.store.check([name]) and time.monotonic() < until:
                time.sleep(POLL)
            results[rank] = pickle.loads(self.store.get(name)) if self.store.check([name]) else None
        return results

    def stacks_of(self, key: str) -> dict[int, str]:
        """The stacks of the ranks that were still running the test at the deadline."""
        names = {r: f"stacks/{key}/{r}" for r in range(self.launch.world_size)}
        return {r: self.store.get(n).decode(errors="replace") for r, n in names.items() if self.store.check([n])}

    def note_gone(self, store: Any = None) -> None:
        """Learn from the store which ranks are gone (then the remaining tests cannot run)."""
        store = store or self.store
        if not store.check(["gone"]):
            return
        self.gone.update(r for r in range(self.launch.world_size) if store.check([f"gone/{r}"]))
        if not self.broken:
            self.broken = store.get("gone").decode(errors="replace")

    def declare_gone(self, rank: int, why: str, store: Any = None) -> None:
        """Rank ``rank`` cannot run further tests (``why``): say so to every rank (the first
        such rank's reason is the one given)."""
        store = store or self.store
        store.set(f"gone/{rank}", "1")
        store.compare_set("gone", "", why)
        self.note_gone(store)

    # -- the end --------------------------------------------------------------

    def finish(self, store: Any = None) -> None:
        """At exit: say what was not run, wait for every rank (their files are in use until
        then), local rank 0 removes the launch's directory."""
        if self._finished:
            return
        self._finished = True
        if self.not_run and self.launch.rank == self.printer:
            names = "\n".join(f"  {name}" for name in self.not_run)
            print(
                f"{_config.script_name()}: {len(self.not_run)} test(s) not run: {self.broken}:\n{names}",
                file=sys.stderr,
                flush=True,
            )
        store = store or self.store
        try:
            store.set(f"done/{self.launch.rank}", f"{socket.gethostname()} {os.getpid()}")
            if not self.interrupted:  # interrupted, the launcher is stopping every rank
                self._wait_for_peers(store)
        except Exception:  # the store is gone with the launcher: nothing to wait for
            pass
        if self.launch.local_rank == 0:
            shutil.rmtree(self.directory, ignore_errors=True)
            _janitor.unregister(self.directory)
        if self.launch.rank != self.printer and not self.interrupted:
            # The launcher stops every rank once one exits with a failure: let the rank
            # with the full report be the one that exits first, not one stopped half-way.
            self._wait_for_exit(store, [self.printer])

    def _wait_for_peers(self, store: Any) -> None:
        end = time.monotonic() + FINISH_WAIT
        while time.monotonic() < end:
            self.note_gone(store)
            others = [f"done/{r}" for r in range(self.launch.world_size) if r not in self.gone]
            if store.check(others):
                return
            time.sleep(WATCH_POLL)

    def _wait_for_exit(self, store: Any, ranks: list[int]) -> None:
        """Wait (LEAVE_WAIT at most) until the processes of ``ranks`` on this machine exited."""
        try:
            done = [store.get(f"done/{r}").decode() for r in ranks if store.check([f"done/{r}"])]
        except Exception:
            return
        host = socket.gethostname()
        local = [int(pid) for where, pid in (d.split(" ", 1) for d in done) if where == host]
        end = time.monotonic() + LEAVE_WAIT
        while any(_alive(pid) for pid in local) and time.monotonic() < end:
            time.sleep(WATCH_POLL)

    def leave(self, store: Any) -> None:
        """A stuck rank's exit, once every other rank is at exit and this machine's have exited
        (the launcher stops every rank once one exits with a failure)."""
        self.finish(store)
        self._wait_for_exit(store, [r for r in range(self.launch.world_size) if r != self.launch.rank])
        _rank.flush()
        os._exit(EXIT_FAILED)


def _alive(pid: int) -> bool:
    """Whether process ``pid`` is running (an exited one its parent has not reaped is not)."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rpartition(")")[2].split()[0] != "Z"
    except (OSError, IndexError):
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return os.path.exists(f"/proc/{pid}") or not os.path.isdir("/proc")


_current: LaunchedRun | None = None
active: Any = None  # the watch of the test running now


def current() -> LaunchedRun | None:
    """The launched run of this process (started on first use), or None outside torchrun mode."""
    global _current
    launch = _config.launch_info()
    if launch is None:
        return None
    if _current is None:
        _current = LaunchedRun(launch)
    return _current


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)
