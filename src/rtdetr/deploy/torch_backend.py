"""The PyTorch backend: a checkpoint's model, fused for inference, on a chosen device."""

from __future__ import annotations

import logging
import os

import torch

from rtdetr.errors import UserError
from rtdetr.model.checkpoint import ModelMetadata, load_model

log = logging.getLogger(__name__)


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``device`` as a torch.device; None picks the first CUDA GPU when there is one, else the CPU."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise UserError(f"unknown device {device!r}: use cpu, cuda or cuda:N") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {device}: no CUDA GPU is available here; use cpu")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise UserError(f"device {device}: this machine has {torch.cuda.device_count()} CUDA GPU(s)")
    if device.type not in ("cpu", "cuda"):
        raise UserError(f"device {device}: use cpu, cuda or cuda:N")
    return device


class TorchBackend:
    """``backend(images)`` -> (pred_logits, pred_boxes) float32 on the CPU.

    The model is switched to ``deploy()`` form (RepVGG and conv + BatchNorm fused) unless
    ``fuse=False``: outputs equal the unfused model's up to float rounding (~1e-6).
    """

    def __init__(
        self, model: torch.nn.Module, metadata: ModelMetadata, device: torch.device, fuse: bool = True
    ):
        self.metadata = metadata
        self.device = device
        self.model = model.to(device).eval()
        if fuse and hasattr(self.model, "deploy"):
            self.model.deploy()
        self.name = "pytorch"

    @classmethod
    def from_checkpoint(
        cls, path: str | os.PathLike, device: str | torch.device | None = None, fuse: bool = True
    ) -> TorchBackend:
        model = load_model(path)
        return cls(model, model.metadata, resolve_device(device), fuse=fuse)

    @torch.inference_mode()
    def __call__(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.model(images.to(self.device, non_blocking=True))
        return out["pred_logits"].float().cpu(), out["pred_boxes"].float().cpu()
