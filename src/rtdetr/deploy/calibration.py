"""Calibration images for INT8 (TensorRT's gen_trt_engine, ONNX Runtime's quantize): a fixed sample of
image files, prepared exactly as the Detector prepares images (RGB / 255, resized or letterboxed)."""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as F

from rtdetr.data.images import UNREADABLE_IMAGE_ERRORS, load_image
from rtdetr.data.sources import list_inputs
from rtdetr.data.transforms import EvalPreset
from rtdetr.errors import UserError

log = logging.getLogger(__name__)

CALIBRATION_SEED = 0  # the calibration images are a fixed random sample of the given files
REQUIREMENT = "cal_batches x cal_batch_size"  # gen_trt_engine's calibration fields


def calibration_images(
    entries: Sequence[str], needed: int, *, field: str = "cal_image_dir", requirement: str = REQUIREMENT
) -> list[Path]:
    """The image files of ``entries`` (folders, files, globs) in a fixed random order (seed 0);
    UserError for videos or fewer than ``needed`` images (``requirement`` says where that number
    comes from)."""
    found = list_inputs(list(entries), field)
    if found.videos:
        raise UserError(
            f"{field}: {found.videos[0]} is a video; calibration reads images (extract frames first)"
        )
    if len(found.images) < needed:
        raise UserError(
            f"{field}: found {len(found.images)} images, INT8 calibration needs {requirement} = {needed}"
        )
    images = list(found.images)
    random.Random(CALIBRATION_SEED).shuffle(images)
    return images


def calibration_batches(
    paths: Iterable[str | os.PathLike],
    input_size: Sequence[int],
    preserve_aspect_ratio: bool,
    batch_size: int,
    batches: int,
    *,
    field: str = "cal_image_dir",
    requirement: str = REQUIREMENT,
    minimum: int | None = None,
) -> Iterator[np.ndarray]:
    """``batches`` contiguous float32 arrays [batch_size, 3, H, W] (RGB in [0, 1]), each image prepared
    as the Detector prepares it. Unreadable images are skipped with a warning and the next file
    takes their place; UserError when the files run out first, or, with ``minimum``, only when they
    run out before ``minimum`` batches (after that, fewer batches with a warning)."""
    preset = EvalPreset(input_size, preserve_aspect_ratio)
    files = iter(paths)
    skipped = 0
    for done in range(batches):
        batch = []
        while len(batch) < batch_size:
            path = next(files, None)
            if path is None:
                readable = done * batch_size + len(batch)
                if minimum is not None and done >= minimum:
                    log.warning(
                        "%s: %d readable images (%d unreadable): calibrating on %d, not %d",
                        field, readable, skipped, done * batch_size, batches * batch_size,
                    )  # fmt: skip
                    return
                need = batches if minimum is None else minimum
                raise UserError(
                    f"{field}: only {readable} readable images ({skipped} "
                    f"unreadable), INT8 calibration needs {requirement} = {need * batch_size}"
                )
            try:
                image = load_image(path)
            except UNREADABLE_IMAGE_ERRORS as exc:
                skipped += 1
                log.warning("calibration: skipped %s, cannot read it: %s", path, exc)
                continue
            batch.append(preset.image_only(tv_tensors.Image(F.pil_to_tensor(image)))[0].numpy())
        yield np.ascontiguousarray(np.stack(batch), dtype=np.float32)
