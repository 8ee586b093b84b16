"""An example distributed test file: run it with ``python test/example_allreduce.py -v``.

With no environment set it uses the embedded defaults: gloo, world size 2
(DistBackendTestCase) and a private TEMP_DIR. Try ``WORLD_SIZE=4`` too.
"""

import torch
import torch.distributed as dist

from distributed_testing import (
    DistBackendTestCase,
    MultiProcessTestCase,
    requires_gloo,
    run_tests,
    skip_if_lt_x_gpu,
)


class TestAllReduce(MultiProcessTestCase):
    """PyTorch's style: the test makes its own process group from ``file_name``."""

    @property
    def world_size(self) -> int:
        return 3

    def setUp(self) -> None:
        super().setUp()
        self._spawn_processes()

    @requires_gloo()
    def test_sum(self) -> None:
        dist.init_process_group(
            "gloo", init_method=f"file://{self.file_name}", rank=self.rank, world_size=self.world_size
        )
        t = torch.tensor([float(self.rank)])
        dist.all_reduce(t)
        self.assertEqual(t.item(), 3.0)

    @skip_if_lt_x_gpu(2)
    def test_on_two_gpus(self) -> None:
        self.assertGreaterEqual(torch.cuda.device_count(), 2)


class TestFromEnvironment(DistBackendTestCase):
    """test_distributed_spawn.py's style: the group comes from BACKEND and WORLD_SIZE."""

    def test_all_gather(self) -> None:
        out = [torch.zeros(1) for _ in range(self.world_size)]
        dist.all_gather(out, torch.tensor([float(self.rank)]))
        self.assertEqual([t.item() for t in out], [float(r) for r in range(self.world_size)])

    def test_barrier(self) -> None:
        self._barrier()
        dist.barrier()


if __name__ == "__main__":
    run_tests()
