"""The rank budget and device leases under pytest-xdist.

With two workers or more, the controller checks the budget (``--dt-max-ranks``,
default the CPU count) and an outer ``CUDA_VISIBLE_DEVICES`` before any test,
makes a lease directory and hands it to every worker, whose tests then take a
lease before their ranks start (:mod:`distributed_testing._lease_file`).
xdist schedules as it always does: a test waits for its lease, not for a slot.
A test wider than the budget runs alone; the terminal summary says which.
Without xdist, or with one worker, nothing here does anything.
"""

from __future__ import annotations

import os
from typing import Any

import pytest

from distributed_testing import _lease_file, _leases, _nvml
from distributed_testing._errors import ConfigError
from distributed_testing._parsers import ENV_MAX_RANKS, parse_max_ranks

INPUT_KEY = "dt_lease_dir"  # in each worker's workerinput: the controller's lease directory
NOTE_TITLE = "distributed_testing rank budget"  # the report section a note travels in
_DIR = pytest.StashKey[str]()
_notes: list[str] = []  # the controller's, from the workers' reports
_controller = False  # this process is the controller of a run with leases


def pytest_configure(config: pytest.Config) -> None:
    """A worker joins the controller's lease directory; the controller of two workers or more
    checks the limits (a usage error before any test) and makes the directory."""
    workerinput = getattr(config, "workerinput", None)
    if workerinput is not None:
        if workerinput.get(INPUT_KEY):
            _lease_file.activate(workerinput[INPUT_KEY])
        return
    global _controller
    _notes.clear()
    workers = worker_count(config)
    _controller = workers >= 2
    if not _controller:
        return
    try:
        limits = run_limits(f"pytest -n {workers}")
    except ConfigError as exc:
        from distributed_testing._pytest_plugin import from_option

        raise pytest.UsageError(from_option(exc)) from None
    config.stash[_DIR] = _lease_file.create(limits)


def worker_count(config: pytest.Config) -> int:
    """How many xdist workers this run starts (0 without xdist's distribution)."""
    if config.getoption("collectonly", False) or config.getoption("dist", "no") == "no":
        return 0
    try:
        from xdist.workermanage import parse_tx_spec_config  # type: ignore[import-untyped]
    except ImportError:
        return 0
    try:
        return len(parse_tx_spec_config(config))
    except pytest.UsageError:
        return 0


def run_limits(command: str) -> _leases.Limits:
    """The budget (the setting, else the CPU count) and the leasable devices; ConfigError when
    ``DISTRIBUTED_TESTING_MAX_RANKS`` or an outer ``CUDA_VISIBLE_DEVICES`` is bad."""
    value = os.environ.get(ENV_MAX_RANKS) or None
    budget = parse_max_ranks(value) if value is not None else None
    devices = _leases.visible_devices(os.environ.get(_leases.CVD), _nvml.gpu_uuids(), f"{command} ...")
    return _leases.Limits(budget or _leases.default_budget(), budget is not None, devices)


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    """Hand the lease directory to a worker before it starts."""
    directory = node.config.stash.get(_DIR, None)
    spec = getattr(getattr(node, "gateway", None), "spec", None)
    if directory is not None and getattr(spec, "popen", True):  # a remote worker cannot open it
        node.workerinput[INPUT_KEY] = directory


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """A worker: the notes its test made (it ran alone) go with the report to the controller."""
    report = yield
    for note in _lease_file.take_notes():
        report.sections.append((NOTE_TITLE, note))
    return report


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """The controller: keep the workers' notes for the summary."""
    if _controller:
        _notes.extend(text for title, text in report.sections if title == NOTE_TITLE)


_SHOWN_NOTES = 5  # notes shown in the summary; the rest are counted


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Say which tests ran alone (wider than the budget), or went over it."""
    if _notes:
        terminalreporter.write_sep("-", NOTE_TITLE)
        for note in _notes[:_SHOWN_NOTES]:
            terminalreporter.write_line(note)
        if len(_notes) > _SHOWN_NOTES:  # a suite of wide tests on a small machine: not a line each
            more = len(_notes) - _SHOWN_NOTES
            terminalreporter.write_line(f"... and {more} more test{'s' * (more > 1)} like these")


def pytest_unconfigure(config: pytest.Config) -> None:
    """A worker leaves the lease directory; the controller removes it."""
    if getattr(config, "workerinput", None) is not None:
        _lease_file.deactivate()
    directory = config.stash.get(_DIR, None)
    if directory is not None:
        _lease_file.remove(directory)
        del config.stash[_DIR]
