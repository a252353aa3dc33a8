"""Data parallelism: a 2-process gloo run on CPU (loopback only) equals the single-process run on the full batch,
step for step, when the ranks are seeded alike: DDP, and FSDP2 with the expanded weights sharded."""

import datetime
import gc
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import majority_kernels as mk

WORLD = 2
STEPS = 3


def make_model() -> nn.Module:
    torch.manual_seed(0)
    dense = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 4))
    return mk.convert(dense, expansion=4, init="independent").double()


def full_batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(100 + step)
    return (torch.randn(8, 6, generator=generator, dtype=torch.float64), torch.randint(0, 4, (8,), generator=generator))


def run_steps(model: nn.Module, shard: slice) -> list[float]:
    """STEPS of SGD with the mean cross-entropy on the rows `shard` of each full batch; the torch RNG is seeded
    alike for every caller, so every replica draws the same mixing weights."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    torch.manual_seed(7)
    losses = []
    for step in range(STEPS):
        x, y = full_batch(step)
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(model(x[shard]), y[shard])
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def full_parameters(model: nn.Module) -> dict[str, torch.Tensor]:
    """The whole parameters, gathered where they are sharded (FSDP2 DTensors)."""
    return {
        name: (p.full_tensor() if hasattr(p, "full_tensor") else p).detach().clone()
        for name, p in model.named_parameters()
    }


def _train_on_rank(rank: int, strategy: str) -> dict:
    """This rank's run; every DDP/FSDP object is gone when it returns (while the process group still exists)."""
    model = make_model()
    if strategy == "ddp":
        wrapped = nn.parallel.DistributedDataParallel(model)
    else:
        from torch.distributed.fsdp import fully_shard

        for layer in model:
            if isinstance(layer, mk.MKLinear):
                fully_shard(layer)  # the [e, out, in] weight is sharded along its first dimension
        wrapped = fully_shard(model)
        local = model[0].weight.to_local()
        assert local.shape == (4 // WORLD, 8, 6), local.shape  # each rank holds half of the copies
    rows = 8 // WORLD
    losses = run_steps(wrapped, slice(rank * rows, (rank + 1) * rows))
    return {"losses": losses, "parameters": full_parameters(model)}


def _worker(rank: int, init_file: str, strategy: str, out: str) -> None:
    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD, timeout=datetime.timedelta(seconds=120)
    )
    try:
        result = _train_on_rank(rank, strategy)
        gc.collect()  # DDP's reducer must go before its process group, or its destructor can wait forever
        dist.barrier()
        if rank == 0:
            torch.save(result, out)
    finally:
        dist.destroy_process_group()


def _spawn(strategy: str, tmp_path, timeout: float = 300.0) -> dict:
    """Runs the ranks; a rank that hangs fails the test (after `timeout` seconds) instead of hanging the suite."""
    out = tmp_path / "rank0.pt"
    context = mp.start_processes(
        _worker, args=(str(tmp_path / "init"), strategy, str(out)), nprocs=WORLD, join=False, start_method="spawn"
    )
    deadline = time.monotonic() + timeout
    while not context.join(timeout=5):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail(f"the {strategy} ranks did not finish within {timeout:.0f} s")
    return torch.load(out)


def _single_process() -> tuple[list[float], dict[str, torch.Tensor]]:
    model = make_model()
    losses = run_steps(model, slice(None))
    return losses, full_parameters(model)


def _assert_equals_single_process(result: dict) -> None:
    _, expected = _single_process()
    assert result["parameters"].keys() == expected.keys()
    for name, value in expected.items():
        torch.testing.assert_close(
            result["parameters"][name], value, rtol=1e-12, atol=1e-12, msg=lambda m, name=name: f"{name}: {m}"
        )


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="torch built without gloo")
def test_ddp_two_processes_equal_single_process_full_batch(tmp_path):
    _assert_equals_single_process(_spawn("ddp", tmp_path))


def _fsdp2_available() -> bool:
    try:
        from torch.distributed.fsdp import fully_shard  # noqa: F401
    except ImportError:
        return False
    return dist.is_available() and dist.is_gloo_available()


@pytest.mark.skipif(not _fsdp2_available(), reason="this torch has no FSDP2 (torch.distributed.fsdp.fully_shard)")
def test_fsdp2_sharded_expanded_weights_equal_single_process_full_batch(tmp_path):
    _assert_equals_single_process(_spawn("fsdp2", tmp_path))
