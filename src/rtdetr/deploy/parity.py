"""How far an exported model's outputs are from the PyTorch model's."""

from __future__ import annotations

from pathlib import Path

import torch

from rtdetr.deploy.onnx_backend import OnnxBackend
from rtdetr.deploy.torch_backend import TorchBackend


def parity(onnx_path: Path, model: torch.nn.Module, height: int, width: int, batch: int) -> float:
    """Max abs difference of pred_logits and pred_boxes (queries paired), ONNX Runtime (CPU) vs
    ``model`` (unfused) in PyTorch, on a random batch."""
    images = torch.rand(batch, 3, height, width, generator=torch.Generator().manual_seed(0))
    ours = TorchBackend(model, model.metadata, torch.device("cpu"), fuse=False)(images)
    theirs = OnnxBackend(onnx_path, device="cpu")(images)
    return output_difference(ours, theirs)


def output_difference(a: tuple[torch.Tensor, torch.Tensor], b: tuple[torch.Tensor, torch.Tensor]) -> float:
    """Largest abs difference between two runs' (pred_logits [B, Q, C], pred_boxes [B, Q, 4]), with the
    queries of each image paired to their nearest counterpart: near-equal encoder scores (e.g. on
    noise images) may pick the same queries in another order, which is not a difference."""
    worst = 0.0
    for la, ba, lb, bb in zip(*a, *b):
        qa, qb = torch.cat([la, ba], -1).double(), torch.cat([lb, bb], -1).double()
        distance = torch.cdist(qa, qb, p=float("inf"))  # [Q, Q]
        worst = max(worst, float(distance.min(1).values.max()), float(distance.min(0).values.max()))
    return worst
