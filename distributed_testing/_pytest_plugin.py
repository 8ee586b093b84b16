"""The pytest plugin: --dt-* options, the world_size marker, rank reports as failures.

Loaded in every pytest run of an environment that has the package, so it
imports nothing heavy (no torch) until a distributed test class is collected.
"""

from __future__ import annotations

import inspect
import os
import unittest
from typing import Any

import pytest

from distributed_testing._errors import ConfigError, RankAssertionError, RankFailure

# Each option and the environment variable it sets, as run_tests() reads them.
OPTIONS = {
    "--dt-backend": ("BACKEND", "c10d backend for the ranks: gloo, nccl, ucc, mpi, xccl"),
    "--dt-world-size": ("WORLD_SIZE", "ranks per test, for classes that read WORLD_SIZE"),
    "--dt-timeout": ("DISTRIBUTED_TESTING_TIMEOUT", "seconds a test may take before its ranks' stacks are taken"),
    "--dt-start-method": ("DISTRIBUTED_TESTING_START_METHOD", "how ranks start: fork (fast) or spawn"),
}
MARKER = "world_size"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("distributed_testing", "distributed tests (distributed_testing)")
    for option, (variable, text) in OPTIONS.items():
        group.addoption(option, default=None, help=f"{text} (sets {variable})")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", f"{MARKER}(*sizes): run a distributed test once per world size, as @world_sizes(*sizes)"
    )
    given = False
    for option, (variable, _) in OPTIONS.items():
        value = config.getoption(option)
        if value is not None:
            os.environ[variable] = str(value)
            given = True
    if given:
        from distributed_testing import _config

        try:
            _config.load()
        except ConfigError as exc:
            raise pytest.UsageError(str(exc)) from None


def _is_ours(cls: type) -> bool:
    return any(base.__module__.startswith("distributed_testing.") for base in cls.__mro__)


@pytest.hookimpl(tryfirst=True)
def pytest_pycollect_makeitem(collector: Any, name: str, obj: Any) -> None:
    """Expand a class's world_size marks before pytest collects its tests."""
    if not (inspect.isclass(obj) and issubclass(obj, unittest.TestCase) and _is_ours(obj)):
        return
    from distributed_testing._world_sizes import expand_world_sizes

    try:
        expand_world_sizes(obj)
    except ConfigError as exc:
        raise pytest.UsageError(f"{obj.__qualname__}: {exc}") from None


def pytest_collection_finish(session: pytest.Session) -> None:
    """Fork the ranks' server now, when every test module is imported and no test has run."""
    classes = {getattr(item, "cls", None) for item in session.items} - {None}
    if any(isinstance(cls, type) and _is_ours(cls) for cls in classes):
        from distributed_testing import _forkserver

        _forkserver.prepare_for(c for c in classes if isinstance(c, type))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """Show a rank failure as its report alone: the ranks' tracebacks, not the framework's."""
    report = yield
    excinfo = call.excinfo
    style = item.config.getoption("tbstyle", "auto")
    if report.failed and excinfo is not None and style not in ("no", "line", "native"):
        if isinstance(excinfo.value, (RankFailure, RankAssertionError)):
            report.longrepr = f"{type(excinfo.value).__name__}: {excinfo.value}"
    return report
