"""Shared fixtures: running the CLI in-process, writing specs."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml

from rtdetr.cli import main

sys.path.insert(0, str(Path(__file__).parent))  # tests/synthetic.py: generated datasets and specs


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
