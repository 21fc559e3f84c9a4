"""RADIO v2 (C-RADIOv2) ViT-B/L/H/16, the frozen foundation model of ``model.frozen_fm``.

Written from the published architecture: timm's transformer blocks (pre-norm, qkv bias, layer scale,
no final norm and no head) behind a CPE patch generator: the image cut into 16x16 patches, a
bias-free Linear, position embeddings stored on a 128x128 grid and resized to the input's patch grid
(bilinear to a square of the grid's longer side, then cropped), and 4 class tokens + 4 register
tokens in front. The summary is class tokens 0-2 concatenated (3 x D); the patch features are D-wide
on a stride-16 grid.

The model is frozen and always in eval mode: ``train()`` leaves it in eval, its parameters take no
gradient, and a forward gives the same features in a training step as in evaluation (the reference
crops position embeddings at random in train mode). Weights come from a file the user gives
(``.pth`` or ``.safetensors``); nothing is downloaded.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import Block
from torch import nn

from rtdetr.errors import UserError, abbreviate
from rtdetr.model.backbones import read_state_dict

PATCH = 16
GRID = 128  # the position embeddings' grid (2048 px)
CLS_TOKENS, REGISTERS, SUMMARY_TOKENS = 4, 4, 3
# the mean and std the image is normalised with (CLIP's)
MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)
# prefixes of published and wrapped checkpoints, stripped when loading
PREFIXES = ("radio_model.model.", "radio.radio.model.", "base_model.", "model.")


@dataclass(frozen=True)
class RadioSize:
    width: int  # D, the patch features' width
    depth: int
    heads: int


SIZES = {
    "radio_v2-b": RadioSize(768, 12, 12),
    "radio_v2-l": RadioSize(1024, 24, 16),
    "radio_v2-h": RadioSize(1280, 32, 16),
}


class CPEPatchGenerator(nn.Module):
    """Image [B, 3, H, W] -> tokens [B, 8 + H/16 * W/16, D]: the class and register tokens, then the
    embedded patches plus their position embeddings."""

    def __init__(self, width: int, grid: int = GRID, prefix_tokens: int = CLS_TOKENS + REGISTERS):
        super().__init__()
        self.grid = grid
        self.embedder = nn.Linear(3 * PATCH * PATCH, width, bias=False)
        self.pos_embed = nn.Parameter(torch.zeros(1, grid * grid, width))
        self.cls_token = nn.Parameter(torch.zeros(prefix_tokens, width))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)

    def position_embeddings(self, rows: int, cols: int) -> torch.Tensor:
        """[1, rows * cols, D]: the grid resized to a square of the longer side, then cropped."""
        width = self.pos_embed.shape[-1]
        pos = self.pos_embed.reshape(1, self.grid, self.grid, width).permute(0, 3, 1, 2)
        side = max(rows, cols)
        if side != self.grid:
            pos = F.interpolate(pos.float(), size=(side, side), mode="bilinear", align_corners=False)
        pos = pos[..., :rows, :cols].to(self.pos_embed.dtype)
        return pos.flatten(2).transpose(1, 2)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        b, c, h, w = images.shape
        rows, cols = h // PATCH, w // PATCH
        patches = images[..., : rows * PATCH, : cols * PATCH].reshape(b, c, rows, PATCH, cols, PATCH)
        patches = patches.permute(0, 2, 4, 1, 3, 5).reshape(b, rows * cols, c * PATCH * PATCH)
        tokens = self.embedder(patches) + self.position_embeddings(rows, cols)
        return torch.cat([self.cls_token.unsqueeze(0).expand(b, -1, -1), tokens], dim=1)


class Radio(nn.Module):
    """A frozen RADIO v2: normalised image [B, 3, H, W] (H, W multiples of 16) -> (summary [B, 3D],
    features [B, D, H/16, W/16])."""

    def __init__(self, width: int, depth: int, heads: int, grid: int = GRID):
        super().__init__()
        self.width = width
        self.patch_generator = CPEPatchGenerator(width, grid)
        norm = partial(nn.LayerNorm, eps=1e-6)
        self.blocks = nn.Sequential(
            *(
                Block(width, heads, mlp_ratio=4.0, qkv_bias=True, init_values=1.0, norm_layer=norm)
                for _ in range(depth)
            )
        )
        self.requires_grad_(False)
        super().train(False)

    @property
    def summary_dim(self) -> int:
        return SUMMARY_TOKENS * self.width

    def train(self, mode: bool = True) -> Radio:
        """Stays in eval mode: the model is frozen (its dropout-free blocks and fixed position
        embeddings give the same features in a training step)."""
        return super().train(False)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, _, h, w = images.shape
        tokens = self.blocks(self.patch_generator(images))
        prefix = self.patch_generator.cls_token.shape[0]
        summary = tokens[:, :SUMMARY_TOKENS].flatten(1)
        features = tokens[:, prefix:].transpose(1, 2).reshape(b, self.width, h // PATCH, w // PATCH)
        return summary, features


def build_radio(name: str, **overrides) -> Radio:
    """RADIO v2 of ``name`` (radio_v2-b, -l or -h); ``overrides`` (width, depth, heads, grid) make a
    smaller one of the same design (tests)."""
    if name not in SIZES:
        raise UserError(f"model.frozen_fm.backbone: {name!r} is not one of {', '.join(SIZES)}")
    size = SIZES[name]
    settings = {"width": size.width, "depth": size.depth, "heads": size.heads, **overrides}
    return Radio(**settings)


def _from_transformers(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers' RadioModel names -> ours (its q, k, v projections joined into timm's qkv)."""
    renames = {"embeddings.patch_projection.weight": "patch_generator.embedder.weight",
               "embeddings.position_embedding": "patch_generator.pos_embed",
               "embeddings.cls_register_token": "patch_generator.cls_token"}  # fmt: skip
    parts = {".attention.o_proj.": ".attn.proj.", ".layer_scale1.lambda1": ".ls1.gamma",
             ".layer_scale2.lambda1": ".ls2.gamma"}  # fmt: skip
    out = {}
    for key, value in state.items():
        if key in renames:
            out[renames[key]] = value
        elif key.startswith("encoder.layer."):
            name = "blocks." + key.removeprefix("encoder.layer.")
            for old, new in parts.items():
                name = name.replace(old, new)
            for kind in ("weight", "bias"):
                if name.endswith(f".attention.q_proj.{kind}"):
                    stem = name.removesuffix(f".attention.q_proj.{kind}")
                    qkv = [state[key.replace("q_proj", p)] for p in ("q_proj", "k_proj", "v_proj")]
                    out[f"{stem}.attn.qkv.{kind}"] = torch.cat(qkv)
            if ".attention." not in name:
                out[name] = value
    return out


def radio_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A checkpoint's tensors under our names: the wrapping prefixes stripped, ``grandma`` read as
    ``gamma`` (a misspelt layer-scale name in some published files), transformers' RadioModel names
    mapped; tensors the model does not hold (the input conditioner's mean/std, the summary index,
    adaptor heads) are left for the caller to ignore."""
    if any(k.endswith("embeddings.patch_projection.weight") for k in state):
        state = {k.removeprefix("radio."): v for k, v in state.items()}
        return _from_transformers(state)
    out = {}
    for key, value in state.items():
        name = key
        for prefix in PREFIXES:
            if name.startswith(prefix):
                name = name[len(prefix) :]
        out[name.replace("grandma", "gamma")] = value
    return out


def load_radio(model: Radio, path: str | os.PathLike, field: str = "model.frozen_fm.checkpoint") -> None:
    """Load a RADIO checkpoint (``.pth``/``.safetensors``) into ``model``: every tensor of the model
    must be in the file with its shape; tensors of the file that the model does not hold (the input
    conditioner, adaptor heads) are ignored. One-line UserError naming ``field`` otherwise."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{field}: {path}: file not found")
    try:
        state = radio_state_dict(read_state_dict(path, field))
    except UserError:
        raise
    except Exception as exc:  # safetensors raises many kinds for a bad file
        raise UserError(f"{field}: {path}: cannot read it: {abbreviate(exc, 160)}") from exc
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    wrong = [f"{k} {list(state[k].shape)} (the model has {list(own[k].shape)})"
             for k in own if k in state and state[k].shape != own[k].shape]  # fmt: skip
    if missing or wrong:
        problem = (
            f"{len(wrong)} of another shape, e.g. {wrong[0]}"
            if wrong
            else f"{len(missing)} missing, e.g. {missing[0]}"
        )
        raise UserError(
            f"{field}: {path} does not fit RADIO of width {model.width} and {len(model.blocks)} blocks: {problem}; "
            "give the checkpoint of model.frozen_fm.backbone"
        )
    model.load_state_dict({k: state[k] for k in own}, strict=True)


class FrozenFoundationModel(nn.Module):
    """The frozen_fm branch: images [B, 3, H, W] RGB in [0, 1] (H, W multiples of 64) -> (summary
    [B, 3D], features [B, D, H/64, W/64]). The image is normalised with CLIP's mean and std and
    halved (nearest), RADIO runs without gradients (its patches are then at stride 32 of the
    image), and its features are max-pooled to stride 64: the hybrid encoder's 4th level."""

    def __init__(self, radio: Radio):
        super().__init__()
        self.radio = radio
        self.register_buffer("mean", torch.tensor(MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(STD).view(1, 3, 1, 1), persistent=False)

    @property
    def width(self) -> int:
        return self.radio.width

    @property
    def summary_dim(self) -> int:
        return self.radio.summary_dim

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = (images - self.mean.to(images.dtype)) / self.std.to(images.dtype)
        x = F.interpolate(x, scale_factor=0.5, mode="nearest")
        with torch.no_grad():
            summary, features = self.radio(x)
        return summary, F.max_pool2d(features, 2)
