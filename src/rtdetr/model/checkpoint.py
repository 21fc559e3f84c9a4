"""Checkpoints that carry their metadata, so a model can be rebuilt from the file alone.

Layout (a Lightning-compatible dict; training checkpoints add optimizer, scheduler and loop state):

- ``state_dict``: the model's weights, each key prefixed with ``model.``
- ``rtdetr``: the metadata: ``model`` (the spec's model section), ``num_classes``, ``class_names``
  (or None), ``category_ids`` (logit index -> dataset category id, or None), ``input_size``
  ([h, w] the model was trained/evaluated at), ``toolkit_version``.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from rtdetr import __version__
from rtdetr.common.files import atomic_write
from rtdetr.errors import UserError
from rtdetr.model.budget import check_model_budget
from rtdetr.model.factory import WEIGHT_FILE_ARGS, build_model, model_kwargs
from rtdetr.model.weights import torch_load_weights

log = logging.getLogger(__name__)

STATE_PREFIX = "model."


@dataclass
class ModelMetadata:
    """What travels with the weights."""

    model: dict  # the model section of the spec
    num_classes: int
    class_names: list[str] | None = None
    category_ids: list[int] | None = None
    input_size: list[int] = dataclasses.field(default_factory=lambda: [640, 640])
    toolkit_version: str = ""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ModelMetadata:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def build_from_metadata(
    meta: ModelMetadata, load_pretrained_backbone: bool = False, training: bool = False
) -> torch.nn.Module:
    """A fresh model with the architecture the metadata describes; UserError before anything is
    allocated when the section is out of the spec's bounds or the model cannot fit in this machine's
    memory (``training``: with its gradients and AdamW moments)."""
    check_model_budget(meta.model, meta.num_classes, training=training)
    kwargs = model_kwargs(meta.model, meta.num_classes)
    if not load_pretrained_backbone:  # the weights come from a checkpoint of the whole model
        for name in WEIGHT_FILE_ARGS:
            kwargs.pop(name, None)
    try:
        return build_model(**kwargs)
    except ValueError as exc:
        raise UserError(f"model: {exc}") from exc


def save_checkpoint(
    path: str | os.PathLike, model: torch.nn.Module, meta: ModelMetadata, **extra: Any
) -> Path:
    """Write ``model``'s weights with ``meta`` (and ``extra`` top-level entries) atomically."""
    meta = dataclasses.replace(meta, toolkit_version=__version__)
    # contiguous: a model trained channels-last writes the same layout as any other
    state = {STATE_PREFIX + k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    payload = {"state_dict": state, "rtdetr": meta.to_dict(), **extra}
    return atomic_write(path, lambda fh: torch.save(payload, fh), mode="wb")


def read_checkpoint(path: str | os.PathLike) -> dict:
    """The checkpoint dict; one clear error for a missing, corrupt or foreign file."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: checkpoint not found")
    if path.is_dir():
        raise UserError(f"{path}: is a directory, expected a checkpoint file (.pth)")
    try:
        data = torch_load_weights(path, "checkpoint")
    except UserError as exc:  # "checkpoint: <path>: why" -> "<path>: why"
        raise UserError(str(exc).removeprefix("checkpoint: ")) from exc
    if not isinstance(data, dict) or "rtdetr" not in data or "state_dict" not in data:
        raise UserError(
            f"{path}: not an rtdetr checkpoint (no model metadata); "
            "convert published RT-DETR weights with `rtdetr convert`"
        )
    return data


def model_state(checkpoint: dict) -> dict[str, torch.Tensor]:
    """The model's own state dict from a checkpoint (prefix removed)."""
    state = checkpoint["state_dict"]
    return {k[len(STATE_PREFIX) :]: v for k, v in state.items() if k.startswith(STATE_PREFIX)}


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> torch.nn.Module:
    """Rebuild the model of a checkpoint from the file alone, in eval mode.

    The returned module has a ``metadata`` attribute (ModelMetadata). Called on images
    [B, 3, H, W] (RGB in [0, 1]) it returns ``pred_logits`` [B, Q, C] and ``pred_boxes`` [B, Q, 4]
    (normalised cxcywh).
    """
    checkpoint = read_checkpoint(path)
    meta = ModelMetadata.from_dict(checkpoint["rtdetr"])
    model = build_from_metadata(meta)
    missing, unexpected = model.load_state_dict(model_state(checkpoint), strict=False)
    if missing or unexpected:
        raise UserError(
            f"{path}: weights do not fit the model described in the checkpoint "
            f"(missing: {', '.join(missing[:5]) or 'none'}; unexpected: {', '.join(unexpected[:5]) or 'none'})"
        )
    model.metadata = meta
    return model.to(device).eval()
