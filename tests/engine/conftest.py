"""Generated datasets and spec writers for the engine tests (tests/conftest.py holds `squares` and the
session's `trained` model)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from synthetic import make_dataset, tiny_spec  # tests/synthetic.py, on the path via tests/conftest.py


@pytest.fixture(scope="session")
def small_squares(tmp_path_factory) -> Path:
    """16 training and 8 validation images, for runs that only check mechanics."""
    root = tmp_path_factory.mktemp("small_squares")
    make_dataset(root, "train", 16, seed=2)
    make_dataset(root, "val", 8, seed=3)
    return root


def deep_update(base: dict, extra: dict) -> dict:
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            deep_update(base[key], value)
        else:
            base[key] = value
    return base


@pytest.fixture
def spec_file(tmp_path):
    """spec_file(data_root, **sections) -> path of a YAML spec (tiny_spec updated with sections)."""

    def write(data_root: Path, name: str = "spec.yaml", **sections) -> Path:
        spec = deep_update(tiny_spec(data_root, tmp_path / "results"), sections)
        path = tmp_path / name
        path.write_text(yaml.safe_dump(spec))
        return path

    return write
