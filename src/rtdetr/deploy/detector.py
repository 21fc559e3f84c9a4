"""The Python API for detection: ``Detector.from_checkpoint(path).predict(images)``.

The CLI's evaluate and inference tasks run through the same Detector, so the API and the CLI give
the same detections for the same images and settings.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import PIL.Image
import torch
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as F

from rtdetr.cpu import host_memory
from rtdetr.data.images import UNREADABLE_IMAGE_ERRORS, load_image, to_rgb
from rtdetr.data.transforms import EvalPreset
from rtdetr.deploy.backends import TorchBackend, load_backend
from rtdetr.errors import UserError
from rtdetr.model import hub
from rtdetr.model.postprocess import detections_per_image

log = logging.getLogger(__name__)

ImageInput = str | os.PathLike | PIL.Image.Image | np.ndarray


@dataclass
class Detections:
    """The detections of one image, sorted by decreasing score.

    boxes [N, 4] float32 xyxy in the original image's pixels; scores [N] float32; labels [N] int64
    logit indices; names [N] class names; image_size (height, width); source: the file, if any.
    """

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    names: list[str]
    image_size: tuple[int, int]
    source: str | None = None

    def __len__(self) -> int:
        return len(self.scores)


class Detector:
    """A trained RT-DETR ready to detect objects in images.

    backend: a runner from rtdetr.deploy (``TorchBackend`` for a checkpoint).
    input_size: (height, width) of the network input; default the model's own (its eval size).
    preserve_aspect_ratio: resize the longest side and pad (boxes are mapped back exactly).
    class_names: one name per class (default: the names stored with the model).
    num_select: how many top-scoring (query, class) pairs to keep before the threshold (default: the
        model's ``num_select``).
    """

    def __init__(
        self,
        backend,
        *,
        input_size: Sequence[int] | None = None,
        preserve_aspect_ratio: bool = False,
        class_names: Sequence[str] | None = None,
        num_select: int | None = None,
    ):
        meta = backend.metadata
        self.backend = backend
        self.metadata = meta
        self.num_classes = int(meta.num_classes)
        self.input_size = tuple(int(v) for v in (input_size or meta.input_size))
        fixed = getattr(backend, "input_size", None)  # an exported model built for one size
        if fixed is not None and tuple(fixed) != self.input_size:
            if input_size is not None:
                log.warning(
                    "the exported model takes %dx%d (h x w) inputs; using that instead of %dx%d",
                    *fixed, *self.input_size,
                )  # fmt: skip
            self.input_size = tuple(int(v) for v in fixed)
        if len(self.input_size) != 2 or min(self.input_size) < 1:
            raise UserError(f"input size must be (height, width) of positive numbers, got {input_size}")
        names = list(class_names) if class_names is not None else meta.class_names
        if names is None:
            names = [f"class_{i}" for i in range(self.num_classes)]
        if len(names) != self.num_classes:
            raise UserError(f"{len(names)} class names given for a model of {self.num_classes} classes")
        self.class_names = [str(n) for n in names]
        self.num_select = int(num_select or meta.model.get("num_select", 300))
        self.preset = EvalPreset(self.input_size, preserve_aspect_ratio)

    @classmethod
    def from_checkpoint(
        cls, path: str | os.PathLike, device: str | torch.device | None = None, **kwargs
    ) -> Detector:
        """A Detector for an rtdetr checkpoint (``.pth``); ``device`` None picks CUDA when present."""

        return cls(TorchBackend.from_checkpoint(path, device=device), **kwargs)

    @classmethod
    def from_file(
        cls,
        path: str | os.PathLike,
        device: str | torch.device | None = None,
        runtime: str = "auto",
        **kwargs,
    ) -> Detector:
        """A Detector for any model file rtdetr.deploy.load_backend runs; ``runtime`` picks that of an
        ONNX file: ``onnxruntime``, ``openvino`` or ``auto`` (OpenVINO on the CPU when installed)."""

        return cls(load_backend(path, device=device, runtime=runtime), **kwargs)

    @classmethod
    def from_pretrained(
        cls,
        name: str | os.PathLike,
        device: str | torch.device | None = None,
        runtime: str = "auto",
        **kwargs,
    ) -> Detector:
        """A Detector for a hub name (``hf://ORG/REPO[@REVISION]``, rtdetr.model.hub: downloaded or
        taken from the cache, converted once) or any model file ``from_file`` takes."""
        return cls.from_file(hub.local_path(name, "model"), device=device, runtime=runtime, **kwargs)

    def reuse_host_memory(self) -> None:
        """For a process that runs many batches: a PyTorch model on the CPU keeps freed activation
        memory for reuse instead of faulting it in again every batch (rtdetr.cpu.host_memory; ONNX
        Runtime, OpenVINO and TensorRT have arenas of their own)."""
        if isinstance(self.backend, TorchBackend) and self.backend.device.type == "cpu":
            host_memory.keep_freed_host_memory()

    # ------------------------------------------------------------------------------ pieces
    def prepare(self, image: PIL.Image.Image) -> tuple[torch.Tensor, torch.Tensor]:
        """An RGB PIL image -> (float32 [3, H, W] network input, canvas_size [2] (h, w))."""
        return self.preset.image_only(tv_tensors.Image(F.pil_to_tensor(image)))

    def detect_batch(
        self, images: torch.Tensor, canvas_sizes: torch.Tensor, orig_sizes: torch.Tensor, conf: float = 0.0
    ) -> list[Detections]:
        """Detections of a prepared batch: images [B, 3, H, W], canvas_sizes and orig_sizes [B, 2] (h, w)."""
        logits, boxes = self.backend(images)
        out = []
        for (scores, labels, xyxy), size in zip(
            detections_per_image(logits, boxes, canvas_sizes, orig_sizes, self.num_select, conf), orig_sizes
        ):
            labels = labels.numpy().astype(np.int64)
            out.append(
                Detections(
                    boxes=xyxy.numpy().astype(np.float32),
                    scores=scores.numpy().astype(np.float32),
                    labels=labels,
                    names=[self.class_names[i] for i in labels],
                    image_size=(int(size[0]), int(size[1])),
                )
            )
        return out

    # ------------------------------------------------------------------------------ predict
    def predict(
        self, inputs: ImageInput | Iterable[ImageInput], conf: float = 0.5, batch_size: int = 8
    ) -> list[Detections]:
        """Detect objects in one image or several: file paths, PIL images or uint8 arrays [H, W, 3] RGB.

        Returns one Detections per input, in order (boxes in each input's own pixels, after EXIF
        orientation for files); only detections with score >= ``conf``.
        """
        if isinstance(inputs, (str, os.PathLike, PIL.Image.Image, np.ndarray)):
            inputs = [inputs]
        if batch_size < 1:
            raise UserError(f"batch_size must be at least 1, got {batch_size}")
        results: list[Detections] = []
        batch: list[tuple[PIL.Image.Image, str | None]] = []
        for item in inputs:
            batch.append(_as_image(item))
            if len(batch) == batch_size:
                results.extend(self._predict_images(batch, conf))
                batch = []
        if batch:
            results.extend(self._predict_images(batch, conf))
        return results

    def _predict_images(
        self, batch: list[tuple[PIL.Image.Image, str | None]], conf: float
    ) -> list[Detections]:
        prepared = [self.prepare(image) for image, _ in batch]
        images = torch.stack([p[0] for p in prepared])
        canvas = torch.stack([p[1] for p in prepared])
        orig = torch.tensor([[image.height, image.width] for image, _ in batch])
        out = self.detect_batch(images, canvas, orig, conf)
        for det, (_, source) in zip(out, batch):
            det.source = source
        return out


def _as_image(item: ImageInput) -> tuple[PIL.Image.Image, str | None]:
    if isinstance(item, (str, os.PathLike)):
        path = Path(item)
        if not path.is_file():
            raise UserError(f"{path}: image file not found")
        try:
            return load_image(path), str(path)
        except UNREADABLE_IMAGE_ERRORS as exc:
            raise UserError(f"{path}: cannot read image: {exc}") from exc
    if isinstance(item, PIL.Image.Image):
        if item.width == 0 or item.height == 0:
            raise UserError(f"an empty image ({item.width}x{item.height} pixels)")
        return to_rgb(item), None
    if isinstance(item, np.ndarray):
        if item.dtype != np.uint8 or not (item.ndim == 2 or (item.ndim == 3 and item.shape[2] in (3, 4))):
            raise UserError(
                f"an image array must be uint8 [H, W, 3] RGB, [H, W] gray or [H, W, 4] RGBA, "
                f"got {item.dtype} {list(item.shape)}"
            )
        if item.shape[0] == 0 or item.shape[1] == 0:
            raise UserError(f"an empty image array {list(item.shape)}")
        return to_rgb(PIL.Image.fromarray(item)), None
    raise UserError(f"cannot detect objects in a {type(item).__name__}: give a file path, PIL image or array")
