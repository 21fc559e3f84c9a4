"""Tiny synthetic COCO datasets written to tmp_path."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def solid_image(path: Path, size=(32, 24), color=(200, 100, 50), mode="RGB") -> Path:
    """Write a (width, height) image of one colour; returns the path."""
    Image.new(mode, size, color).save(path)
    return path


@pytest.fixture
def make_coco(tmp_path):
    """make_coco(images, annotations, categories=None, write_images=True) -> (json_path, image_dir).

    images: list of dicts with at least id (file_name defaults to img<id>.png, 32x24);
    annotations: list of dicts (id filled in); categories default to ids 1..3.
    """

    def make(images, annotations, categories=None, write_images=True, name="ann.json"):
        image_dir = tmp_path / "images"
        image_dir.mkdir(exist_ok=True)
        images = [{"file_name": f"img{im['id']}.png", "width": 32, "height": 24, **im} for im in images]
        if write_images:
            rng = np.random.default_rng(0)
            for im in images:
                pixels = rng.integers(0, 256, (im["height"], im["width"], 3), dtype=np.uint8)
                Image.fromarray(pixels).save(image_dir / im["file_name"])
        annotations = [{"id": i + 1, "iscrowd": 0, **a} for i, a in enumerate(annotations)]
        categories = categories or [{"id": k, "name": f"c{k}"} for k in (1, 2, 3)]
        path = tmp_path / name
        path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
        return path, image_dir

    return make


@pytest.fixture
def small_coco(make_coco):
    """Six 32x24 images (one a negative) with 1-3 boxes each, categories 1..3; num_classes 4."""
    images = [{"id": i} for i in range(1, 7)]
    annotations = []
    for i in range(1, 6):
        for k in range(1 + i % 3):
            annotations.append({"image_id": i, "category_id": 1 + k, "bbox": [2 + 3 * k, 3 + k, 10, 8]})
    return make_coco(images, annotations)
