"""torchrun mode's watchdog: a thread per test that interrupts a rank whose peer stopped,
takes the rank's stack at the deadline, and makes a rank stuck in C code leave the run.

It interrupts the test's thread with a signal whose handler raises only in test code
(:class:`PeerStopped`, :class:`Deadline`), never in unittest's or this library's.
"""

from __future__ import annotations

import contextlib
import faulthandler
import json
import os
import pickle
import signal
import sys
import threading
import time
import unittest
from collections.abc import Callable
from types import FrameType
from typing import Any

from distributed_testing import _config, _launch_store, _rank, _rank_where, _stacks
from distributed_testing._launch_store import (
    ACK_WAIT,
    INTERRUPT_SIGNAL,
    LAST_RESORT,
    PEER_GRACE,
    POLL,
    STOP_FAILED,
    STOP_SKIPPED,
    STOP_TIMEOUT,
    STUCK_DEFER,
    STUCK_GRACE,
    WATCH_POLL,
    Deadline,
    LaunchedRun,
    PeerStopped,
    Stop,
)
from distributed_testing._protocol import HUNG, RankResult

__unittest = True

__all__ = ["Watch", "end_default_group"]


# Frames of these files are the machinery around the test: an interrupt never raises there.
_MACHINERY = (
    os.path.dirname(unittest.__file__) + os.sep,
    contextlib.__file__,  # unittest's testPartExecutor exits through it: an exception there escapes unittest
    _rank.__file__,
    __file__,
    _launch_store.__file__,
    os.path.join(os.path.dirname(__file__), "_torchrun.py"),
)
_TORCH_DISTRIBUTED = f"{os.sep}torch{os.sep}distributed{os.sep}"


def end_default_group(abort: bool) -> None:
    """Destroy the default process group, if any, without raising; ``abort``: the test
    failed or a peer stopped, so collectives may be pending (aborting does not wait for them)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return
    aborter = getattr(dist.distributed_c10d, "_abort_process_group", None)
    if abort and aborter is not None:
        try:
            aborter()
            return
        except Exception:
            pass
    _rank.destroy_default_group()


class Watch:
    """One test's watchdog thread: interrupts the test when a peer stopped or at the deadline,
    takes the stack of a rank still running then, and ends a rank stuck past it."""

    def __init__(self, launched: LaunchedRun, key: str, test_id: str, timeout: float) -> None:
        self.launched, self.key, self.test_id, self.timeout = launched, key, test_id, timeout
        self.rank = launched.launch.rank
        self.deadline = time.monotonic() + timeout
        self.phase = "setUp"  # setUp, test, tearDown; "" once the test is over
        self.waiting = 0  # >0: the test's thread waits in a barrier of ours
        self.lock = threading.RLock()  # an RLock: the signal handler runs on the thread that may hold it
        self.ended = threading.Event()
        self.main_ident = threading.get_ident()
        self.can_interrupt = _install_handler()
        self.wanted: type[BaseException] | None = None  # what the interruption raises
        self.wanted_message = ""
        self.wanted_phase = ""
        self.sent = self.declined = self.delivered = False
        self.stop_seen: tuple[Stop, float] | None = None
        self.hung = False
        self.acknowledged = False  # told a peer at its deadline that this rank's stack is taken
        self.stuck = False
        self.thread = threading.Thread(target=self._run, name="distributed_testing watchdog", daemon=True)

    def start(self) -> None:
        _launch_store.active = self
        self.launched.watch_store()  # connect now, from this thread, not at the deadline
        # Should the watchdog never run (a C call holding the GIL), faulthandler ends the rank.
        latest = self.timeout + _rank.group_timeout(self.timeout).total_seconds() + STUCK_DEFER
        faulthandler.dump_traceback_later(latest + LAST_RESORT, exit=True)
        self.thread.start()

    def end(self) -> None:
        """The test is over (run_in_rank returned): stop watching."""
        with self.lock:
            self.phase = ""
        self.ended.set()
        self.thread.join()
        faulthandler.cancel_dump_traceback_later()
        _launch_store.active = None

    def hook(self, phase: str, fn: Callable[[], None]) -> Callable[[], None]:
        """``fn`` (the rank's setUp or tearDown), run while the watch knows the phase."""

        def run() -> None:
            with self.lock:
                self.phase = phase
            fn()
            if phase == "setUp":
                with self.lock:
                    self.phase = "test"

        return run

    def on_stop(self) -> None:
        """From the test's result, when it records an error, a failure or a skip: tell the peers."""
        frames = _callers(6)  # a failed or skipped subTest ends the test too (the rank's result is failfast)
        collector = frames[0].f_locals.get("self") if frames else None
        kind = STOP_FAILED
        if isinstance(collector, _rank._Collector) and collector.skip_reason is not None:
            if not collector.error_infos and collector.exit_status is None:
                kind = STOP_SKIPPED
        try:
            self.launched.announce(self.key, kind)
        except Exception:  # the store is gone: the exchange will say so
            pass

    # -- the watchdog thread --------------------------------------------------

    def _run(self) -> None:
        try:
            store = self.launched.watch_store()
            while not self.ended.wait(WATCH_POLL):
                self._tick(store)
        except Exception as exc:  # the store is gone: nothing left to watch
            print(f"distributed_testing: rank {self.rank}'s watchdog stopped: {exc}", file=sys.stderr, flush=True)

    def _tick(self, store: Any) -> None:
        now = time.monotonic()
        phase = self.phase
        if not phase:
            return
        if self.stop_seen is None:
            stop = self.launched.stop_of(self.key, store)
            if stop is not None and stop.rank != self.rank:
                self.stop_seen = (stop, now)
        # A peer's deadline is everyone's: a rank still in the test then is hung too.
        peer_deadline = self.stop_seen is not None and self.stop_seen[0].kind == STOP_TIMEOUT
        if not self.hung and (now >= self.deadline or peer_deadline) and not self.waiting:
            self._at_deadline(store, phase)
        if peer_deadline and not self.acknowledged:
            store.set(f"seen/{self.key}/{self.rank}", "1")  # the peer may go on: this rank's stack is taken
            self.acknowledged = True
        if self.wanted is None and self.stop_seen is not None and phase == "test" and not self.waiting:
            stop, seen = self.stop_seen  # a peer failed or skipped: it will not come
            if now >= seen + PEER_GRACE:
                self._request(PeerStopped, f"{stop}; this rank was stopped {PEER_GRACE:g} s later", phase)
        if self.wanted is not None and self.wanted_phase == phase and (not self.sent or self.declined):
            self._send()
        if self.hung and self._stuck_due(now, store):
            self._stuck(store)

    def _at_deadline(self, store: Any, phase: str) -> None:
        stacks = self._main_stack()
        self.hung = True
        store.set(f"stacks/{self.key}/{self.rank}", stacks)
        if self.launched.announce(self.key, STOP_TIMEOUT, store).rank == self.rank:
            self._wait_for_peer_stacks(store)
        self._request(Deadline, f"still running at the deadline ({self.timeout:g} s)", phase)

    def _wait_for_peer_stacks(self, store: Any) -> None:
        """The first rank at its deadline: before it leaves the test (which ends the
        collectives its peers wait in), the peers still in the test take their stacks."""
        peers = [r for r in range(self.launched.launch.world_size) if r != self.rank]
        end = time.monotonic() + ACK_WAIT
        while peers and time.monotonic() < end:
            peers = [r for r in peers if not store.check([f"seen/{self.key}/{r}"])]
            peers = [r for r in peers if not store.check([f"result/{self.key}/{r}"])]
            time.sleep(POLL)

    def _request(self, exc: type[BaseException], message: str, phase: str) -> None:
        with self.lock:
            self.wanted, self.wanted_message, self.wanted_phase = exc, message, phase
            self.sent = self.declined = self.delivered = False

    def _send(self) -> None:
        if not self.can_interrupt:
            return
        self.sent, self.declined = True, False
        signal.pthread_kill(self.main_ident, INTERRUPT_SIGNAL)

    def take(self, frame: FrameType | None) -> BaseException | None:
        """In the test's thread, from the signal handler: the exception to raise there, if any."""
        with self.lock:
            if self.wanted is None or self.delivered or self.phase != self.wanted_phase:
                return None
            if frame is None or frame.f_code.co_filename.startswith(_MACHINERY):
                self.declined = True  # the watchdog sends the signal again
                return None
            self.delivered = True
            return self.wanted(self.wanted_message)

    def _main_stack(self) -> str:
        """The test thread's stack in faulthandler's format, from the test case's run on,
        after the where record of the default group (which collective it is in)."""
        frame = sys._current_frames().get(self.main_ident)
        lines = [f"Thread 0x{self.main_ident:016x} (most recent call first):"]
        while frame is not None and frame.f_code is not _rank.run_in_rank.__code__:
            lines.append(f'  File "{frame.f_code.co_filename}", line {frame.f_lineno or 0} in {frame.f_code.co_name}')
            frame = frame.f_back
        record = _rank_where.where_now()
        if record:
            lines.insert(0, _stacks.WHERE_MARK + json.dumps(record))
        return "\n".join(lines)

    def _in_collective(self) -> bool:
        """Whether the test's thread waits inside torch.distributed (a collective, a rendezvous)."""
        frame = sys._current_frames().get(self.main_ident)
        return frame is not None and _TORCH_DISTRIBUTED in frame.f_code.co_filename

    def _stuck_due(self, now: float, store: Any) -> bool:
        """Whether this rank, interrupted at the deadline, is stuck in the test for good.

        A rank waiting inside a collective may only wait for a stuck peer, which ends
        the collective when it leaves (or the group's own timeout does): it gives way.
        So does a rank whose peer left just now."""
        if now < self.deadline + STUCK_GRACE:
            return False
        if self._in_collective():
            return now >= self.deadline + _rank.group_timeout(self.timeout).total_seconds() + STUCK_DEFER
        if store.check(["gone"]):
            return now >= self.deadline + STUCK_GRACE + STUCK_DEFER
        return True

    def _stuck(self, store: Any) -> None:
        """Past the deadline and its grace, the test's thread is still in the test: leave the run."""
        with self.lock:
            if not self.phase:
                return
            self.stuck = True
        faulthandler.cancel_dump_traceback_later()
        record, stacks = _stacks.split_where(store.get(f"stacks/{self.key}/{self.rank}").decode(errors="replace"))
        where = _stacks.summarize_stacks(stacks, record)
        late = time.monotonic() - self.deadline
        why = f"rank {self.rank} was stuck in {self.test_id} {late:.0f} s past its deadline ({where}) and left the run"
        self.launched.declare_gone(self.rank, why, store)
        try:  # close this rank's connections: a peer waiting in a collective with it gets out
            end_default_group(abort=True)
        except BaseException:
            pass
        store.set(f"result/{self.key}/{self.rank}", pickle.dumps(RankResult(self.rank, os.getpid(), HUNG)))
        print(
            f"{_config.script_name()}: {why}; the remaining tests are not run (rank {self.launched.printer} reports)",
            file=sys.stderr,
            flush=True,
        )
        self.launched.leave(store)




def _callers(depth: int) -> list[FrameType]:
    """The frames that called our caller, innermost first."""
    frames: list[FrameType] = []
    frame: FrameType | None = sys._getframe(2)
    while frame is not None and len(frames) < depth:
        frames.append(frame)
        frame = frame.f_back
    return frames


def _on_interrupt(signum: int, frame: FrameType | None) -> None:
    watch = _launch_store.active
    exc = watch.take(frame) if watch is not None else None
    if exc is not None:
        raise exc


def _install_handler() -> bool:
    """Our handler for INTERRUPT_SIGNAL, where a handler can be set (the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        return False
    if signal.getsignal(INTERRUPT_SIGNAL) is not _on_interrupt:
        signal.signal(INTERRUPT_SIGNAL, _on_interrupt)  # kept after the test: a late signal finds it
    return True
