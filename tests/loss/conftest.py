"""Random detection outputs and targets for the loss tests."""

from __future__ import annotations

import pytest
import torch


def random_boxes(n: int, generator: torch.Generator) -> torch.Tensor:
    """[n, 4] valid normalised cxcywh boxes inside the image."""
    wh = torch.rand(n, 2, generator=generator) * 0.4 + 0.05
    centre = wh / 2 + torch.rand(n, 2, generator=generator) * (1 - wh)
    return torch.cat([centre, wh], -1)


@pytest.fixture
def make_targets():
    """make_targets(sizes, num_classes, seed) -> list of {"labels" [N], "boxes" [N, 4] cxcywh}."""

    def make(sizes, num_classes, seed=0):
        g = torch.Generator().manual_seed(seed)
        return [
            {"labels": torch.randint(0, num_classes, (n,), generator=g), "boxes": random_boxes(n, g)}
            for n in sizes
        ]

    return make


@pytest.fixture
def make_outputs():
    """make_outputs(batch, queries, num_classes, seed) -> {"pred_logits" [B, Q, C], "pred_boxes" [B, Q, 4]}
    (leaf tensors that require grad)."""

    def make(batch, queries, num_classes, seed=0):
        g = torch.Generator().manual_seed(seed)
        logits = torch.randn(batch, queries, num_classes, generator=g) * 2
        boxes = random_boxes(batch * queries, g).view(batch, queries, 4)
        return {"pred_logits": logits.requires_grad_(), "pred_boxes": boxes.requires_grad_()}

    return make
