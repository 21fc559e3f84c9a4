"""The training run's data: COCO sources, datasets, deterministic loaders, validation ground truth."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from rtdetr.config import ExperimentConfig
from rtdetr.data.coco import ISSUES_LOG, CocoSource, concat_sources, load_coco
from rtdetr.data.dataset import CocoDetection
from rtdetr.data.loader import init_worker, resize_batch
from rtdetr.data.sampling import EpochBatchSampler, KeyedDataset
from rtdetr.data.transforms import build_transforms
from rtdetr.engine.metrics import coco_ground_truth
from rtdetr.errors import UserError
from rtdetr.fileio import atomic_write_text
from rtdetr.log import is_rank_zero

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


def collate(batch: list[tuple[torch.Tensor, dict[str, Any]]]) -> tuple[torch.Tensor, list[dict]]:
    """Stack a batch; when its samples carry a multi-scale ``scale``, resize it to [scale, scale]
    (nearest-neighbour, see resize_batch).

    Boxes are normalised, so the targets stay as they are.
    """
    images = torch.stack([image for image, _ in batch])
    targets = [target for _, target in batch]
    scale = targets[0].pop("scale", 0)
    for t in targets[1:]:
        t.pop("scale", None)
    if scale:
        images = resize_batch(images, scale)
    return images, targets


def make_loader(
    dataset: CocoDetection,
    *,
    batch_size: int,
    workers: int,
    pin_memory: bool,
    train: bool,
    seed: int,
    scales: list[int] | None = None,
    world_size: int = 1,
) -> DataLoader:
    """A loader of deterministic batches (see rtdetr.data.sampling); a ``seed`` < 0 (train.seed's
    "disabled") draws a random seed for this run."""
    run_seed = None if seed < 0 else seed
    sampler = EpochBatchSampler(
        len(dataset), batch_size, shuffle=train, drop_last=train, seed=run_seed, scales=scales or (),
        world_size=world_size,
    )  # fmt: skip
    if train and len(sampler) == 0:
        raise UserError(
            f"the training set has {len(dataset)} images, fewer than one batch of dataset.batch_size "
            f"{batch_size} x {world_size} process(es); the last incomplete batch is dropped: lower dataset.batch_size"
        )
    return DataLoader(
        KeyedDataset(dataset, run_seed),
        batch_sampler=sampler,
        num_workers=workers,
        pin_memory=pin_memory and torch.cuda.is_available(),
        collate_fn=collate,
        worker_init_fn=init_worker,
        multiprocessing_context="fork" if workers > 0 and os.name == "posix" else None,
        persistent_workers=False,
    )


def read_sources(cfg: ExperimentConfig, which: str, issues: list[str] | None = None) -> CocoSource:
    """The COCO source(s) of ``which`` ("train", "val" or "test") as one; each source's summary is
    logged (images, boxes per class, skipped items by reason and the first few), and its skipped
    items appended to ``issues`` (lines for the results directory's issue log, see write_issues)."""
    d = cfg.dataset
    raw = {"train": d.train_data_sources, "val": [d.val_data_sources], "test": [d.test_data_sources]}[which]
    sources = [
        load_coco(
            s.json_file, s.image_dir, num_classes=d.num_classes, remap_mscoco_category=d.remap_mscoco_category
        )
        for s in raw
    ]
    for source in sources:
        report_source(source, which, issues)
    return concat_sources(sources)


def report_source(source: CocoSource, name: str, issues: list[str] | None = None) -> None:
    """Log the source's summary; append every skipped item (after a count per reason) to ``issues``."""
    if not is_rank_zero():
        return
    for line in source.summary_lines():
        log.info("%s data: %s", name, line)
    if issues is not None and len(source.report):
        issues.append(f"# {name}: {', '.join(source.json_files)}")
        issues += source.report.log_lines()


def write_issues(results_dir: Path, issues: list[str]) -> None:
    """The issue log of a run whose data were read: written whole (atomically), or removed when
    there is nothing to report (a log of an earlier run stays until then)."""
    if not is_rank_zero():
        return
    path = Path(results_dir) / ISSUES_LOG
    if issues:
        atomic_write_text(path, "\n".join(issues) + "\n")
    else:
        path.unlink(missing_ok=True)


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
    train_loader = make_loader(
        train_set, batch_size=d.batch_size, train=True, scales=list(aug.multi_scales), **common
    )
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
