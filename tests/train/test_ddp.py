"""A real 2-process gloo DistributedDataParallel run of a Bayesian model on CPU.

In ``mean_weights`` mode (no noise) the DDP-averaged gradient of the ELBO on two half-batches must
equal the single-process gradient on the whole batch: the NLL terms average and the KL / N term
is counted once. In sampling mode the ranks draw different noise but keep identical parameters.
"""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

import bayescale

pytestmark = pytest.mark.dist


def _model() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 3))
    return bayescale.bayesianize(net, estimator="flipout")


def _data():
    g = torch.Generator().manual_seed(1)
    return torch.randn(8, 1, 6, 6, generator=g), torch.randint(0, 3, (8,), generator=g)


def _worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=world)
    try:
        model = DDP(_model())
        x, y = _data()
        xs, ys = x.chunk(world)[rank], y.chunk(world)[rank]
        with bayescale.mean_weights(model):
            loss = bayescale.elbo_loss(model(xs), ys, model.module, num_train=100)
        loss.backward()
        grads = [p.grad.clone() for p in model.parameters()]
        # Sampling mode: different noise per rank (seed + rank), identical parameters after steps.
        torch.manual_seed(100 + rank)
        opt = torch.optim.Adam(model.parameters(), lr=0.01)
        outs = []
        for _ in range(3):
            opt.zero_grad()
            out = model(xs[:1].expand(2, -1, -1, -1).contiguous())
            outs.append(out.detach())
            bayescale.elbo_loss(out, ys[:1].expand(2), model.module, 100).backward()
            opt.step()
        params = [p.detach().clone() for p in model.parameters()]
        torch.save({"grads": grads, "params": params, "outs": outs},
                   os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.barrier()  # nobody tears down while the peer still uses the connection
        dist.destroy_process_group()


def test_ddp_gradient_equals_single_process_and_params_stay_identical(tmp_path):
    world = 2
    mp.spawn(_worker, args=(world, str(tmp_path / "init"), str(tmp_path)), nprocs=world)
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)

    model = _model()
    x, y = _data()
    with bayescale.mean_weights(model):
        bayescale.elbo_loss(model(x), y, model, num_train=100).backward()
    for g_ddp0, g_ddp1, p in zip(r0["grads"], r1["grads"], model.parameters(), strict=True):
        torch.testing.assert_close(g_ddp0, g_ddp1, rtol=0, atol=0)
        torch.testing.assert_close(g_ddp0, p.grad, rtol=1e-5, atol=1e-7)
    for a, b in zip(r0["params"], r1["params"], strict=True):
        assert torch.equal(a, b)  # bit-identical parameters
    assert not torch.allclose(r0["outs"][0], r1["outs"][0])  # different noise per rank
