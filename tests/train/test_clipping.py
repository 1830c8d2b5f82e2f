"""Clipping by the global norm under FSDP: two CPU ranks (gloo), each holding half of every gradient."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from lmfast.train.clipping import clip_gradients, fsdp_root

MAX_NORM = 0.05


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.Tanh(), torch.nn.Linear(32, 4))


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return torch.randn(8, 16, generator=generator), torch.randn(8, 4, generator=generator)


def _reference() -> tuple[float, torch.Tensor]:
    """One process, no sharding: the true norm and the clipped flat gradient."""
    model = _model()
    x, y = _batch()
    torch.nn.functional.mse_loss(model(x), y).backward()
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), MAX_NORM)
    return float(norm), torch.cat([p.grad.reshape(-1) for p in model.parameters()])


def _rank(rank: int, port: int, results: dict) -> None:
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        torch.set_num_threads(1)
        root = FSDP(_model(), device_id=torch.device("cpu"))
        optimizer = torch.optim.SGD(root.parameters(), lr=0.1)
        x, y = _batch()  # the same batch on both ranks: the averaged gradient is the single-process one
        torch.nn.functional.mse_loss(root(x), y).backward()
        local = float(torch.linalg.vector_norm(torch.cat([p.grad.reshape(-1) for p in root.parameters()])))
        norm = clip_gradients(optimizer, MAX_NORM, root=fsdp_root(root))
        # the one flat parameter's shard: rank 0 holds the first half of the flattened gradient
        (shard,) = [p.grad.reshape(-1).clone() for p in root.parameters()]
        results[rank] = (local, float(norm), shard)
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow  # two processes (~40 s on the shared 2-core machine)
@pytest.mark.skipif(not dist.is_available(), reason="torch built without torch.distributed")
def test_fsdp_clips_by_the_norm_over_every_ranks_shard():
    expected_norm, expected_grad = _reference()
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_rank, args=(_free_port(), results), nprocs=2, join=True)
        results = dict(results)
    for rank in (0, 1):
        local, norm, _ = results[rank]
        assert norm == pytest.approx(expected_norm, rel=1e-5)  # the global norm, on both ranks
        assert local < expected_norm * 0.95  # a shard's own norm: what clipping used to go by
    clipped = torch.cat([results[0][2], results[1][2]])[: expected_grad.numel()]  # padding dropped
    torch.testing.assert_close(clipped, expected_grad, rtol=1e-5, atol=1e-7)
    assert expected_norm > MAX_NORM  # clipping did act


def test_without_fsdp_it_is_torch_clip_grad_norm():
    model = _model()
    x, y = _batch()
    torch.nn.functional.mse_loss(model(x), y).backward()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    norm = clip_gradients(optimizer, MAX_NORM, root=fsdp_root(model))
    expected_norm, expected_grad = _reference()
    assert float(norm) == pytest.approx(expected_norm)
    torch.testing.assert_close(torch.cat([p.grad.reshape(-1) for p in model.parameters()]), expected_grad)
