"""FAN (Fully Attentional Networks) hybrid backbones, as TAO builds them for RT-DETR.

FAN (Zhou et al. 2022, "Understanding The Robustness in Vision Transformers") is a ViT whose blocks
pair self-attention over tokens with *channel attention*: each channel of an MLP's output is gated
by how well that channel's query profile over the tokens agrees with a per-token weight derived from
the keys (both softmaxed over the tokens). The hybrid variants replace the ViT patchify stem by the
first two ConvNeXt stages.

The network, and its parameter names, follow TAO's RT-DETR FAN backbone so that its checkpoints
load by name:

- ``patch_embed.backbone``: ConvNeXt stem (4x4/4 conv + LayerNorm) and two ConvNeXt stages with
  128 and 256 channels (strides 4 and 8; depths 3, 3, or 3, 5 for large), timm's ConvNeXt blocks
  (MLPs as linear layers; weights stored as 1x1 convs are reshaped by ``adapt_state_dict``).
- ``patch_embed.proj``: 2x2/2 conv to the token width E (stride 16); ``pos_embed``: Fourier
  position features (sin/cos of 32 frequencies per axis) through a 1x1 conv.
- ``blocks``: FAN blocks (token self-attention, channel attention), each with layer scale (init
  1) and stochastic depth 0.3 (the same rate in every block, as TAO has it). The stride-16 map is
  the output of block ``out_index``; later blocks still feed the stride-32 map.
- ``cls_attn_blocks``: two CaiT class-attention blocks over [class token, patch tokens], then
  ``learnable_downsample``: 3x3/2 conv to 768 channels (stride 32).
- ``out_norm{i}``: a LayerNorm per returned level.

Levels (``return_idx`` entries): 0: ConvNeXt stage 1 (128, stride 4), 1: ConvNeXt stage 2 (256,
stride 8), 2: FAN block ``out_index`` (E, stride 16), 3: class-attention tokens after
``learnable_downsample`` (768, stride 32).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from timm.layers import DropPath, LayerNorm, LayerNorm2d, Mlp, trunc_normal_
from timm.models.convnext import ConvNeXtStage
from torch import nn

from rtdetr.model.backbones.base import BackboneSpec
from rtdetr.model.layers import freeze_batch_norm

LEVEL_STRIDES = (4, 8, 16, 32)
CNN_WIDTHS = (128, 256)  # channels of the two ConvNeXt stages (levels 0 and 1)
DOWNSAMPLE_WIDTH = 768  # channels of the stride-32 level
TAO_PREFIXES = ("model.model.backbone.", "model.backbone.", "backbone.")  # TAO checkpoint -> ours


@dataclass(frozen=True)
class FanConfig:
    """One FAN-Hybrid variant: token width E, FAN blocks, heads, ConvNeXt depths, stride-16 block."""

    embed_dim: int
    depth: int
    num_heads: int
    cnn_depths: tuple[int, int]
    out_index: int


# TAO's quirks kept on purpose (its checkpoints depend on them): "small_12" has 10 blocks, and large
# takes its stride-16 map from block 18 of 22.
VARIANTS: dict[str, FanConfig] = {
    "tiny": FanConfig(embed_dim=192, depth=8, num_heads=8, cnn_depths=(3, 3), out_index=7),
    "small": FanConfig(embed_dim=384, depth=10, num_heads=8, cnn_depths=(3, 3), out_index=9),
    "base": FanConfig(embed_dim=448, depth=16, num_heads=8, cnn_depths=(3, 3), out_index=15),
    "large": FanConfig(embed_dim=480, depth=22, num_heads=10, cnn_depths=(3, 5), out_index=18),
}


class ConvNeXtStem(nn.Module):
    """The hybrid stem's CNN: a 4x4/4 patchify conv + LayerNorm, then ConvNeXt stages.

    forward: images [B, 3, H, W] -> the output of every stage (strides 4, 8, ...).
    """

    def __init__(self, depths: Sequence[int], widths: Sequence[int] = CNN_WIDTHS):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, widths[0], 4, stride=4), LayerNorm2d(widths[0], eps=1e-6))
        stages, in_chs = [], widths[0]
        for i, (depth, width) in enumerate(zip(depths, widths)):
            stages.append(
                ConvNeXtStage(
                    in_chs,
                    width,
                    stride=2 if i > 0 else 1,
                    depth=depth,
                    ls_init_value=1e-6,
                    norm_layer=partial(LayerNorm2d, eps=1e-6),
                    norm_layer_cl=partial(LayerNorm, eps=1e-6),
                )
            )
            in_chs = width
        self.stages = nn.Sequential(*stages)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        outs = []
        for stage in self.stages:
            x = stage(x)
            outs.append(x)
        return outs


class HybridPatchEmbed(nn.Module):
    """ConvNeXt stem, then a 2x2/2 conv from its last (stride-8) map to E-wide stride-16 tokens."""

    def __init__(self, embed_dim: int, cnn_depths: Sequence[int]):
        super().__init__()
        self.backbone = ConvNeXtStem(cnn_depths)
        self.proj = nn.Conv2d(CNN_WIDTHS[-1], embed_dim, kernel_size=2, stride=2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """images -> (token map [B, E, H/16, W/16], the CNN stages' maps)."""
        feats = self.backbone(x)
        return self.proj(feats[-1]), feats


class FourierPositionEmbed(nn.Module):
    """Sine/cosine features of the normalised (1..H, 1..W) grid, 32 per axis, projected to ``dim``.

    Built from the map's size at each call, so any input size (and ONNX dynamic sizes) works.
    """

    def __init__(self, dim: int, hidden_dim: int = 32, temperature: float = 10000.0):
        super().__init__()
        self.hidden_dim = hidden_dim
        self.temperature = temperature
        self.token_projection = nn.Conv2d(2 * hidden_dim, dim, kernel_size=1)

    def _axis(self, size: int, device: torch.device) -> torch.Tensor:
        """[size, hidden_dim]: sin/cos pairs of position / frequency for positions 1..size scaled to (0, 2pi]."""
        pos = torch.arange(1, size + 1, dtype=torch.float32, device=device)
        pos = pos / (pos[-1:] + 1e-6) * (2 * math.pi)
        index = torch.arange(self.hidden_dim // 2, dtype=torch.float32, device=device)
        freq = self.temperature ** (2 * index / self.hidden_dim)
        angle = pos[:, None] / freq
        return torch.stack([angle.sin(), angle.cos()], dim=-1).flatten(1)

    def forward(self, height: int, width: int) -> torch.Tensor:
        """-> [1, dim, height, width]."""
        device = self.token_projection.weight.device
        y = self._axis(height, device)[:, None, :].expand(-1, width, -1)
        x = self._axis(width, device)[None, :, :].expand(height, -1, -1)
        grid = torch.cat([y, x], dim=-1).permute(2, 0, 1).unsqueeze(0)
        return self.token_projection(grid)


class TokenMixing(nn.Module):
    """Multi-head self-attention over the tokens (FAN's token mixing), with q and kv projections."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True):
        super().__init__()
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(dim, 2 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q = self.q(x).reshape(b, n, self.num_heads, -1).transpose(1, 2)
        k, v = self.kv(x).reshape(b, n, 2, self.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class DWConv(nn.Module):
    """Two 3x3 depthwise convs on the token map, with GELU and BatchNorm between them."""

    def __init__(self, dim: int):
        super().__init__()
        self.conv1 = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.act = nn.GELU()
        self.bn = nn.BatchNorm2d(dim)
        self.conv2 = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)

    def forward(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        b, n, c = x.shape
        x = x.transpose(1, 2).reshape(b, c, height, width)
        x = self.conv2(self.bn(self.act(self.conv1(x))))
        return x.reshape(b, c, n).transpose(1, 2)


class ConvMlp(nn.Module):
    """fc1, a layer-scaled residual depthwise-conv branch, fc2.

    There is no activation between fc1 and fc2 besides the GELU inside the conv branch; TAO's
    network is built that way and its weights were trained so.
    """

    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.dwconv = DWConv(hidden_dim)
        self.gamma = nn.Parameter(torch.ones(hidden_dim))
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        x = self.fc1(x)
        x = x + self.gamma * self.dwconv(x, height, width)
        return self.fc2(x)


class ChannelProcessing(nn.Module):
    """FAN's channel attention: a per-(head, channel) gate times an MLP of the tokens.

    Per head, queries q = Linear(x) and keys k = x are softmaxed over the tokens; k is averaged over
    the head's channels to one weight per token, and channel d's gate is
    sigmoid(sum_n q[n, d] * k[n]) * temperature[head]. The values are norm_v(mlp_v(x)).
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True):
        super().__init__()
        self.num_heads = num_heads
        self.temperature = nn.Parameter(torch.ones(num_heads, 1, 1))
        self.mlp_v = ConvMlp(dim, int(dim * mlp_ratio))
        self.norm_v = nn.LayerNorm(dim)
        self.q = nn.Linear(dim, dim, bias=qkv_bias)

    def forward(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        b, n, c = x.shape
        q = self.q(x).reshape(b, n, self.num_heads, -1).softmax(dim=1)
        k = x.reshape(b, n, self.num_heads, -1).softmax(dim=1).mean(dim=-1, keepdim=True)
        gate = (q * k).sum(dim=1).sigmoid() * self.temperature.reshape(1, self.num_heads, 1)  # [B, h, d]
        v = self.norm_v(self.mlp_v(x, height, width))
        return v * gate.reshape(b, 1, c)


class FANBlock(nn.Module):
    """x + gamma1 * TokenMixing(norm1(x)), then x + gamma2 * ChannelProcessing(norm2(x))."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, drop_path: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = TokenMixing(dim, num_heads)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = ChannelProcessing(dim, num_heads, mlp_ratio)
        self.gamma1 = nn.Parameter(torch.ones(dim))
        self.gamma2 = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        x = x + self.drop_path(self.gamma1 * self.attn(self.norm1(x)))
        return x + self.drop_path(self.gamma2 * self.mlp(self.norm2(x), height, width))


class ClassAttn(nn.Module):
    """Attention of the class token (token 0) over all tokens; returns the class token's update."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True):
        super().__init__()
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.k = nn.Linear(dim, dim, bias=qkv_bias)
        self.v = nn.Linear(dim, dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q = self.q(x[:, :1]).reshape(b, 1, self.num_heads, -1).transpose(1, 2)
        k = self.k(x).reshape(b, n, self.num_heads, -1).transpose(1, 2)
        v = self.v(x).reshape(b, n, self.num_heads, -1).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, 1, c))


class ClassAttentionBlock(nn.Module):
    """CaiT class-attention block as FAN uses it (layer scale, all tokens normalised by norm2).

    Patch tokens do not attend: they become x + gamma1 * norm1(x), then norm2, and the final
    residual adds them to themselves (the MLP only updates the class token). The class token never
    reaches the patch tokens, so on the patch tokens the block is a per-token function.
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = ClassAttn(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.gamma1 = nn.Parameter(torch.ones(dim))
        self.gamma2 = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        normed = self.norm1(x)
        x = x + self.gamma1 * torch.cat([self.attn(normed), normed[:, 1:]], dim=1)
        x = self.norm2(x)
        cls = self.gamma2 * self.mlp(x[:, :1])
        return x + torch.cat([cls, x[:, 1:]], dim=1)


class FANHybrid(nn.Module):
    """FAN-Hybrid backbone returning the levels in ``return_idx`` (0..3 -> strides 4, 8, 16, 32).

    forward: images [B, 3, H, W] -> list of [B, out_channels[i], ~H / out_strides[i], ~W / out_strides[i]]
    (sizes round down through the stride-4/2/2 convs and up through the final 3x3/2 conv).

    A *stage* is what produces one level: stage 0 is the first ConvNeXt stage, stage 1 the second,
    stage 2 the token projection, position embedding and FAN blocks up to ``out_index``, stage 3 the
    remaining FAN blocks, the class-attention blocks and ``learnable_downsample``. ``freeze_at`` >= 0
    freezes the ConvNeXt stem and the first ``freeze_at`` stages; the per-level output LayerNorms
    (detection layers, not part of the pretrained network) stay trainable. ``freeze_norm`` makes the
    channel-attention BatchNorms FrozenBatchNorm2d.

    Parameters that cannot reach a returned level are frozen, so that DDP without
    ``find_unused_parameters`` works: always the class token, the class-attention blocks' attention,
    MLP and gamma2 (they only update the class token) and ``norm`` (TAO's classifier norm), and the
    stages past the last returned level, which forward skips. They are kept so that TAO's
    checkpoints load with nothing missing or unexpected.
    """

    def __init__(
        self,
        config: FanConfig,
        return_idx: Sequence[int] = (1, 2, 3),
        freeze_at: int = -1,
        freeze_norm: bool = False,
        drop_path_rate: float = 0.3,
    ):
        super().__init__()
        return_idx = list(return_idx)
        if (
            not return_idx
            or sorted(set(return_idx)) != return_idx
            or not all(0 <= i <= 3 for i in return_idx)
        ):
            raise ValueError(
                f"model.return_interm_indices: FAN returns increasing levels in 0..3 (strides 4, 8, 16, 32), "
                f"got {return_idx}"
            )
        dim = config.embed_dim
        self.config = config
        self.return_idx = return_idx
        self.out_index = config.out_index
        widths = [*CNN_WIDTHS, dim, DOWNSAMPLE_WIDTH]
        self.out_channels = [widths[i] for i in return_idx]
        self.out_strides = [LEVEL_STRIDES[i] for i in return_idx]

        self.patch_embed = HybridPatchEmbed(dim, config.cnn_depths)
        self.pos_embed = FourierPositionEmbed(dim)
        self.blocks = nn.ModuleList(
            FANBlock(dim, config.num_heads, drop_path=drop_path_rate) for _ in range(config.depth)
        )
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.cls_attn_blocks = nn.ModuleList(ClassAttentionBlock(dim, config.num_heads) for _ in range(2))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.learnable_downsample = nn.Conv2d(dim, DOWNSAMPLE_WIDTH, kernel_size=3, stride=2, padding=1)
        for i in return_idx:
            self.add_module(f"out_norm{i}", nn.LayerNorm(widths[i]))
        self._init_weights()

        self._freeze_unused()
        if freeze_at >= 0:
            self.patch_embed.backbone.stem.requires_grad_(False)
            for stage in self._stages()[: min(freeze_at, 4)]:
                for module in stage:
                    module.requires_grad_(False)
        if freeze_norm:
            freeze_batch_norm(self)

    def _init_weights(self) -> None:
        """Truncated-normal (std 0.02) weights and zero biases for linear and conv layers, unit norms."""
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Conv2d)):
                trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        trunc_normal_(self.cls_token, std=0.02)

    def _stages(self) -> list[list[nn.Module]]:
        """The modules of stages 0..3 (see the class docstring)."""
        cnn = self.patch_embed.backbone.stages
        last = self.out_index + 1
        return [
            [cnn[0]],
            [cnn[1]],
            [self.patch_embed.proj, self.pos_embed, *self.blocks[:last]],
            [*self.blocks[last:], self.cls_attn_blocks, self.learnable_downsample],
        ]

    def _freeze_unused(self) -> None:
        """Freeze the parameters that cannot reach a returned level (see the class docstring)."""
        self.cls_token.requires_grad_(False)
        self.norm.requires_grad_(False)
        for block in self.cls_attn_blocks:
            for module in (block.attn, block.mlp):
                module.requires_grad_(False)
            block.gamma2.requires_grad_(False)
        for stage in self._stages()[max(self.return_idx) + 1 :]:
            for module in stage:
                module.requires_grad_(False)

    def adapt_state_dict(self, state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """TAO's key names -> ours: keep only the backbone of a whole RT-DETR checkpoint.

        Keys under ``model.model.backbone.`` (a TAO RT-DETR training checkpoint), ``model.backbone.``
        or ``backbone.`` lose that prefix and the rest of the model's keys are dropped; a FAN
        classification checkpoint's ``head.*`` is dropped. ConvNeXt MLP weights stored as 1x1 convs
        ([out, in, 1, 1]) are reshaped to our linear layers' [out, in].
        """
        for prefix in TAO_PREFIXES:
            if any(key.startswith(prefix) for key in state):
                state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
                break
        own = self.state_dict()
        out = {}
        for key, value in state.items():
            if key.startswith("head."):
                continue
            target = own.get(key)
            if target is not None and value.dim() == 4 and target.dim() == 2 and value.shape[2:] == (1, 1):
                value = value.flatten(1)
            out[key] = value
        return out

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        last = max(self.return_idx)
        tokens, levels = self.patch_embed(x)
        if last >= 2:
            b, c, height, width = tokens.shape
            tokens = (tokens + self.pos_embed(height, width)).flatten(2).transpose(1, 2)
            blocks = self.blocks if last == 3 else self.blocks[: self.out_index + 1]
            for i, block in enumerate(blocks):
                tokens = block(tokens, height, width)
                if i == self.out_index:
                    levels.append(tokens.transpose(1, 2).reshape(b, c, height, width))
            if last == 3:
                tokens = torch.cat([self.cls_token.expand(b, -1, -1), tokens], dim=1)
                for block in self.cls_attn_blocks:
                    tokens = block(tokens)
                grid = tokens[:, 1:].transpose(1, 2).reshape(b, c, height, width)
                levels.append(self.learnable_downsample(grid))
        outs = []
        for i in self.return_idx:
            norm = getattr(self, f"out_norm{i}")
            outs.append(norm(levels[i].permute(0, 2, 3, 1)).permute(0, 3, 1, 2))
        return outs


def _spec(variant: str) -> BackboneSpec:
    return BackboneSpec(partial(FANHybrid, VARIANTS[variant]), freeze_at=-1, freeze_norm=False)


# TAO's RT-DETR registers fan_{tiny_8,small_12,base_12,large_12}_p4_hybrid (and once aliased
# fan_tiny/small/base/large to them); its other networks name the same base and large networks
# fan_base_16_p4_hybrid and fan_large_16_p4_hybrid.
ALIASES: dict[str, str] = {
    "fan_tiny_8_p4_hybrid": "tiny",
    "fan_small_12_p4_hybrid": "small",
    "fan_base_12_p4_hybrid": "base",
    "fan_large_12_p4_hybrid": "large",
    "fan_base_16_p4_hybrid": "base",
    "fan_large_16_p4_hybrid": "large",
}

BACKBONES: dict[str, BackboneSpec] = {
    **{f"fan_{variant}": _spec(variant) for variant in VARIANTS},
    **{name: _spec(variant) for name, variant in ALIASES.items()},
}
