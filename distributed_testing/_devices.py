"""What this machine and torch build offer: backends and accelerator counts.

Nothing here initialises CUDA, so a process that asked can still fork ranks;
torch is imported on first question, so configuration errors report at once.
"""

from __future__ import annotations

import functools

# Every backend name the library accepts, in the order messages list them.
KNOWN_BACKENDS = ("gloo", "nccl", "ucc", "mpi", "xccl")


def backend_available(name: str) -> bool:
    """Whether this torch build was compiled with the c10d backend ``name``."""
    import torch.distributed as dist

    if not dist.is_available():
        return False
    probe = getattr(dist, f"is_{name}_available", None)
    return bool(probe()) if probe is not None else False


def available_backends() -> list[str]:
    """The known backends this torch build has, e.g. ``["gloo"]``."""
    return [b for b in KNOWN_BACKENDS if backend_available(b)]


def cuda_device_count() -> int:
    """Visible CUDA devices, counted without creating a CUDA context.

    torch counts through NVML before CUDA is initialised, which keeps the
    process safe to fork.
    """
    import torch

    try:
        return int(torch.cuda.device_count())
    except Exception:  # a broken driver counts as no device
        return 0


def cuda_initialized() -> bool:
    """Whether CUDA was initialised in this process (forking is then unsafe)."""
    import torch

    return bool(torch.cuda.is_initialized())  # type: ignore[no-untyped-call]


@functools.cache
def is_rocm() -> bool:
    """Whether this is a ROCm build of torch."""
    import torch

    return getattr(torch.version, "hip", None) is not None


def nccl_version() -> tuple[int, ...] | None:
    """The NCCL version of this build, or None without NCCL or CUDA."""
    if not backend_available("nccl") or cuda_device_count() == 0:
        return None
    import torch

    version = torch.cuda.nccl.version()  # type: ignore[no-untyped-call]
    return tuple(version) if isinstance(version, tuple) else (int(version),)


def default_backend(world_size: int) -> str:
    """nccl when there are at least ``world_size`` GPUs and NCCL, else gloo."""
    if backend_available("nccl") and cuda_device_count() >= world_size:
        return "nccl"
    return "gloo"


GPU_BACKENDS = ("nccl", "xccl", "hccl")


def gpu_shortfall(backend: str, world_size: int) -> str | None:
    """Why ``backend`` cannot run ``world_size`` ranks here (not built, too few GPUs), or None;
    the reason is registered as one for lack of hardware (``_hardware``)."""
    from distributed_testing._hardware import gpus, note

    if not backend_available(backend):
        have = ", ".join(available_backends()) or "none"
        return note(f"needs the {backend} backend, which this torch build does not have (it has: {have})",
                    f"needs backend {backend}")
    if backend not in GPU_BACKENDS:
        return None
    found = cuda_device_count()
    if found >= world_size:
        return None
    why = f"needs {world_size} CUDA devices for the {backend} backend at world size {world_size}, found {found}"
    return note(why, gpus(world_size))
