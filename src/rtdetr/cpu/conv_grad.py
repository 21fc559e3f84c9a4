"""Convolution weight gradients for training on the CPU: im2col + GEMM where oneDNN's kernel is slow.

On CPUs without AVX-512, oneDNN computes a convolution's weight gradient with its direct AVX2
kernel, which is slower than ATen's own im2col + GEMM (MKL) for every convolution of an RT-DETR
except the 3-channel stem (per-convolution and whole-step numbers: docs/benchmarks.md, "Convolution
weight gradients"). oneDNN stays in charge of the forward pass and the input gradient, where it is
the faster one. On AVX-512 CPUs oneDNN has GEMM-based kernels of its own and nothing changes.

``use_gemm_weight_grad(model)`` switches the model's ``nn.Conv2d`` modules over (names, parameters and
outputs unchanged; only gradients in CPU float32 training take the other path, so evaluation, export,
GPUs and mixed precision run the plain module). ``RTDETR_CONV_WEIGHT_GRAD=gemm`` or ``onednn``
overrides the choice by CPU.
"""

from __future__ import annotations

import logging
import os

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)

ENV = "RTDETR_CONV_WEIGHT_GRAD"
CHOICES = ("gemm", "onednn")
MIN_IN_CHANNELS = 16  # narrower inputs (the RGB stem): oneDNN's weight gradient is the faster one


def gemm_weight_grad_wanted() -> bool:
    """Whether this CPU gets the GEMM weight gradient: not on AVX-512 CPUs, unless RTDETR_CONV_WEIGHT_GRAD says."""
    choice = os.environ.get(ENV, "").strip().lower()
    if choice in CHOICES:
        return choice == "gemm"
    if choice:
        log.warning("%s=%s is not one of %s; choosing by CPU", ENV, choice, ", ".join(CHOICES))
    return not torch.backends.cpu.get_cpu_capability().startswith("AVX512")


class _Conv2dGemmWeightGrad(torch.autograd.Function):
    """conv2d whose backward takes the input gradient from ATen's dispatch (oneDNN) and the weight
    gradient from ATen's im2col + GEMM kernel. Only dilation 1 and groups 1."""

    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding):
        ctx.save_for_backward(x, weight)
        ctx.stride, ctx.padding = stride, padding
        return F.conv2d(x, weight, bias, stride, padding)

    @staticmethod
    def backward(ctx, grad_out):
        x, weight = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        grad_x = grad_w = grad_b = None
        if need_x:
            grad_x = torch.ops.aten.convolution_backward(
                grad_out,
                x,
                weight,
                None,
                ctx.stride,
                ctx.padding,
                [1, 1],
                False,
                [0, 0],
                1,
                [True, False, False],
            )[0]
        if need_w:
            cl = torch.channels_last
            if x.is_contiguous(memory_format=cl) or weight.is_contiguous(memory_format=cl):
                # ATen's kernel then works channels-last and needs both so: a contiguous weight fails,
                # a contiguous input gives a wrong gradient (torch 2.14)
                x, weight = x.contiguous(memory_format=cl), weight.contiguous(memory_format=cl)
            grad_w = torch.ops.aten._slow_conv2d_backward.output_mask(
                grad_out, x, weight, weight.shape[2:], ctx.stride, ctx.padding, [False, True, False]
            )[1]
        if need_b:
            grad_b = grad_out.sum((0, 2, 3))
        return grad_x, grad_w, grad_b, None, None


def _exporting() -> bool:
    return (
        torch.jit.is_tracing()
        or torch.jit.is_scripting()
        or torch.onnx.is_in_onnx_export()
        or torch.compiler.is_compiling()
    )


class GemmWeightGradConv2d(nn.Conv2d):
    """nn.Conv2d whose weight gradient in CPU float32 training comes from im2col + GEMM."""

    def _conv_forward(self, input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None):
        if (
            weight.requires_grad
            and torch.is_grad_enabled()
            and input.device.type == "cpu"
            and input.dtype == weight.dtype == torch.float32
            and not torch.is_autocast_enabled("cpu")
            and not _exporting()
        ):
            return _Conv2dGemmWeightGrad.apply(input, weight, bias, list(self.stride), list(self.padding))
        return super()._conv_forward(input, weight, bias)


def _eligible(module: nn.Module) -> bool:
    return (
        type(module) is nn.Conv2d
        and module.groups == 1
        and tuple(module.dilation) == (1, 1)
        and module.padding_mode == "zeros"
        and not isinstance(module.padding, str)
        and module.in_channels >= MIN_IN_CHANNELS
    )


def use_gemm_weight_grad(model: nn.Module) -> int:
    """Switch ``model``'s plain ``nn.Conv2d`` modules (groups 1, dilation 1, zero padding, at least 16
    input channels) to GemmWeightGradConv2d, in place, when this CPU benefits; returns how many."""
    if not gemm_weight_grad_wanted():
        return 0
    count = 0
    for module in model.modules():
        if _eligible(module):
            module.__class__ = GemmWeightGradConv2d
            count += 1
    log.debug("convolution weight gradients by im2col + GEMM: %d convolutions", count)
    return count
