"""The detection dataset: per-image records (a python list, or packed bytes shared by workers) -> samples.

Sample = (image, target) after the preset (see transforms.py): image float32 [3, H, W] in [0, 1] RGB;
target {"labels" int64 [N], "boxes" float32 [N, 4] normalised cxcywh, "image_id" int64 [],
"orig_size" int64 [2] (h, w), "canvas_size" float32 [2] (h, w)} (+ "iscrowd" int64 [N] with
include_crowd). Without a preset the image stays uint8 and boxes are XYXY pixels.
"""

from __future__ import annotations

import logging
import pickle
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as F

from rtdetr.data.images import UNREADABLE_IMAGE_ERRORS, load_image
from rtdetr.errors import UserError

logger = logging.getLogger(__name__)

DATASET_TYPES = ("serialized", "default")
MAX_CONSECUTIVE_UNREADABLE = 100


class SerializedRecords:
    """Records pickled once into one numpy byte buffer + offsets (as detectron2 does).

    Forked loader workers share the buffer's pages; reading a record unpickles a fresh copy, so no
    long-lived python object is touched (refcounts, GC) and copied into every worker.
    """

    def __init__(self, records: Sequence[dict[str, Any]]):
        blobs = [pickle.dumps(r, protocol=pickle.HIGHEST_PROTOCOL) for r in records]
        self._ends = np.cumsum([len(b) for b in blobs], dtype=np.int64)
        self._data = np.frombuffer(b"".join(blobs), dtype=np.uint8)

    def __len__(self) -> int:
        return len(self._ends)

    def __getitem__(self, index: int) -> dict[str, Any]:
        start = 0 if index == 0 else int(self._ends[index - 1])
        return pickle.loads(memoryview(self._data[start : int(self._ends[index])]))

    @property
    def nbytes(self) -> int:
        return self._data.nbytes + self._ends.nbytes


class CocoDetection(torch.utils.data.Dataset):
    """Detection samples from COCO records (coco.load_coco), loaded with PIL.

    records: per-image dicts ("file_name", "image_id", "height", "width", "boxes" XYXY pixels,
        "labels", "crowd_boxes", "crowd_labels").
    transforms: a preset (transforms.TrainPreset / EvalPreset) or any (image, target) callable.
    dataset_type: "serialized" (packed bytes, shared by forked workers) or "default" (a python list).
    include_crowd: append crowd boxes to the targets with target["iscrowd"] = 1 (evaluation only;
        crowd boxes are never training targets).

    An image that cannot be decoded is logged once (per process), counted in `unreadable`, and the
    next readable index is returned instead, so one bad file never stops an epoch. With
    ``substitute_unreadable`` False (evaluation: each image must count once) it stays itself: a black
    image of its size without boxes, marked ``target["unreadable"] = True`` for the evaluator to leave
    out.
    """

    def __init__(
        self,
        records: Sequence[dict[str, Any]],
        transforms: Callable | None = None,
        *,
        dataset_type: str = "serialized",
        include_crowd: bool = False,
        substitute_unreadable: bool = True,
    ):
        if dataset_type not in DATASET_TYPES:
            raise ValueError(f"dataset_type must be one of {DATASET_TYPES}, got {dataset_type!r}")
        self.records = SerializedRecords(records) if dataset_type == "serialized" else list(records)
        self.dataset_type = dataset_type
        self.transforms = transforms
        self.include_crowd = include_crowd
        self.substitute_unreadable = substitute_unreadable
        self.unreadable = 0  # images that failed to decode in this process
        self._bad: set[int] = set()
        self._size_warned: set[int] = set()

    def __len__(self) -> int:
        return len(self.records)

    def set_epoch(self, epoch: int) -> None:
        """Forward the epoch to the preset (epoch-based augmentation policies)."""
        if hasattr(self.transforms, "set_epoch"):
            self.transforms.set_epoch(epoch)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, Any]]:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} images")
        first_error = None
        for attempt in range(min(len(self), MAX_CONSECUTIVE_UNREADABLE)):
            i = (index + attempt) % len(self)
            record = self.records[i]
            if i in self._bad:
                if self.substitute_unreadable:
                    continue
                return self._unreadable_sample(i, record)
            try:
                image = load_image(record["file_name"])
            except UNREADABLE_IMAGE_ERRORS as exc:
                self._bad.add(i)
                self.unreadable += 1
                first_error = first_error or f"{record['file_name']}: {exc}"
                instead = (
                    "using another image instead" if self.substitute_unreadable else "left out of the metrics"
                )
                logger.warning("cannot read image %s (%s); %s", record["file_name"], exc, instead)
                if not self.substitute_unreadable:
                    return self._unreadable_sample(i, record)
                continue
            return self._sample(i, record, image)
        raise UserError(
            f"no readable image among {min(len(self), MAX_CONSECUTIVE_UNREADABLE)} tried from index {index}; first: {first_error}"
        )

    def _unreadable_sample(self, index: int, record: dict[str, Any]) -> tuple[torch.Tensor, dict[str, Any]]:
        blank = {**record, "boxes": [], "labels": [], "crowd_boxes": [], "crowd_labels": []}
        image, target = self._sample(index, blank, Image.new("RGB", (record["width"], record["height"])))
        target["unreadable"] = True
        return image, target

    def _sample(self, index: int, record: dict[str, Any], image) -> tuple[torch.Tensor, dict[str, Any]]:
        width, height = image.size
        boxes, labels, crowd = record["boxes"], record["labels"], [0] * len(record["labels"])
        if self.include_crowd:
            boxes = boxes + record["crowd_boxes"]
            labels = labels + record["crowd_labels"]
            crowd = crowd + [1] * len(record["crowd_labels"])
        boxes = tv_tensors.BoundingBoxes(
            torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            format="XYXY",
            canvas_size=(height, width),
        )
        if (height, width) != (record["height"], record["width"]):
            if index not in self._size_warned:
                self._size_warned.add(index)
                logger.warning(
                    "%s is %dx%d but its annotation says %dx%d; boxes clipped to the image",
                    record["file_name"], width, height, record["width"], record["height"],
                )  # fmt: skip
            boxes = F.clamp_bounding_boxes(boxes)
        target = {
            "boxes": boxes,
            "labels": torch.tensor(labels, dtype=torch.int64),
            "image_id": torch.tensor(record["image_id"], dtype=torch.int64),
            "orig_size": torch.tensor([height, width], dtype=torch.int64),
        }
        if self.include_crowd:
            target["iscrowd"] = torch.tensor(crowd, dtype=torch.int64)
        image = tv_tensors.Image(F.pil_to_tensor(image))
        if self.transforms is not None:
            return self.transforms(image, target)
        return image, target
