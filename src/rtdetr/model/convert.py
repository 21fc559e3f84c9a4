"""Published RT-DETR weights in: Hugging Face folders, the original code's and TAO's checkpoints."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path

import torch
from safetensors.torch import load_file

from rtdetr.config.schema import ModelConfig
from rtdetr.data.mscoco import MSCOCO_CATEGORY_IDS, MSCOCO_NAMES
from rtdetr.errors import UserError
from rtdetr.model.checkpoint import ModelMetadata, build_from_metadata, save_checkpoint
from rtdetr.model.convert_hf import (
    hf_state_dict_to_ours,
    is_tao_state_dict,
    model_args_from_hf_config,
    original_state_dict_to_ours,
    tao_state_dict_to_ours,
)
from rtdetr.model.weights import torch_load_weights

log = logging.getLogger(__name__)

# The model sections of the original RT-DETR v1 variants (RTDETR_FACTS.md, per-variant settings).
PRESETS: dict[str, dict] = {
    "r18vd": {"backbone": "resnet_18vd", "expansion": 0.5, "dec_layers": 3},
    "r34vd": {"backbone": "resnet_34vd", "expansion": 0.5, "dec_layers": 4},
    "r50vd_m": {"backbone": "resnet_50vd", "expansion": 0.5, "dec_layers": 6, "eval_idx": 2},
    "r50vd": {"backbone": "resnet_50vd", "expansion": 1.0, "dec_layers": 6},
    "r101vd": {
        "backbone": "resnet_101vd", "expansion": 1.0, "dec_layers": 6, "encoder_hidden_dim": 384,
        "dim_feedforward": 2048, "feat_channels": [384, 384, 384],
    },
}  # fmt: skip


def preset_model_section(name: str) -> dict:
    """A complete model section for one of the original RT-DETR variants."""
    if name not in PRESETS:
        raise UserError(f"unknown preset '{name}'; choose one of: {', '.join(PRESETS)}")
    return {**dataclasses.asdict(ModelConfig()), **PRESETS[name]}


def _coco_names(num_classes: int, names: list[str] | None) -> tuple[list[str] | None, list[int] | None]:
    """Class names and, for the 80 COCO classes, their COCO category ids."""
    if names is None and num_classes == 80:
        names = list(MSCOCO_NAMES)
    ids = list(MSCOCO_CATEGORY_IDS) if names == MSCOCO_NAMES else None
    return names, ids


def _build_and_load(
    meta: ModelMetadata, state: dict[str, torch.Tensor], source: Path, tao: bool = False
) -> torch.nn.Module:
    model = build_from_metadata(meta)
    if tao:  # the backbone's keys in TAO's names -> ours
        state = tao_state_dict_to_ours(state, getattr(model.backbone, "adapt_state_dict", None))
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatched = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or mismatched:
        parts = [
            f"{label}: {', '.join(keys[:8])}{' ...' if len(keys) > 8 else ''} ({len(keys)})"
            for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", mismatched))
            if keys
        ]
        raise UserError(f"{source}: weights do not fit the model section; " + "; ".join(parts))
    model.load_state_dict(state)
    return model


def convert_hf(folder: str | os.PathLike, output: str | os.PathLike) -> Path:
    """A transformers RT-DETR folder (config.json + model.safetensors) -> our checkpoint."""
    folder = Path(folder)
    config_path, weights_path = folder / "config.json", folder / "model.safetensors"
    for path in (config_path, weights_path):
        if not path.is_file():
            raise UserError(f"{folder}: not a Hugging Face RT-DETR folder ({path.name} is missing)")
    try:
        from transformers import RTDetrConfig
    except ImportError as exc:
        raise UserError(
            "converting a Hugging Face folder needs transformers: pip install transformers"
        ) from exc

    try:
        config = RTDetrConfig.from_pretrained(folder)
    except (OSError, ValueError, json.JSONDecodeError) as exc:
        raise UserError(f"{config_path}: not a readable RT-DETR config: {exc}") from exc
    try:
        args = model_args_from_hf_config(config)
    except ValueError as exc:
        raise UserError(f"{config_path}: {exc}") from exc
    try:
        hf_state = load_file(str(weights_path))
    except Exception as exc:  # safetensors raises its own error types
        raise UserError(f"{weights_path}: not a readable safetensors file: {exc}") from exc
    try:
        state = hf_state_dict_to_ours(hf_state)
    except ValueError as exc:
        raise UserError(f"{weights_path}: {exc}") from exc
    num_classes = args.pop("num_classes")
    section = {**dataclasses.asdict(ModelConfig()), **args}
    id2label = getattr(config, "id2label", None) or {}
    names = [id2label[i] for i in range(num_classes)] if len(id2label) == num_classes else None
    names, category_ids = _coco_names(num_classes, names)
    meta = ModelMetadata(model=section, num_classes=num_classes, class_names=names, category_ids=category_ids)
    model = _build_and_load(meta, state, weights_path)
    return save_checkpoint(output, model, meta)


def convert_original(
    path: str | os.PathLike,
    output: str | os.PathLike,
    model_section: dict,
    num_classes: int | None = None,
    class_names: list[str] | None = None,
) -> Path:
    """A checkpoint of the original RT-DETR code, or of TAO's RT-DETR (found by its ``model.model.``
    keys), -> our checkpoint, built with ``model_section``."""
    path = Path(path)
    raw = torch_load_weights(path, "--original")
    if not isinstance(raw, dict):
        raise UserError(f"{path}: expected a state dict (plain, or under 'model' or 'ema')")
    tao = isinstance(raw.get("state_dict"), dict) and is_tao_state_dict(raw["state_dict"])
    state = tao_state_dict_to_ours(raw["state_dict"]) if tao else original_state_dict_to_ours(raw)
    head = state.get("decoder.dec_score_head.0.weight")
    if head is None:
        raise UserError(f"{path}: no decoder.dec_score_head.0.weight: not an RT-DETR checkpoint")
    inferred = head.shape[0]
    if num_classes is not None and num_classes != inferred:
        raise UserError(f"{path}: the checkpoint has {inferred} classes, not {num_classes}")
    names, category_ids = _coco_names(inferred, class_names)
    if names is not None and len(names) != inferred:
        raise UserError(f"{path}: {len(names)} class names given for {inferred} classes")
    meta = ModelMetadata(
        model=model_section, num_classes=inferred, class_names=names, category_ids=category_ids
    )
    if tao:
        state = {k: v for k, v in raw["state_dict"].items() if isinstance(v, torch.Tensor)}
    model = _build_and_load(meta, state, path, tao=tao)
    return save_checkpoint(output, model, meta)
