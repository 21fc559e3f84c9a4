"""Model size: parameters and FLOPs (torch.utils.flop_counter)."""

from __future__ import annotations

import copy

import torch
from torch.utils.flop_counter import FlopCounterMode


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def count_flops(model: torch.nn.Module, height: int, width: int, batch: int = 1) -> int:
    """FLOPs (a multiply-add counts 2) of one eval-mode forward pass on a [batch, 3, H, W] input.

    The pass runs on a copy of the model on the meta device: shapes only, no memory for activations
    (any input size can be counted), and attention is counted as its matrix products (the CPU's fused
    attention kernel has no FLOP formula)."""
    shadow = copy.deepcopy(model).to("meta").eval()
    counter = FlopCounterMode(display=False)
    with counter:
        shadow(torch.empty(batch, 3, height, width, device="meta"))
    return counter.get_total_flops()
