"""Batch statistics over all processes on the CPU, where torch's SyncBatchNorm does not run."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn


def _global_mean_var(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Per-channel mean and (biased) variance of ``x`` [B, C, H, W] over every process's batch.

    Each rank's exact local mean and sum of squared deviations are gathered and combined in float64
    (Chan et al.'s parallel variance). Returns (mean, var) in x's dtype and the total count.
    """
    count = x.numel() // x.shape[1]
    var, mean = torch.var_mean(x.detach(), dim=(0, 2, 3), unbiased=False)
    local = torch.cat([mean.double(), var.double() * count, mean.new_tensor([count], dtype=torch.float64)])
    gathered = [torch.empty_like(local) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, local)
    parts = torch.stack(gathered)
    channels = x.shape[1]
    counts, total = parts[:, -1:], parts[:, -1].sum()
    means = parts[:, :channels]
    mean64 = (means * counts).sum(0) / total
    var64 = (parts[:, channels : 2 * channels].sum(0) + (counts * (means - mean64).square()).sum(0)) / total
    return mean64.to(x.dtype), var64.to(x.dtype), float(total)


class _GlobalBatchNorm(torch.autograd.Function):
    """y = (x - mean) * invstd * weight + bias with the global statistics; the backward is the
    analytic BatchNorm gradient with its two sums all-reduced (as SyncBatchNorm does), which keeps
    float32 gradients as accurate as BatchNorm2d's. Autograd through the decomposed formula loses
    about 1e-3 of the gradient in channels of tiny variance."""

    @staticmethod
    def forward(ctx, x, weight, bias, mean, invstd, total: float):
        xhat = (x - mean[None, :, None, None]) * invstd[None, :, None, None]
        ctx.save_for_backward(x, weight, mean, invstd)
        ctx.total = total
        return xhat * weight[None, :, None, None] + bias[None, :, None, None]

    @staticmethod
    def backward(ctx, dy):
        x, weight, mean, invstd = ctx.saved_tensors
        xmu = x - mean[None, :, None, None]
        channels = x.shape[1]
        # sums accumulated in float64, as ATen's CPU BatchNorm does: dy - mean(dy) cancels heavily
        local = torch.cat(
            [dy.sum((0, 2, 3), dtype=torch.float64), (dy * xmu).sum((0, 2, 3), dtype=torch.float64)]
        )
        grad_bias = local[:channels].to(dy.dtype).clone()  # this rank's share (DDP averages the ranks');
        grad_weight = (local[channels:] * invstd).to(dy.dtype)  # copies before the in-place all_reduce
        dist.all_reduce(local)
        sum_dy, sum_dy_xmu = local[:channels].to(dy.dtype), local[channels:].to(dy.dtype)
        scale = (invstd * weight)[None, :, None, None]
        dx = (
            dy
            - (sum_dy / ctx.total)[None, :, None, None]
            - xmu * (invstd.square() * sum_dy_xmu / ctx.total)[None, :, None, None]
        ) * scale
        return dx, grad_weight, grad_bias, None, None, None


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics cover the batches of all processes, so W processes with
    batch B normalise (and back-propagate) exactly as one process with batch W x B. Eval is unchanged."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (
            self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        ):
            return super().forward(x)
        dtype = x.dtype  # under bf16/fp16 autocast: statistics and normalisation in float32, as BatchNorm2d
        if dtype in (torch.bfloat16, torch.float16):
            x = x.float()
        mean, var, total = _global_mean_var(x)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                self.running_mean.lerp_(mean, self.momentum)
                self.running_var.lerp_(var * total / max(total - 1, 1), self.momentum)
        weight = self.weight if self.affine else torch.ones_like(mean)
        bias = self.bias if self.affine else torch.zeros_like(mean)
        return _GlobalBatchNorm.apply(x, weight, bias, mean, torch.rsqrt(var + self.eps), total).to(dtype)


def convert_to_global_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every nn.BatchNorm2d below ``module`` (in place) by a GlobalBatchNorm2d that keeps its
    parameters (the same tensors, so frozen ones stay frozen) and statistics."""
    for name, child in module.named_children():
        if type(child) is nn.BatchNorm2d:
            new = GlobalBatchNorm2d(
                child.num_features, child.eps, child.momentum, child.affine, child.track_running_stats
            )
            if child.affine:
                new.weight, new.bias = child.weight, child.bias
            if child.track_running_stats:
                new.running_mean, new.running_var = child.running_mean, child.running_var
                new.num_batches_tracked = child.num_batches_tracked
            new.train(child.training)
            setattr(module, name, new)
        else:
            convert_to_global_batchnorm(child)
    return module
