"""run_tests(): the entry point at the bottom of a test file.

Validates the environment before any test runs, fills the embedded defaults
(and says so in one line), runs the module's tests with unittest's own
argument handling, and turns the run into an exit code: 0 all passed,
1 a test failed, 2 bad configuration or usage, 5 no tests ran, 130 interrupted (Ctrl-C or SIGTERM).
"""

from __future__ import annotations

import contextlib
import faulthandler
import gc
import os
import shutil
import signal
import sys
import tempfile
import unittest
from collections.abc import Iterator, Sequence
from typing import Any, NoReturn

from distributed_testing import _config, _janitor, _log, _shard, _slurm
from distributed_testing._errors import ConfigError
from distributed_testing._record import RecordingResult, RecordingRunner, write_report

__all__ = ["EXIT_FAILED", "EXIT_INTERRUPTED", "EXIT_NO_TESTS", "EXIT_OK", "EXIT_USAGE", "main", "run_tests"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_NO_TESTS = 0, 1, 2, 5
EXIT_INTERRUPTED = 130  # as a shell reports a run stopped by Ctrl-C
STRICT_FLAG = "--strict-env"


def run_tests(argv: Sequence[str] | None = None, strict_env: bool = False, module: Any = "__main__") -> NoReturn:
    """Run the tests of ``module`` (the calling file) and exit with the outcome's code."""
    sys.exit(main(argv, strict_env=strict_env, module=module))


def main(argv: Sequence[str] | None = None, *, strict_env: bool = False, module: Any = "__main__") -> int:
    """Like :func:`run_tests`, but return the exit code."""
    args = list(sys.argv if argv is None else argv)
    strict = strict_env or STRICT_FLAG in args
    args = [a for a in args if a != STRICT_FLAG]
    try:
        # A task of an srun step is a launched rank: export what torchrun would have set.
        os.environ.update(_slurm.launch_env(os.environ))
        settings = _config.load(strict=strict)
        launch = _config.launch_info()
    except ConfigError as exc:
        return _usage_error(str(exc))
    _log.configure_logging(settings)
    if launch is not None:  # a rank of torchrun (or srun): a crash shows where, as one-shot ranks do
        faulthandler.enable(file=sys.stderr, all_threads=True)
    with _environment(settings) as note, interruptible():
        if note and (launch is None or launch.rank == 0):
            print(note, file=sys.stderr, flush=True)
        try:
            program = _Program(module=module, argv=args, exit=False, testRunner=_Runner)
        except KeyboardInterrupt:
            from distributed_testing import _run

            where = f" in {_run.running_test}" if _run.running_test else ""
            if launch is not None:  # torchrun stops every rank when one of them dies
                print(f"{_config.script_name()}: rank {launch.rank} was stopped{where}", file=sys.stderr)
            else:
                print(f"{_config.script_name()}: interrupted{where}; every rank was stopped", file=sys.stderr)
            return EXIT_INTERRUPTED
    code = _exit_code(program)
    if settings.report_path:
        records = program.result.records if isinstance(program.result, RecordingResult) else []
        write_report(settings.report_path, records, code, shard=settings.shard)
    return code


def _exit_code(program: _Program) -> int:
    if program.usage_error:
        return _usage_error(program.usage_error)
    if program.result is None or program.result.testsRun == 0:
        print(f"{_config.script_name()}: no tests ran: {program.empty_reason}", file=sys.stderr)
        return EXIT_NO_TESTS
    return EXIT_OK if program.result.wasSuccessful() else EXIT_FAILED


@contextlib.contextmanager
def interruptible(every: bool = False) -> Iterator[None]:
    """Treat SIGTERM like Ctrl-C, so a stopped run still stops its ranks and cleans up.

    Only the first interrupt raises (a second one must not cut the clean-up
    short: stopping ranks takes at most a few seconds), unless ``every``: a
    block that waits out a grace period can be cut short on purpose.
    """
    interrupted = False

    def interrupt(signum: int, frame: Any) -> None:
        nonlocal interrupted
        if every or not interrupted:
            interrupted = True
            raise KeyboardInterrupt

    try:
        previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGTERM, signal.SIGINT)}
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _usage_error(message: str) -> int:
    print(f"{_config.script_name()}: error: {message}", file=sys.stderr)
    return EXIT_USAGE


@contextlib.contextmanager
def _environment(settings: _config.Settings) -> Iterator[str]:
    """Export the defaults the ranks (and PyTorch-style suites) read; yield the note."""
    defaults: dict[str, str] = {}
    if not settings.backend_from_env:
        defaults.update(_config.defaulted_backend(settings.backend))
    if "INIT_METHOD" not in os.environ or not os.environ["INIT_METHOD"]:
        defaults["INIT_METHOD"] = settings.init_method
    private = None
    if settings.temp_dir is None:
        private = tempfile.mkdtemp(prefix="dt-run-")
        _janitor.register(private)
        defaults["TEMP_DIR"] = private
    temp_dir = settings.temp_dir or private or ""
    for sub in ("barrier", "test_dir"):  # what PyTorch's suites expect in TEMP_DIR
        os.makedirs(os.path.join(temp_dir, sub), exist_ok=True)
    try:
        with _config.environ_set(defaults):
            yield _defaults_note(defaults, settings, private is not None)
    finally:
        if private is not None:
            shutil.rmtree(private, ignore_errors=True)
            _janitor.unregister(private)


def _defaults_note(defaults: dict[str, str], settings: _config.Settings, private: bool) -> str:
    if not defaults and settings.world_size is not None:
        return ""
    parts = [f"{k}={v}" for k, v in defaults.items() if k not in ("TEMP_DIR", _config.ENV_DEFAULTED_BACKEND)]
    if private:
        parts.append("TEMP_DIR=<private, removed at exit>")
    if settings.world_size is None:
        parts.append("WORLD_SIZE=<each class's own>")
    return "distributed_testing: defaults " + ", ".join(parts)


class _Runner(RecordingRunner):
    """unittest's text runner, keeping a record of each test for the JSON report (and counting
    flaky tests and tests not run for lack of hardware in its summary)."""

    resultclass = RecordingResult


class _Program(unittest.TestProgram):
    """unittest's own argument handling, with checks before any test runs."""

    usage_error = ""
    empty_reason = ""

    def createTests(self, *args: Any, **kwargs: Any) -> None:  # noqa: N802
        # Before the tests exist: torch and the test module stay for the run (no
        # full-collection pauses on them), while each test, released once it has
        # run, can still be collected with what it kept on ``self``.
        gc.freeze()
        super().createTests(*args, **kwargs)

    def runTests(self) -> None:  # noqa: N802
        tests = list(_shard.iter_tests(self.test))  # type: ignore[attr-defined]
        given = list(self.testNames or [])  # type: ignore[attr-defined]
        self.usage_error = _check_names(tests, self.module, given)
        if not self.usage_error:
            try:  # this machine's shard of the selection (DISTRIBUTED_TESTING_SHARD)
                tests, self.empty_reason = _shard.select_unittest(self.test, tests, self.module)  # type: ignore[attr-defined]
            except ConfigError as exc:
                self.usage_error = str(exc)
        self.usage_error = self.usage_error or _check_world_sizes(tests)
        if self.usage_error:
            self.result = None  # type: ignore[assignment]
            return
        if not tests:
            self.result = None  # type: ignore[assignment]
            self.empty_reason = self.empty_reason or _empty_reason(self.module, getattr(self, "testNamePatterns", None))
            return
        from distributed_testing import _forkserver

        _forkserver.prepare_for({type(test) for test in tests})
        del tests  # the suite releases each test after it runs: hold none here
        try:
            super().runTests()
        finally:
            # What the module made at import (a class's FileStore, say) is frozen: unfrozen, the
            # collection at exit finalizes it as it would without the freeze (removing its files).
            gc.unfreeze()


def _check_names(tests: list[unittest.TestCase], module: Any, given: list[str]) -> str:
    failed = [t for t in tests if type(t).__name__ == "_FailedTest"]
    if not failed:
        return ""
    names = given or [t.id().rsplit(".", 1)[-1] for t in failed]
    loaded = unittest.defaultTestLoader.loadTestsFromModule(module)
    known = [t.id().split(".", 1)[-1] for t in _shard.iter_tests(loaded)]
    shown = ", ".join(known[:20]) + (", ..." if len(known) > 20 else "") if known else "none"
    return (
        f"no test named {', '.join(repr(n) for n in names)} in {_config.script_name()}; "
        f"available: {shown}. Example: python {_config.script_name()} "
        f"{known[0] if known else 'TestX.test_y'}"
    )


def _check_world_sizes(tests: list[unittest.TestCase]) -> str:
    """A class world size that is no size at all stops the run; 0 skips that class's tests.
    A debug rank that no selected test has stops it too."""
    from distributed_testing._testcase import MultiProcessTestCase
    from distributed_testing._world_sizes import class_world_size

    for test in tests:
        if isinstance(test, MultiProcessTestCase):
            try:
                class_world_size(test)
            except ConfigError as exc:
                return str(exc)
    rank = _config.load().debug_rank
    return debug_rank_problem(tests, rank) if rank is not None else ""


def debug_rank_problem(tests: list[Any], rank: int) -> str:
    """Why ``DISTRIBUTED_TESTING_DEBUG_RANK=rank`` cannot run: a selected test has no such rank."""
    from distributed_testing._testcase import MultiProcessTestCase
    from distributed_testing._world_sizes import class_world_size

    for test in tests:
        if isinstance(test, MultiProcessTestCase) and 0 < (size := class_world_size(test)) <= rank:
            return (
                f"{_config.ENV_DEBUG_RANK}={rank} is not a rank of {test.id()}, whose world size is {size}: "
                f"select tests that have rank {rank}, or debug a lower rank. Example: "
                f"{_config.ENV_DEBUG_RANK}={size - 1} python {_config.script_name()} {type(test).__name__}"
            )
    return ""


def _empty_reason(module: Any, patterns: Sequence[str] | None) -> str:
    if patterns:
        return f"no test matches -k {' '.join(patterns)}"
    return f"{_config.script_name()} defines no test_* methods"
