"""Model size: parameters and FLOPs (torch.utils.flop_counter)."""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def count_flops(model: torch.nn.Module, height: int, width: int, batch: int = 1) -> int:
    """FLOPs (a multiply-add counts 2) of one eval-mode forward pass on a [batch, 3, H, W] input."""
    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False)
    with counter:
        model(torch.rand(batch, 3, height, width))
    model.train(was_training)
    return counter.get_total_flops()
