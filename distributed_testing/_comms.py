"""Communication helpers: ShardedTensorTestBase, DTensorTestBase and with_comms.

PyTorch's versions assume NCCL and GPUs; these resolve the backend the way
DESIGN.md says (``BACKEND`` if set, else nccl with a GPU per rank, else gloo),
so the same test runs on CPU with gloo and TensorPipe and on GPUs with NCCL.
A backend that needs more GPUs than the machine has skips the test, saying
what was needed and found; a backend this torch build lacks is an error.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

from distributed_testing import _config, _devices, _rank
from distributed_testing._errors import ConfigError, DistributedTestingError
from distributed_testing._guards import GUARDS_ATTR
from distributed_testing._testcase import MultiProcessTestCase

__unittest = True

__all__ = ["DTensorTestBase", "ShardedTensorTestBase", "with_comms"]

F = TypeVar("F", bound=Callable[..., Any])
GPU_BACKENDS = _devices.GPU_BACKENDS


def check_backend_name(backend: str) -> str:
    """A backend name this library knows (ConfigError otherwise); availability is checked later."""
    name = backend.strip().lower() if isinstance(backend, str) else backend
    if name not in _devices.KNOWN_BACKENDS:
        have = ", ".join(_devices.available_backends()) or "none"
        raise ConfigError(
            f"backend must be one of {', '.join(_devices.KNOWN_BACKENDS)}, got backend={backend!r}. "
            f'This torch build has: {have}. Example: self.init_pg(backend="gloo")',
            "backend",
            backend,
        )
    return str(name)


def resolve_backend(backend: str | None, world_size: int) -> str:
    """The backend to use: the argument, else ``BACKEND``, else nccl with a GPU per rank, else gloo."""
    if backend is None:
        settings = _config.load()
        return settings.backend if settings.backend_from_env else _devices.default_backend(world_size)
    return check_backend_name(backend)


def _rpc_running() -> bool:
    from torch.distributed import rpc

    return bool(rpc.api._is_current_rpc_agent_set())  # type: ignore[attr-defined]


class _Comms:
    """init_pg / init_rpc / init_comms / destroy_comms over the test's own rendezvous file."""

    comms_init_rpc = True  # what with_comms does when its init_rpc is not given

    def init_pg(self: Any, backend: str | None = None) -> None:
        """Initialise the default process group; skip if the backend needs missing GPUs."""
        import torch
        import torch.distributed as dist

        name = resolve_backend(backend, self.world_size)
        shortfall = _devices.gpu_shortfall(name, self.world_size)
        if shortfall is not None:
            import unittest

            raise unittest.SkipTest(shortfall)
        if dist.is_initialized():
            raise DistributedTestingError(
                "init_pg() called twice: the default process group already exists. "
                "Call destroy_comms() first, or use one @with_comms per test."
            )
        if name in GPU_BACKENDS:
            torch.cuda.set_device(self.rank % torch.cuda.device_count())
        dist.init_process_group(
            backend=name, init_method=f"file://{self.file_name}", rank=self.rank, world_size=self.world_size
        )

    def init_rpc(self: Any) -> None:
        """Start TensorPipe RPC as ``worker{rank}``, with device maps only when there are GPUs."""
        from torch.distributed import rpc

        if _rpc_running():
            raise DistributedTestingError(
                "init_rpc() called twice: RPC is already running. "
                "Call destroy_comms() first, or use one @with_comms per test."
            )
        options = rpc.TensorPipeRpcBackendOptions(init_method=f"file://{self.file_name}.rpc", _transports=["uv"])
        if _devices.cuda_device_count() >= self.world_size:
            for rank in range(self.world_size):
                options.set_device_map(f"worker{rank}", {rank: self.rank, self.rank: rank})
        rpc.init_rpc(  # type: ignore[no-untyped-call]
            name=f"worker{self.rank}", rank=self.rank, world_size=self.world_size, rpc_backend_options=options
        )

    def init_comms(self: Any, init_rpc: bool = True, backend: str | None = None) -> None:
        """RPC (optionally), then the default process group."""
        if init_rpc:
            self.init_rpc()
        self.init_pg(backend=backend)

    def destroy_comms(self: Any, destroy_rpc: bool = True) -> None:
        """Barrier, shut RPC down, destroy the default group."""
        import torch.distributed as dist
        from torch.distributed import rpc

        if not dist.is_initialized():
            raise DistributedTestingError(
                "destroy_comms() without init_comms(): there is no process group. "
                "Example: self.init_comms(init_rpc=False) ... self.destroy_comms(destroy_rpc=False)"
            )
        dist.barrier()
        if destroy_rpc and _rpc_running():
            rpc.shutdown()
        dist.destroy_process_group()

    def _abort_comms(self: Any) -> None:
        """Tear down after a failure without waiting for peers that may be gone."""
        from torch.distributed import rpc

        if _rpc_running():
            try:
                rpc.shutdown(graceful=False)
            except Exception:
                pass
        _rank.destroy_default_group()


class ShardedTensorTestBase(_Comms, MultiProcessTestCase):
    """PyTorch's sharded-tensor base: ranks spawned in setUp, comms set up by the test."""

    _dt_spawns_in_setup = True

    def assert_sharded_tensor_equal(self, st1: Any, st2: Any) -> None:
        """Equal local shards (tensors and metadata), global metadata and sharding spec,
        and as many remote shards when both were made with RPC (``init_rrefs=True``)."""
        local1, local2 = st1.local_shards(), st2.local_shards()
        self.assertEqual(len(local1), len(local2))
        for shard1, shard2 in zip(local1, local2, strict=True):
            self.assertEqual(shard1.tensor, shard2.tensor)
            self.assertEqual(shard1.metadata, shard2.metadata)
        self.assertEqual(st1.metadata(), st2.metadata())
        self.assertEqual(st1.sharding_spec(), st2.sharding_spec())
        if getattr(st1, "_init_rrefs", True) and getattr(st2, "_init_rrefs", True):  # RRefs need RPC
            self.assertEqual(len(st1.remote_shards()), len(st2.remote_shards()))


class DTensorTestBase(_Comms, MultiProcessTestCase):
    """PyTorch's DTensor base: cuda and nccl with a GPU per rank, else cpu and gloo."""

    _dt_spawns_in_setup = True
    comms_init_rpc = False

    @property
    def device_type(self) -> str:
        """cuda when every rank can have its own GPU, else cpu."""
        return "cuda" if _devices.cuda_device_count() >= self.world_size else "cpu"

    @property
    def backend(self) -> str:
        """The backend matching ``device_type``."""
        return "nccl" if self.device_type == "cuda" else "gloo"

    def init_pg(self, backend: str | None = None, eager_init: bool = False) -> None:
        """As ``_Comms.init_pg``, defaulting to the backend of ``device_type``."""
        if isinstance(backend, bool):  # PyTorch's positional init_pg(eager_init, backend)
            backend = None
        super().init_pg(backend if backend is not None else self._default_backend())

    def _default_backend(self) -> str:
        return _config.load().backend if _config.load().backend_from_env else self.backend

    def destroy_pg(self) -> None:
        """Barrier, then destroy the default group (PyTorch's name)."""
        self.destroy_comms(destroy_rpc=False)

    def build_device_mesh(
        self, shape: tuple[int, ...] | None = None, mesh_dim_names: tuple[str, ...] | None = None
    ) -> Any:
        """A device mesh over all ranks: 1-D by default, or of ``shape`` (e.g. ``(2, 2)``)."""
        from torch.distributed.device_mesh import init_device_mesh

        return init_device_mesh(self.device_type, shape or (self.world_size,), mesh_dim_names=mesh_dim_names)


def with_comms(
    func: Any = None, init_rpc: bool | None = None, backend: str | None = None, eager_init: bool = False
) -> Any:
    """Set up communication around a test method, and tear it down even when it fails.

    Usable bare (``@with_comms``) or called (``@with_comms(backend="gloo",
    init_rpc=False)``). ``init_rpc=None`` means the class's default: RPC for
    ShardedTensorTestBase, none for DTensorTestBase. ``backend=None`` resolves
    per DESIGN.md. A backend needing more GPUs than there are skips before any
    rank starts.
    """
    if func is None or isinstance(func, bool):
        eager = func if isinstance(func, bool) else eager_init
        return functools.partial(with_comms, init_rpc=init_rpc, backend=backend, eager_init=eager)
    if backend is not None:
        check_backend_name(backend)

    @functools.wraps(func)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        rpc_on = type(self).comms_init_rpc if init_rpc is None else init_rpc
        self.init_comms(init_rpc=rpc_on, backend=backend)
        try:
            result = func(self, *args, **kwargs)
        except BaseException:
            self._abort_comms()
            raise
        try:
            self.destroy_comms(destroy_rpc=rpc_on)
        except Exception as exc:  # often a peer whose test failed and left: say where this happened
            raise DistributedTestingError(
                f"with_comms teardown (after the test passed on this rank) failed: {type(exc).__name__}: {exc}"
            ) from exc
        return result

    def needs_gpus(case: Any) -> str | None:
        return _devices.gpu_shortfall(resolve_backend(backend, int(case.world_size)), int(case.world_size))

    setattr(wrapper, GUARDS_ATTR, (*getattr(func, GUARDS_ATTR, ()), needs_gpus))
    return wrapper

