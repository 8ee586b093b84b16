"""Shards: split a run into ``n`` disjoint parts whose union is the whole run, one per machine.

A test is named by a key that is the same on every front end and machine:
``<file stem>.<Class>.<method>`` (``test_x.TestC.test_a``), the stem taken from
the file even when it runs as ``__main__``, so durations recorded by ``python
test_x.py`` shard ``pytest test_x.py`` and back. Without durations a test's
shard is a stable hash of its key (SHA-256, not ``hash()``, which differs per
process); with an earlier run's durations the tests are dealt out
longest-first to the least loaded shard (LPT), each costing its seconds times
its world size (the CPUs it holds), tests missing from the file the mean.
Either way the choice depends only on the selected keys and the file, so
every pytest-xdist worker and every machine computes the same shards.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import math
import os
import sys
import unittest
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from distributed_testing._errors import ConfigError

__all__ = [
    "Durations",
    "balanced_shards",
    "hash_shard",
    "id_key",
    "nodeid_key",
    "read_durations",
    "select",
    "select_unittest",
    "stale_keys",
    "unittest_key",
]

# Commands for error messages: record durations once, then run a shard with them.
RUN_TESTS_EXAMPLE = (
    "DISTRIBUTED_TESTING_REPORT=durations.json python {script}; "
    "DISTRIBUTED_TESTING_SHARD=1/3 DISTRIBUTED_TESTING_DURATIONS=durations.json python {script}"
)
CLI_EXAMPLE = (
    "{command} --report durations.json {script}; {command} --shard 1/3 --durations-file durations.json {script}"
)
PYTEST_EXAMPLE = "pytest --dt-report durations.json; pytest --dt-shard 1/3 --dt-durations durations.json"


# -- keys ---------------------------------------------------------------------------------


def _stem(path: str) -> str:
    base = os.path.basename(path)
    return base[:-3] if base.endswith(".py") else base


def unittest_key(test: unittest.TestCase) -> str:
    """``test_x.TestC.test_a`` for a unittest test case, whatever name its module was imported as."""
    module_name = type(test).__module__
    file = getattr(sys.modules.get(module_name), "__file__", None)
    stem = _stem(file) if file else module_name.rsplit(".", 1)[-1]
    test_id = test.id()
    rest = test_id[len(module_name) + 1 :] if test_id.startswith(module_name + ".") else test_id
    return f"{stem}.{rest}"


def nodeid_key(nodeid: str) -> str:
    """``test_x.TestC.test_a`` for pytest's ``dir/test_x.py::TestC::test_a``."""
    path, *names = nodeid.split("::")
    return ".".join([_stem(path), *names])


def id_key(test_id: str) -> str:
    """The key of a recorded test id: a pytest node id, or a key (or dotted unittest id) as it is."""
    return nodeid_key(test_id) if "::" in test_id else test_id


def _parent(key: str) -> str:
    """The file or class a key's test belongs to (``test_x.TestC``), parameters set aside."""
    return key.split("[", 1)[0].rsplit(".", 1)[0]


# -- durations ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Durations:
    """An earlier run's cost per test key: seconds times world size (1 for a test without ranks)."""

    path: str
    costs: dict[str, float]


def read_durations(path: str, name: str, example: str) -> Durations:
    """Read a JSON record written by ``DISTRIBUTED_TESTING_REPORT`` (``{"tests": [{"id", "seconds",
    "ranks"?}]}``) or a plain ``{key: seconds}`` mapping; raise ConfigError naming ``name``."""
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _durations_error(path, name, example, f"which cannot be read as JSON ({exc})") from None
    totals: dict[str, list[float]] = {}
    try:
        for key, cost in _entries(data):
            totals.setdefault(key, []).append(cost)
    except ValueError as exc:
        raise _durations_error(path, name, example, str(exc)) from None
    return Durations(os.path.abspath(path), {key: sum(costs) / len(costs) for key, costs in totals.items()})


def _entries(data: Any) -> Iterator[tuple[str, float]]:
    """(key, cost) per recorded test; a test recorded more than once (repeats) is averaged by the caller."""
    if isinstance(data, dict) and isinstance(data.get("tests"), list):
        for index, entry in enumerate(data["tests"]):
            test_id = (entry.get("key") or entry.get("id")) if isinstance(entry, dict) else None
            if not isinstance(test_id, str) or not test_id:
                raise ValueError(f"whose tests[{index}] has no \"id\"")
            ranks = entry.get("ranks")
            weight = len(ranks) if isinstance(ranks, list) and ranks else 1
            yield id_key(test_id), _seconds(entry.get("seconds"), f"tests[{index}] ({test_id})") * weight
    elif isinstance(data, dict) and "tests" not in data:
        for test_id, seconds in data.items():
            yield id_key(test_id), _seconds(seconds, repr(test_id))
    else:
        raise ValueError("which is neither a record ({\"tests\": [...]}) nor a {test: seconds} mapping")


def _seconds(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < float("inf"):
        raise ValueError(f"whose {where} has no duration in seconds (a number >= 0), got {value!r}")
    return float(value)


def _durations_error(path: str, name: str, example: str, problem: str) -> ConfigError:
    return ConfigError(
        f"{name} must be an earlier run's durations: a JSON record written by DISTRIBUTED_TESTING_REPORT "
        f"(--dt-report under pytest) or a {{\"test_x.TestC.test_a\": seconds}} mapping, got {name}={path!r}, "
        f"{problem}. Example: {example}",
        name,
        path,
    )


def stale_keys(durations: Durations, every_key: Iterable[str]) -> list[str]:
    """The file's tests that no longer exist: of a file or class in this run, but not in it.

    Tests of files (or classes) that are not in this run are not stale: durations
    recorded by a full run serve a run of one file.
    """
    known = set(every_key)
    parents = {_parent(key) for key in known}
    return sorted(key for key in durations.costs if key not in known and _parent(key) in parents)


def _stale_error(durations: Durations, stale: list[str], name: str, example: str) -> ConfigError:
    shown = ", ".join(stale[:5]) + (f", ... ({len(stale)} in all)" if len(stale) > 5 else "")
    return ConfigError(
        f"{name} names tests that no longer exist in this run's files: {shown}; got {name}={durations.path!r}. "
        f"Record the durations again (or remove those entries), then shard with them. Example: {example}",
        name,
        durations.path,
    )


# -- partitions ---------------------------------------------------------------------------


def hash_shard(key: str, count: int) -> int:
    """The 0-based shard of ``key`` among ``count``: the same in every process and on every machine."""
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % count


def balanced_shards(costs: Mapping[str, float], count: int) -> dict[str, int]:
    """The 0-based shard of each key: longest first, to the least loaded shard (ties: lowest index)."""
    heap = [(0.0, index) for index in range(count)]
    chosen: dict[str, int] = {}
    for key in sorted(costs, key=lambda k: (-costs[k], k)):
        load, index = heapq.heappop(heap)
        chosen[key] = index
        heapq.heappush(heap, (load + costs[key], index))
    return chosen


def select(
    keys: Sequence[str],
    shard: tuple[int, int],
    durations: Durations | None = None,
    every_key: Iterable[str] | None = None,
    name: str = "DISTRIBUTED_TESTING_DURATIONS",
    example: str = PYTEST_EXAMPLE,
) -> set[str]:
    """The keys of ``keys`` (the selected tests) in shard ``(i, n)``, i from 1.

    With ``durations``, ``every_key`` (every test of the run's files, before any
    selection) is checked against it first: ConfigError names stale entries.
    """
    index, count = shard
    if durations is None:
        return {key for key in keys if hash_shard(key, count) == index - 1}
    stale = stale_keys(durations, every_key if every_key is not None else keys)
    if stale:
        raise _stale_error(durations, stale, name, example)
    unique = set(keys)
    known = [durations.costs[key] for key in sorted(unique) if key in durations.costs]
    recorded = known or [durations.costs[key] for key in sorted(durations.costs)]
    mean = math.fsum(recorded) / len(recorded) if recorded else 1.0  # the same on every worker and machine
    costs = {key: durations.costs.get(key, mean) for key in unique}
    return {key for key, where in balanced_shards(costs, count).items() if where == index - 1}


# -- run_tests ----------------------------------------------------------------------------


def iter_tests(suite: Any) -> Iterator[unittest.TestCase]:
    """Every test case in ``suite``, nested suites flattened, in order."""
    if isinstance(suite, unittest.TestSuite):
        for item in suite:
            yield from iter_tests(item)
    else:
        yield suite


def _prune(suite: unittest.TestSuite, keep: set[str]) -> None:
    """Keep in ``suite`` (in place, its nesting and order intact) only the tests whose key is in ``keep``."""
    kept: list[Any] = []
    for item in suite:
        if isinstance(item, unittest.TestSuite):
            _prune(item, keep)
            kept.append(item)
        elif unittest_key(item) in keep:
            kept.append(item)
    suite._tests = kept  # type: ignore[attr-defined]


def select_unittest(suite: unittest.TestSuite, tests: list[unittest.TestCase], module: Any) -> tuple[
    list[unittest.TestCase], str
]:
    """This shard's part of run_tests()'s selected ``tests`` (``suite`` is pruned to it), and why
    it is empty if it is ('' otherwise). Raises ConfigError for a durations file that does not fit."""
    from distributed_testing import _config, _run

    settings = _config.load()
    if settings.shard is None or not tests:
        return tests, ""
    name, example = "DISTRIBUTED_TESTING_DURATIONS", RUN_TESTS_EXAMPLE.format(script=_config.script_name())
    if _run.entry_command:  # python -m distributed_testing: its options
        name, example = "--durations-file", CLI_EXAMPLE.format(command=_run.entry_command, script=_config.script_name())
    durations = every = None
    if settings.durations is not None:
        durations = read_durations(settings.durations, name, example)
        every = [unittest_key(t) for t in iter_tests(unittest.defaultTestLoader.loadTestsFromModule(module))]
    keys = [unittest_key(test) for test in tests]
    chosen = select(keys, settings.shard, durations, every, name, example)
    _prune(suite, chosen)
    kept = [test for test, key in zip(tests, keys, strict=True) if key in chosen]
    index, count = settings.shard
    reason = "" if kept else f"shard {index}/{count} holds none of the {len(set(keys))} selected tests"
    return kept, reason
