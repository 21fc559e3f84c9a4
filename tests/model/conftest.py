"""Shared helpers for model tests: tiny configurations and meaningful random weights."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from rtdetr.model import build_model
from rtdetr.model.testing import randomize_

TINY = dict(
    num_classes=5,
    backbone="resnet_18vd",
    num_queries=20,
    hidden_dim=64,
    feat_channels=[64, 64, 64],
    nheads=4,
    dim_feedforward=128,
    dec_dim_feedforward=128,
    dec_layers=3,
    dn_number=10,
    expansion=0.5,
)


def targets_for(batch: int, num_classes: int, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    """Random ground truth: image i has i + 1 boxes (normalised cxcywh)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(batch):
        n = i + 1
        centres = torch.rand(n, 2, generator=g) * 0.6 + 0.2
        sizes = torch.rand(n, 2, generator=g) * 0.3 + 0.05
        out.append(
            {
                "labels": torch.randint(0, num_classes, (n,), generator=g),
                "boxes": torch.cat([centres, sizes], 1),
            }
        )
    return out


@pytest.fixture
def tiny_model():
    """Builder of small RT-DETRs: tiny_model(**overrides) with seeded random weights."""

    def build(seed: int = 0, **overrides) -> nn.Module:
        torch.manual_seed(seed)
        return randomize_(build_model(**{**TINY, **overrides}), seed)

    return build


@pytest.fixture(scope="session")
def randomize():
    """randomize(model, seed=0): see `rtdetr.model.testing.randomize_`."""
    return randomize_


@pytest.fixture(scope="session")
def make_targets():
    """make_targets(batch, num_classes, seed=0): see `targets_for`."""
    return targets_for
