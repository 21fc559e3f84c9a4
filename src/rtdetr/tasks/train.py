"""The train task: `rtdetr train -e spec.yaml`."""

from __future__ import annotations

from pathlib import Path

from rtdetr.common.status import StatusLogger
from rtdetr.config import ExperimentConfig
from rtdetr.engine.trainer import fit
from rtdetr.tasks.files import TaskFiles

OWNED = (
    "dataset_issues.log", "model_epoch_*.pth", "rtdetr_model_latest.pth", "logs", "tensorboard", "plots",
    "dry_run", "wandb",
)  # fmt: skip


def files(cfg: ExperimentConfig) -> TaskFiles:
    d, t = cfg.dataset, cfg.train
    inputs = {
        f"dataset.train_data_sources[{i}].json_file": s.json_file for i, s in enumerate(d.train_data_sources)
    }
    inputs["dataset.val_data_sources.json_file"] = d.val_data_sources.json_file
    inputs["train.pretrained_model_path"] = t.pretrained_model_path
    inputs["train.resume_training_checkpoint_path"] = t.resume_training_checkpoint_path
    inputs["model.pretrained_backbone_path"] = cfg.model.pretrained_backbone_path
    if cfg.model.frozen_fm.enabled:
        inputs["model.frozen_fm.checkpoint"] = cfg.model.frozen_fm.checkpoint
    return TaskFiles(inputs=inputs, owned=OWNED)


def run(cfg: ExperimentConfig, results_dir: Path, status: StatusLogger) -> None:
    fit(cfg, results_dir, status)
