"""`rtdetr quickstart`: fine-tune a COCO-trained RT-DETR (or, when none can be had, train a small one
from scratch) on the shipped BCCD sample, evaluate it and run it on the sample's images; no user data
needed."""

from __future__ import annotations

import logging
from importlib import resources
from pathlib import Path

import yaml

from rtdetr.common.files import atomic_write_text
from rtdetr.config import load_spec
from rtdetr.errors import UserError
from rtdetr.model import hub
from rtdetr.model.weights import torch_load_weights
from rtdetr.tasks.runner import run_task

log = logging.getLogger(__name__)

# the published COCO RT-DETR-R18 (Apache-2.0), through the Hugging Face cache or the network
DEFAULT_PRETRAINED = "hf://PekingU/rtdetr_r18vd"
MIN_SIZE = 160
NUM_CLASSES = 4  # the sample's 3 classes at their category ids 1-3


def sample_dir() -> Path:
    """The BCCD sample shipped inside the package (images/, train.json, val.json, LICENSE)."""
    return Path(str(resources.files("rtdetr") / "assets" / "bccd_sample"))


def pretrained_weights(name: str | None) -> tuple[Path | None, str]:
    """(the local checkpoint of ``name``, "") when it can be had (a file, or a hub name in the cache or
    on the network), else (None, why not)."""
    if not name or name.lower() == "none":
        return None, "--pretrained none"
    try:
        return Path(hub.local_path(name, "--pretrained")), ""
    except UserError as exc:
        return None, str(exc)


SMALL_MODEL = {
    "backbone": "resnet_18vd", "expansion": 0.5, "hidden_dim": 128, "feat_channels": [128, 128, 128],
    "nheads": 8, "dim_feedforward": 512, "dec_dim_feedforward": 512, "dec_layers": 3,
    "num_queries": 100, "num_select": 100, "dn_number": 50,
}  # fmt: skip


def quickstart_spec(results_dir: str | Path, epochs: int = 12, size: int = 320, pretrained: Path | None = None
                    ) -> dict:  # fmt: skip
    """A spec for the sample at ``size`` x ``size``: fine-tuning the model of the ``pretrained``
    checkpoint (its model section, a lower learning rate), or, without one, a small r18vd-style model
    from scratch (CPU-friendly); evaluating the trained model on the sample's val split and running
    it on the val images."""
    data = sample_dir()
    checkpoint = str(Path(results_dir) / "train" / f"model_epoch_{epochs - 1:03d}.pth")
    source = lambda name: {"image_dir": str(data / "images"), "json_file": str(data / f"{name}.json")}  # noqa: E731
    model, optim = dict(SMALL_MODEL), {"lr": 0.0005, "lr_backbone": 0.0002, "warmup_steps": 20}
    if pretrained is not None:
        meta = torch_load_weights(pretrained, "--pretrained").get("rtdetr")
        if not isinstance(meta, dict) or not isinstance(meta.get("model"), dict):
            raise UserError(f"--pretrained: {pretrained} is not an rtdetr checkpoint (no model section)")
        model = {k: v for k, v in meta["model"].items() if k != "pretrained_backbone_path"}
        queries = int(model.get("num_queries", 300))
        model["num_select"] = min(int(model.get("num_select", 300)), queries * NUM_CLASSES)
        optim = {"lr": 0.0001, "lr_backbone": 0.00001, "warmup_steps": 20}  # RT-DETR's fine-tuning rates
    # 160 px gives 525 query candidates (20x20 + 10x10 + 5x5), enough for 300 queries
    scales = [s for s in (size - 64, size - 32, size, size + 32, size + 64) if s >= MIN_SIZE]
    return {
        "results_dir": str(results_dir),
        "model": model,
        "dataset": {
            "train_data_sources": [source("train")], "val_data_sources": source("val"),
            "test_data_sources": source("val"), "num_classes": NUM_CLASSES, "batch_size": 4, "workers": 2,
            "infer_data_sources": {"image_dir": [str(data / "images")], "classmap": ""},
            "augmentation": {"train_spatial_size": [size, size], "eval_spatial_size": [size, size],
                             "multi_scales": scales, "distortion_prob": 0.5, "iou_crop_prob": 0.5},
        },
        "train": {
            "num_epochs": epochs, "checkpoint_interval": epochs, "validation_interval": 3 if epochs >= 3 else 1,
            "activation_checkpoint": False, "seed": 42, "optim": optim,
            "pretrained_model_path": str(pretrained) if pretrained is not None else None,
        },
        "evaluate": {"checkpoint": checkpoint},
        "inference": {"checkpoint": checkpoint, "input_width": size, "input_height": size, "conf_threshold": 0.4},
        "export": {"checkpoint": checkpoint, "onnx_file": str(Path(results_dir) / "export" / "rtdetr_quickstart.onnx"),
                   "input_width": size, "input_height": size, "overwrite": True},
    }  # fmt: skip


def run_quickstart(results_dir: str | Path = "rtdetr_quickstart", epochs: int = 12, size: int = 320,
                   pretrained: str | None = DEFAULT_PRETRAINED) -> dict[str, Path]:  # fmt: skip
    """Write the spec, then train (fine-tuning ``pretrained`` when it can be had, else from scratch,
    saying why), evaluate, run inference, export to ONNX and evaluate the ONNX file; returns each
    step's results directory (keys train, evaluate, inference, export, evaluate_onnx)."""
    if size < MIN_SIZE or size % 32:
        raise UserError(f"--size {size}: give a multiple of 32, at least {MIN_SIZE}")
    results_dir = Path(results_dir).resolve()
    spec_path = results_dir / "quickstart_spec.yaml"
    weights, why = pretrained_weights(pretrained)
    if weights is None:
        log.warning("training a small model from scratch: no pretrained weights (%s)", why)
    else:
        log.info("fine-tuning %s (%s)", pretrained, weights)
    spec = quickstart_spec(results_dir, epochs, size, weights)
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
