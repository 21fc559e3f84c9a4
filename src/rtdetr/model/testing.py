"""Reference helpers shared by the tests and the benchmarks (bench/).

transformers is only a development dependency, so it is imported inside the functions that need it.
"""

from __future__ import annotations

import torch
from torch import nn


def hf_config(name: str, num_labels: int = 80):
    """transformers' ``RTDetrConfig`` of the reference model ``name`` ("r18vd" or "r50vd", the
    latter transformers' defaults), pure-torch path (custom kernels disabled), no eval size."""
    from transformers import RTDetrConfig, RTDetrResNetConfig

    if name == "r18vd":
        backbone = RTDetrResNetConfig(
            depths=[2, 2, 2, 2], layer_type="basic", hidden_sizes=[64, 128, 256, 512], out_indices=[2, 3, 4]
        )
        return RTDetrConfig(
            backbone_config=backbone,
            encoder_in_channels=[128, 256, 512],
            hidden_expansion=0.5,
            decoder_layers=3,
            freeze_backbone_batch_norms=False,
            num_labels=num_labels,
            disable_custom_kernels=True,
            eval_size=None,
        )
    if name == "r50vd":
        return RTDetrConfig(num_labels=num_labels, disable_custom_kernels=True, eval_size=None)
    raise ValueError(f"unknown model {name!r}; choose r18vd or r50vd")


def randomize_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Variance-preserving random weights in every layer, in place, from a generator seeded with
    ``seed``: including the zero-initialised heads and the norm layers' statistics, so that every
    parameter influences the outputs (transformers' own init has std 0.01 and zero heads, whose tied
    scores would make comparisons nearly vacuous). Returns ``model``."""
    g = torch.Generator().manual_seed(seed)

    def normal(t: torch.Tensor, std: float) -> None:
        t.copy_(torch.randn(t.shape, generator=g, dtype=t.dtype) * std)

    with torch.no_grad():
        for module in model.modules():
            if (
                isinstance(module, (nn.BatchNorm2d, nn.LayerNorm))
                or "FrozenBatchNorm" in type(module).__name__
            ):
                module.weight.copy_(torch.rand(module.weight.shape, generator=g) + 0.5)
                normal(module.bias, 0.1)
                if getattr(module, "running_mean", None) is not None:
                    normal(module.running_mean, 0.1)
                    module.running_var.copy_(torch.rand(module.running_var.shape, generator=g) + 0.5)
            elif isinstance(module, (nn.Conv2d, nn.Linear)):
                normal(module.weight, module.weight[0].numel() ** -0.5)
                if module.bias is not None:
                    module.bias.add_(torch.randn(module.bias.shape, generator=g) * 0.1)
            elif isinstance(module, nn.Embedding):
                normal(module.weight, 1.0)
            elif isinstance(module, nn.MultiheadAttention):
                normal(module.in_proj_weight, module.embed_dim**-0.5)
                normal(module.in_proj_bias, 0.1)
    return model
