"""A small model trained once on generated squares, and specs for the evaluate and inference tasks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

import rtdetr
from rtdetr.tasks.runner import run_task
from synthetic import make_dataset, tiny_spec  # tests/synthetic.py, on the path via tests/conftest.py


@pytest.fixture(scope="session")
def trained(tmp_path_factory) -> dict:
    """Trains the tiny squares model for 8 epochs (about 40 s); returns its paths."""
    root = tmp_path_factory.mktemp("trained")
    data = root / "data"
    make_dataset(data, "train", 64, seed=0)
    make_dataset(data, "test", 16, seed=11)
    spec = tiny_spec(data, root / "results")
    spec["dataset"]["val_data_sources"] = {
        "image_dir": str(data / "images"),
        "json_file": str(data / "test.json"),
    }
    spec["train"].update(num_epochs=8, validation_interval=8, checkpoint_interval=8)
    path = root / "train.yaml"
    path.write_text(yaml.safe_dump(spec))
    run_task("train", rtdetr.load_spec(path, action="train"))
    return {
        "data": data,
        "checkpoint": root / "results" / "train" / "model_epoch_007.pth",
        "spec": spec,
    }


@pytest.fixture
def task_spec(trained, tmp_path):
    """task_spec(**sections) -> a spec file for evaluate/inference on the trained model's test data."""

    def write(name: str = "spec.yaml", **sections) -> Path:
        data = trained["data"]
        spec = {
            "results_dir": str(tmp_path / "results"),
            "model": trained["spec"]["model"],
            "dataset": {
                **trained["spec"]["dataset"],
                "test_data_sources": {
                    "image_dir": str(data / "images"),
                    "json_file": str(data / "test.json"),
                },
                "infer_data_sources": {"image_dir": [str(data / "images" / "test_*.png")]},
                "batch_size": 4,
            },
            "evaluate": {"checkpoint": str(trained["checkpoint"])},
            "inference": {"checkpoint": str(trained["checkpoint"]), "input_width": 128, "input_height": 128},
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


@pytest.fixture(scope="session")
def exported(trained, tmp_path_factory):
    """The trained squares model exported at 128x128 with a dynamic batch (the CLI, defaults)."""
    from rtdetr.cli import main

    folder = tmp_path_factory.mktemp("exported")
    spec = folder / "spec.yaml"
    spec.write_text(json.dumps({"results_dir": str(folder / "results")}))
    onnx_file = folder / "model.onnx"
    code = main(["-q", "export", "-e", str(spec), f"export.checkpoint={trained['checkpoint']}",
                 f"export.onnx_file={onnx_file}", "export.input_width=128", "export.input_height=128"])  # fmt: skip
    assert code == 0
    return onnx_file
