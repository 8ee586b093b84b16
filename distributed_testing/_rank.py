"""The rank side: prepare a rank process, run one test in it, report one result.

This module runs inside rank processes and imports the minimum: never pytest,
the runner or the parent-side launcher.
"""

from __future__ import annotations

import dataclasses
import faulthandler
import functools
import os
import random
import signal
import sys
import threading
import time
import unittest
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from distributed_testing import _log, _process, _rank_where
from distributed_testing._errors import ConfigError
from distributed_testing._protocol import (
    EXITED,
    FAILED,
    PASSED,
    SKIPPED,
    ErrorInfo,
    RankContext,
    RankResult,
)
from distributed_testing._skips import reason_for_exit_code, skip_exit_code
from distributed_testing._stacks import show_framework_frames

__unittest = True  # hide these frames from user tracebacks

SEED = 1234  # the seed every rank starts a test with, as PyTorch's runner uses
TEST_ERROR_EXIT_CODE = 10  # PyTorch's code for "the test raised"

_sent = False
_exit_code = 0  # set with the result: the code this rank's process leaves with
_case_built: object = None  # the test case, once run_in_rank has it
in_rank = False  # whether this process is a rank (set before any test code runs)
current_example: Any = None  # hypothesis: the example the parent drew for this test
expectations: list[tuple[str, int, str, str]] = []  # assertExpectedInline calls of the running test
rank_thread = threading.local()  # a rank thread's own ``expectations`` (MultiThreadedTestCase)
modules_at_start: frozenset[str] | None = None  # a forked rank: what the fork server had imported


def rank_main(cls: type, rank: int, test_name: str, file_name: str, conn: Any, ctx: RankContext) -> None:
    """Entry point of a rank process: set up, run ``cls._run``, leave with ``os._exit``.

    ``os._exit`` keeps a forked rank from running the parent's unittest or
    pytest machinery and atexit handlers.
    """
    prepare_process(ctx, rank)
    global current_example
    current_example = ctx.example
    try:
        # PyTorch passes fake_pg (its class attribute) for _run overrides that set up a fake group.
        cls._run(rank, test_name, file_name, conn, fake_pg=getattr(cls, "fake_pg", False))  # type: ignore[attr-defined]
    except SystemExit as exc:  # PyTorch-style _run overrides end with sys.exit
        send_result(conn, _exit_result(rank, exc))
    except BaseException as exc:
        where = "building the test case" if _case_built is None else "the rank, outside the test"
        info = format_error(exc, where, None)
        send_result(conn, RankResult(rank, os.getpid(), FAILED, (info,), exit_code=TEST_ERROR_EXIT_CODE))
    send_result(conn, RankResult(rank, os.getpid(), PASSED))  # a custom _run that never called run_test
    _stop_children()
    flush()
    os._exit(_exit_code)


def prepare_process(ctx: RankContext, rank: int) -> None:
    """Make this process a rank: tied to its parent, output captured, stacks on demand."""
    global in_rank
    in_rank = True
    if modules_at_start is None:  # spawned: a rank forked by our server did both at birth
        _process.die_with_parent()  # tied to the test process
        _process.redirect_output(ctx.output_path)
    _log.set_rank(rank)
    try:
        _log.configure_from_environment()  # a spawned rank has no handler of its parent's
    except ConfigError:
        pass  # the parent checked the setting; a rank never stops for it
    faulthandler.enable(file=sys.stderr, all_threads=True)
    _rank_where.register_stack_dump(ctx.stacks_path, ctx.stack_signal)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a forked rank may inherit the runner's handler
    os.environ.update(ctx.extra_env)


def _exit_result(rank: int, exc: SystemExit) -> RankResult:
    """What ``sys.exit(code)`` outside the test method means, as PyTorch reads exit codes."""
    code = exc.code
    pid = os.getpid()
    if code is None or code == 0:
        return RankResult(rank, pid, PASSED)
    if isinstance(code, int):
        reason = reason_for_exit_code(code)
        if reason is not None:
            return RankResult(rank, pid, SKIPPED, reason=reason, exit_code=code)
        return RankResult(rank, pid, EXITED, exit_code=code)
    info = ErrorInfo("SystemExit", str(code), f"SystemExit: {code}", False, "the rank, outside the test")
    return RankResult(rank, pid, FAILED, (info,), exit_code=1)


def _stop_children() -> None:
    """Stop processes the test started with multiprocessing and left running.

    ``os._exit`` skips multiprocessing's own exit hook, and a child left alive
    would outlive the test.
    """
    import multiprocessing

    for child in multiprocessing.active_children():
        child.terminate()
    for child in multiprocessing.active_children():
        child.join(1.0)
        if child.is_alive():
            child.kill()
            child.join()



def destroy_default_group() -> None:
    """Destroy the default process group, if any, without raising: the test is over."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        try:
            dist.destroy_process_group()
        except Exception:
            pass


GROUP_TIMEOUT_MARGIN = 10.0  # seconds, at least, that a library-made group's timeout exceeds the deadline


def group_timeout(deadline: float) -> timedelta:
    """The timeout of a process group the library creates for tests with this deadline
    (seconds): longer, so that at the deadline the parent takes every rank's stacks and
    stops the ranks (the launcher's ``ASK_WAIT``, ``STACK_WAIT`` and ``TERM_GRACE``: 5 s
    at most) before any collective can time out and turn the hang into one
    ``Timed out waiting ... for recv`` error."""
    return timedelta(seconds=deadline + max(GROUP_TIMEOUT_MARGIN, deadline / 10))


flush = _process.flush  # the rank's Python streams and C's stdio buffers, into its output


def seed_all(seed: int = SEED) -> None:
    """Give every rank the same random state, as PyTorch's runner does."""
    import torch

    random.seed(seed)
    torch.manual_seed(seed)
    numpy = sys.modules.get("numpy")
    if numpy is not None:
        numpy.random.seed(seed)


def send_result(conn: Any, result: RankResult) -> None:
    """Send this rank's one result to the parent; later calls are ignored."""
    global _sent, _exit_code
    if _sent:
        return
    _sent = True
    _exit_code = result.exit_code
    try:
        if modules_at_start is not None:
            result = dataclasses.replace(result, imported=imported_since_fork())
        conn.send(result)
    except (OSError, ValueError):  # the parent is gone or stopped listening
        pass
    except Exception:  # a bug of ours: say so in the rank's output, never lose it silently
        import traceback

        traceback.print_exc()


def imported_since_fork() -> tuple[str, ...]:
    """Modules this rank imported that its fork server had not: the server can learn them."""
    assert modules_at_start is not None
    return tuple(
        name
        for name, module in list(sys.modules.items())
        if name not in modules_at_start and getattr(getattr(module, "__spec__", None), "name", None) == name
    )


class _Collector(unittest.TestResult):
    """Records what unittest's own machinery saw while running the test in a rank."""

    def __init__(self, on_stop: Callable[[], None] | None = None) -> None:
        super().__init__()
        self.on_stop = on_stop  # called when the test stops early: an error, a failure, a skip
        self.error_infos: list[ErrorInfo] = []
        self.skip_reason: str | None = None
        self.exit_status: int | None = None
        self.exit_info: ErrorInfo | None = None  # the traceback of that sys.exit
        self.phase = ""  # the rank hook running now, named in its errors
        self.failed_at = 0.0  # when the first error was recorded
        # A failed or skipped subTest ends the test in this rank, as in a rank of PyTorch's
        # (which runs the method bare): its peers would wait in collectives it no longer joins.
        self.failfast = True

    def addError(self, test: unittest.TestCase, err: Any) -> None:  # noqa: N802
        exc = err[1]
        if isinstance(exc, SystemExit):
            self._system_exit(exc)
            if self.exit_status is not None and self.exit_info is None:  # where the test called sys.exit
                self.exit_info = format_error(exc, self.phase, err, self, test)
        else:
            self._note_time()
            self._error(format_error(exc, self.phase, err, self, test))

    def addFailure(self, test: unittest.TestCase, err: Any) -> None:  # noqa: N802
        self._note_time()
        self._error(format_error(err[1], self.phase, err, self, test))

    def _note_time(self) -> None:
        """When the first error reached unittest: before formatting it (that takes milliseconds)."""
        if not self.error_infos and not self.failed_at:
            self.failed_at = time.monotonic()

    def _error(self, info: ErrorInfo) -> None:
        self._note_time()
        self.error_infos.append(info)
        self._stopped()

    def _stopped(self) -> None:
        if self.on_stop is not None:
            self.on_stop()

    def addSubTest(self, test: Any, subtest: Any, err: Any) -> None:  # noqa: N802
        if err is not None:
            self._note_time()
            where = f"subTest {subtest._subDescription()}"
            self._error(format_error(err[1], where, err, self, test))

    def addSkip(self, test: unittest.TestCase, reason: str) -> None:  # noqa: N802
        self.skip_reason = reason
        self._stopped()

    def addExpectedFailure(self, test: unittest.TestCase, err: Any) -> None:  # noqa: N802
        # The parent's method carries the same marker: report the failure so the
        # parent's own unittest run records it as expected.
        self.error_infos.append(format_error(err[1], "", err, self, test))

    def _system_exit(self, exc: SystemExit) -> None:
        code = exc.code
        if code is None or code == 0:
            return
        if not isinstance(code, int):
            info = ErrorInfo("SystemExit", str(code), f"SystemExit: {code}", False, self.phase)
            self.error_infos.append(info)
            self._stopped()
            return
        number = code
        reason = reason_for_exit_code(number)
        if reason is not None:
            self.skip_reason = reason
        else:
            self.exit_status = number
        self._stopped()


def format_error(
    exc: BaseException,
    where: str,
    err: Any,
    collector: unittest.TestResult | None = None,
    test: unittest.TestCase | None = None,
) -> ErrorInfo:
    """Turn an exception into plain data, framework frames trimmed."""
    import traceback

    if show_framework_frames():
        text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    elif err is not None and collector is not None and test is not None:
        text = collector._exc_info_to_string(err, test)  # type: ignore[attr-defined]  # unittest's trimming
    else:
        text = "".join(traceback.format_exception(type(exc), exc, _user_frames(exc.__traceback__)))
    try:
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    except Exception:  # an exception whose __str__ raises
        message = f"<{type(exc).__name__} whose message could not be shown>"
    return ErrorInfo(
        exc_type=type(exc).__name__,
        message=message,
        traceback=text.rstrip("\n"),
        is_assertion=isinstance(exc, AssertionError),
        where=where,
    )


def _user_frames(tb: Any) -> Any:
    """Skip the leading frames of modules marked ``__unittest`` (this library, unittest)."""
    while tb is not None and "__unittest" in tb.tb_frame.f_globals:
        tb = tb.tb_next
    return tb


def run_in_rank(
    case: unittest.TestCase,
    rank: int,
    set_up: Callable[[], None],
    tear_down: Callable[[], None],
    *,
    seed: bool = True,
    on_stop: Callable[[], None] | None = None,
) -> RankResult:
    """Run one test method through unittest's machinery in this rank.

    ``setUp`` and ``tearDown`` are the parent's hooks in PyTorch's protocol
    (setUp is where ranks are spawned), so a rank runs ``set_up`` and
    ``tear_down`` in their place, with unittest's handling of skips, subtests,
    expected failures and cleanups.

    Rank threads (``_threaded``) pass ``seed=False`` (they share one random
    state, seeded once by the main thread) and ``on_stop``, called as soon as
    the test records an error, a failure or a skip, before its tear-down, so
    peers blocked in a collective can be woken.
    """
    global _case_built
    _case_built = case
    recorded = expectation_list()
    if recorded is not None:
        recorded.clear()
    if current_example is not None:  # the parent drew it: run the body on exactly that
        from distributed_testing._hypothesis import bind_example

        name = case._testMethodName
        setattr(case, name, bind_example(case, name, current_example))
    if seed:
        seed_all()
    collector = _Collector(on_stop)
    case.setUp = _phase(collector, "setUp", set_up)  # type: ignore[method-assign]

    def tear_down_knowing_the_outcome() -> None:
        # A tear-down can skip waiting for peers that a failed test left behind.
        failed = bool(collector.error_infos) or collector.exit_status is not None or _failed_unreported(case)
        case._dt_test_failed = failed  # type: ignore[attr-defined]
        tear_down()

    case.tearDown = _phase(collector, "tearDown", tear_down_knowing_the_outcome)  # type: ignore[method-assign]
    start = time.monotonic()
    unittest.TestCase.run(case, collector)
    result = _result_of(collector, rank, time.monotonic() - start)
    return dataclasses.replace(result, expectations=tuple(recorded or ()))


def _failed_unreported(case: unittest.TestCase) -> bool:
    """Python 3.10 hands a test's errors to its result only after tearDown: read them where
    unittest keeps them meanwhile (3.11 reports them at once and has no such list)."""
    pending = getattr(getattr(case, "_outcome", None), "errors", None) or []
    return any(exc is not None and not issubclass(exc[0], SystemExit) for _test, exc in pending)


def stop_peers_on_expected_failure(case: unittest.TestCase, on_stop: Callable[[], None]) -> None:
    """Call ``on_stop`` as soon as an expected-failure test raises.

    unittest records an expected failure only after tearDown, while the rank's peers
    may be blocked in a collective it will not join (rank threads: wake them)."""
    name = case._testMethodName
    method = getattr(case, name)
    marker = "__unittest_expecting_failure__"  # unittest.expectedFailure, on the method or the class
    if not (getattr(case, marker, False) or getattr(method, marker, False)):
        return

    @functools.wraps(method)
    def stopping_peers_on_raise(*args: Any, **kwargs: Any) -> Any:
        try:
            return method(*args, **kwargs)
        except BaseException:
            on_stop()
            raise

    setattr(case, name, stopping_peers_on_raise)


def expectation_list() -> list[tuple[str, int, str, str]] | None:
    """Where the running test's assertExpectedInline values are recorded: the rank thread's
    or the rank process's list; None outside a rank (the value is checked where it is)."""
    own = getattr(rank_thread, "expectations", None)
    if own is not None:
        return own  # type: ignore[no-any-return]
    return expectations if in_rank else None


def _result_of(collector: _Collector, rank: int, duration: float) -> RankResult:
    pid = os.getpid()
    if collector.error_infos:
        errors = tuple(collector.error_infos)
        return RankResult(
            rank, pid, FAILED, errors, exit_code=TEST_ERROR_EXIT_CODE, duration=duration, failed_at=collector.failed_at
        )
    if collector.exit_status is not None:
        where = (collector.exit_info,) if collector.exit_info is not None else ()
        return RankResult(rank, pid, EXITED, where, exit_code=collector.exit_status, duration=duration)
    if collector.skip_reason is not None:
        reason = collector.skip_reason
        return RankResult(rank, pid, SKIPPED, reason=reason, exit_code=skip_exit_code(reason), duration=duration)
    return RankResult(rank, pid, PASSED, duration=duration)


def _phase(collector: _Collector, name: str, hook: Callable[[], None]) -> Callable[[], None]:
    """Run ``hook`` with errors attributed to the phase ``name`` (setUp, tearDown)."""

    def run() -> None:
        collector.phase = name
        hook()
        collector.phase = ""

    return run
