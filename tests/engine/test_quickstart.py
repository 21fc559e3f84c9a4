"""`rtdetr quickstart` needs no user data: it trains on the shipped BCCD sample."""

from rtdetr.cli import main
from rtdetr.common.status import read_status
from rtdetr.tasks.quickstart import sample_dir


def test_sample_ships_with_its_license():
    folder = sample_dir()
    assert "MIT License" in (folder / "LICENSE").read_text()
    assert len(list((folder / "images").glob("*.jpg"))) == 64


def test_quickstart_trains_evaluates_infers_and_says_where_results_are(tmp_path, capsys):
    assert main(["-q", "quickstart", "--results-dir", str(tmp_path / "qs"), "--epochs", "1"]) == 0
    out = capsys.readouterr().out
    train_dir = tmp_path / "qs" / "train"
    assert f"trained: {train_dir}" in out and "validation: mAP" in out
    assert (train_dir / "model_epoch_000.pth").exists()
    assert (tmp_path / "qs" / "quickstart_spec.yaml").exists()
    assert (
        f"evaluated: {tmp_path / 'qs' / 'evaluate'}" in out
        and f"inference: {tmp_path / 'qs' / 'inference'}" in out
    )
    assert (tmp_path / "qs" / "evaluate" / "results.json").exists()
    assert len(list((tmp_path / "qs" / "inference" / "labels").glob("*.txt"))) == 64
    for task in ("train", "evaluate", "inference", "export", "evaluate_onnx"):
        assert read_status(tmp_path / "qs" / task)[-1]["status"] == "SUCCESS"
    assert (tmp_path / "qs" / "export" / "rtdetr_quickstart.onnx").exists()
    assert "exported: " in out and "run by ONNX Runtime: mAP" in out
