"""HybridEncoder: per-level input projection, AIFI self-attention on chosen levels, CCFM fusion.

Parameter names follow the original RT-DETR v1 code (`input_proj.0.0`, `encoder.0.layers.0.self_attn`,
`lateral_convs`, `fpn_blocks`, `downsample_convs`, `pan_blocks`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from rtdetr.model.layers import ConvNormLayer, act_, add_, contiguous_grad, get_activation

PE_ORDERS = ("w_major", "h_major")


def sincos_position_embedding(
    height: int,
    width: int,
    dim: int,
    temperature: float = 10000.0,
    order: str = "w_major",
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """2-D sin-cos position embedding [1, H*W, dim] for tokens flattened h-major (row by row).

    "w_major" reproduces the original RT-DETR (and TAO): the grid comes from
    `meshgrid(w, h, indexing="ij")`, so token k gets (w=k // H, h=k % H) laid out
    [sin w, cos w, sin h, cos h]; for non-square maps that differs from the token's true position.
    "h_major" gives token k its true position (h=k // W, w=k % W) laid out [sin h, cos h, sin w, cos w],
    as transformers >= 5 does. Both agree on square maps. Computed in `dtype` (at least float32).
    """
    dtype = torch.promote_types(dtype, torch.float32)
    if dim % 4:
        raise ValueError(f"embedding dim must be divisible by 4 for 2-D sin-cos, got {dim}")
    if order not in PE_ORDERS:
        raise ValueError(f"pe order must be one of {PE_ORDERS}, got {order!r}")
    omega = 1.0 / temperature ** (torch.arange(dim // 4, dtype=dtype) / (dim // 4))
    rows, cols = torch.arange(height, dtype=dtype), torch.arange(width, dtype=dtype)
    first, second = torch.meshgrid((cols, rows) if order == "w_major" else (rows, cols), indexing="ij")
    out_a = first.flatten()[:, None] * omega[None]
    out_b = second.flatten()[:, None] * omega[None]
    return torch.cat([out_a.sin(), out_a.cos(), out_b.sin(), out_b.cos()], dim=1)[None]


class TransformerEncoderLayer(nn.Module):
    """Post-norm transformer layer; the position embedding is added to queries and keys only."""

    def __init__(
        self, d_model: int, nhead: int, dim_feedforward: int, dropout: float = 0.0, act: str = "gelu"
    ):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout, batch_first=True)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.activation = get_activation(act)

    def forward(self, src: torch.Tensor, pos_embed: torch.Tensor) -> torch.Tensor:
        """src [B, L, C], pos_embed [1, L, C] -> [B, L, C]."""
        q = k = src + pos_embed
        attn = self.self_attn(q, k, value=src, need_weights=False)[0]
        src = self.norm1(src + self.dropout1(attn))
        ffn = self.linear2(self.dropout(self.activation(self.linear1(src))))
        return self.norm2(src + self.dropout2(ffn))


class TransformerEncoder(nn.Module):
    def __init__(self, num_layers: int, **layer_kwargs):
        super().__init__()
        self.layers = nn.ModuleList(TransformerEncoderLayer(**layer_kwargs) for _ in range(num_layers))

    def forward(self, src: torch.Tensor, pos_embed: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            src = layer(src, pos_embed)
        return src


class RepVggBlock(nn.Module):
    """act(BN(conv3x3(x)) + BN(conv1x1(x))); `convert_to_deploy` fuses both into one 3x3 conv."""

    def __init__(self, ch_in: int, ch_out: int, act: str = "relu"):
        super().__init__()
        self.ch_in, self.ch_out = ch_in, ch_out
        self.conv1 = ConvNormLayer(ch_in, ch_out, 3, 1, padding=1)
        self.conv2 = ConvNormLayer(ch_in, ch_out, 1, 1, padding=0)
        self.act = get_activation(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if hasattr(self, "conv"):
            return act_(self.act, self.conv(x))
        return act_(self.act, add_(self.conv1(x), self.conv2(x)))

    @torch.no_grad()
    def convert_to_deploy(self) -> None:
        if hasattr(self, "conv"):
            return
        k3, b3 = _fuse_conv_bn(self.conv1)
        k1, b1 = _fuse_conv_bn(self.conv2)
        self.conv = nn.Conv2d(self.ch_in, self.ch_out, 3, 1, padding=1).to(k3.device, k3.dtype)
        self.conv.weight.copy_(k3 + F.pad(k1, [1, 1, 1, 1]))
        self.conv.bias.copy_(b3 + b1)
        del self.conv1, self.conv2


def _fuse_conv_bn(branch: ConvNormLayer) -> tuple[torch.Tensor, torch.Tensor]:
    """Kernel and bias of a bias-free conv followed by BatchNorm (eval statistics)."""
    norm = branch.norm
    std = (norm.running_var + norm.eps).sqrt()
    scale = norm.weight / std
    return branch.conv.weight * scale.reshape(-1, 1, 1, 1), norm.bias - norm.running_mean * scale


class CSPRepLayer(nn.Module):
    """CSP block: conv3(RepVGG^n(conv1(x)) + conv2(x)), hidden width int(out * expansion)."""

    def __init__(
        self, ch_in: int, ch_out: int, num_blocks: int = 3, expansion: float = 1.0, act: str = "silu"
    ):
        super().__init__()
        hidden = int(ch_out * expansion)
        self.conv1 = ConvNormLayer(ch_in, hidden, 1, 1, act=act)
        self.conv2 = ConvNormLayer(ch_in, hidden, 1, 1, act=act)
        self.bottlenecks = nn.Sequential(*[RepVggBlock(hidden, hidden, act=act) for _ in range(num_blocks)])
        self.conv3 = ConvNormLayer(hidden, ch_out, 1, 1, act=act) if hidden != ch_out else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv3(self.bottlenecks(self.conv1(x)) + self.conv2(x))


class HybridEncoder(nn.Module):
    """Backbone maps -> `len(in_channels)` fused maps of `hidden_dim` channels at the same strides.

    forward: list of [B, in_channels[i], H_i, W_i] (strides increasing by 2x) ->
    list of [B, hidden_dim, H_i, W_i]. Works for 1..4 levels and any input size.

    With a `features` dict, forward also stores there "srcs" (the input-projected maps, the
    `use_encoder_idx` levels replaced by the transformer encoder's output) and "dsrcs" (the
    returned FPN/PAN maps), each a list of [B, hidden_dim, H_i, W_i]: what distillation compares.
    """

    def __init__(
        self,
        in_channels: Sequence[int] = (512, 1024, 2048),
        feat_strides: Sequence[int] = (8, 16, 32),
        hidden_dim: int = 256,
        nhead: int = 8,
        dim_feedforward: int = 1024,
        dropout: float = 0.0,
        enc_act: str = "gelu",
        use_encoder_idx: Sequence[int] = (2,),
        num_encoder_layers: int = 1,
        pe_temperature: float = 10000.0,
        expansion: float = 1.0,
        depth_mult: float = 1.0,
        act: str = "silu",
        pe_order: str = "w_major",
    ):
        super().__init__()
        num_levels = len(in_channels)
        if any(not 0 <= i < num_levels for i in use_encoder_idx):
            raise ValueError(f"use_encoder_idx {list(use_encoder_idx)} must index the {num_levels} levels")
        if pe_order not in PE_ORDERS:
            raise ValueError(f"pe_order must be one of {PE_ORDERS}, got {pe_order!r}")
        self.in_channels = list(in_channels)
        self.hidden_dim = hidden_dim
        self.use_encoder_idx = list(use_encoder_idx)
        self.num_encoder_layers = num_encoder_layers
        self.pe_temperature = pe_temperature
        self.pe_order = pe_order
        self._pos_cache: dict[tuple, torch.Tensor] = {}
        self.out_channels = [hidden_dim] * num_levels
        self.out_strides = list(feat_strides)

        self.input_proj = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c, hidden_dim, 1, bias=False), nn.BatchNorm2d(hidden_dim))
            for c in in_channels
        )
        self.encoder = nn.ModuleList(
            TransformerEncoder(
                num_encoder_layers,
                d_model=hidden_dim,
                nhead=nhead,
                dim_feedforward=dim_feedforward,
                dropout=dropout,
                act=enc_act,
            )
            for _ in self.use_encoder_idx
        )
        num_blocks = round(3 * depth_mult)
        self.lateral_convs = nn.ModuleList(
            ConvNormLayer(hidden_dim, hidden_dim, 1, 1, act=act) for _ in range(num_levels - 1)
        )
        self.fpn_blocks = nn.ModuleList(
            CSPRepLayer(2 * hidden_dim, hidden_dim, num_blocks, expansion, act) for _ in range(num_levels - 1)
        )
        self.downsample_convs = nn.ModuleList(
            ConvNormLayer(hidden_dim, hidden_dim, 3, 2, act=act) for _ in range(num_levels - 1)
        )
        self.pan_blocks = nn.ModuleList(
            CSPRepLayer(2 * hidden_dim, hidden_dim, num_blocks, expansion, act) for _ in range(num_levels - 1)
        )

    def _position_embedding(
        self, h: int, w: int, c: int, device: torch.device, dtype: torch.dtype
    ) -> torch.Tensor:
        """AIFI position embedding [1, H*W, C] in `dtype`, cached per size/device/dtype (a plain dict,
        not a buffer, so it never enters the state dict); recomputed when tracing or exporting."""
        if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
            return sincos_position_embedding(h, w, c, self.pe_temperature, self.pe_order, dtype).to(
                device, dtype
            )
        key = (h, w, c, str(device), dtype, self.pe_temperature, self.pe_order)
        if key not in self._pos_cache:
            with torch.inference_mode(False):  # a normal tensor: usable by autograd later on
                pos = sincos_position_embedding(h, w, c, self.pe_temperature, self.pe_order, dtype)
                self._pos_cache[key] = pos.to(device, dtype)
        return self._pos_cache[key]

    def forward(
        self, feats: list[torch.Tensor], features: dict[str, object] | None = None
    ) -> list[torch.Tensor]:
        if len(feats) != len(self.in_channels):
            raise ValueError(f"expected {len(self.in_channels)} feature maps, got {len(feats)}")
        # (their gradients come back as slices of the concatenations below: see contiguous_grad)
        proj = [contiguous_grad(proj_layer(feat)) for proj_layer, feat in zip(self.input_proj, feats)]

        if self.num_encoder_layers > 0:
            for encoder, idx in zip(self.encoder, self.use_encoder_idx):
                b, c, h, w = proj[idx].shape
                pos = self._position_embedding(h, w, c, proj[idx].device, proj[idx].dtype)
                memory = encoder(proj[idx].flatten(2).transpose(1, 2), pos)
                proj[idx] = memory.transpose(1, 2).reshape(b, c, h, w)
        if features is not None:
            features["srcs"] = list(proj)

        # top-down: the lateral conv output replaces the higher map; fuse it upsampled with the lower one
        inner = [proj[-1]]
        for i, low in enumerate(reversed(proj[:-1])):
            high = self.lateral_convs[i](inner[0])
            inner[0] = high
            up = F.interpolate(high, size=low.shape[-2:], mode="nearest")
            inner.insert(0, self.fpn_blocks[i](torch.cat([up, low], dim=1)))

        # bottom-up
        outs = [inner[0]]
        for i, high in enumerate(inner[1:]):
            down = self.downsample_convs[i](outs[-1])
            outs.append(self.pan_blocks[i](torch.cat([down, high], dim=1)))
        if features is not None:
            features["dsrcs"] = list(outs)
        return outs
