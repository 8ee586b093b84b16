"""The arithmetic of the rank budget and device leases: pure functions, no processes or files.

Under pytest-xdist several tests run at once, each in its own worker. A test
weighs its world size against the rank budget (``--dt-max-ranks``, default
the CPU count), and a test that uses GPUs gets a disjoint set of devices. What
is visible is an outer ``CUDA_VISIBLE_DEVICES`` (or every physical device),
and a test's ranks see their share of it as their own ``CUDA_VISIBLE_DEVICES``.
:mod:`distributed_testing._lease_file` keeps the holdings across processes;
this module only decides.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass

from distributed_testing._errors import ConfigError

__all__ = [
    "CVD",
    "GPUS_ATTR",
    "Grant",
    "Holding",
    "Limits",
    "allocate",
    "decide",
    "default_budget",
    "device_need",
    "visible_devices",
    "weight",
]

CVD = "CUDA_VISIBLE_DEVICES"
GPUS_ATTR = "_dt_gpus"  # on a test method or class: the GPUs it uses (skip_if_lt_x_gpu(n) sets n)
_UUID_PREFIXES = ("GPU-", "MIG-")


@dataclass(frozen=True)
class Limits:
    """What the tests of one run share: the rank budget and the devices they may lease."""

    budget: int  # most ranks alive at once
    budget_given: bool  # --dt-max-ranks was set (else the CPU count, which GPU tests do not count against)
    devices: tuple[str, ...]  # the visible devices, as CUDA_VISIBLE_DEVICES entries


@dataclass(frozen=True)
class Holding:
    """One granted lease: whose it is (a process), its ranks, its devices."""

    ticket: str
    pid: int
    weight: int
    devices: tuple[str, ...] = ()


@dataclass(frozen=True)
class Grant:
    """A granted request: its devices; ``alone`` if it is wider than the budget;
    ``over`` if only the asking process's own leases were in the way (waiting would never end)."""

    devices: tuple[str, ...]
    alone: bool = False
    over: bool = False


def default_budget() -> int:
    """The CPU count this process may use (its affinity where the platform says)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def weight(world_size: int, need: int, budget_given: bool) -> int:
    """Ranks a test counts against the budget: its world size; a GPU test's only when the budget
    was given (by default GPU tests are bounded by their device leases)."""
    return world_size if need == 0 or budget_given else 0


def device_need(world_size: int, gpu_backend: bool, marked: int, count: int) -> int:
    """Devices a test needs: a device per rank with a GPU backend, at least ``marked``
    (``skip_if_lt_x_gpu(n)``), at most the ``count`` visible ones."""
    need = max(world_size if gpu_backend else 0, marked)
    return min(need, count)


def allocate(free: Sequence[str], need: int) -> tuple[str, ...] | None:
    """The first ``need`` of the ``free`` devices (in visible order), or None when too few are free."""
    if need <= 0:
        return ()
    if len(free) < need:
        return None
    return tuple(free[:need])


def decide(
    limits: Limits,
    holdings: Sequence[Holding],
    queue: Sequence[str],
    ticket: str,
    pid: int,
    want: int,
    need: int,
) -> Grant | None:
    """Whether request ``ticket`` of process ``pid`` (``want`` ranks, ``need`` devices) is granted now.

    First come, first served: only the head of ``queue`` (the waiting tickets in
    arrival order) is granted, when its ranks fit the budget (a wider request: when
    nothing else is held, so it runs alone) and enough devices are free. A process
    is never made to wait on its own leases: when nothing but its own holdings is in
    the way it is granted at once (``over``), reusing its own devices if it must.
    """
    used = sum(h.weight for h in holdings)
    busy = {d for h in holdings for d in h.devices}
    free = [d for d in limits.devices if d not in busy]
    alone = want > limits.budget
    if holdings and all(h.pid == pid for h in holdings):  # only its own leases are in the way
        fits = used + want <= limits.budget and len(free) >= need
        reused = [d for d in limits.devices if d in busy]
        return Grant(allocate(free + reused, need) or (), alone=alone, over=not fits)
    if not queue or queue[0] != ticket:
        return None
    fits = used == 0 if alone else used + want <= limits.budget
    chosen = allocate(free, need)
    if not fits or chosen is None:
        return None
    return Grant(chosen, alone=alone)


def visible_devices(value: str | None, physical: Sequence[str] | None, example: str) -> tuple[str, ...]:
    """The devices tests may lease: the entries of an outer ``CUDA_VISIBLE_DEVICES`` (``value``),
    or every physical device when it is unset.

    ``physical``: one UUID per physical device ("" where unknown), None where the
    devices cannot be counted (then an outer value is taken as it is). Empty or
    ``-1`` means none; entries after ``-1`` are ignored, as CUDA does. An index
    that is not a device, an unknown or ambiguous UUID, an empty or repeated entry
    raises ConfigError naming the variable, the value, what is allowed and ``example``.
    """
    if value is None:
        return tuple(str(i) for i in range(len(physical or ())))
    entries = [e.strip() for e in value.split(",")] if value.strip() else []
    if "-1" in entries:
        entries = entries[: entries.index("-1")]
    seen: dict[str, str] = {}
    for entry in entries:
        problem = _entry_problem(entry, physical)
        key = _resolve(entry, physical) if problem is None else entry
        if problem is None and key in seen:
            problem = f"device {entry!r} twice (as {seen[key]!r} before)"
        if problem is not None:
            raise ConfigError(_cvd_message(value, problem, physical, example), CVD, value)
        seen[key] = entry
    return tuple(entries)


def _entry_problem(entry: str, physical: Sequence[str] | None) -> str | None:
    """Why ``entry`` names no device here, or None."""
    if not entry:
        return "an empty entry"
    if physical is None:
        return None
    count = len(physical)
    if re.fullmatch(r"[0-9]+", entry):
        return None if int(entry) < count else f"device {entry}, which does not exist"
    if not entry.startswith(_UUID_PREFIXES):
        return f"{entry!r}, which is neither a device index nor a GPU-/MIG- UUID"
    if count == 0:
        return f"device {entry!r}, which does not exist"
    if entry.startswith("MIG-") or not all(physical):
        return None  # MIG instances (and devices whose UUID NVML did not say) are not listed here
    matches = [u for u in physical if u.startswith(entry)]
    if len(matches) != 1:
        return f"device {entry!r}, which {'matches no' if not matches else 'matches more than one'} GPU's UUID"
    return None


def _resolve(entry: str, physical: Sequence[str] | None) -> str:
    """The physical device an entry names, to find repeats (an index and its UUID are one device)."""
    if physical and re.fullmatch(r"[0-9]+", entry) and physical[int(entry)]:
        return physical[int(entry)]
    matches = [u for u in physical or () if u and u.startswith(entry)]
    return matches[0] if len(matches) == 1 else entry


def _cvd_message(value: str, problem: str, physical: Sequence[str] | None, example: str) -> str:
    count = len(physical or ())
    have = f"this machine has {count} CUDA device{'s' * (count != 1)}"
    if count:
        allowed = f"indices 0 to {count - 1} or GPU-/MIG- UUIDs, comma-separated, each once; empty or -1 for none"
        fix = f"{CVD}={','.join(str(i) for i in range(min(count, 2)))} {example}"
    else:
        allowed = "empty or -1 (no device), or leave it unset"
        fix = f"{CVD}= {example}"
    return f"{CVD}={value!r} names {problem}: {have}. Allowed: {allowed}. Example: {fix}"
