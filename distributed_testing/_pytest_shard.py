"""Shards under pytest: this machine's part of the run (``--dt-shard i/n``, ``--dt-durations FILE``).

The shard is taken from the tests that -k, -m and other plugins left selected
(this hook wraps theirs), so the union of the shards of ``pytest -k X`` is the
unsharded ``pytest -k X``. It depends only on the collected node ids and the
durations file, so every pytest-xdist worker deselects the same tests (xdist
checks that its workers collected alike; the controller collects nothing).
A durations file's stale entries are checked against every collected test,
before any selection.
"""

from __future__ import annotations

import os
from collections.abc import Generator

import pytest

from distributed_testing._errors import ConfigError
from distributed_testing._parsers import ENV_DURATIONS, ENV_SHARD, parse_durations, parse_shard

_SHARD = pytest.StashKey[tuple[int, int] | None]()
_DURATIONS = pytest.StashKey[object]()  # a _shard.Durations, or None
_CONTROLLER = "distributed_testing._pytest_shard.controller"
_NAMES = {ENV_SHARD: "--dt-shard", ENV_DURATIONS: "--dt-durations"}


def _name(config: pytest.Config, variable: str) -> str:
    """The option when the value came from it, else the variable, for messages."""
    option = _NAMES[variable]
    return option if config.getoption(option, None) is not None else variable


def pytest_configure(config: pytest.Config) -> None:
    """Read the shard and the durations file once, before collection: a bad one is a usage error."""
    from distributed_testing import _shard

    # Read directly: loading every setting would import torch in runs without distributed tests.
    shard_value, durations_value = os.environ.get(ENV_SHARD), os.environ.get(ENV_DURATIONS)
    shard = durations = None
    try:
        shard = parse_shard(shard_value, ENV_SHARD) if shard_value else None
        path = parse_durations(durations_value, ENV_DURATIONS) if durations_value else None
        if shard is not None and path is not None:
            durations = _shard.read_durations(path, _name(config, ENV_DURATIONS), _shard.PYTEST_EXAMPLE)
    except ConfigError as exc:
        from distributed_testing._pytest_plugin import from_option

        raise pytest.UsageError(from_option(exc)) from None
    config.stash[_SHARD] = shard
    config.stash[_DURATIONS] = durations
    if shard is not None and not hasattr(config, "workerinput"):
        config.pluginmanager.register(_Controller(), _CONTROLLER)


class _Controller:
    """The session's own process (xdist's controller, or a run without xdist)."""

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        """A worker's usage error (see pytest_collection_modifyitems) stops the run as a usage error."""
        message = getattr(report, "dt_usage_error", None)
        if message:
            raise pytest.UsageError(message)


def shard_of(config: pytest.Config) -> tuple[int, int] | None:
    """This session's shard (i, n), or None."""
    return config.stash.get(_SHARD, None)


@pytest.hookimpl(wrapper=True)
def pytest_collection_modifyitems(
    session: pytest.Session, config: pytest.Config, items: list[pytest.Item]
) -> Generator[None, None, None]:
    """Deselect the tests of other shards, after the other plugins' selection (-k, -m)."""
    shard = config.stash.get(_SHARD, None)
    if shard is None:
        return (yield)
    from distributed_testing import _shard

    every = [_shard.nodeid_key(item.nodeid) for item in items]
    result = yield
    keys = [_shard.nodeid_key(item.nodeid) for item in items]
    durations = config.stash.get(_DURATIONS, None)
    assert durations is None or isinstance(durations, _shard.Durations)
    try:
        chosen = _shard.select(keys, shard, durations, every, _name(config, ENV_DURATIONS), _shard.PYTEST_EXAMPLE)
    except ConfigError as exc:
        if not hasattr(config, "workerinput"):
            raise pytest.UsageError(str(exc)) from None
        # An xdist worker: raising here would crash it unexplained. It runs nothing and sends the
        # error as a failed collection, which its controller turns into the usage error (exit 4).
        report = pytest.CollectReport("", "failed", str(exc), [], dt_usage_error=str(exc))
        config.hook.pytest_collectreport(report=report)
        chosen = set()
    keep = [item for item, key in zip(items, keys, strict=True) if key in chosen]
    if len(keep) < len(items):
        config.hook.pytest_deselected(items=[item for item, key in zip(items, keys, strict=True) if key not in chosen])
        items[:] = keep
    return result


def pytest_report_header(config: pytest.Config) -> str | None:
    """Say which shard this is, and how it was chosen."""
    shard = config.stash.get(_SHARD, None)
    if shard is None:
        return None
    durations = config.stash.get(_DURATIONS, None)
    how = f"balanced by the durations in {getattr(durations, 'path', '')}" if durations else "by a stable hash"
    return f"distributed_testing: shard {shard[0]}/{shard[1]}, {how}"
