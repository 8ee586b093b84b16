"""The engine of MultiThreadedTestCase: one test's rank threads over PyTorch's threaded group.

Each rank thread runs the test through ``_rank.run_in_rank``; their results
fold into one ``Outcome``. When a rank thread fails or skips, the group's
collectives are cancelled and the peers blocked in one are reported as
stopped. At the deadline each live thread's stack is taken, in faulthandler's
format; a thread cannot be killed, so one that does not leave stays a daemon
thread, the report says so, and the group is torn down all the same.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import importlib
import io
import os
import sys
import threading
import time
import types
import unittest
from collections.abc import Callable
from typing import Any

from distributed_testing import _config, _outcomes, _output, _rank, _run
from distributed_testing._errors import ConfigError
from distributed_testing._protocol import EXITED, FAILED, PASSED, SKIPPED, STOPPED, RankResult
from distributed_testing._stacks import show_framework_frames

__unittest = True  # hide these frames from user tracebacks

__all__ = ["ThreadedRun", "c10d_module", "current_run", "join_threads", "thread_stacks"]

GRACE = 1.0  # seconds rank threads get to leave once their collectives are cancelled
# Characters of a rank thread's output kept in a report: its head, and most of all its tail.
_OUTPUT_HEAD, _OUTPUT_TAIL = 5_000, 15_000
# The SystemExit message of PyTorch's threaded group when a peer cancelled its collectives.
TERMINATION = "Test termination event occurs."
_THREADED_PG = "torch.testing._internal.distributed.multi_threaded_pg"
# Innermost frames that implement the fake group's waiting (C++ in a real group): left
# out of a hung thread's stack, so it ends in the collective the test called.
_WAIT_FILES = (os.sep + "threading.py", os.sep + "multi_threaded_pg.py")


def _threaded_pg() -> Any:
    """PyTorch's threaded process group module (registers the ``threaded`` backend)."""
    return importlib.import_module(_THREADED_PG)


def c10d_module() -> Any:
    return importlib.import_module("torch.distributed")


def _set_thread_isolation(on: bool) -> None:
    """c10d's registry of groups per thread (functional collectives look groups up in it)."""
    c10d_ext: Any = importlib.import_module("torch._C._distributed_c10d")
    c10d_ext._set_thread_isolation_mode(on)


class _RankThread(threading.Thread):
    """One rank of a test, as a daemon thread: the process can exit even if it never ends."""

    def __init__(self, run: ThreadedRun, rank: int, body: Callable[[], None]) -> None:
        super().__init__(name=f"rank {rank} of {run.test_id}", daemon=True)
        self.run_state = run
        self.rank = rank
        self.body = body

    def run(self) -> None:
        _thread_main(self.run_state, self.rank, self.body)


def _thread_main(run: ThreadedRun, rank: int, body: Callable[[], None]) -> None:
    """A rank thread's entry point: run ``body``; a result is always recorded, with the
    assertExpectedInline values the thread noted (the main thread compares and accepts them)."""
    noted: list[tuple[str, int, str, str]] = []
    _rank.rank_thread.expectations = noted
    try:
        body()
    except BaseException as exc:  # outside the test (a custom _run): still one result
        if isinstance(exc, SystemExit):
            result = _rank._exit_result(rank, exc)
        else:
            info = _rank.format_error(exc, "the rank thread, outside the test", None)
            result = RankResult(rank, os.getpid(), FAILED, (info,), exit_code=_rank.TEST_ERROR_EXIT_CODE)
        run.results.setdefault(rank, dataclasses.replace(result, failed_at=time.monotonic()))
        if result.status != PASSED:
            run.stop_peers()
    run.results.setdefault(rank, RankResult(rank, os.getpid(), PASSED))
    if noted and not run.results[rank].expectations:  # a body outside run_in_rank (the decorator's)
        run.results[rank] = dataclasses.replace(run.results[rank], expectations=tuple(noted))


def current_run() -> ThreadedRun:
    thread = threading.current_thread()
    if not isinstance(thread, _RankThread):
        raise RuntimeError("run_test_with_threaded_pg runs in a rank thread started by _spawn_threads()")
    return thread.run_state


@dataclasses.dataclass
class ThreadedRun:
    """One test's rank threads, the world of groups installed for them, and their results."""

    case: unittest.TestCase  # the main thread's test case (the outcome is raised on it)
    test_id: str
    world_size: int
    timeout: float
    world: Any = None  # the ThreadLocalWorld installed for this test
    store: Any = None  # the store every rank thread's default group shares
    threads: list[_RankThread] = dataclasses.field(default_factory=list)
    results: dict[int, RankResult] = dataclasses.field(default_factory=dict)
    over: bool = False  # joined or given up: threads still running keep their hands off the group
    output: _ThreadOutput | None = None  # what each rank thread printed

    @classmethod
    def start(cls, case: unittest.TestCase, world_size: int, timeout: float) -> ThreadedRun:
        """Install a fresh world of threaded groups and a shared store (in the main thread)."""
        run = cls(case, case.id(), world_size, timeout)
        _set_thread_isolation(True)
        run.world = _threaded_pg()._install_threaded_pg()
        run.store = c10d_module().HashStore()
        _rank.seed_all()  # once: the rank threads share one random state
        run.output = _ThreadOutput.install(_config.load().show_output == _config.SHOW_LIVE)
        return run

    def spawn(self, body: Callable[[int], None]) -> list[_RankThread]:
        self.threads = [_RankThread(self, rank, functools.partial(body, rank)) for rank in range(self.world_size)]
        for thread in self.threads:
            thread.start()
        return list(self.threads)

    def world_is_valid(self) -> bool:
        return bool(c10d_module().distributed_c10d._world is self.world) and not self.over

    def init_group(self, rank: int) -> None:
        c10d_module().init_process_group(backend="threaded", rank=rank, world_size=self.world_size, store=self.store)

    def destroy_group(self) -> None:
        """Destroy the calling rank thread's groups, unless the test is over (its world is gone)."""
        if self.world_is_valid() and c10d_module().is_initialized():
            c10d_module().destroy_process_group()

    def stop_peers(self) -> None:
        """Cancel the group's collectives: peers blocked in one leave with SystemExit."""
        if not self.over:
            _threaded_pg().ProcessLocalGroup.exception_handle(None)

    def finish(self) -> None:
        """Take the world down: the next test (threaded or not) starts clean."""
        if self.over:
            return
        self.over = True
        if self.output is not None:
            self.output.uninstall()
        pg = _threaded_pg()
        try:
            pg.ProcessLocalGroup.reset()
        finally:
            if c10d_module().distributed_c10d._world is self.world:
                pg._uninstall_threaded_pg()
            _set_thread_isolation(False)

    def join(self) -> tuple[_outcomes.Outcome, list[_outcomes.RankView]]:
        """Wait for every rank thread until the deadline, then fold what they did."""
        deadline = time.monotonic() + self.timeout
        _run.running_test = self.test_id
        try:
            for thread in self.threads:
                thread.join(max(0.0, deadline - time.monotonic()))
            live = [t for t in self.threads if t.is_alive()]
            stacks = {t.rank: thread_stacks(t) for t in live}
            done = dict(self.results)  # at the deadline: what a woken thread reports later is not the test's
            hung = sorted(rank for rank in stacks if rank not in done)
            left: list[int] = []
            if live:
                self.stop_peers()  # wake those blocked in a collective, so they leave
                end = time.monotonic() + GRACE
                for thread in live:
                    thread.join(max(0.0, end - time.monotonic()))
                left = sorted(t.rank for t in live if t.is_alive())
        except BaseException:  # Ctrl-C while waiting: leave the threads, take the world down
            self.stop_peers()
            self.finish()
            _run.running_test = ""
            raise
        self.finish()
        _run.running_test = ""
        return self._fold(done, {r: stacks[r] for r in hung}, left)

    def abandon(self) -> None:
        """A cleanup: a test whose threads were never joined (setUp failed after spawning)."""
        if self.over:
            return
        self.stop_peers()
        for thread in self.threads:
            thread.join(GRACE)
        self.finish()

    def _fold(
        self, done: dict[int, RankResult], stacks: dict[int, str], left: list[int]
    ) -> tuple[_outcomes.Outcome, list[_outcomes.RankView]]:
        timed_out = bool(stacks)
        pid = os.getpid()
        printed = self.output.outputs() if self.output is not None else {}
        results = {rank: _without_termination(result) for rank, result in done.items()}
        cancelled = {rank for rank, result in results.items() if result is None}
        real = {rank: result for rank, result in results.items() if result is not None}
        failed = [r for r in real.values() if r.status in (FAILED, EXITED)]
        skip = next((r.reason for r in real.values() if r.status == SKIPPED), None)
        views = []
        for rank in range(self.world_size):
            result = real.get(rank)
            said = printed.get(rank, "")
            if rank in stacks:
                views.append(_outcomes.RankView(rank, pid, None, None, stacks=stacks[rank], output=said))
            elif rank in cancelled and not failed and skip is not None and not timed_out:
                # A peer skipped while this rank waited for it in a collective: the test is a skip.
                skipped = RankResult(rank, pid, SKIPPED, reason=skip)
                views.append(_outcomes.RankView(rank, pid, skipped, None, output=said))
            elif rank in cancelled:
                stub = RankResult(rank, pid, PASSED) if timed_out else None
                stopped = "" if timed_out else "cancelled"
                views.append(_outcomes.RankView(rank, pid, stub, None, stopped=stopped, output=said))
            else:
                views.append(_outcomes.RankView(rank, pid, result, None, output=said))
        first = min(failed, key=lambda r: r.failed_at).rank if failed else None
        outcome = _outcomes.fold(
            views,
            test_id=self.test_id,
            world_size=self.world_size,
            timed_out=timed_out,
            timeout=self.timeout,
            first_failure=first,
        )
        if timed_out and cancelled:  # stopped before the deadline, by a peer's failure
            why = "stopped: its collective was cancelled when a peer failed"
            ranks = tuple(
                dataclasses.replace(r, outcome=STOPPED, summary=why) if r.rank in cancelled else r
                for r in outcome.ranks
            )
            outcome = dataclasses.replace(outcome, ranks=ranks)
        note = _left_note(sorted(stacks), left) if timed_out else ""
        rerun = _run.rerun_command(self.case) if outcome.kind != PASSED else ""
        return dataclasses.replace(outcome, note=note, rerun=rerun), views


def _without_termination(result: RankResult) -> RankResult | None:
    """A rank's result without the SystemExits of cancelled collectives; None: that was all."""
    if result.status != FAILED:
        return result
    errors = tuple(e for e in result.errors if not (e.exc_type == "SystemExit" and e.message == TERMINATION))
    if errors == result.errors:
        return result
    return dataclasses.replace(result, errors=errors) if errors else None


def _left_note(hung: list[int], left: list[int]) -> str:
    from distributed_testing._outcomes import rank_list

    if not left:
        many = len(hung) > 1
        return f"Rank thread{'s' * many} {rank_list(hung)} ended once the threaded group's collectives were cancelled."
    many = len(left) > 1
    return (
        f"Rank thread{'s' * many} {rank_list(left)} could not be stopped (a Python thread cannot be killed): "
        f"{'they are' if many else 'it is'} left running as {'daemon threads' if many else 'a daemon thread'} "
        "until this process exits. The test's process group is torn down; later tests get a fresh one."
    )


def thread_stacks(thread: threading.Thread) -> str:
    """A rank thread's Python stack in faulthandler's format, from its entry point on.

    Frames older than the thread's entry (threading's bootstrap) are left out, and
    so are the innermost frames of the fake group's waiting, unless
    ``DISTRIBUTED_TESTING_FULL_TRACEBACKS`` asks for every frame.
    """
    header = f"Thread 0x{thread.ident or 0:016x} (most recent call first):"
    frame = sys._current_frames().get(thread.ident or -1)
    frames: list[types.FrameType] = []
    while frame is not None and frame.f_code is not _thread_main.__code__:
        frames.append(frame)  # most recent first
        frame = frame.f_back
    if not show_framework_frames():
        while len(frames) > 1 and frames[0].f_code.co_filename.endswith(_WAIT_FILES):
            frames.pop(0)
    lines = [header]
    lines += [f'  File "{f.f_code.co_filename}", line {f.f_lineno} in {f.f_code.co_name}' for f in frames]
    return "\n".join(lines)


def join_threads(threads: list[Any], case: unittest.TestCase | None) -> None:
    """Join a test's rank threads and raise its folded outcome on its test case."""
    __tracebackhide__ = True
    runs = {id(t.run_state): t.run_state for t in threads if isinstance(t, _RankThread)}
    if len(runs) != 1:
        name = case.id() if case is not None else "this test"
        raise ConfigError(
            f"{name} started no rank threads: call self._spawn_threads() in setUp. "
            "Example: def setUp(self): super().setUp(); self._spawn_threads()",
            "setUp",
        )
    run = runs.popitem()[1]
    outcome, views = run.join()
    if _config.load().show_output == _config.SHOW_AFTER:
        _output.print_outputs(views)
    _run.raise_outcome(run.case, outcome, views)


class _ThreadOutput:
    """What a test's rank threads print: while they run, ``sys.stdout`` and ``sys.stderr`` keep
    a rank thread's writes per rank (head and tail, as a rank process's log) for the report and,
    with ``live``, copy them line by line to the real stderr, ``[rank N]`` first; other threads'
    writes go where they went before."""

    def __init__(self, live: bool) -> None:
        self.saved = (sys.stdout, sys.stderr)
        self.live = live
        self.lock = threading.Lock()
        self.heads: dict[int, list[str]] = {}
        self.tails: dict[int, collections.deque[str]] = {}
        self.sizes: dict[int, int] = {}
        self.tail_sizes: dict[int, int] = {}  # characters in each rank's tail pieces
        self.partial: dict[int, str] = {}
        self.streams = (_RankStream(self, 0), _RankStream(self, 1))

    @classmethod
    def install(cls, live: bool) -> _ThreadOutput:
        output = cls(live)
        sys.stdout, sys.stderr = output.streams
        return output

    def uninstall(self) -> None:
        if sys.stdout is self.streams[0]:
            sys.stdout = self.saved[0]
        if sys.stderr is self.streams[1]:
            sys.stderr = self.saved[1]
        if self.live:
            for rank, rest in sorted(self.partial.items()):
                if rest:
                    print(f"[rank {rank}] {rest}", file=self.saved[1], flush=True)

    def write(self, rank: int, text: str) -> None:
        with self.lock:
            self._keep(rank, text)
            if self.live:
                lines = (self.partial.get(rank, "") + text).split("\n")
                self.partial[rank] = lines.pop()
                for line in lines:
                    print(f"[rank {rank}] {line}", file=self.saved[1], flush=True)

    def _keep(self, rank: int, text: str) -> None:
        size = self.sizes.get(rank, 0)
        self.sizes[rank] = size + len(text)
        room = max(0, _OUTPUT_HEAD - size)
        if room:
            self.heads.setdefault(rank, []).append(text[:room])
            text = text[room:]
        if text:
            tail = self.tails.setdefault(rank, collections.deque())
            tail.append(text[-_OUTPUT_TAIL:])
            kept = self.tail_sizes.get(rank, 0) + len(tail[-1])
            while kept - len(tail[0]) >= _OUTPUT_TAIL:
                kept -= len(tail.popleft())
            self.tail_sizes[rank] = kept

    def outputs(self) -> dict[int, str]:
        """Each rank thread's output: all of it, or its head and tail around a note of the cut."""
        with self.lock:
            shown = {}
            for rank, head in self.heads.items():
                kept_head, tail = "".join(head), "".join(self.tails.get(rank, ()))[-_OUTPUT_TAIL:]
                cut = self.sizes[rank] - len(kept_head) - len(tail)
                start = "" if kept_head.endswith("\n") else "\n"
                note = f"{start}[... {cut} characters of rank {rank}'s output not shown]\n" if cut > 0 else ""
                shown[rank] = kept_head + note + tail
            return shown


class _RankStream(io.TextIOBase):
    """``sys.stdout`` (0) or ``sys.stderr`` (1) while rank threads run."""

    def __init__(self, output: _ThreadOutput, index: int) -> None:
        super().__init__()
        self.output, self.index = output, index

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        thread = threading.current_thread()
        if isinstance(thread, _RankThread):
            self.output.write(thread.rank, text)
            return len(text)
        return self.output.saved[self.index].write(text)

    def flush(self) -> None:
        self.output.saved[self.index].flush()

    def fileno(self) -> int:
        return self.output.saved[self.index].fileno()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self.output.saved[self.index], "encoding", None) or "utf-8"

    @property
    def errors(self) -> str | None:  # type: ignore[override]
        return getattr(self.output.saved[self.index], "errors", None)

    def isatty(self) -> bool:
        return False  # what a rank thread writes is kept, not shown on a terminal

    def __getattr__(self, name: str) -> Any:  # buffer, reconfigure, ...: the stream it stands for
        return getattr(self.output.saved[self.index], name)
