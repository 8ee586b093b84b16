"""Slurm without torchrun: a task of an ``srun`` job step is one rank of a launched run.

``srun --ntasks=N python test_x.py`` starts N processes that know their place only
from Slurm's variables. :func:`launch_env` turns them into what torchrun would
have set (``RANK=SLURM_PROCID``, ``WORLD_SIZE``, ``LOCAL_RANK=SLURM_LOCALID``,
``GROUP_RANK=SLURM_NODEID``, ``LOCAL_WORLD_SIZE``, ``MASTER_ADDR``), so torchrun
mode, test code and ``env://`` all see a launched rank.

Only a task of an srun job step with more than one task is a rank. A batch
script (``sbatch``) also has ``SLURM_PROCID=0`` and, from the allocation,
``SLURM_NTASKS`` possibly above 1, but its step is the batch step: its step id is
``batch`` (or a number from 0xfffffff0 up: batch, extern, interactive), or it has
none; ``python test_x.py`` there runs normally, starting its own ranks. srun sets
``SLURM_STEP_ID`` (and the older ``SLURM_STEPID``) to the step's number (0, 1, ...)
and ``SLURM_STEP_NUM_TASKS`` to its task count. torchrun inside Slurm sets
``RANK`` itself, and ``RANK`` wins: nothing here applies then.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from distributed_testing._errors import ConfigError
from distributed_testing._nodes import launched_env
from distributed_testing._parsers import script_name

__all__ = ["first_host", "is_srun_task", "launch_env", "step_id", "tasks_per_node"]

MAX_NORMAL_STEP_ID = 0xFFFFFFF0  # Slurm's special steps (batch, extern, interactive, pending) are numbered above
STEP_ID_VARIABLES = ("SLURM_STEP_ID", "SLURM_STEPID")
TASKS_VARIABLES = ("SLURM_STEP_NUM_TASKS", "SLURM_NTASKS", "SLURM_NPROCS")  # the step's own count first
NODES_VARIABLES = ("SLURM_STEP_NUM_NODES", "SLURM_NNODES")
NODELIST_VARIABLES = ("SLURM_STEP_NODELIST", "SLURM_JOB_NODELIST", "SLURM_NODELIST")  # rank 0 is on the step's first
PER_NODE_VARIABLES = ("SLURM_STEP_TASKS_PER_NODE", "SLURM_TASKS_PER_NODE", "SLURM_NTASKS_PER_NODE")


def _get(env: Mapping[str, str], *names: str) -> tuple[str, str] | None:
    """The first of ``names`` that is set and not empty, and its value."""
    for name in names:
        value = env.get(name, "").strip()
        if value:
            return name, value
    return None


def step_id(env: Mapping[str, str]) -> str | None:
    """The job step this process belongs to (``SLURM_STEP_ID``), None outside a step."""
    found = _get(env, *STEP_ID_VARIABLES)
    return found[1] if found else None


def is_srun_task(env: Mapping[str, str]) -> bool:
    """Whether this process is a task of an srun job step with more than one task.

    Not for a batch script (``sbatch``), an interactive ``salloc`` shell, a shell
    of ``srun --pty`` or a one-task step: those run ``python test_x.py`` as a
    program that starts its own ranks. Raises ConfigError when the step's task
    count is not a number.
    """
    if _get(env, "SLURM_PTY_PORT") is not None:  # srun --pty bash: a person's shell, not a task
        return False
    step = step_id(env)
    if step is None or not step.isdigit() or int(step) >= MAX_NORMAL_STEP_ID:
        return False
    if _get(env, "SLURM_PROCID") is None:
        return False
    tasks = _get(env, *TASKS_VARIABLES)
    if tasks is None:
        return False
    return _number(*tasks, least=1) > 1


def first_host(nodelist: str, name: str = "SLURM_JOB_NODELIST") -> str:
    """The first host of a Slurm hostlist: ``node[01-04,07],gpu5`` -> ``node01``,
    ``rack[2-3]-n[08-09]`` -> ``rack2-n08``."""
    text = nodelist.strip()
    depth, end = 0, len(text)
    for index, char in enumerate(text):  # the first name ends at the first comma outside brackets
        depth += {"[": 1, "]": -1}.get(char, 0)
        if char == "," and depth == 0:
            end = index
            break
    first = text[:end]

    def lowest(match: re.Match[str]) -> str:
        return match.group(1).split(",")[0].split("-")[0].strip()

    host = re.sub(r"\[([^\[\]]*)\]", lowest, first)
    if not host or any(c in host for c in "[],") or not re.fullmatch(r"[^\s]+", host):
        raise ConfigError(
            f"{name} must be a Slurm hostlist such as node[01-04,07],gpu5, got {name}={nodelist!r}. "
            f"Example: set MASTER_ADDR to the first node's name instead",
            name,
            nodelist,
        )
    return host


def tasks_per_node(text: str, name: str = "SLURM_TASKS_PER_NODE") -> list[int]:
    """Slurm's tasks per node, expanded: ``2(x3),1`` -> ``[2, 2, 2, 1]``."""
    counts: list[int] = []
    for part in text.split(","):
        match = re.fullmatch(r"\s*([0-9]+)\s*(?:\(x([0-9]+)\))?\s*", part)
        if match is None:
            raise ConfigError(f"{name} must be Slurm's tasks per node such as 2(x3),1, got {name}={text!r}", name, text)
        counts += [int(match.group(1))] * int(match.group(2) or 1)
    return counts


def launch_env(env: Mapping[str, str]) -> dict[str, str]:
    """What torchrun would have set for this srun task; ``{}`` when this process is not one
    (``RANK`` is set, or it is not a task of a multi-task srun step).

    Raises ConfigError when a variable the rank needs is missing or bad.
    """
    if _get(env, "RANK") is not None or not is_srun_task(env):
        return {}
    tasks_name, tasks_text = _get(env, *TASKS_VARIABLES) or ("SLURM_NTASKS", "")
    tasks = _number(tasks_name, tasks_text, least=1)
    where = f"Slurm job step {env.get('SLURM_JOB_ID', '?')}.{step_id(env)}"
    rank = _number("SLURM_PROCID", env["SLURM_PROCID"].strip())
    if rank >= tasks:
        raise ConfigError(
            f"SLURM_PROCID must be below {tasks_name}, got SLURM_PROCID={rank} with {tasks_name}={tasks} in {where}",
            "SLURM_PROCID",
            rank,
        )
    role = f"this process is task {rank} of {tasks} of {where} (srun), so it runs as rank {rank} of a launched run"
    local = _get(env, "SLURM_LOCALID")
    if local is None:
        raise ConfigError(f"{role}, but SLURM_LOCALID (its task number on this node) is not set", "SLURM_LOCALID")
    local_rank = _number(*local)
    node = _get(env, "SLURM_NODEID")
    node_id = _number(*node) if node else None
    found = _get(env, *NODES_VARIABLES)
    nodes = _number(*found, least=1) if found else None
    env_out = launched_env(rank, tasks, local_rank, _local_world_size(env, node_id), node_id, nodes)
    example = (
        f"Example (in the sbatch script): export MASTER_PORT=$((20000 + SLURM_JOB_ID % 20000)); "
        f"srun --ntasks={tasks} python {script_name()}"
    )
    addr = _get(env, "MASTER_ADDR")
    if addr is None:
        nodelist = _get(env, *NODELIST_VARIABLES)
        if nodelist is None:
            raise ConfigError(
                f"{role}, but MASTER_ADDR is not set and no node list ({', '.join(NODELIST_VARIABLES)}) "
                f"names rank 0's node: set MASTER_ADDR to it. Example (in the sbatch script): "
                f'export MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)',
                "MASTER_ADDR",
            )
        addr = (nodelist[0], first_host(nodelist[1], nodelist[0]))
    port = _get(env, "MASTER_PORT")
    if port is None:
        raise ConfigError(
            f"{role}, but MASTER_PORT is not set: the ranks meet at MASTER_ADDR:MASTER_PORT "
            f"({addr[1]}:?), a port free on that node. {example} (or srun --ntasks=1, whose one "
            f"process starts the ranks itself)",
            "MASTER_PORT",
        )
    if not port[1].isdigit() or not 0 < int(port[1]) < 65536:
        raise ConfigError(f"MASTER_PORT must be a TCP port, got MASTER_PORT={port[1]!r}. {example}", *port)
    return {**env_out, "MASTER_ADDR": addr[1], "MASTER_PORT": port[1]}


def _local_world_size(env: Mapping[str, str], node: int | None) -> int | None:
    """This node's task count, when Slurm says it (one count for every node, or this node's)."""
    found = _get(env, *PER_NODE_VARIABLES)
    if found is None:
        return None
    counts = tasks_per_node(found[1], found[0])
    if len(set(counts)) == 1:
        return counts[0]
    return counts[node] if node is not None and node < len(counts) else None


def _number(name: str, text: str, least: int = 0) -> int:
    if not text.strip().isdigit() or int(text) < least:
        raise ConfigError(
            f"{name} must be an integer >= {least}, got {name}={text!r}: Slurm sets it in every task of an srun step",
            name,
            text,
        )
    return int(text)
