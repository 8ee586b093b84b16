"""The parent side: start rank processes, wait for them on one deadline, stop them.

Waiting is on process sentinels and result pipes, never a sleep loop. When a
rank fails, the others get a short grace period to report, then SIGTERM, then
SIGKILL. At the deadline every live rank is asked for its stacks first.
"""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from distributed_testing import _devices, _forkserver, _process, _stacks
from distributed_testing._outcomes import RankView, says_peer_gone
from distributed_testing._parsers import ENV_LOG_DIR
from distributed_testing._protocol import RankContext, RankResult

__unittest = True

logger = logging.getLogger(__name__)

STACK_SIGNAL = signal.SIGUSR1
FAILURE_GRACE = 0.5  # seconds other ranks may take to report after one fails
TERM_GRACE = 2.0  # seconds between SIGTERM and SIGKILL
STACK_WAIT = 2.0  # seconds to wait for hung ranks to write their stacks
ASK_WAIT = 1.0  # seconds hung ranks' helper threads get to answer before the stack signal
OUTPUT_LIMIT = 20_000  # bytes of a rank's output shown in a report: a quarter from its head, the rest its tail


@dataclass
class RankHandle:
    """The parent's view of one rank process and what it reported."""

    rank: int
    process: Any  # multiprocessing.process.BaseProcess
    conn: Any  # multiprocessing.connection.Connection
    output_path: str
    stacks_path: str
    result: RankResult | None = None
    finished_at: float | None = None
    stopped: str = ""  # how the parent stopped it: "", "SIGTERM", "SIGKILL"
    stacks: str = ""
    messages: list[Any] = field(default_factory=list)  # anything but the result

    @property
    def exitcode(self) -> int | None:
        return self.process.exitcode  # type: ignore[no-any-return]

    def receive(self) -> None:
        """Take every message waiting in the rank's pipe: its result, or others."""
        try:
            while not self.conn.closed and self.conn.poll():
                message = self.conn.recv()
                if isinstance(message, RankResult) and self.result is None:
                    self.result = message
                else:
                    self.messages.append(message)
        except (EOFError, OSError):
            self.conn.close()

    def done(self, until_exit: bool) -> bool:
        """Whether waiting for this rank is over: it exited (or, for a pool, reported)."""
        if self.exitcode is not None:
            return True
        return not until_exit and self.result is not None


@dataclass
class WaitOutcome:
    """How waiting ended."""

    timed_out: bool
    elapsed: float
    first_failure: int | None  # the rank that failed first, if any


def wait_for_ranks(
    ranks: list[RankHandle],
    timeout: float,
    is_failure: Callable[[RankHandle], bool],
    until_exit: bool = True,
) -> WaitOutcome:
    """Wait until every rank is done, one fails (plus a grace period), or the deadline.

    Done means exited (``until_exit``, one-shot ranks) or reported (pool ranks).
    """
    start = time.monotonic()
    deadline = start + timeout
    stop_at = deadline
    first_failure: int | None = None
    while True:
        live = [r for r in ranks if not r.done(until_exit)]
        if not live:
            break
        now = time.monotonic()
        if now >= stop_at:
            break
        waitables: list[Any] = [r.process.sentinel for r in live]
        waitables += [r.conn for r in live if r.result is None and not r.conn.closed]
        multiprocessing.connection.wait(waitables, timeout=stop_at - now)
        for handle in ranks:
            # Exit first, then the pipe: a rank that exited has written all it
            # will, so reading after seeing the exit never misses its result.
            exited = handle.exitcode is not None
            handle.receive()
            if handle.finished_at is None and (handle.result is not None or exited):
                handle.finished_at = time.monotonic()
            if first_failure is None and handle.finished_at is not None and is_failure(handle):
                first_failure = handle.rank
                stop_at = min(deadline, time.monotonic() + FAILURE_GRACE)
    for handle in ranks:
        handle.receive()
    elapsed = time.monotonic() - start
    timed_out = first_failure is None and not all(r.done(until_exit) for r in ranks)
    failed = [r for r in ranks if r.finished_at is not None and is_failure(r)]
    if failed:  # by when each failed, not by the order the parent noticed
        first_failure = min(failed, key=_failure_time).rank
    return WaitOutcome(timed_out, elapsed, first_failure)


def _failure_time(handle: RankHandle) -> tuple[int, float]:
    """Order failures: deaths without a result first (the parent notices them late, and
    their peers' errors are usually their consequences), then errors of the rank's own,
    then errors that say a peer went away, each by when the rank failed."""
    result = handle.result
    if result is None:
        return (0, handle.finished_at or 0.0)
    peer_gone = bool(result.errors) and says_peer_gone(result.errors[0].message)
    return (2 if peer_gone else 1, result.failed_at or handle.finished_at or 0.0)


def collect_stacks(ranks: list[RankHandle]) -> None:
    """Take every live rank's stacks and where its default process group is.

    First ask each rank's helper thread (``_stacks.ask_where``): it dumps every
    thread's stack holding the GIL, so no thread's frames change meanwhile, and adds
    the group's collective count. A rank that does not answer within ``ASK_WAIT``
    (its main thread holds the GIL in C) gets a faulthandler signal instead, whose
    handler writes the stacks from anywhere.
    """
    live = [h for h in ranks if h.exitcode is None and h.result is None and h.process.pid is not None]
    asking = [h for h in live if _stacks.ask_where(h.stacks_path)]
    deadline = time.monotonic() + ASK_WAIT
    for handle in asking:
        while not _stacks.where_answered(handle.stacks_path) and time.monotonic() < deadline:
            handle.process.join(0.01)
    asked = []
    for handle in live:
        if handle in asking and _stacks.where_answered(handle.stacks_path):
            continue
        try:
            os.kill(handle.process.pid, STACK_SIGNAL)
            asked.append(handle)
            logger.debug("deadline: asked rank %d (pid %s) for its stacks", handle.rank, handle.process.pid)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + STACK_WAIT
    for handle in asked:
        # The dump happens in the rank's signal handler: wait until it is
        # written and has stopped growing.
        previous = -1
        while time.monotonic() < deadline:
            size = file_size(handle.stacks_path)
            if size > 0 and size == previous:
                break
            previous = size
            handle.process.join(0.05)
    for handle in live:
        handle.stacks = _stacks.rank_stacks(handle.stacks_path, _read_text(handle.stacks_path))


def file_size(path: str) -> int:
    """The size of ``path`` in bytes, 0 if it does not exist."""
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def stop_ranks(ranks: list[RankHandle]) -> None:
    """Stop every live rank: SIGTERM, then SIGKILL after a grace period; reap all."""
    live = [r for r in ranks if r.exitcode is None]
    for handle in live:
        logger.debug("rank %d (pid %s) still running: SIGTERM", handle.rank, handle.process.pid)
        _signal(handle, signal.SIGTERM)
        handle.stopped = "SIGTERM"
    deadline = time.monotonic() + TERM_GRACE
    for handle in live:
        handle.process.join(max(0.0, deadline - time.monotonic()))
        if handle.exitcode is None:
            logger.debug("rank %d (pid %s) still running %g s after SIGTERM: SIGKILL", handle.rank,
                         handle.process.pid, TERM_GRACE)
            _signal(handle, signal.SIGKILL)
            handle.stopped = "SIGKILL"
    for handle in ranks:
        handle.process.join()
        handle.receive()


def teach_server(ranks: list[RankHandle]) -> None:
    """Let the fork server import what these forked ranks imported while testing."""
    for handle in ranks:
        if isinstance(handle.process, _forkserver.ForkedProcess) and handle.result is not None:
            if handle.result.imported:
                _forkserver.learn(handle.result.imported)
            return


def close(ranks: list[RankHandle]) -> None:
    """Release the pipes and process handles of finished ranks."""
    for handle in ranks:
        handle.conn.close()
        if handle.exitcode is not None:
            handle.process.close()


def _signal(handle: RankHandle, signum: int) -> None:
    try:
        os.kill(handle.process.pid, signum)
    except ProcessLookupError:
        pass


def read_output(
    path: str, limit: int = OUTPUT_LIMIT, offset: int = 0, rank: int | None = None, full_log: str | None = None
) -> str:
    """A rank's captured output from byte ``offset``: all of it up to ``limit`` bytes, else its
    head and its tail (cut at line ends) around a note of what was cut and where the whole is.

    Only the kept bytes are read: a rank that printed gigabytes costs no more than one that
    printed ``limit``. ``full_log``, where a copy of the whole log is kept, is named in the
    note (or, when nothing was cut, in a last line).
    """
    size = file_size(path) - offset
    of = "" if rank is None else f" of rank {rank}"
    if size <= limit:
        text = _read_text(path, offset)
        if full_log and text.strip():
            text += ("" if text.endswith("\n") else "\n") + f"[the full log{of} is {full_log}]\n"
        return text
    head_size = limit // 4  # the failure is usually near the end: most of the room for the tail
    head = read_bytes(path, offset, head_size)
    tail = read_bytes(path, offset + size - (limit - head_size) - 1, limit - head_size + 1)  # and the byte before
    head = head[: head.rfind(b"\n") + 1] or head  # whole lines, where there are line ends
    start = tail.find(b"\n") + 1
    tail = tail[start:] if 0 < start < len(tail) else tail[1:]
    cut = size - len(head) - len(tail)
    where = f": the full log is {full_log}" if full_log else f"; {ENV_LOG_DIR}=DIR keeps full logs"
    whose = "output" if rank is None else f"rank {rank}'s output"
    note = ("" if head.endswith(b"\n") else "\n") + f"[... {cut} bytes of {whose} not shown{where}]\n"
    return head.decode("utf-8", errors="replace") + note + tail.decode("utf-8", errors="replace")


def read_bytes(path: str, offset: int, size: int) -> bytes:
    try:
        with open(path, "rb") as handle:
            handle.seek(offset)
            return handle.read(size)
    except OSError:
        return b""


def _read_text(path: str, offset: int = 0) -> str:
    try:
        with open(path, "rb") as handle:
            handle.seek(offset)
            return handle.read().decode("utf-8", errors="replace")
    except OSError:
        return ""


def process_class(method: str, module: str) -> Any:
    """The Process class for a start method.

    ``fork`` forks each rank from the warm fork server of ``_forkserver`` (a
    zygote of the test process, or a fresh interpreter, that has imported
    torch and the test ``module``). Forking the test process itself at each
    test would copy whatever it did before (CUDA, an OpenMP thread pool whose
    threads a child does not get: a hang).
    """
    if method != "fork":
        return multiprocessing.get_context(method).Process  # type: ignore[attr-defined]
    return _forkserver.process_class(module)


_warned_fallback = False


def choose_start_method(method: str) -> str:
    """fork unless CUDA is initialised here: then, most likely, importing the test
    module initialised it, and the fork server would hold it too. Spawn, said once."""
    global _warned_fallback
    if method != "fork" or not _devices.cuda_initialized():
        return method
    logger.debug("CUDA is initialised in the test process: ranks start with spawn")
    if not _warned_fallback:
        _warned_fallback = True
        warnings.warn(
            "distributed_testing: CUDA is initialised in this process, so ranks start "
            "with spawn instead of fork (a forked CUDA context is unusable)",
            RuntimeWarning,
            stacklevel=4,
        )
    return "spawn"


def view(handle: RankHandle, with_output: bool, offset: int = 0, full_log: str | None = None) -> RankView:
    """What the parent knows of one rank, for folding (its output read only when asked; from
    byte ``offset`` for a pool rank; naming ``full_log`` where its whole log is kept)."""
    return RankView(
        rank=handle.rank,
        pid=handle.process.pid,
        result=handle.result,
        exitcode=handle.exitcode,
        stopped=handle.stopped,
        finished_at=handle.finished_at,
        stacks=handle.stacks,
        output=read_output(handle.output_path, offset=offset, rank=handle.rank, full_log=full_log)
        if with_output
        else "",
    )


def start_rank(
    proc: Callable[..., Any],
    target: Callable[..., None],
    args: tuple[Any, ...],
    rank: int,
    ctx: RankContext,
) -> RankHandle:
    """Start one rank as ``target(*args, conn, ctx)`` with ``proc`` (a Process class).

    The parent keeps only its end of the pipe.
    """
    parent_conn, child_conn = multiprocessing.Pipe(duplex=True)
    process = proc(target=target, name=f"rank {rank}", args=(*args, child_conn, ctx))
    if isinstance(process, _forkserver.ForkedProcess):
        process.output = ctx.output_path  # captured from the rank's first instruction
    if getattr(process, "_start_method", None) == "spawn":
        # A spawned rank imports the test file before it can capture its own
        # output: hand it the rank's file as stdout/stderr from the start.
        with _process.output_to(ctx.output_path):
            process.start()
    else:
        process.start()
    child_conn.close()
    logger.debug("started rank %d (pid %s, %s) of %s", rank, process.pid, type(process).__name__, ctx.test_id)
    return RankHandle(rank, process, parent_conn, ctx.output_path, ctx.stacks_path)
