"""Models for the task tests and specs for the evaluate and inference tasks.

``trained`` (tests/conftest.py) is the small squares model trained once per session: tests that need
a model that has learned (accuracy, parity on real detections) use it and are marked slow.
``untrained`` is a random model of the same architecture and metadata, written in about a second:
tests that only need a model file (errors, outputs, file handling) use it and stay in the fast set.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

import rtdetr
from rtdetr.config import spec_to_dict
from rtdetr.model.checkpoint import ModelMetadata, build_from_metadata, save_checkpoint
from synthetic import tiny_spec  # tests/synthetic.py, on the path via tests/conftest.py


@pytest.fixture(scope="session")
def untrained(squares, tmp_path_factory) -> dict:
    """A random model with the trained model's architecture, classes and input size (no training);
    the same keys as ``trained``."""
    root = tmp_path_factory.mktemp("untrained")
    spec = tiny_spec(squares, root / "results")
    cfg = rtdetr.load_spec(spec, action="train")
    meta = ModelMetadata(
        model=spec_to_dict(cfg.model),
        num_classes=cfg.dataset.num_classes,
        class_names=["class_0", "red", "green"],
        category_ids=[-1, 1, 2],
        input_size=[128, 128],
    )
    torch.manual_seed(0)
    checkpoint = save_checkpoint(root / "model_epoch_000.pth", build_from_metadata(meta), meta)
    return {"data": squares, "spec": spec, "checkpoint": checkpoint}


def _spec_writer(model: dict, tmp_path: Path):
    def write(name: str = "spec.yaml", **sections) -> Path:
        data = model["data"]
        spec = {
            "results_dir": str(tmp_path / "results"),
            "model": model["spec"]["model"],
            "dataset": {
                **model["spec"]["dataset"],
                "test_data_sources": {
                    "image_dir": str(data / "images"),
                    "json_file": str(data / "test.json"),
                },
                "infer_data_sources": {"image_dir": [str(data / "images" / "test_*.png")]},
                "batch_size": 4,
            },
            "evaluate": {"checkpoint": str(model["checkpoint"])},
            "inference": {"checkpoint": str(model["checkpoint"]), "input_width": 128, "input_height": 128},
        }
        for key, value in sections.items():
            if isinstance(value, dict) and isinstance(spec.get(key), dict):
                spec[key] = {**spec[key], **value}
            else:
                spec[key] = value
        path = tmp_path / name
        path.write_text(yaml.safe_dump(spec))
        return path

    return write


@pytest.fixture
def task_spec(trained, tmp_path):
    """task_spec(**sections) -> a spec file for evaluate/inference on the trained model's test data."""
    return _spec_writer(trained, tmp_path)


@pytest.fixture
def untrained_task_spec(untrained, tmp_path):
    """task_spec's spec file with the untrained model."""
    return _spec_writer(untrained, tmp_path)


def _export(checkpoint: Path, folder: Path) -> Path:
    """``checkpoint`` exported by the CLI at 128x128 with a dynamic batch (the defaults otherwise)."""
    from rtdetr.cli import main

    spec = folder / "spec.yaml"
    spec.write_text(json.dumps({"results_dir": str(folder / "results")}))
    onnx_file = folder / "model.onnx"
    code = main(["-q", "export", "-e", str(spec), f"export.checkpoint={checkpoint}",
                 f"export.onnx_file={onnx_file}", "export.input_width=128", "export.input_height=128"])  # fmt: skip
    assert code == 0
    return onnx_file


@pytest.fixture(scope="session")
def exported(trained, tmp_path_factory) -> Path:
    """The trained squares model exported at 128x128 with a dynamic batch (the CLI, defaults)."""
    return _export(trained["checkpoint"], tmp_path_factory.mktemp("exported"))


@pytest.fixture(scope="session")
def untrained_exported(untrained, tmp_path_factory) -> Path:
    """The untrained model exported as ``exported`` is."""
    return _export(untrained["checkpoint"], tmp_path_factory.mktemp("untrained_exported"))
