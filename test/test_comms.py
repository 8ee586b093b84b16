"""Communication helpers doing real work: TensorPipe RPC, gloo collectives, DTensor, DDP."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import Run, Runner, outcomes, reports, wait_gone

pytestmark = pytest.mark.slow

COMMS = """
from torch.distributed import rpc


def add(a, b):
    return a + b


class TestShardedBase(ShardedTensorTestBase):
    @world_sizes(2, 4)
    @with_comms(backend="gloo")
    def test_rpc_between_workers(self):
        peer = f"worker{(self.rank + 1) % self.world_size}"
        self.assertEqual(rpc.rpc_sync(peer, add, args=(torch.ones(2), self.rank)), torch.full((2,), 1.0 + self.rank))
        self.assertEqual(rpc.rpc_async(peer, add, args=(3, 4)).wait(), 7)
        self.assertEqual(rpc.remote(peer, add, args=(torch.ones(1), 2)).to_here(), torch.tensor([3.0]))

    @world_sizes(2, 4)
    @with_comms(init_rpc=False)
    def test_collectives_after_init_comms(self):
        t = torch.tensor([float(self.rank)])
        dist.all_reduce(t)
        self.assertEqual(t.item(), sum(range(self.world_size)))
        out = [torch.zeros(1) for _ in range(self.world_size)]
        dist.all_gather(out, torch.tensor([float(self.rank)]))
        self.assertEqual(torch.cat(out), torch.arange(float(self.world_size)))

    @with_comms(init_rpc=False, backend="gloo")
    def test_sharded_tensor(self):
        from torch.distributed._shard import sharded_tensor
        from torch.distributed._shard.sharding_spec import ChunkShardingSpec

        spec = ChunkShardingSpec(dim=0, placements=[f"rank:{r}/cpu" for r in range(self.world_size)])
        st1 = sharded_tensor.ones(spec, 8, 2)
        st2 = sharded_tensor.ones(spec, 8, 2)
        self.assertEqual(st1.local_shards()[0].tensor.shape, (8 // self.world_size, 2))
        self.assert_sharded_tensor_equal(st1, st2)

    @with_comms(backend="nccl")
    def test_nccl_only(self):
        pass

    def test_init_pg_bogus(self):
        self.init_pg(backend="bogus")

    @with_comms(init_rpc=True, backend="gloo")
    def test_init_rpc_twice(self):
        self.init_rpc()

    def test_destroy_without_init(self):
        self.destroy_comms()

    @with_comms(init_rpc=True, backend="gloo")
    def test_failure_tears_down_promptly(self):
        if self.rank == 1:
            raise ValueError("rank 1 gives up")
        rpc.rpc_sync("worker1", add, args=(1, 2))


class TestDTensor(DTensorTestBase):
    @with_comms
    def test_distribute_and_gather(self):
        from torch.distributed.tensor import Replicate, Shard, distribute_tensor

        self.assertEqual(self.device_type, "cpu")
        self.assertEqual(self.backend, "gloo")
        mesh = self.build_device_mesh()
        full = torch.arange(32.0).reshape(8, 4)
        sharded = distribute_tensor(full, mesh, [Shard(0)])
        self.assertEqual(sharded.to_local(), full[2 * self.rank : 2 * self.rank + 2])
        self.assertEqual(sharded.full_tensor(), full)
        self.assertEqual(sharded.redistribute(mesh, [Replicate()]).to_local(), full)

    @with_comms
    def test_two_dimensional_mesh(self):
        mesh = self.build_device_mesh((2, 2), ("dp", "tp"))
        self.assertEqual(mesh["tp"].size(), 2)
        self.assertEqual(mesh["dp"].size(), 2)


class TestDDP(DistributedTestBase):
    world_size = 2

    def test_training_step_matches_single_process(self):
        from torch.nn.parallel import DistributedDataParallel as DDP

        pg = self.create_pg("cpu")
        torch.manual_seed(0)
        reference = torch.nn.Linear(4, 2)
        model = DDP(torch.nn.Linear(4, 2), process_group=pg)
        model.module.load_state_dict(reference.state_dict())
        batch = torch.randn(2 * self.world_size, 4, generator=torch.Generator().manual_seed(1))
        target = torch.randn(2 * self.world_size, 2, generator=torch.Generator().manual_seed(2))

        for net, inputs, labels in ((reference, batch, target), (model, batch[2 * self.rank :][:2], target[2 * self.rank :][:2])):
            optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
            torch.nn.functional.mse_loss(net(inputs), labels).backward()
            optimizer.step()
        for mine, theirs in zip(model.module.parameters(), reference.parameters()):
            self.assertEqual(mine, theirs, atol=1e-6, rtol=1e-5)


if __name__ == "__main__":
    run_tests()
"""


@pytest.fixture(scope="module")
def comms(tmp_path_factory: pytest.TempPathFactory) -> tuple[Run, Runner]:
    runner = Runner(tmp_path_factory.mktemp("comms"))
    return runner.run(str(runner.write(COMMS)), "-v"), runner


def test_outcomes(comms):
    assert outcomes(comms[0].output) == {
        "TestShardedBase.test_rpc_between_workers_world_size_2": "ok",
        "TestShardedBase.test_rpc_between_workers_world_size_4": "ok",
        "TestShardedBase.test_collectives_after_init_comms_world_size_2": "ok",
        "TestShardedBase.test_collectives_after_init_comms_world_size_4": "ok",
        "TestShardedBase.test_sharded_tensor": "ok",
        "TestShardedBase.test_nccl_only": "skipped 'needs the nccl backend, which this torch build does not have "
        "(it has: gloo)'",
        "TestShardedBase.test_init_pg_bogus": "ERROR",
        "TestShardedBase.test_init_rpc_twice": "ERROR",
        "TestShardedBase.test_destroy_without_init": "ERROR",
        "TestShardedBase.test_failure_tears_down_promptly": "ERROR",
        "TestDTensor.test_distribute_and_gather": "ok",
        "TestDTensor.test_two_dimensional_mesh": "ok",
        "TestDDP.test_training_step_matches_single_process": "ok",
    }, comms[0].output


@pytest.mark.parametrize(
    ("test", "message"),
    [
        (
            "test_init_pg_bogus",
            "ranks 0-3 of 4 failed: same ConfigError: backend must be one of gloo, nccl, ucc, mpi, xccl, "
            "got backend='bogus'. This torch build has: gloo. Example: self.init_pg(backend=\"gloo\")",
        ),
        (
            "test_init_rpc_twice",
            "ranks 0-3 of 4 failed: same DistributedTestingError: init_rpc() called twice: RPC is already running.",
        ),
        (
            "test_destroy_without_init",
            "ranks 0-3 of 4 failed: same DistributedTestingError: destroy_comms() without init_comms(): there is no "
            "process group.",
        ),
        ("test_failure_tears_down_promptly", "rank 1 of 4 failed: ValueError: rank 1 gives up"),
    ],
)
def test_bad_input_is_a_clear_error(comms, test, message):
    assert message in reports(comms[0].output)[f"TestShardedBase.{test}"]


def test_nothing_is_left_behind(comms):
    assert comms[1].leftovers() == []
    assert wait_gone(str(comms[1].tmp_path)) == []


def test_nccl_test_starts_no_rank(tmp_path: Path):
    runner = Runner(tmp_path)
    marker = tmp_path / "ran"
    path = runner.write(f"""
        class TestNccl(ShardedTensorTestBase):
            @with_comms(backend="nccl")
            def test_x(self):
                open({str(marker)!r}, "w").close()

        if __name__ == "__main__":
            run_tests()
    """)
    run = runner.run(str(path), "-v")
    assert run.returncode == 0, run.output
    assert "skipped 'needs the nccl backend" in run.output
    assert not marker.exists()
