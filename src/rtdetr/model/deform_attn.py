"""Multi-scale deformable attention (Deformable DETR) using only `F.grid_sample`.

No custom kernels: it runs on any device, exports to ONNX (opset >= 16, GridSample) and takes any
number of levels of any (also non-square) size.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def multi_scale_deformable_attention(
    value: torch.Tensor,
    spatial_shapes: list[tuple[int, int]],
    grids: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """Bilinear sampling of every level at the given locations, weighted and summed.

    value [B, S, nH, hD] (S = sum of H_l * W_l, levels flattened h-major); grids [B, Q, nH, L, P, 2]:
    the sampling locations (x, y) as grid_sample coordinates in [-1, 1]; attention_weights
    [B, Q, nH, L, P] -> [B, Q, nH * hD]. Locations outside the map sample zeros.
    """
    b, _, n_heads, head_dim = value.shape
    _, q, _, n_levels, n_points, _ = grids.shape
    values = value.split([h * w for h, w in spatial_shapes], dim=1)
    # points before queries, one transpose for all levels: [B, Q, nH, L, P, 2] -> [L, B*nH, P, Q, 2], so that
    # grid_sample's output [B*nH, hD, P, Q] keeps the queries innermost: the weighting broadcasts over
    # hD and the sum over P reduces a middle axis, both along contiguous rows of Q (the query-major
    # layout would sum over an innermost axis of only P items, which the CPU reduces slowly)
    grids = grids.permute(3, 0, 2, 4, 1, 5).reshape(n_levels, b * n_heads, n_points, q, 2)
    # [B, Q, nH, L, P] -> [L, B*nH, 1, P, Q]
    weights = attention_weights.permute(3, 0, 2, 4, 1).reshape(n_levels, b * n_heads, 1, n_points, q)
    out = None  # summed level by level: no stacked copy of all samples, forward or backward
    for level, (h, w) in enumerate(spatial_shapes):
        # [B, H*W, nH, hD] -> [B*nH, hD, H, W]
        value_l = values[level].flatten(2).transpose(1, 2).reshape(b * n_heads, head_dim, h, w)
        sampled = F.grid_sample(
            value_l, grids[level], mode="bilinear", padding_mode="zeros", align_corners=False
        )
        part = (sampled * weights[level]).sum(2)  # [B*nH, hD, Q]
        out = part if out is None else out + part
    return out.reshape(b, n_heads * head_dim, q).transpose(1, 2)


class MSDeformableAttention(nn.Module):
    """Deformable cross-attention from queries to a flattened multi-level feature memory.

    Offsets are scaled by the reference box size: loc = ref_xy + offset / n_points * ref_wh * 0.5.
    """

    def __init__(self, embed_dim: int = 256, num_heads: int = 8, num_levels: int = 3, num_points: int = 4):
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} must be divisible by num_heads {num_heads}")
        self.embed_dim, self.num_heads = embed_dim, num_heads
        self.num_levels, self.num_points = num_levels, num_points
        self.head_dim = embed_dim // num_heads
        total_points = num_heads * num_levels * num_points
        self.sampling_offsets = nn.Linear(embed_dim, total_points * 2)
        self.attention_weights = nn.Linear(embed_dim, total_points)
        self.value_proj = nn.Linear(embed_dim, embed_dim)
        self.output_proj = nn.Linear(embed_dim, embed_dim)
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        nn.init.constant_(self.sampling_offsets.weight, 0.0)
        thetas = torch.arange(self.num_heads, dtype=torch.float32) * (2.0 * math.pi / self.num_heads)
        grid = torch.stack([thetas.cos(), thetas.sin()], -1)
        grid = grid / grid.abs().max(-1, keepdim=True).values
        grid = grid.reshape(self.num_heads, 1, 1, 2).tile([1, self.num_levels, self.num_points, 1])
        grid = grid * torch.arange(1, self.num_points + 1, dtype=torch.float32).reshape(1, 1, -1, 1)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.flatten())
        nn.init.constant_(self.attention_weights.weight, 0.0)
        nn.init.constant_(self.attention_weights.bias, 0.0)
        nn.init.xavier_uniform_(self.value_proj.weight)
        nn.init.constant_(self.value_proj.bias, 0.0)
        nn.init.xavier_uniform_(self.output_proj.weight)
        nn.init.constant_(self.output_proj.bias, 0.0)

    def forward(
        self,
        query: torch.Tensor,
        reference_points: torch.Tensor,
        value: torch.Tensor,
        spatial_shapes: list[tuple[int, int]],
    ) -> torch.Tensor:
        """query [B, Q, C]; reference_points [B, Q, 1 or L, 4] normalised cxcywh;
        value [B, S, C] flattened levels of sizes `spatial_shapes` [(H_l, W_l), ...] -> [B, Q, C]."""
        b, q, _ = query.shape
        n_heads, n_levels, n_points = self.num_heads, self.num_levels, self.num_points
        value = self.value_proj(value).reshape(b, value.shape[1], n_heads, self.head_dim)
        offsets = self.sampling_offsets(query).reshape(b, q, n_heads, n_levels, n_points, 2)
        weights = self.attention_weights(query).reshape(b, q, n_heads, n_levels * n_points)
        weights = weights.softmax(-1).reshape(b, q, n_heads, n_levels, n_points)
        # grid = 2 * (ref_xy + offset / P * ref_wh / 2) - 1, as (2 ref_xy - 1) + offset * (ref_wh / P),
        # with the per-query terms expanded to the offsets' shape first: ONNX Runtime multiplies
        # same-shape tensors on its fast path, but broadcasting over the innermost (x, y) pair is slow
        ref = reference_points[:, :, None, :, None, :]  # [B, Q, 1, 1 or L, 1, 4]
        scale = (ref[..., 2:] / n_points).expand_as(offsets)
        grids = offsets * scale + (2 * ref[..., :2] - 1).expand_as(offsets)
        out = multi_scale_deformable_attention(value, spatial_shapes, grids, weights)
        return self.output_proj(out)
