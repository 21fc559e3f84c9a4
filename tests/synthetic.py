"""A tiny generated detection dataset: coloured squares on a noisy background."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

COLOURS = {1: (220, 40, 40), 2: (40, 200, 60)}  # category id -> RGB


def make_dataset(folder: Path, name: str, count: int, seed: int, size: int = 128) -> Path:
    """Write ``count`` images with 1-3 squares each and their COCO file; returns the JSON path."""
    rng = np.random.default_rng(seed)
    images_dir = folder / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for i in range(count):
        pixels = rng.integers(90, 160, size=(size, size, 3), dtype=np.uint8)
        placed: list[tuple[int, int, int, int]] = []
        for _ in range(int(rng.integers(1, 4))):
            side = int(rng.integers(size // 6, size // 3))
            for _attempt in range(20):
                x, y = (int(v) for v in rng.integers(0, size - side, size=2))
                if all(x + side <= a or a + s <= x or y + side <= b or b + s <= y for a, b, s, _ in placed):
                    break
            else:
                continue
            category = int(rng.integers(1, 3))
            pixels[y : y + side, x : x + side] = COLOURS[category]
            placed.append((x, y, side, category))
            annotations.append(
                {"id": len(annotations) + 1, "image_id": i + 1, "category_id": category,
                 "bbox": [x, y, side, side], "area": side * side, "iscrowd": 0}
            )  # fmt: skip
        file_name = f"{name}_{i:04d}.png"
        Image.fromarray(pixels).save(images_dir / file_name)
        images.append({"id": i + 1, "file_name": file_name, "width": size, "height": size})
    categories = [{"id": 1, "name": "red"}, {"id": 2, "name": "green"}]
    path = folder / f"{name}.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return path


def tiny_spec(folder: Path, results_dir: Path, **train) -> dict:
    """A spec training a small RT-DETR on the generated data (call make_dataset first)."""
    source = lambda name: {"image_dir": str(folder / "images"), "json_file": str(folder / f"{name}.json")}  # noqa: E731
    return {
        "results_dir": str(results_dir),
        "model": {
            "backbone": "resnet_18vd", "hidden_dim": 64, "feat_channels": [64, 64, 64], "nheads": 4,
            "dim_feedforward": 128, "dec_dim_feedforward": 128, "dec_layers": 2, "num_queries": 30,
            "dn_number": 10, "expansion": 0.5, "num_select": 30,
        },
        "dataset": {
            "train_data_sources": [source("train")], "val_data_sources": source("val"),
            "num_classes": 3, "batch_size": 8, "workers": 0,
            "augmentation": {"train_spatial_size": [128, 128], "eval_spatial_size": [128, 128],
                             "multi_scales": [], "distortion_prob": 0.0, "iou_crop_prob": 0.0},
        },
        "train": {
            "num_epochs": 3, "activation_checkpoint": False, "seed": 7,
            "optim": {"lr": 0.001, "lr_backbone": 0.0005, "weight_decay": 0.0001},
            **train,
        },
    }  # fmt: skip
