"""`rtdetr quickstart`: train a small RT-DETR on the shipped BCCD sample, evaluate it and run it on
the sample's images; no user data needed."""

from __future__ import annotations

import logging
from importlib import resources
from pathlib import Path

import yaml

from rtdetr.common.files import atomic_write_text
from rtdetr.config import load_spec
from rtdetr.tasks.runner import run_task

log = logging.getLogger(__name__)


def sample_dir() -> Path:
    """The BCCD sample shipped inside the package (images/, train.json, val.json, LICENSE)."""
    return Path(str(resources.files("rtdetr") / "assets" / "bccd_sample"))


def quickstart_spec(results_dir: str | Path, epochs: int = 12) -> dict:
    """A spec for a small r18vd-style model at 320x320 on the sample (CPU-friendly), and for
    evaluating the trained model on the sample's val split and running it on the val images."""
    data = sample_dir()
    checkpoint = str(Path(results_dir) / "train" / f"model_epoch_{epochs - 1:03d}.pth")
    source = lambda name: {"image_dir": str(data / "images"), "json_file": str(data / f"{name}.json")}  # noqa: E731
    return {
        "results_dir": str(results_dir),
        "model": {
            "backbone": "resnet_18vd", "expansion": 0.5, "hidden_dim": 128, "feat_channels": [128, 128, 128],
            "nheads": 8, "dim_feedforward": 512, "dec_dim_feedforward": 512, "dec_layers": 3,
            "num_queries": 100, "num_select": 100, "dn_number": 50,
        },
        "dataset": {
            "train_data_sources": [source("train")], "val_data_sources": source("val"),
            "test_data_sources": source("val"), "num_classes": 4, "batch_size": 4, "workers": 2,
            "infer_data_sources": {"image_dir": [str(data / "images")], "classmap": ""},
            "augmentation": {"train_spatial_size": [320, 320], "eval_spatial_size": [320, 320],
                             "multi_scales": [256, 288, 320, 352, 384], "distortion_prob": 0.5, "iou_crop_prob": 0.5},
        },
        "train": {
            "num_epochs": epochs, "checkpoint_interval": epochs, "validation_interval": 3 if epochs >= 3 else 1,
            "activation_checkpoint": False, "seed": 42,
            "optim": {"lr": 0.0005, "lr_backbone": 0.0002, "warmup_steps": 20},
        },
        "evaluate": {"checkpoint": checkpoint},
        "inference": {"checkpoint": checkpoint, "input_width": 320, "input_height": 320, "conf_threshold": 0.4},
        "export": {"checkpoint": checkpoint, "onnx_file": str(Path(results_dir) / "export" / "rtdetr_quickstart.onnx"),
                   "input_width": 320, "input_height": 320, "overwrite": True},
    }  # fmt: skip


def run_quickstart(results_dir: str | Path = "rtdetr_quickstart", epochs: int = 12) -> dict[str, Path]:
    """Write the spec, then train, evaluate, run inference, export to ONNX and evaluate the ONNX file;
    returns each step's results directory (keys train, evaluate, inference, export, evaluate_onnx)."""
    results_dir = Path(results_dir).resolve()
    spec_path = results_dir / "quickstart_spec.yaml"
    spec = quickstart_spec(results_dir, epochs)
    atomic_write_text(spec_path, yaml.safe_dump(spec, sort_keys=False))
    log.info("spec written to %s (the data: %s, MIT license)", spec_path, sample_dir())
    onnx_run = [
        f"evaluate.trt_engine={spec['export']['onnx_file']}",
        f"evaluate.results_dir={results_dir / 'evaluate_onnx'}",
    ]
    steps = [("train", "train", []), ("evaluate", "evaluate", []), ("inference", "inference", []),
             ("export", "export", []), ("evaluate_onnx", "evaluate", onnx_run)]  # fmt: skip
    return {
        name: run_task(task, load_spec(spec_path, overrides, action=task)) for name, task, overrides in steps
    }
