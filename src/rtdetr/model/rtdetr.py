"""RTDETR = backbone -> hybrid encoder -> decoder."""

from __future__ import annotations

import torch
from torch import nn

from rtdetr.model.layers import fuse_sequential_conv_norms_


class RTDETR(nn.Module):
    """Real-time DETR.

    forward(images [B, 3, H, W] RGB in [0, 1] (no mean/std normalisation), targets=None) -> dict:
    `pred_logits` [B, Q, C] raw class logits and `pred_boxes` [B, Q, 4] normalised cxcywh; in
    training also `aux_outputs`, `enc_outputs`, `dn_outputs` and `dn_meta` as documented in
    `RTDETRDecoder.forward`. `targets` (training only, for denoising): per image "labels" [N] int64
    and "boxes" [N, 4] normalised cxcywh. H and W should be multiples of 32 (any size runs).

    With a frozen foundation model (`frozen_fm`, rtdetr.model.radio), H and W are multiples of 64.

    `features`, when a dict is given, receives the intermediate tensors that distillation compares
    (see `HybridEncoder.forward` and `RTDETRDecoder.forward`); with None (the default) nothing is
    recorded, so outputs and exported graphs are those of the plain call.
    """

    def __init__(self, backbone: nn.Module, encoder: nn.Module, decoder: nn.Module,
                 frozen_fm: nn.Module | None = None):  # fmt: skip
        super().__init__()
        self.backbone = backbone
        self.encoder = encoder
        self.decoder = decoder
        self.frozen_fm = frozen_fm

    def forward(
        self,
        images: torch.Tensor,
        targets: list[dict[str, torch.Tensor]] | None = None,
        features: dict[str, object] | None = None,
    ) -> dict:
        if self.frozen_fm is None:
            maps = self.encoder(self.backbone(images), features=features)
            return self.decoder(maps, targets, features=features)
        # the foundation model's features: a 4th encoder level, dropped before the decoder; its
        # summary: an extra query in every decoder layer
        summary, extra = self.frozen_fm(images)
        maps = self.encoder([*self.backbone(images), extra], features=features)[:-1]
        if features is not None:  # distillation compares the backbone's levels
            features["srcs"], features["dsrcs"] = features["srcs"][:-1], features["dsrcs"][:-1]
        return self.decoder(maps, targets, features=features, summary=summary)

    def deploy(self) -> RTDETR:
        """Switch to eval mode and fuse for inference; irreversible, and the state dict changes.

        RepVGG blocks become one 3x3 conv, and every BatchNorm (also frozen) that follows a conv is
        folded into that conv with its running statistics (the norm becomes nn.Identity). Outputs
        are unchanged up to float rounding.
        """
        self.eval()
        # pre-order: a block fuses its own branches before its children are visited
        for module in list(self.modules()):
            if hasattr(module, "convert_to_deploy"):
                module.convert_to_deploy()
        fuse_sequential_conv_norms_(self)
        return self
