"""Simulated nodes: spread a test's ranks over K nodes on this machine, as torchrun would.

With ``DISTRIBUTED_TESTING_NODES=K`` (``--dt-nodes K``, ``--nodes K``) each rank
gets the variables torchrun's agent gives a worker on K nodes (``RANK``,
``LOCAL_RANK``, ``GROUP_RANK``, ``LOCAL_WORLD_SIZE``, ...), so code that takes
``LOCAL_RANK`` for its global rank fails on one machine instead of on a cluster.
K=1 (the default) adds nothing: ranks see what PyTorch's framework gives them.

Nodes are consecutive blocks of ranks. A world size that K does not divide
gives uneven blocks, the first nodes one rank more (Slurm's block distribution,
and torchrun with a different ``--nproc-per-node`` per node), rather than a skip:
a suite of mixed world sizes still runs every test. Fewer ranks than K leave
the extra nodes out (``GROUP_WORLD_SIZE`` counts nodes that have ranks). With a
GPU per rank, each node sees only its ranks' GPUs (``CUDA_VISIBLE_DEVICES``), as
a real node sees its own: ``cuda:LOCAL_RANK`` is then right, not two ranks on one GPU.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

__all__ = [
    "gpu_env",
    "launched_env",
    "node_env",
    "node_of",
    "node_sizes",
    "rank_env",
    "visible_gpus",
]

def node_sizes(world_size: int, nodes: int) -> list[int]:
    """Ranks per node: ``world_size`` in ``nodes`` blocks, the first ones a rank larger when
    uneven; nodes left without a rank are left out."""
    if world_size < 1 or nodes < 1:
        raise ValueError(f"need world_size >= 1 and nodes >= 1, got {world_size} and {nodes}")
    base, extra = divmod(world_size, nodes)
    return [base + 1 if node < extra else base for node in range(nodes) if base or node < extra]


def node_of(rank: int, world_size: int, nodes: int) -> tuple[int, int, int]:
    """``(node, local rank, ranks on that node)`` of ``rank``."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not a rank of world size {world_size}")
    first = 0
    for node, size in enumerate(node_sizes(world_size, nodes)):
        if rank < first + size:
            return node, rank - first, size
        first += size
    raise AssertionError("unreachable: the node sizes add up to the world size")


def launched_env(
    rank: int, world_size: int, local_rank: int, local_world_size: int | None, node: int | None, nodes: int | None
) -> dict[str, str]:
    """The variables torchrun gives a worker (None: not known, left out)."""
    env = {
        "RANK": str(rank),
        "WORLD_SIZE": str(world_size),
        "LOCAL_RANK": str(local_rank),
        "ROLE_RANK": str(rank),
        "ROLE_WORLD_SIZE": str(world_size),
        "ROLE_NAME": "default",
    }
    for name, value in (("LOCAL_WORLD_SIZE", local_world_size), ("GROUP_RANK", node), ("GROUP_WORLD_SIZE", nodes)):
        if value is not None:
            env[name] = str(value)
    return env


def node_env(rank: int, world_size: int, nodes: int) -> dict[str, str]:
    """What ``rank`` of ``world_size`` sees on ``nodes`` simulated nodes; nothing when ``nodes`` is 1."""
    if nodes <= 1:
        return {}
    node, local_rank, local_size = node_of(rank, world_size, nodes)
    return launched_env(rank, world_size, local_rank, local_size, node, len(node_sizes(world_size, nodes)))


def gpu_env(rank: int, world_size: int, nodes: int, visible: Sequence[str]) -> dict[str, str]:
    """``CUDA_VISIBLE_DEVICES`` of ``rank``'s node: its own block of the ``visible`` GPUs, one per
    rank, as a real node has its own (so ``cuda:LOCAL_RANK`` is a different GPU on each node).
    Nothing when there are fewer GPUs than ranks: then ranks share them, as without nodes."""
    if nodes <= 1 or len(visible) < world_size:
        return {}
    _, local_rank, size = node_of(rank, world_size, nodes)
    first = rank - local_rank
    return {"CUDA_VISIBLE_DEVICES": ",".join(visible[first : first + size])}


def visible_gpus() -> list[str]:
    """The CUDA devices this process sees, as ``CUDA_VISIBLE_DEVICES`` names them (counted
    without initialising CUDA)."""
    from distributed_testing import _devices

    count = _devices.cuda_device_count()
    given = os.environ.get("CUDA_VISIBLE_DEVICES")
    names = [name.strip() for name in given.split(",")] if given is not None else [str(i) for i in range(count)]
    return names[:count]


def rank_env(common: Mapping[str, str], rank: int, world_size: int, nodes: int) -> dict[str, str]:
    """One rank's environment: ``common`` (every rank's), and its node's variables and GPUs
    when simulated."""
    if nodes <= 1:
        return dict(common)
    leased = common.get("CUDA_VISIBLE_DEVICES")  # a device lease's GPUs: the node blocks are cut from them
    visible = [name.strip() for name in leased.split(",") if name.strip()] if leased else visible_gpus()
    return {**common, **node_env(rank, world_size, nodes), **gpu_env(rank, world_size, nodes, visible)}
