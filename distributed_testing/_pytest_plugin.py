"""The pytest plugin: --dt-* options, the world_size marker, rank reports as failures.

Loaded in every pytest run of an environment that has the package, so it
imports nothing heavy (no torch) until a distributed test class is collected.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import os
import unittest
from typing import Any

import pytest

from distributed_testing import _log, _slurm
from distributed_testing._errors import ConfigError, RankAssertionError, RankFailure
from distributed_testing._parsers import ENV_SHOW_OUTPUT, SHOW_LIVE
from distributed_testing._settings import SETTINGS, plain

# Each --dt-* option and its setting (the variable it sets, as run_tests() reads it).
OPTIONS = {setting.pytest_option: setting for setting in SETTINGS if setting.pytest_option}
MARKER = "world_size"
_SAVED = pytest.StashKey[dict[str, str | None]]()  # the variables' values before pytest_configure
_LOGGING = pytest.StashKey[bool]()  # whether pytest_configure added the library's log handler
# The plugin's parts for running at scale, one module per concern, registered at configure:
# the rank budget and device leases under pytest-xdist, shards, retries and hardware accounting,
# the JSON record (--dt-report).
PARTS = (
    "distributed_testing._pytest_budget",
    "distributed_testing._pytest_shard",
    "distributed_testing._pytest_retries",
    "distributed_testing._pytest_record",
)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("distributed_testing", "distributed tests (distributed_testing)")
    for option, setting in OPTIONS.items():
        if setting.switch:
            text = f"{plain(setting.help)} (sets {setting.variable} to 1 or 0)"
            group.addoption(option, action=argparse.BooleanOptionalAction, default=None, help=text)
        else:
            text = f"{plain(setting.help)}: {plain(setting.values)} (sets {setting.variable})"
            group.addoption(option, default=None, help=text)


def pytest_configure(config: pytest.Config) -> None:
    """Export the options as their variables for this session (ranks and run_tests() read them);
    with ``-s`` (no capture) and no DISTRIBUTED_TESTING_SHOW_OUTPUT, the ranks' output is live."""
    config.addinivalue_line(
        "markers", f"{MARKER}(*sizes): run a distributed test once per world size, as @world_sizes(*sizes)"
    )
    given = {}
    for option, setting in OPTIONS.items():
        value = config.getoption(option)
        if value is not None:
            given[setting.variable] = ("1" if value else "0") if setting.switch else str(value)
    checked = bool(given)  # only what the options set is the session's to validate
    try:  # a task of an srun step is a launched rank: export what torchrun would have set
        given.update(_slurm.launch_env(os.environ))
    except ConfigError:
        pass  # a usage error once distributed tests are collected, not for every pytest run under srun
    if config.getoption("capture", None) == "no" and not os.environ.get(ENV_SHOW_OUTPUT):
        given.setdefault(ENV_SHOW_OUTPUT, SHOW_LIVE)  # -s: the ranks' output streams as pytest's own does
    config.stash[_SAVED] = {name: os.environ.get(name) for name in given}
    os.environ.update(given)
    try:
        if checked:
            from distributed_testing import _config

            _config.load()
        config.stash[_LOGGING] = _log.configure_from_environment()
    except ConfigError as exc:
        _restore_environment(config)
        raise pytest.UsageError(from_option(exc)) from None
    for name in PARTS:
        if not config.pluginmanager.has_plugin(name):
            config.pluginmanager.register(importlib.import_module(name), name)


def from_option(exc: ConfigError) -> str:
    """The error, naming the --dt-* option when the bad value came from one."""
    for option, setting in OPTIONS.items():
        if setting.variable == exc.name and option in " ".join(_command_line()):
            return f"{exc} (the value came from {option})"
    return str(exc)


def _command_line() -> list[str]:
    import sys

    return sys.argv[1:] + os.environ.get("PYTEST_ADDOPTS", "").split()


def pytest_unconfigure(config: pytest.Config) -> None:
    """Put back the environment (and logging) as they were before pytest_configure."""
    if config.stash.get(_LOGGING, False):
        _log.remove_handler()
        config.stash[_LOGGING] = False
    _restore_environment(config)


def _restore_environment(config: pytest.Config) -> None:
    for name, value in config.stash.get(_SAVED, {}).items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    config.stash[_SAVED] = {}


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
    """Check the environment as ``run_tests()`` does, then fork the ranks' server now, when
    every test module is imported and no test has run."""
    classes = {getattr(item, "cls", None) for item in session.items} - {None}
    if any(isinstance(cls, type) and _is_ours(cls) for cls in classes):
        from distributed_testing import _config, _forkserver

        try:
            settings = _config.load()
            _config.launch_info()  # torchrun's or srun's variables, complete
        except ConfigError as exc:  # as python file.py: a usage error before any test runs
            raise pytest.UsageError(from_option(exc)) from None
        if settings.debug_rank is not None:
            _check_debug_rank(session.items, settings.debug_rank)
        _forkserver.prepare_for(c for c in classes if isinstance(c, type))


def _check_debug_rank(items: list[pytest.Item], rank: int) -> None:
    from distributed_testing._runner import debug_rank_problem

    cases = [case for item in items if (case := _case_of(item)) is not None]
    problem = debug_rank_problem(cases, rank)
    if problem:
        raise pytest.UsageError(from_option(ConfigError(problem, "DISTRIBUTED_TESTING_DEBUG_RANK", rank)))


def _case_of(item: pytest.Item) -> Any:
    cls = getattr(item, "cls", None)
    if not (isinstance(cls, type) and _is_ours(cls)):
        return None
    try:
        return cls(item.name)
    except Exception:  # a test case that cannot be built here: its own run says why
        return None


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """Show a distributed test as pytest shows captured output: the report's headline as the
    failure, then one section per rank (its traceback or stacks, and its output)."""
    report = yield
    if call.when != "call":
        return report
    excinfo = call.excinfo
    outcome = getattr(excinfo.value, "outcome", None) if excinfo is not None else None
    if outcome is None:
        outcome = getattr(getattr(item, "_testcase", None), "_dt_outcome", None)
    if outcome is None or report.skipped:
        return report
    from distributed_testing import _render

    style = item.config.getoption("tbstyle", "auto")
    if report.failed and isinstance(excinfo.value if excinfo else None, (RankFailure, RankAssertionError)):
        if style in ("no", "line", "native"):
            return report  # pytest's own rendering of the whole report
        assert excinfo is not None
        notes = [str(note) for note in getattr(excinfo.value, "__notes__", ())]  # hypothesis's example, say
        report.longrepr = "\n".join([f"{type(excinfo.value).__name__}: {_render.headline(outcome)}", *notes])
    report.sections.extend(_render.sections(outcome))
    return report
