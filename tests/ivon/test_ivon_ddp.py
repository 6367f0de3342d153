"""Two gloo workers train one DDP model with IVON: each rank draws its own weight noise, yet m
and h are bit-identical across ranks after every step (ĝ is DDP-averaged, ĥ all-reduced)."""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from bayescale import IVON

pytestmark = pytest.mark.dist


def _worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=world)
    try:
        torch.manual_seed(0)
        net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(64, 3))
        model = DDP(net)
        g = torch.Generator().manual_seed(1)
        x, y = torch.randn(8, 1, 6, 6, generator=g), torch.randint(0, 3, (8,), generator=g)
        xs, ys = x.chunk(world)[rank], y.chunk(world)[rank]
        torch.manual_seed(100 + rank)  # each rank its own noise
        opt = IVON(model.parameters(), lr=0.1, ess=100.0, beta2=0.99, distributed=True)
        history, draws = [], []
        for _ in range(4):
            opt.zero_grad(set_to_none=True)
            with opt.sampled_params(train=True):
                draws.append(net[0].weight.detach().clone())
                F.cross_entropy(model(xs), ys).backward()
            opt.step()
            history.append([p.detach().clone() for p in net.parameters()]
                           + [opt.state[p]["hess"].clone() for p in net.parameters()])
        torch.save({"history": history, "draws": draws}, os.path.join(out_dir, f"r{rank}.pt"))
    finally:
        dist.barrier()
        dist.destroy_process_group()


def test_ranks_draw_different_noise_and_keep_identical_mean_and_hessian(tmp_path):
    world = 2
    mp.spawn(_worker, args=(world, str(tmp_path / "init"), str(tmp_path)), nprocs=world)
    r0 = torch.load(tmp_path / "r0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "r1.pt", weights_only=True)
    for step0, step1 in zip(r0["history"], r1["history"], strict=True):
        assert all(torch.equal(a, b) for a, b in zip(step0, step1, strict=True))
    assert not torch.equal(r0["draws"][0], r1["draws"][0])
    hess0 = r0["history"][0][len(r0["history"][0]) // 2]
    assert not torch.equal(hess0, torch.ones_like(hess0))  # h did move
