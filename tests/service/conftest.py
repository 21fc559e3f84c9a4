"""The job server under test: a TestClient with the token, a data folder holding a small COCO dataset
of coloured squares, and jobs run by tests/service/fake_job.py unless a test runs the real CLI."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("sqlalchemy")

from fastapi.testclient import TestClient  # noqa: E402
from service_helpers import Server, kill_active_jobs, make_settings  # noqa: E402  (tests/service/service_helpers.py)

from rtdetr.service.app import create_app  # noqa: E402
from synthetic import make_dataset  # noqa: E402  (tests/synthetic.py)


@pytest.fixture(scope="session")
def squares_data(tmp_path_factory) -> Path:
    """8 train, 4 val and 4 test images of coloured squares at 64x64: a COCO folder to copy."""
    root = tmp_path_factory.mktemp("service_squares")
    make_dataset(root, "train", 8, seed=0, size=64)
    make_dataset(root, "val", 4, seed=1, size=64)
    make_dataset(root, "test", 4, seed=2, size=64)
    return root


@pytest.fixture
def data_dir(tmp_path, squares_data) -> Path:
    """A data folder holding squares/ (images/, train.json, val.json, test.json)."""
    import shutil

    data = tmp_path / "data"
    shutil.copytree(squares_data, data / "squares")
    return data


@pytest.fixture
def server(data_dir):
    settings = make_settings(data_dir)
    app = create_app(settings)
    with TestClient(app, headers={"Authorization": f"Bearer {settings.token}"}) as client:
        yield Server(client, settings)
    kill_active_jobs(app)
