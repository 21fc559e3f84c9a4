"""Augmentation presets on torchvision.transforms.v2 (TAO / RT-DETR order), epoch policies as data.

A preset maps (image, target) -> (image, target):
  in:  image tv_tensors.Image uint8 [3, h, w]; target {"boxes": BoundingBoxes XYXY pixels,
       "labels" int64 [N], "image_id", "orig_size" int64 [2] (h, w), optional "iscrowd" int64 [N]}
  out: image float32 [3, H, W] in [0, 1]; target with "boxes" float32 [N, 4] normalised cxcywh
       (relative to the network input), "canvas_size" float32 [2] (h, w): the size in original
       pixels the normalised boxes are relative to (prediction * canvas_size, clipped to orig_size,
       gives original pixels; equal to orig_size unless the aspect ratio is preserved).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import PIL.Image
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

# The ops RT-DETR's `stop_epoch` policy turns off for the last epochs (original RT-DETR names).
STOP_OPS = ("RandomPhotometricDistort", "RandomZoomOut", "RandomIoUCrop")

# Target keys holding one entry per box; they are filtered together with the boxes.
PER_BOX_KEYS = ("labels", "iscrowd")


def per_box_labels(inputs: Any) -> tuple[torch.Tensor, ...]:
    """labels_getter for SanitizeBoundingBoxes: every per-box tensor of the (image, target) pair."""
    target = inputs[1]
    return tuple(target[key] for key in PER_BOX_KEYS if key in target)


def letterbox_size(height: int, width: int, out_height: int, out_width: int) -> tuple[int, int]:
    """(h, w) of an image resized to fit (out_height, out_width) with its aspect ratio kept."""
    scale = min(out_height / height, out_width / width)
    return max(1, min(out_height, round(height * scale))), max(1, min(out_width, round(width * scale)))


class ResizeAndPad(v2.Transform):
    """Resize the longest side to fit `size` (h, w) keeping the aspect ratio, pad bottom/right with 0."""

    def __init__(self, size: Sequence[int]):
        super().__init__()
        self.size = (int(size[0]), int(size[1]))

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        image = next(x for x in flat_inputs if isinstance(x, (tv_tensors.Image, PIL.Image.Image)))
        height, width = F.get_size(image)
        new_h, new_w = letterbox_size(height, width, *self.size)
        return {"size": [new_h, new_w], "padding": [0, 0, self.size[1] - new_w, self.size[0] - new_h]}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        inpt = self._call_kernel(F.resize, inpt, params["size"])
        return self._call_kernel(F.pad, inpt, params["padding"], fill=0)


class SkipIfNoBoxes(v2.Transform):
    """Apply `transform` with probability p, only when the sample has at least one box."""

    def __init__(self, transform: Callable, p: float):
        super().__init__()
        self.inner, self.p = transform, p

    def forward(self, *inputs: Any) -> Any:
        inputs = inputs if len(inputs) > 1 else inputs[0]
        if len(inputs[1]["boxes"]) == 0 or self.p <= 0 or torch.rand(1).item() >= self.p:
            return inputs
        return self.inner(inputs)


def _finish(image: torch.Tensor, target: dict[str, Any], canvas_size: torch.Tensor) -> tuple:
    """Boxes -> plain float32 normalised cxcywh; canvas_size added; image as a plain tensor."""
    boxes = target["boxes"]
    height, width = boxes.canvas_size
    cxcywh = F.convert_bounding_box_format(boxes, new_format=tv_tensors.BoundingBoxFormat.CXCYWH)
    scale = torch.tensor([width, height, width, height], dtype=torch.float32)
    target = dict(target)
    target["boxes"] = cxcywh.as_subclass(torch.Tensor).to(torch.float32) / scale
    for key in PER_BOX_KEYS:
        if key in target:
            target[key] = target[key].as_subclass(torch.Tensor)
    target["canvas_size"] = canvas_size
    return image.as_subclass(torch.Tensor), target


class TrainPreset:
    """TAO's training augmentation; `set_epoch(e)` turns off `stop_ops` once e >= stop_epoch.

    PhotometricDistort(p=distortion_prob) -> ZoomOut(fill 0, side 1..4, p 0.5) -> IoUCrop(p=iou_crop_prob)
    -> Sanitize(min_size 1) -> HorizontalFlip(0.5) -> Resize(spatial_size) -> float [0, 1] -> Sanitize
    -> normalised cxcywh. canvas_size is set to orig_size (not meaningful after zoom-out/crop).
    """

    def __init__(
        self,
        spatial_size: Sequence[int],
        distortion_prob: float = 0.8,
        iou_crop_prob: float = 0.8,
        stop_epoch: int | None = None,
        stop_ops: Sequence[str] = STOP_OPS,
    ):
        self.spatial_size = (int(spatial_size[0]), int(spatial_size[1]))
        self.stop_epoch, self.stop_ops = stop_epoch, tuple(stop_ops)
        self.epoch = 0
        self.steps: list[tuple[str, Callable]] = [
            ("RandomPhotometricDistort", v2.RandomPhotometricDistort(p=distortion_prob)),
            ("RandomZoomOut", v2.RandomZoomOut(fill=0, side_range=(1.0, 4.0), p=0.5)),
            ("RandomIoUCrop", SkipIfNoBoxes(v2.RandomIoUCrop(), p=iou_crop_prob)),
            ("SanitizeBoundingBoxes", v2.SanitizeBoundingBoxes(min_size=1, labels_getter=per_box_labels)),
            ("RandomHorizontalFlip", v2.RandomHorizontalFlip(p=0.5)),
            ("Resize", v2.Resize(list(self.spatial_size))),
            ("ToDtype", v2.ToDtype(torch.float32, scale=True)),
            ("SanitizeBoundingBoxes", v2.SanitizeBoundingBoxes(min_size=1, labels_getter=per_box_labels)),
        ]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def active_steps(self) -> list[str]:
        """Names of the steps applied at the current epoch."""
        stopped = self.stop_epoch is not None and self.epoch >= self.stop_epoch
        return [name for name, _ in self.steps if not (stopped and name in self.stop_ops)]

    def __call__(
        self, image: tv_tensors.Image, target: dict[str, Any]
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        active = set(self.active_steps())
        for name, step in self.steps:
            if name in active:
                image, target = step(image, target)
        canvas = target["orig_size"].to(torch.float32)
        return _finish(image, target, canvas)

    def __repr__(self) -> str:
        return f"TrainPreset(spatial_size={self.spatial_size}, steps={[n for n, _ in self.steps]}, stop_epoch={self.stop_epoch})"


class EvalPreset:
    """Resize to spatial_size (h, w), or with preserve_aspect_ratio fit the longest side and pad
    bottom/right with 0 (canvas_size = padded size / scale, so boxes map back exactly)."""

    def __init__(self, spatial_size: Sequence[int], preserve_aspect_ratio: bool = False):
        self.spatial_size = (int(spatial_size[0]), int(spatial_size[1]))
        self.preserve_aspect_ratio = preserve_aspect_ratio
        resize = (
            ResizeAndPad(self.spatial_size) if preserve_aspect_ratio else v2.Resize(list(self.spatial_size))
        )
        self.transform = v2.Compose([resize, v2.ToDtype(torch.float32, scale=True)])

    def set_epoch(self, epoch: int) -> None:
        """Nothing changes with the epoch."""

    def canvas_size(self, height: int, width: int) -> torch.Tensor:
        """float32 [2] (h, w) in original pixels that the normalised output boxes are relative to."""
        if not self.preserve_aspect_ratio:
            return torch.tensor([height, width], dtype=torch.float32)
        out_h, out_w = self.spatial_size
        new_h, new_w = letterbox_size(height, width, out_h, out_w)
        return torch.tensor([out_h * height / new_h, out_w * width / new_w], dtype=torch.float32)

    def __call__(
        self, image: tv_tensors.Image, target: dict[str, Any]
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        height, width = F.get_size(image)
        image, target = self.transform(image, target)
        return _finish(image, target, self.canvas_size(height, width))

    def image_only(self, image: tv_tensors.Image) -> tuple[torch.Tensor, torch.Tensor]:
        """An image without annotations (inference): (float32 [3, H, W] in [0, 1], canvas_size [2])."""
        height, width = F.get_size(image)
        return self.transform(image).as_subclass(torch.Tensor), self.canvas_size(height, width)

    def __repr__(self) -> str:
        return f"EvalPreset(spatial_size={self.spatial_size}, preserve_aspect_ratio={self.preserve_aspect_ratio})"


def build_transforms(
    train: bool,
    spatial_size: Sequence[int],
    *,
    distortion_prob: float = 0.8,
    iou_crop_prob: float = 0.8,
    preserve_aspect_ratio: bool = False,
    stop_epoch: int | None = None,
) -> TrainPreset | EvalPreset:
    """The named preset: "train" (TrainPreset) or eval (EvalPreset)."""
    if train:
        return TrainPreset(spatial_size, distortion_prob, iou_crop_prob, stop_epoch=stop_epoch)
    return EvalPreset(spatial_size, preserve_aspect_ratio)
