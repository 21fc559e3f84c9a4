"""The training run's data: COCO sources, datasets, deterministic loaders, validation ground truth."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from torch.utils.data import DataLoader

from rtdetr.config import ExperimentConfig
from rtdetr.data.coco import CocoSource
from rtdetr.data.dataset import CocoDetection
from rtdetr.data.loader import make_loader
from rtdetr.data.sources import read_sources, write_issues
from rtdetr.data.transforms import build_transforms
from rtdetr.errors import UserError
from rtdetr.evaluation.coco import coco_ground_truth

log = logging.getLogger(__name__)


@dataclass
class TrainingData:
    train_loader: DataLoader
    val_loader: DataLoader
    train_source: CocoSource
    val_source: CocoSource
    val_gt: dict
    class_names: list[str]
    label_to_category: list[int]


def build_training_data(cfg: ExperimentConfig, results_dir: Path, world_size: int = 1) -> TrainingData:
    """Read, check and report the train and val sources; build their loaders."""
    d, aug = cfg.dataset, cfg.dataset.augmentation
    issues: list[str] = []
    train_source = read_sources(cfg, "train", issues)
    val_source = read_sources(cfg, "val", issues)
    write_issues(results_dir, issues)
    if not any(r["labels"] for r in train_source.records):
        reasons = ", ".join(f"{n} x {reason}" for reason, n in train_source.report.counts.most_common())
        raise UserError(
            f"{', '.join(train_source.json_files)}: no box to train on in {len(train_source.records)} "
            f"images{': ' + reasons if reasons else ''}"
        )
    train_set = CocoDetection(
        train_source.records,
        build_transforms(
            True, aug.train_spatial_size, distortion_prob=aug.distortion_prob, iou_crop_prob=aug.iou_crop_prob
        ),
        dataset_type=d.dataset_type,
    )
    val_set = CocoDetection(
        val_source.records,
        build_transforms(False, aug.eval_spatial_size, preserve_aspect_ratio=aug.preserve_aspect_ratio),
        dataset_type=d.dataset_type,
        substitute_unreadable=False,  # validation scores every image once
    )
    seed = cfg.train.seed
    common = {"workers": d.workers, "pin_memory": d.pin_memory, "seed": seed, "world_size": world_size}
    scales = list(aug.multi_scales)
    if cfg.model.frozen_fm.enabled and scales:  # as TAO: the foundation model sees one size
        log.info("model.frozen_fm: multi-scale training is off (dataset.augmentation.multi_scales ignored)")
        scales = []
    train_loader = make_loader(train_set, batch_size=d.batch_size, train=True, scales=scales, **common)
    val_loader = make_loader(val_set, batch_size=d.batch_size, train=False, **common)
    label_to_category = val_source.label_to_category
    return TrainingData(
        train_loader=train_loader,
        val_loader=val_loader,
        train_source=train_source,
        val_source=val_source,
        val_gt=coco_ground_truth(val_source.records, label_to_category, val_source.categories),
        class_names=train_source.class_names,
        label_to_category=label_to_category,
    )
