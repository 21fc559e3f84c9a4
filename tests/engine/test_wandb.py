"""wandb logging in offline mode works without a network."""

import pytest

from rtdetr.cli import main


@pytest.mark.slow
def test_wandb_offline_run_is_written_locally(small_squares, spec_file, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    spec = spec_file(
        small_squares,
        train={"num_epochs": 1},
        wandb={"enable": True, "mode": "offline", "project": "rtdetr-test", "name": "rtdetr-offline-test"},
    )
    assert main(["-q", "train", "-e", str(spec)]) == 0
    train_dir = tmp_path / "results" / "train"
    records = list(train_dir.glob("wandb/offline-run-*/run-*.wandb"))  # wandb's offline layout
    assert records and records[0].stat().st_size > 0, sorted(str(p) for p in train_dir.rglob("*"))[:30]
