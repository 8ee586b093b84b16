"""Asking CUDA device 0 a question (multicast support, ROCm architecture) for a guard.

The test process and the fork server must not initialise CUDA (a forked CUDA
context is unusable), so there the question goes to a fresh interpreter; a rank,
or a process where CUDA is initialised already, asks it directly.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from collections.abc import Callable

from distributed_testing import _devices

__all__ = ["ask_device"]


def _device0_multicast() -> str:
    """"1" if CUDA device 0 supports multicast, else "0" (initialises CUDA)."""
    import torch
    from torch._C._autograd import DeviceType
    from torch._C._distributed_c10d import _SymmetricMemory

    return str(int(torch.cuda.is_available() and _SymmetricMemory.has_multicast_support(DeviceType.CUDA, 0)))


def _device0_arch() -> str:
    """Device 0's ROCm architecture, e.g. ``gfx942`` (initialises CUDA)."""
    import torch

    return str(torch.cuda.get_device_properties(0).gcnArchName.split(":")[0])


_DEVICE_QUERIES: dict[str, Callable[[], str]] = {
    "_device0_multicast": _device0_multicast,
    "_device0_arch": _device0_arch,
}


def _cuda_safe_here() -> bool:
    """Whether asking CUDA costs nothing here: in a rank, or where CUDA is initialised already."""
    rank_module = sys.modules.get("distributed_testing._rank")
    return bool(getattr(rank_module, "in_rank", False)) or _devices.cuda_initialized()


@functools.cache
def ask_device(query: str) -> str:
    """What the ``_DEVICE_QUERIES`` function ``query`` says of device 0, or "" if it fails.

    The parent and the fork server must not initialise CUDA (a forked CUDA
    context is unusable), so there the question goes to a fresh interpreter.
    """
    if _cuda_safe_here():
        try:
            return _DEVICE_QUERIES[query]()
        except Exception:
            return ""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    path = os.environ.get("PYTHONPATH")
    env = {**os.environ, "PYTHONPATH": root + (os.pathsep + path if path else "")}
    code = f"from distributed_testing._device_query import {query}; print({query}())"
    try:
        proc = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            timeout=120,
            stdin=subprocess.DEVNULL,
            env=env,
        )
    except (OSError, subprocess.SubprocessError):
        return ""
    return proc.stdout.strip() if proc.returncode == 0 else ""
