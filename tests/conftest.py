"""Shared fixtures: running the CLI in-process, writing specs, the generated squares data and the small
model trained on it once per session (used by the engine and the task tests)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import yaml

# tests never reach the network: hub names come from caches the tests fill (set before
# huggingface_hub reads it; subprocesses inherit it)
os.environ["HF_HUB_OFFLINE"] = "1"

from rtdetr.cli import main  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))  # tests/synthetic.py: generated datasets and specs

from synthetic import make_dataset, tiny_spec  # noqa: E402


class CliResult:
    def __init__(self, code: int, out: str, err: str):
        self.code, self.out, self.err = code, out, err

    @property
    def error_lines(self) -> list[str]:
        return [line for line in self.err.splitlines() if line.startswith("error:")]


@pytest.fixture
def cli(capsys):
    """Run `rtdetr ARGS...` in this process; returns code, stdout, stderr."""

    def run(*args: str) -> CliResult:
        capsys.readouterr()
        code = main([str(a) for a in args])
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return run


@pytest.fixture
def write_spec(tmp_path):
    """Write a spec mapping (YAML, or JSON for a .json name) and return its path."""

    def write(data, name: str = "spec.yaml") -> Path:
        path = tmp_path / name
        if name.endswith(".json"):
            path.write_text(json.dumps(data))
        else:
            path.write_text(yaml.safe_dump(data, sort_keys=False))
        return path

    return write


@pytest.fixture(scope="session")
def squares(tmp_path_factory) -> Path:
    """64 training, 24 validation and 16 test images of coloured squares (2 classes)."""
    root = tmp_path_factory.mktemp("squares")
    make_dataset(root, "train", 64, seed=0)
    make_dataset(root, "val", 24, seed=1)
    make_dataset(root, "test", 16, seed=11)
    return root


@pytest.fixture(scope="session")
def trained(squares, tmp_path_factory) -> dict:
    """The small squares model trained once by `rtdetr train` for 8 epochs (a checkpoint every 4,
    validation every 2; a minute or two on 2 cores); returns its data, spec, results folder and last
    checkpoint. Its tests only read these files."""
    root = tmp_path_factory.mktemp("trained")
    spec = tiny_spec(squares, root / "results")
    spec["train"].update(num_epochs=8, checkpoint_interval=4, validation_interval=2)
    path = root / "train.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    assert main(["-q", "train", "-e", str(path)]) == 0
    results = root / "results" / "train"
    return {"data": squares, "spec": spec, "results": results, "checkpoint": results / "model_epoch_007.pth"}
