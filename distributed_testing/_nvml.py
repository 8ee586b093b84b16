"""The physical NVIDIA GPUs, asked of NVML through ctypes (as torch counts before CUDA starts).

NVML neither initialises CUDA nor reads ``CUDA_VISIBLE_DEVICES``, so the answer is
the machine's, and the asking process can still fork ranks. Imports no torch.
"""

from __future__ import annotations

import ctypes
import os

__all__ = ["gpu_uuids"]

_UUID_SIZE = 96  # NVML_DEVICE_UUID_V2_BUFFER_SIZE


def gpu_uuids() -> list[str] | None:
    """One UUID per physical NVIDIA GPU ("" where NVML does not say); [] on a machine without
    an NVIDIA driver; None where GPUs exist that NVML cannot count (a ROCm machine)."""
    try:
        lib = ctypes.CDLL("libnvidia-ml.so.1")
    except OSError:
        return None if os.path.exists("/dev/kfd") else []
    if lib.nvmlInit_v2() != 0:
        return []
    try:
        count = ctypes.c_uint(0)
        if lib.nvmlDeviceGetCount_v2(ctypes.byref(count)) != 0:
            return []
        uuids = []
        for index in range(count.value):
            handle = ctypes.c_void_p()
            buffer = ctypes.create_string_buffer(_UUID_SIZE)
            ok = lib.nvmlDeviceGetHandleByIndex_v2(index, ctypes.byref(handle)) == 0
            ok = ok and lib.nvmlDeviceGetUUID(handle, buffer, _UUID_SIZE) == 0
            uuids.append(buffer.value.decode(errors="replace") if ok else "")
        return uuids
    finally:
        lib.nvmlShutdown()
