"""Where a rank is, for the parent's hang report: its stacks on a signal, and a helper thread
that answers "where are you" with its default group's collective number and flight record.

Runs in every rank process (registered by ``_rank.prepare_process``); never imports torch
on its own: a test that did not use it has no group to describe.
"""

from __future__ import annotations

import _thread
import faulthandler
import json
import os
import sys
import threading
from typing import Any

from distributed_testing import _stacks

__all__ = ["default_group_sequence", "register_stack_dump", "where_now"]


def register_stack_dump(path: str, signum: int) -> None:
    """On ``signum``, write every thread's stack to ``path``; works inside C++ calls.

    And answer the parent's "where are you" (a byte in the FIFO ``_stacks.ask_path``)
    with the where record (``where_now``) and the stacks (``_stacks.write_answer``): a
    thread blocked in ``read`` costs nothing until asked, and runs while the main thread
    waits in a collective (c10d releases the GIL there), where no Python signal handler
    would run. A bare thread: starting it does not wait for it to run, and
    ``threading.enumerate()`` does not list it.
    """
    stacks = open(path, "w")  # kept open for the life of the rank
    faulthandler.register(signum, file=stacks, all_threads=True, chain=False)
    ask = _stacks.ask_path(path)
    try:
        try:
            os.mkfifo(ask, 0o600)
        except FileExistsError:  # a path used before (each test's ranks normally get new ones)
            for stale in (ask, _stacks.where_path(path)):
                if os.path.lexists(stale):
                    os.unlink(stale)
            os.mkfifo(ask, 0o600)
        fd = os.open(ask, os.O_RDWR)  # read and write: a read never sees end-of-file
    except OSError:
        return  # no helper: the parent, unable to ask (ask_where), sends the stack signal at once
    _thread.start_new_thread(_answer_where_requests, (fd, path))


def _answer_where_requests(fd: int, stacks_path: str) -> None:
    """The helper thread: for each byte the parent writes, write the where record and stacks."""
    while True:
        try:
            if not os.read(fd, 64):
                return
            _stacks.write_answer(stacks_path, where_now())
        except Exception:  # never let the thread print into the rank's output
            return


def where_now() -> dict[str, Any]:
    """Where this rank's default process group is: its sequence number (the collectives
    it ran, the running one included) and what c10d's flight recorder saw of it; {}
    without a group. Never imports torch: a test that did not use it has no group."""
    dist = sys.modules.get("torch.distributed")
    try:
        if dist is None or not dist.is_available() or not dist.is_initialized():
            return {}
        group = dist.distributed_c10d._get_default_group()
        backend = str(dist.get_backend(group))
    except Exception:  # the main thread is making or destroying the group
        return {}
    record: dict[str, Any] = {"sequence": default_group_sequence(), "backend": backend}
    subgroup = _running_subgroup(dist, group)
    if subgroup:
        record["group"] = subgroup
    try:
        from torch._C import _distributed_c10d as c10d

        dump = getattr(c10d, "_dump_nccl_trace_json", None) if backend == "nccl" else None
        dump = dump or getattr(c10d, "_dump_fr_trace_json", None)
        if dump is not None:  # collectives, only the active ones (not retired)
            found = json.loads(dump(True, True))
            record["flight"] = _stacks.flight_record(found, str(group.group_name), backend == "nccl")
    except Exception:  # no recorder for this backend, or one this torch dumps differently
        pass
    return record


def default_group_sequence() -> int:
    """How many collectives the default group has run (-1: no group, or a backend that
    does not count): ranks in step agree on it."""
    import torch.distributed as dist

    try:
        return int(dist.distributed_c10d._get_default_group()._get_sequence_number_for_group())  # type: ignore[attr-defined]
    except Exception:
        return -1


_C10D_FILE = os.path.join("torch", "distributed", "distributed_c10d.py")


def _running_subgroup(dist: Any, default: Any) -> dict[str, Any]:
    """The group of the collective the main thread is in, when it is not the default group:
    its ranks and its own sequence number (the c10d function's ``group`` argument)."""
    try:
        frame = sys._current_frames().get(threading.main_thread().ident or -1)
        while frame is not None and not frame.f_code.co_filename.endswith(_C10D_FILE):
            frame = frame.f_back
        group = frame.f_locals.get("group") if frame is not None else None
        if group is None or group is default or group is dist.GroupMember.WORLD:
            return {}
        return {
            "ranks": list(dist.get_process_group_ranks(group)),
            "sequence": int(group._get_sequence_number_for_group()),
        }
    except Exception:  # a group being destroyed, or one this torch describes differently
        return {}

