"""The rank side of the warm pool: join the process group once, then run tests on request.

Between tests a worker puts back what a test may have changed: the random
seeds, environment variables, the default dtype and device, and process groups
the test created. A test that broke the default group marks the rank unfit,
and the parent rebuilds the pool.
"""

from __future__ import annotations

import dataclasses
import gc
import os
import sys
import unittest
from typing import Any

import torch

from distributed_testing import _rank, _rank_where
from distributed_testing._protocol import FAILED, SKIPPED, PoolReady, RankContext, RankResult
from distributed_testing._skips import reason_for_exit_code

__unittest = True

__all__ = ["pool_main"]

STOP = None  # the parent's message that ends the loop


def pool_main(cls: Any, rank: int, world_size: int, file_name: str, conn: Any, ctx: RankContext) -> None:
    """Entry point of a pool rank: init the group, serve test names until told to stop."""
    _rank.prepare_process(ctx, rank)
    cls.rank = rank
    cls.world_size = world_size
    ready = _init(cls, rank, world_size, file_name)
    gc.freeze()  # the process group and torch live as long as the pool: never scan them
    conn.send(ready)
    baseline = _Baseline()
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            break
        if message is STOP:
            break
        test_name, _rank.current_example = message
        result = _run_one(cls, rank, world_size, test_name, ready)
        healthy = baseline.restore()
        conn.send(_with_health(result, healthy, _rank_where.default_group_sequence()))
        _rank.flush()
    _leave()


def _init(cls: Any, rank: int, world_size: int, file_name: str) -> PoolReady:
    pid = os.getpid()
    try:
        cls._init_pg(rank, world_size, file_name)
    except unittest.SkipTest as exc:
        return PoolReady(rank, pid, skip_reason=str(exc))
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
        reason = reason_for_exit_code(code)
        if reason is not None:
            return PoolReady(rank, pid, skip_reason=reason)
        return PoolReady(rank, pid, error=_rank.format_error(exc, "initialising the process group", None))
    except BaseException as exc:
        return PoolReady(rank, pid, error=_rank.format_error(exc, "initialising the process group", None))
    return PoolReady(rank, pid)


def _run_one(cls: Any, rank: int, world_size: int, test_name: str, ready: PoolReady) -> RankResult:
    if ready.skip_reason is not None:
        return RankResult(rank, os.getpid(), SKIPPED, reason=ready.skip_reason)
    try:
        case = cls(test_name)
        case.rank = rank
        _set_world_size(case, world_size)
    except BaseException as exc:
        info = _rank.format_error(exc, "building the test case", None)
        return RankResult(rank, os.getpid(), FAILED, (info,), exit_code=_rank.TEST_ERROR_EXIT_CODE)
    return _rank.run_in_rank(case, rank, _noop, _noop)


def _set_world_size(case: Any, world_size: int) -> None:
    try:
        case.world_size = world_size
    except AttributeError:  # a read-only property: the class computes it
        pass


def _noop() -> None:
    pass


def _with_health(result: RankResult, healthy: bool, sequence: int) -> RankResult:
    return dataclasses.replace(result, healthy=healthy, sequence=sequence)


class _Baseline:
    """What a test may change in a rank, taken after the group was initialised."""

    def __init__(self) -> None:
        import torch.distributed as dist

        self.environ = dict(os.environ)
        self.dtype = torch.get_default_dtype()
        self.group = dist.distributed_c10d._get_default_group() if dist.is_initialized() else None

    def restore(self) -> bool:
        """Put the rank back; return whether it is still fit for the next test."""
        import torch.distributed as dist

        if os.environ != self.environ:
            os.environ.clear()
            os.environ.update(self.environ)
        torch.set_default_dtype(self.dtype)
        torch.set_default_device(None)
        if self.group is None:
            return True
        if not dist.is_initialized() or dist.distributed_c10d._get_default_group() is not self.group:
            return False
        return _destroy_extra_groups(self.group)


def _destroy_extra_groups(default: Any) -> bool:
    """Destroy the process groups a test made; False if that fails."""
    import torch.distributed as dist

    world = dist.distributed_c10d._world
    extra = [group for group in list(world.pg_map) if group is not default]
    try:
        for group in extra:
            dist.destroy_process_group(group)
    except Exception:
        return False
    return True


def _leave() -> None:
    _rank.destroy_default_group()
    _rank.flush()
    sys.stdout.flush()
    os._exit(0)
