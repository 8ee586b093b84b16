"""Leases across pytest-xdist workers: ranks and devices held by each running test.

The controller makes a lease directory (``create``) and each worker joins it
(``activate``). It holds the run's limits, the state (leases held and tickets
waiting, each with its process's pid and start time, so a killed worker's
leases are reclaimed), a lock file (every change is made under ``flock``) and
a FIFO per waiting request: a release writes a byte into each, so a waiter
sleeps in ``select`` until something changed (and re-checks every
``POLL_S`` for holders that died). The decisions are :func:`_leases.decide`'s.

Without a lease directory (no xdist, ``-n 1``, ``python file.py``) nothing here
does anything. Waiting happens before a test's ranks start, so it does not
count toward the test's deadline.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import itertools
import json
import logging
import os
import select
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

from distributed_testing import _config, _devices, _janitor, _leases
from distributed_testing._leases import CVD, GPUS_ATTR, Holding, Limits

__all__ = [
    "Lease",
    "acquire",
    "activate",
    "create",
    "deactivate",
    "hold_for_pool",
    "hold_for_test",
    "release",
    "remove",
    "take_notes",
]

logger = logging.getLogger(__name__)

LIMITS, STATE, LOCK, WAKE = "limits.json", "state.json", "lock", "wake-"
POLL_S = 1.0  # a waiter re-checks this often unwoken: a killed holder's leases are reclaimed
BUDGET_OPTION = "--dt-max-ranks / DISTRIBUTED_TESTING_MAX_RANKS"

_dir: str | None = None
_limits: Limits | None = None
_tickets = itertools.count()
_held: dict[str, Lease] = {}  # this process's leases, by ticket
_notes: list[str] = []  # what the pytest plugin reports with the test (a test that ran alone)


@dataclass
class Lease:
    """A granted lease: its ranks (``weight``) and devices, until ``release``."""

    ticket: str
    weight: int
    devices: tuple[str, ...]
    label: str
    released: bool = False


def create(limits: Limits, root: str | None = None) -> str:
    """Make a run's lease directory in ``root`` (default: the temp dir); ``remove`` removes it."""
    directory = tempfile.mkdtemp(prefix="dt-lease-", dir=root)
    _janitor.register(directory)
    with open(os.path.join(directory, LIMITS), "w", encoding="utf-8") as handle:
        json.dump(asdict(limits), handle)
    _write(directory, {"holdings": [], "queue": []})
    return directory


def remove(directory: str) -> None:
    """Remove a lease directory made by ``create``."""
    shutil.rmtree(directory, ignore_errors=True)
    _janitor.unregister(directory)


def activate(directory: str) -> None:
    """Take leases from ``directory`` for the tests this process runs (a worker's)."""
    global _dir, _limits
    with open(os.path.join(directory, LIMITS), encoding="utf-8") as handle:
        raw = json.load(handle)
    _limits = Limits(int(raw["budget"]), bool(raw["budget_given"]), tuple(raw["devices"]))
    _dir = directory


def deactivate() -> None:
    """Stop taking leases: tests start their ranks at once again."""
    global _dir, _limits
    _dir, _limits = None, None


def take_notes() -> list[str]:
    """The notes made since the last call (a test wider than the budget ran alone)."""
    notes = list(_notes)
    _notes.clear()
    return notes


def hold_for_test(run: Any, case: Any, settings: _config.Settings) -> None:
    """Before a one-shot test's ranks start: wait for its lease (``run.lease``); its ranks see
    their devices in ``run.rank_env``. Nothing without a lease directory."""
    release(run.lease)
    run.lease = None
    if _limits is None:
        return
    size = run.world_size
    backend = settings.backend if settings.backend_from_env else _devices.default_backend(size)
    marked = max(_marked(type(case)), int(getattr(getattr(type(case), case._testMethodName, None), GPUS_ATTR, 0)))
    need = _leases.device_need(size, backend in _devices.GPU_BACKENDS, marked, len(_limits.devices))
    run.lease = acquire(run.test_id, _leases.weight(size, need, _limits.budget_given), need)
    run.rank_env.update(_device_env(run.lease))


def hold_for_pool(cls: type, size: int, env: dict[str, str], make_room: Callable[[], None]) -> Lease | None:
    """Before a warm pool's ranks start: wait for its lease, held until the pool closes; its ranks
    see their devices in ``env``. ``make_room`` closes this process's other (idle) pools."""
    if _limits is None:
        return None
    backend_str = getattr(cls, "backend_str", None)
    backend = (backend_str() if callable(backend_str) else None) or _config.load().backend
    need = _leases.device_need(size, backend in _devices.GPU_BACKENDS, _marked(cls), len(_limits.devices))
    label = f"{cls.__qualname__} (its pool of {size} ranks)"
    lease = acquire(label, _leases.weight(size, need, _limits.budget_given), need, make_room)
    env.update(_device_env(lease))
    return lease


def _marked(cls: type) -> int:
    return max((int(k.__dict__.get(GPUS_ATTR, 0)) for k in cls.__mro__), default=0)


def _device_env(lease: Lease | None) -> dict[str, str]:
    return {CVD: ",".join(lease.devices)} if lease is not None and lease.devices else {}


def acquire(label: str, want: int, need: int, make_room: Callable[[], None] | None = None) -> Lease | None:
    """Wait until ``want`` ranks and ``need`` devices are granted; None without a lease directory.

    ``make_room`` is called once if the request must wait while this process holds
    leases of its own (it may release them).
    """
    if _dir is None or _limits is None:
        return None
    directory, limits = _dir, _limits
    ticket = f"{os.getpid()}-{next(_tickets)}"
    fifo = os.path.join(directory, WAKE + ticket)
    making = os.path.join(directory, f".{ticket}")  # not yet a WAKE name: _wake_all would drop it unread
    try:
        os.mkfifo(making, 0o600)
    except FileNotFoundError:  # the controller removed the directory: the run is ending, lease nothing
        return None
    fd = os.open(making, os.O_RDWR | os.O_NONBLOCK)  # a writer of its own: no end-of-file wake-ups
    os.rename(making, fifo)  # opened first: from now on a waker finds a reader
    began, logged = time.monotonic(), False
    try:
        while True:
            grant = _try(directory, limits, ticket, label, want, need)
            if grant is not None:
                break
            if make_room is not None and _held:
                make_room()
                make_room = None
                continue
            if not logged:
                logger.debug("%s waits for %d ranks and %d devices", label, want, need)
                logged = True
            select.select([fd], [], [], POLL_S)
            with contextlib.suppress(BlockingIOError):
                os.read(fd, 4096)
    except BaseException:
        with contextlib.suppress(OSError):
            with _locked(directory) as state:
                state["queue"] = [q for q in state["queue"] if q["ticket"] != ticket]
        _wake_all(directory)  # the queue's head may have changed
        raise
    finally:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(fifo)
    _wake_all(directory)  # the next in the queue may fit too
    waited = time.monotonic() - began
    logger.debug("%s holds %d ranks, devices %s (waited %.2f s)", label, want, list(grant.devices), waited)
    if grant.alone:
        _notes.append(
            f"{label} has {want} ranks, more than the rank budget of {limits.budget} ({BUDGET_OPTION}): "
            f"it ran alone, once the tests running before it were done (waited {waited:.1f} s)"
        )
    elif grant.over:
        _notes.append(
            f"{label} went over the rank budget of {limits.budget} ({BUDGET_OPTION}): "
            "only its own worker's warm pools held ranks, and it cannot wait for itself"
        )
    lease = Lease(ticket, want, grant.devices, label)
    _held[ticket] = lease
    return lease


def release(lease: Lease | None) -> None:
    """Give a lease back (its ranks are stopped) and wake the waiters; a no-op when done before."""
    if lease is None or lease.released:
        return
    lease.released = True
    _held.pop(lease.ticket, None)
    directory = _dir
    if directory is None or not os.path.isdir(directory):
        return
    try:
        with _locked(directory) as state:
            state["holdings"] = [h for h in state["holdings"] if h["ticket"] != lease.ticket]
    except OSError:  # the controller removed the directory (the run is ending): nothing to give back
        return
    _wake_all(directory)
    logger.debug("%s released %d ranks, devices %s", lease.label, lease.weight, list(lease.devices))


def _try(directory: str, limits: Limits, ticket: str, label: str, want: int, need: int) -> _leases.Grant | None:
    """One look under the lock: queue the ticket, drop the dead's entries, take the grant if any."""
    with _locked(directory) as state:
        pid, me = os.getpid(), _start_time(os.getpid())
        state["holdings"] = [h for h in state["holdings"] if _alive(h["pid"], h["start"])]
        state["queue"] = [q for q in state["queue"] if _alive(q["pid"], q["start"])]
        if not any(q["ticket"] == ticket for q in state["queue"]):
            state["queue"].append({"ticket": ticket, "pid": pid, "start": me})
        holdings = [Holding(h["ticket"], h["pid"], h["weight"], tuple(h["devices"])) for h in state["holdings"]]
        queue = [q["ticket"] for q in state["queue"]]
        grant = _leases.decide(limits, holdings, queue, ticket, pid, want, need)
        if grant is not None:
            state["queue"] = [q for q in state["queue"] if q["ticket"] != ticket]
            state["holdings"].append(
                {"ticket": ticket, "pid": pid, "start": me, "weight": want, "devices": list(grant.devices),
                 "label": label}
            )
        return grant


@contextlib.contextmanager
def _locked(directory: str) -> Iterator[dict[str, Any]]:
    """The state, read and (if the block finishes) written back under the directory's lock."""
    fd = os.open(os.path.join(directory, LOCK), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        with open(os.path.join(directory, STATE), encoding="utf-8") as handle:
            state: dict[str, Any] = json.load(handle)
        yield state
        _write(directory, state)
    finally:
        os.close(fd)  # and with it the lock


def _write(directory: str, state: dict[str, Any]) -> None:
    """Replace the state file whole, so a process killed while writing leaves the old one."""
    path = os.path.join(directory, STATE)
    with open(f"{path}.{os.getpid()}", "w", encoding="utf-8") as handle:
        json.dump(state, handle)
    os.replace(f"{path}.{os.getpid()}", path)


def _wake_all(directory: str) -> None:
    """Write a byte into every waiter's FIFO; remove those nobody reads (their waiter died)."""
    try:
        names = [n for n in os.listdir(directory) if n.startswith(WAKE)]
    except OSError:
        return
    for name in names:
        path = os.path.join(directory, name)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # no reader
                with contextlib.suppress(OSError):
                    os.unlink(path)
            continue
        with contextlib.suppress(OSError):  # full: it has been woken already
            os.write(fd, b"!")
        os.close(fd)


def _start_time(pid: int) -> str | None:
    """When process ``pid`` started (to tell it from a later one with its pid); None if it is gone
    or a zombie; "" where the platform does not say but it exists."""
    if not os.path.exists("/proc/self/stat"):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        return ""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as handle:
            text = handle.read()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    return None if fields[0] in ("Z", "X") else fields[19]


def _alive(pid: int, start: str | None) -> bool:
    now = _start_time(pid)
    return now is not None and (now == start or not start)
