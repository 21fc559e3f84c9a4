"""`build_model`: an RTDETR from plain arguments named after the TAO spec's `model` section."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Sequence
from pathlib import Path

from rtdetr.model.backbones import build_backbone
from rtdetr.model.decoder import RTDETRDecoder
from rtdetr.model.encoder import HybridEncoder
from rtdetr.model.radio import FrozenFoundationModel, build_radio, load_radio
from rtdetr.model.rtdetr import RTDETR

logger = logging.getLogger(__name__)

# build_model arguments naming weights files to load while building: a model rebuilt for a checkpoint
# of the whole model, or only measured, leaves them out
WEIGHT_FILE_ARGS = ("pretrained_backbone_path", "frozen_fm_checkpoint")


def build_model(
    *,
    num_classes: int,
    backbone: str = "resnet_50",
    num_queries: int = 300,
    num_feature_levels: int = 3,
    return_interm_indices: Sequence[int] = (1, 2, 3),
    feat_strides: Sequence[int] = (8, 16, 32),
    feat_channels: Sequence[int] = (256, 256, 256),
    use_encoder_idx: Sequence[int] = (2,),
    hidden_dim: int = 256,
    nheads: int = 8,
    dropout_ratio: float = 0.0,
    enc_layers: int = 1,
    dim_feedforward: int = 1024,
    pe_temperature: float = 10000.0,
    expansion: float = 1.0,
    depth_mult: float = 1.0,
    enc_act: str = "gelu",
    act: str = "silu",
    dec_layers: int = 6,
    dn_number: int = 100,
    eval_idx: int = -1,
    aux_loss: bool = True,
    train_backbone: bool = True,
    pretrained_backbone_path: str | Path | None = None,
    num_points: int = 4,
    encoder_hidden_dim: int | None = None,
    dec_dim_feedforward: int = 1024,
    dec_act: str = "relu",
    label_noise_ratio: float = 0.5,
    box_noise_scale: float = 1.0,
    freeze_norm: bool | None = None,
    freeze_at: int | None = None,
    pe_order: str = "w_major",
    frozen_fm: str | None = None,
    frozen_fm_checkpoint: str | Path | None = None,
) -> RTDETR:
    """Build RT-DETR. Defaults are TAO's (resnet_50, 300 queries, 3 levels, 6 decoder layers).

    `hidden_dim` is the decoder width and, unless `encoder_hidden_dim` is given, the encoder width
    (r101 uses a 384 encoder with a 256 decoder). `return_interm_indices` picks backbone stages
    (0..3 -> strides 4..32); `num_feature_levels` beyond them are added by stride-2 convs in the
    decoder. `feat_channels`/`feat_strides` describe the encoder outputs and are checked against the
    backbone. `train_backbone=False` freezes all backbone parameters. `freeze_norm`/`freeze_at`
    default to the backbone variant's own (see `build_backbone`). `pe_order` chooses the AIFI
    position-embedding layout ("w_major" = original RT-DETR/TAO, "h_major" = transformers >= 5).
    `frozen_fm` (radio_v2-b, -l or -h) adds the frozen foundation model (rtdetr.model.radio): its
    features are the encoder's 4th level (dropped before the decoder) and its summary an extra
    query in every decoder layer; `frozen_fm_checkpoint` is its weights file.
    """
    encoder_hidden_dim = encoder_hidden_dim or hidden_dim
    net = build_backbone(
        backbone,
        return_interm_indices,
        pretrained_path=pretrained_backbone_path,
        freeze_norm=freeze_norm,
        freeze_at=freeze_at,
    )
    num_maps = len(net.out_channels)
    if not num_maps <= num_feature_levels <= 4:
        raise ValueError(
            f"num_feature_levels ({num_feature_levels}) must be in {num_maps}..4 for "
            f"return_interm_indices {list(return_interm_indices)}"
        )
    if list(feat_strides[:num_maps]) != net.out_strides:
        raise ValueError(f"feat_strides {list(feat_strides)} do not match the backbone's {net.out_strides}")
    if list(feat_channels[:num_maps]) != [encoder_hidden_dim] * num_maps:
        raise ValueError(
            f"feat_channels {list(feat_channels)} must be the encoder width {encoder_hidden_dim} per level"
        )
    if not train_backbone:
        net.requires_grad_(False)

    foundation = None
    if frozen_fm:
        foundation = FrozenFoundationModel(build_radio(frozen_fm))
        if frozen_fm_checkpoint:
            load_radio(foundation.radio, frozen_fm_checkpoint)
    extra_channels, extra_strides = (
        ([foundation.width], [2 * net.out_strides[-1]]) if foundation else ([], [])
    )
    encoder = HybridEncoder(
        in_channels=net.out_channels + extra_channels,
        feat_strides=net.out_strides + extra_strides,
        hidden_dim=encoder_hidden_dim,
        nhead=nheads,
        dim_feedforward=dim_feedforward,
        dropout=dropout_ratio,
        enc_act=enc_act,
        use_encoder_idx=use_encoder_idx,
        num_encoder_layers=enc_layers,
        pe_temperature=pe_temperature,
        expansion=expansion,
        depth_mult=depth_mult,
        act=act,
        pe_order=pe_order,
    )
    decoder = RTDETRDecoder(
        num_classes=num_classes,
        hidden_dim=hidden_dim,
        num_queries=num_queries,
        feat_channels=encoder.out_channels[:num_maps],
        feat_strides=net.out_strides,
        num_levels=num_feature_levels,
        num_points=num_points,
        nhead=nheads,
        num_layers=dec_layers,
        dim_feedforward=dec_dim_feedforward,
        dropout=dropout_ratio,
        activation=dec_act,
        num_denoising=dn_number,
        label_noise_ratio=label_noise_ratio,
        box_noise_scale=box_noise_scale,
        eval_idx=eval_idx,
        aux_loss=aux_loss,
        summary_dim=foundation.summary_dim if foundation else None,
    )
    model = RTDETR(net, encoder, decoder, foundation)
    logger.debug(
        "built RT-DETR %s: %.1fM parameters", backbone, sum(p.numel() for p in model.parameters()) / 1e6
    )
    return model


def model_kwargs(model_section: dict, num_classes: int) -> dict:
    """The keyword arguments of ``build_model`` taken from a spec's model section."""
    params = inspect.signature(build_model).parameters
    kwargs = {k: v for k, v in model_section.items() if k in params and k != "frozen_fm"}
    fm = model_section.get("frozen_fm") or {}
    if isinstance(fm, dict) and fm.get("enabled"):
        kwargs["frozen_fm"] = fm.get("backbone", "radio_v2-l")
        kwargs["frozen_fm_checkpoint"] = fm.get("checkpoint")
    kwargs["num_classes"] = num_classes
    return kwargs
