"""GlobalBatchNorm2d over 2 gloo processes equals BatchNorm2d over the joined batch (also on bf16 input)."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from rtdetr.cpu.sync_bn import GlobalBatchNorm2d, convert_to_global_batchnorm


def _worker(rank: int, world: int, port: int, x: torch.Tensor, queue) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(0)
    bn = GlobalBatchNorm2d(3)
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([1.0, 2.0, 0.5]))
    part = x.chunk(world)[rank].clone().requires_grad_(True)
    out = bn(part)
    (out * torch.arange(out.numel()).reshape(out.shape).float()).sum().backward()
    # numpy copies travel by value: a tensor would be shared through a file descriptor that
    # dies with this process if it exits before the parent has received it
    tensors = (out.detach(), part.grad, bn.weight.grad, bn.running_mean, bn.running_var)
    stats = (bn.running_mean.clone(), bn.running_var.clone())
    half = bn(part.detach().bfloat16())  # as under bf16 autocast: float32 statistics, a bf16 output
    assert half.dtype == torch.bfloat16 and bn.running_mean.dtype == torch.float32
    with torch.no_grad():
        bn.running_mean.copy_(stats[0]), bn.running_var.copy_(stats[1])
    queue.put((rank, *(t.numpy().copy() for t in tensors), half.float().detach().numpy().copy()))
    dist.destroy_process_group()


@pytest.mark.slow
def test_global_batchnorm_matches_one_big_batch():
    torch.manual_seed(1)
    x = torch.randn(4, 3, 5, 5) * 3 + 1
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    with socket.socket() as sock:  # a free port for the process group's rendezvous
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    procs = [ctx.Process(target=_worker, args=(r, 2, port, x, queue)) for r in range(2)]
    for p in procs:
        p.start()
    results = {}
    for _ in procs:
        rank, *arrays = queue.get(timeout=120)
        results[rank] = [torch.from_numpy(a) for a in arrays]
    for p in procs:
        p.join(timeout=60)

    ref = nn.BatchNorm2d(3)
    with torch.no_grad():
        ref.weight.copy_(torch.tensor([1.0, 2.0, 0.5]))
    full = x.clone().requires_grad_(True)
    parts = ref(full).chunk(2)
    (sum((p * torch.arange(p.numel()).reshape(p.shape).float()).sum() for p in parts)).backward()
    out = torch.cat([results[0][0], results[1][0]])
    grad = torch.cat([results[0][1], results[1][1]])
    assert torch.allclose(out, torch.cat(parts).detach(), atol=1e-5)
    assert torch.allclose(grad, full.grad, atol=1e-4)
    assert torch.allclose(
        results[0][2] + results[1][2], ref.weight.grad, atol=1e-3
    )  # DDP sums (averages) these
    assert torch.allclose(torch.cat([results[0][5], results[1][5]]), out, atol=0.05)  # bf16 rounding
    assert torch.allclose(results[0][3], ref.running_mean, atol=1e-6)
    assert torch.allclose(results[0][4], ref.running_var, atol=1e-5)


def test_convert_keeps_state_and_skips_other_norms():
    net = nn.Sequential(
        nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.Sequential(nn.BatchNorm2d(4)), nn.LayerNorm(4)
    )
    net[1].running_mean.fill_(0.5)
    net[1].requires_grad_(False)  # frozen (train.freeze, model.train_backbone: false) stays frozen
    weight = net[1].weight
    convert_to_global_batchnorm(net)
    assert net[1].weight is weight and not net[1].weight.requires_grad and not net[1].bias.requires_grad
    assert net[2][0].weight.requires_grad
    assert type(net[1]) is GlobalBatchNorm2d and type(net[2][0]) is GlobalBatchNorm2d
    assert type(net[3]) is nn.LayerNorm
    assert torch.all(net[1].running_mean == 0.5)
