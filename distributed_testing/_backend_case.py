"""DistBackendTestCase: the environment-driven base of test_distributed_spawn.py.

Each rank initialises the default process group from ``BACKEND``,
``WORLD_SIZE`` and ``INIT_METHOD`` before the test, meets the others at a
file barrier in ``TEMP_DIR``, and destroys the group after.
"""

from __future__ import annotations

import hashlib
import os
import socket
import time
from typing import Any

from distributed_testing import _config, _rank
from distributed_testing._errors import DistributedTestingError
from distributed_testing._testcase import MultiProcessTestCase

__unittest = True

__all__ = ["DistBackendTestCase"]

DEFAULT_WORLD_SIZE = 2
BARRIER_POLL = 0.01  # seconds between looks at the barrier directory


class DistBackendTestCase(MultiProcessTestCase):
    """Ranks join a process group built from the environment before each test.

    ``WORLD_SIZE`` defaults to 2, ``BACKEND`` to gloo (nccl with a GPU per
    rank), ``INIT_METHOD`` to a ``file://`` rendezvous private to the test.
    """

    _dt_spawns_in_setup = True
    _dt_default_world_size = DEFAULT_WORLD_SIZE

    def _dt_cleanup(self) -> None:
        file_name = self.file_name
        super()._dt_cleanup()
        settings = _config.load()
        if settings.init_method.startswith("file://") and file_name:
            shared = _file_rendezvous(settings.init_method, file_name)
            if shared != file_name and os.path.exists(shared):
                os.unlink(shared)  # FileStore leaves it when a rank exits before the others
        if settings.temp_dir is not None and self.file_name:
            directory = os.path.join(settings.temp_dir, "barrier")
            for rank in range(self.world_size):
                path = os.path.join(directory, f"{_token(self.file_name)}.rank{rank}")
                if os.path.exists(path):
                    os.unlink(path)

    def _rank_env(self) -> dict[str, str]:
        if _config.load().init_method != "env://":
            return {}
        return {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port())}

    @property
    def backend_name(self) -> str:
        """The backend every rank's default group uses."""
        return _config.load().backend

    def _rank_setup(self) -> None:
        import torch
        import torch.distributed as dist

        settings = _config.load()
        if settings.backend == "nccl":
            torch.cuda.set_device(self.rank % max(torch.cuda.device_count(), 1))
        rendezvous: dict[str, Any] = {"init_method": settings.init_method}
        if self._dt_launch_key is not None:  # torchrun mode: a store namespace per test
            rendezvous = {"store": _torchrun_run().test_store(self._dt_launch_key)}
        elif settings.init_method.startswith("file://"):
            rendezvous = {"init_method": f"file://{_file_rendezvous(settings.init_method, self.file_name)}"}
        dist.init_process_group(
            settings.backend,
            rank=self.rank,
            world_size=self.world_size,
            # Outlasts the test's deadline: a hang is reported with stacks, not as gloo's timeout.
            timeout=_rank.group_timeout(_config.resolve_timeout(type(self).timeout, settings)),
            **rendezvous,
        )
        self._barrier()

    def _rank_teardown(self) -> None:
        import torch.distributed as dist

        failed = getattr(self, "_dt_test_failed", False)
        if self._dt_launch_key is not None:
            # torchrun mode: a failed rank tells its peers, which then leave the barrier
            # at once (as they do when a peer skipped or timed out); a stopped test's
            # group is aborted, which also ends collectives a peer still waits in.
            from distributed_testing import _torchrun

            if failed:
                _torchrun_run().announce(self._dt_launch_key, "failed")
            wait = _config.resolve_timeout(type(self).timeout, _config.load())
            stop = self._dt_store_barrier(wait, tolerate_stop=True)
            _torchrun.end_default_group(abort=stop is not None)
            return
        if not failed:  # peers of a failed test may never arrive
            self._barrier()
        if dist.is_initialized():
            dist.destroy_process_group()

    def _dt_store_barrier(self, wait: float, tolerate_stop: bool = False) -> Any:
        """torchrun mode: ranks may be on other machines, so the barrier lives in the store.

        It ends when every rank arrived or when one stopped the test (failed, skipped,
        timed out): then it raises PeerStopped, or with ``tolerate_stop`` returns how."""
        self._dt_barrier_count = getattr(self, "_dt_barrier_count", 0) + 1
        assert self._dt_launch_key is not None
        return _torchrun_run().barrier(self._dt_launch_key, str(self._dt_barrier_count), wait, tolerate_stop)

    def _barrier(self, timeout: float | None = None) -> None:
        """Wait until every rank of this test reaches the same barrier (files in TEMP_DIR)."""
        settings = _config.load()
        wait = timeout or _config.resolve_timeout(type(self).timeout, settings)
        if self._dt_launch_key is not None:
            self._dt_store_barrier(wait)
            return
        directory = _barrier_dir(settings, self.file_name)
        token = _token(self.file_name)
        self._dt_barrier_count = getattr(self, "_dt_barrier_count", 0) + 1
        count = self._dt_barrier_count
        _write_atomic(os.path.join(directory, f"{token}.rank{self.rank}"), str(count))
        deadline = time.monotonic() + wait
        while True:
            missing = [r for r in range(self.world_size) if _read_count(directory, token, r) < count]
            if not missing:
                return
            if time.monotonic() > deadline:
                raise DistributedTestingError(
                    f"barrier {count} timed out after {wait:g} s in rank {self.rank}: "
                    f"rank(s) {', '.join(map(str, missing))} never arrived"
                )
            time.sleep(BARRIER_POLL)


def _file_rendezvous(init_method: str, file_name: str) -> str:
    """The rendezvous file of one test: ``file://`` and ``file://DIR/`` (as PyTorch's
    run_test.py sets it) give each test its own file; ``file://PATH`` is used as is."""
    path = init_method[len("file://") :]
    if not path:
        return file_name
    if path.endswith("/") or os.path.isdir(path):
        return os.path.join(path, f"dt-{_token(file_name)}")
    return path


def _torchrun_run() -> Any:
    from distributed_testing import _torchrun

    return _torchrun.current()


def _token(file_name: str) -> str:
    """A name for this test's barrier files that every rank derives alike."""
    return hashlib.sha1(file_name.encode()).hexdigest()[:12]


def _barrier_dir(settings: _config.Settings, file_name: str) -> str:
    if settings.temp_dir is None:
        return os.path.dirname(file_name)
    directory = os.path.join(settings.temp_dir, "barrier")
    os.makedirs(directory, exist_ok=True)
    return directory


def _write_atomic(path: str, text: str) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as handle:
        handle.write(text)
    os.replace(tmp, path)


def _read_count(directory: str, token: str, rank: int) -> int:
    try:
        with open(os.path.join(directory, f"{token}.rank{rank}")) as handle:
            return int(handle.read() or 0)
    except (OSError, ValueError):
        return 0


def _free_port() -> int:
    """A TCP port free on loopback right now, for an env:// rendezvous."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
