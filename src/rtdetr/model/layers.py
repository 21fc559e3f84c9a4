"""Building blocks shared by the backbones and the encoder: activations, conv + norm, frozen BatchNorm,
conv + norm fusion for deployment and an exact fast 3x3 stride-2 max pool."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

_ACTIVATIONS = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "leaky_relu": nn.LeakyReLU,
    "hardswish": nn.Hardswish,
    "mish": nn.Mish,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
}


def get_activation(name: str | None) -> nn.Module:
    """A fresh activation module by name; None or "identity" gives nn.Identity."""
    if name is None or name == "identity":
        return nn.Identity()
    if name not in _ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; available: {', '.join(sorted(_ACTIVATIONS))}")
    return _ACTIVATIONS[name]()


def _inplace_ok() -> bool:
    return not torch.is_grad_enabled() and not torch.jit.is_tracing() and not torch.jit.is_scripting()


def act_(act: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """`act(x)`, computed in place on `x` (a fresh intermediate the caller owns) when autograd is off;
    the same values, one temporary less."""
    if _inplace_ok():
        if isinstance(act, nn.ReLU):
            return F.relu_(x)
        if isinstance(act, nn.SiLU):
            return F.silu(x, inplace=True)
    return act(x)


def add_(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """`x + y`, in place on `x` (a fresh intermediate the caller owns) when autograd is off."""
    return x.add_(y) if _inplace_ok() and x.shape == torch.broadcast_shapes(x.shape, y.shape) else x + y


def channels_last_dense(t: torch.Tensor) -> bool:
    """A 4-d tensor laid out channels-last without gaps (and not also plain contiguous)."""
    return t.dim() == 4 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last)


class _ContiguousGrad(torch.autograd.Function):
    """Identity whose backward hands on its gradient contiguous in the forward input's layout."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.memory_format = torch.channels_last if channels_last_dense(x) else torch.contiguous_format
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return grad.contiguous(memory_format=ctx.memory_format)


def contiguous_grad(x: torch.Tensor) -> torch.Tensor:
    """`x`, whose gradient arrives contiguous in x's memory format. For a map that is concatenated (or
    sliced) next: the concatenation's backward gives each input a strided slice of its gradient, and
    ATen's CPU batch-norm backward on a channels-last input with such a gradient takes a slow path; a
    contiguous copy of the gradient avoids it (docs/benchmarks.md, "Training throughput")."""
    if (
        not (x.requires_grad and torch.is_grad_enabled())
        or torch.jit.is_tracing()
        or torch.jit.is_scripting()
    ):
        return x
    return _ContiguousGrad.apply(x)


class ConvNormLayer(nn.Module):
    """Conv2d (no bias, 'same' padding for odd kernels) -> BatchNorm2d -> activation."""

    def __init__(
        self,
        ch_in: int,
        ch_out: int,
        kernel_size: int,
        stride: int = 1,
        padding: int | None = None,
        act: str | None = None,
    ):
        super().__init__()
        padding = (kernel_size - 1) // 2 if padding is None else padding
        self.conv = nn.Conv2d(ch_in, ch_out, kernel_size, stride, padding=padding, bias=False)
        self.norm = nn.BatchNorm2d(ch_out)
        self.act = get_activation(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return act_(self.act, self.norm(self.conv(x)))

    @torch.no_grad()
    def convert_to_deploy(self) -> None:
        """Fold the (eval-statistics) norm into the conv: `conv` gains a bias, `norm` becomes Identity."""
        if not isinstance(self.norm, nn.Identity):
            self.conv, self.norm = fuse_conv_norm(self.conv, self.norm), nn.Identity()


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm2d with fixed statistics and affine parameters (all buffers, never trained).

    State-dict keys are those of nn.BatchNorm2d (weight, bias, running_mean, running_var);
    a `num_batches_tracked` entry in a loaded state dict is ignored.
    """

    def __init__(self, num_features: int, eps: float = 1e-5):
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        state_dict.pop(prefix + "num_batches_tracked", None)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        shift = self.bias - self.running_mean * scale
        return x * scale.reshape(1, -1, 1, 1) + shift.reshape(1, -1, 1, 1)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}"


def freeze_batch_norm(module: nn.Module) -> nn.Module:
    """Replace every nn.BatchNorm2d inside `module` (in place) by a FrozenBatchNorm2d with its values."""
    if isinstance(module, nn.BatchNorm2d):
        frozen = FrozenBatchNorm2d(module.num_features, module.eps)
        with torch.no_grad():
            frozen.weight.copy_(module.weight)
            frozen.bias.copy_(module.bias)
            frozen.running_mean.copy_(module.running_mean)
            frozen.running_var.copy_(module.running_var)
        return frozen
    for name, child in module.named_children():
        new_child = freeze_batch_norm(child)
        if new_child is not child:
            setattr(module, name, new_child)
    return module


def is_norm2d(module: nn.Module) -> bool:
    return isinstance(module, (nn.BatchNorm2d, FrozenBatchNorm2d))


@torch.no_grad()
def fuse_conv_norm(conv: nn.Conv2d, norm: nn.Module) -> nn.Conv2d:
    """A Conv2d (with bias) computing norm(conv(x)) with the norm's running (eval) statistics."""
    scale = norm.weight * (norm.running_var + norm.eps).rsqrt()
    bias = conv.bias if conv.bias is not None else torch.zeros_like(norm.running_mean)
    fused = nn.Conv2d(
        conv.in_channels,
        conv.out_channels,
        conv.kernel_size,
        conv.stride,
        conv.padding,
        conv.dilation,
        conv.groups,
        bias=True,
        padding_mode=conv.padding_mode,
    ).to(conv.weight.device, conv.weight.dtype)
    fused.weight.copy_(conv.weight * scale.reshape(-1, 1, 1, 1))
    fused.bias.copy_((bias - norm.running_mean) * scale + norm.bias)
    fused.requires_grad_(conv.weight.requires_grad)
    return fused


@torch.no_grad()
def fuse_sequential_conv_norms_(module: nn.Module) -> nn.Module:
    """In every nn.Sequential inside `module`, fold each Conv2d directly followed by a BatchNorm2d or
    FrozenBatchNorm2d into the conv (the norm becomes nn.Identity, so indices and names stay); in place."""
    for seq in [m for m in module.modules() if isinstance(m, nn.Sequential)]:
        names = list(seq._modules)
        for a, b in zip(names, names[1:]):
            conv, norm = seq._modules[a], seq._modules[b]
            if isinstance(conv, nn.Conv2d) and is_norm2d(norm):
                seq._modules[a], seq._modules[b] = fuse_conv_norm(conv, norm), nn.Identity()
    return module


def max_pool_3x3_s2(x: torch.Tensor) -> torch.Tensor:
    """`F.max_pool2d(x, 3, stride=2, padding=1)`, bit-exact (max is exact), computed as maxima of strided
    views, which outrun ATen's CPU kernel for NCHW maps without autograd. Where a gradient is needed,
    ATen's kernel: the maxima's backward would cost more than max_pool2d's forward and backward
    together. Exported graphs use max_pool2d too."""
    if (
        (x.requires_grad and torch.is_grad_enabled())
        or torch.jit.is_tracing() or torch.jit.is_scripting() or torch.onnx.is_in_onnx_export() or x.dim() != 4
    ):  # fmt: skip
        return F.max_pool2d(x, kernel_size=3, stride=2, padding=1)
    x = F.pad(x, [1, 1, 1, 1], value=float("-inf"))
    x = torch.maximum(torch.maximum(x[:, :, :-2:2], x[:, :, 1:-1:2]), x[:, :, 2::2])
    return torch.maximum(torch.maximum(x[..., :-2:2], x[..., 1:-1:2]), x[..., 2::2])
