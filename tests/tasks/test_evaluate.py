"""The evaluate task: 12 COCO numbers equal to pycocotools', per-class table, plots, status, errors."""

from __future__ import annotations

import json

import pytest
import torch

from coco_reference import pycocotools_stats  # tests/, on the path via tests/conftest.py
from rtdetr.common.status import read_status
from rtdetr.evaluation.coco import STAT_NAMES


@pytest.mark.slow
def test_evaluate_reports_the_numbers_of_pycocotools(cli, task_spec, trained, tmp_path):
    result = cli("evaluate", "-e", task_spec())
    assert result.code == 0, result.err
    out = tmp_path / "results" / "evaluate"
    report = json.loads((out / "results.json").read_text())
    predictions = json.loads((out / "predictions.json").read_text())
    assert 0 < len(predictions) <= 16 * 30  # at most num_select per image (class 0 has no category)
    assert list(report["stats"]) == list(STAT_NAMES)
    reference = pycocotools_stats(trained["data"] / "test.json", predictions)
    assert list(report["stats"].values()) == pytest.approx(reference, abs=1e-12)
    assert report["stats"]["mAP50"] > 0.3  # the model learned the squares
    assert [(r["category_id"], r["name"]) for r in report["per_class"]] == [(1, "red"), (2, "green")]
    for name in ("mAP50", "AR_large", "red", "green"):
        assert name in result.out  # the printed table
    for plot in ("pr_curve.png", "pr_curves_per_class.png", "confusion_matrix.png"):
        assert (out / "plots" / plot).stat().st_size > 5000
    gt = json.loads((trained["data"] / "test.json").read_text())
    counts = report["confusion_matrix"]["counts"]
    assert sum(sum(row) for row in counts[:2]) == len(gt["annotations"])  # every true box once
    status = read_status(out)
    kpi = next(s["kpi"] for s in status if "test_mAP" in s.get("kpi", {}))
    assert kpi == {"test_mAP": report["stats"]["mAP"], "test_mAP50": report["stats"]["mAP50"]}
    assert status[-1]["status"] == "SUCCESS"


@pytest.mark.slow
def test_class_ids_threshold_and_input_size(cli, task_spec, trained, tmp_path):
    spec = task_spec(evaluate={"conf_threshold": 0.3, "input_width": 96, "input_height": 96})
    result = cli("evaluate", "-e", spec, "dataset.eval_class_ids=[2]")
    assert result.code == 0, result.err
    out = tmp_path / "results" / "evaluate"
    report = json.loads((out / "results.json").read_text())
    predictions = json.loads((out / "predictions.json").read_text())
    assert report["input_size"] == [96, 96] and report["eval_class_ids"] == [2]
    assert predictions and min(p["score"] for p in predictions) >= 0.3
    assert [r["category_id"] for r in report["per_class"]] == [2]
    reference = pycocotools_stats(trained["data"] / "test.json", predictions, cat_ids=[2])
    assert list(report["stats"].values()) == pytest.approx(reference, abs=1e-12)


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("evaluate.checkpoint={tmp}/missing.pth", "checkpoint not found"),
        ("evaluate.checkpoint={tmp}/corrupt.pth", "not a readable checkpoint"),
        ("evaluate.checkpoint={tmp}/foreign.pth", "not an rtdetr checkpoint"),
        ("dataset.eval_class_ids=[7]", "dataset.eval_class_ids[0]: 7 is not a category"),
        ("evaluate.input_width=96", "evaluate.input_width and evaluate.input_height go together"),
        ("dataset.num_classes=5", "dataset.num_classes is 5 but the model"),
    ],
)
def test_bad_input_is_one_clear_line(cli, untrained_task_spec, tmp_path, override, expected):
    task_spec = untrained_task_spec
    (tmp_path / "corrupt.pth").write_bytes(b"PK\x03\x04 not really a zip")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "foreign.pth")
    result = cli("evaluate", "-e", task_spec(), override.format(tmp=tmp_path))
    assert result.code == 2
    assert len(result.error_lines) == 1 and expected in result.error_lines[0], result.err
    assert "Traceback" not in result.err
    last = read_status(tmp_path / "results" / "evaluate")[-1]
    assert last["status"] == "FAILURE" and expected in last["message"]


def test_unreadable_test_images_are_counted_apart_and_all_unreadable_is_an_error(
    cli, untrained_task_spec, untrained, tmp_path
):
    import shutil

    task_spec, trained = untrained_task_spec, untrained

    images = tmp_path / "images"
    shutil.copytree(trained["data"] / "images", images)
    names = [i["file_name"] for i in json.loads((trained["data"] / "test.json").read_text())["images"]]
    for name in names[:2]:
        (images / name).write_bytes(b"not an image")
    source = {"image_dir": str(images), "json_file": str(trained["data"] / "test.json")}
    result = cli(
        "evaluate", "-e", task_spec(dataset={**trained["spec"]["dataset"], "test_data_sources": source})
    )
    assert result.code == 0, result.err
    report = json.loads((tmp_path / "results" / "evaluate" / "results.json").read_text())
    assert (report["images"], report["unreadable_images"]) == (len(names) - 2, 2)

    for name in names:
        (images / name).write_bytes(b"not an image")
    result = cli(
        "evaluate", "-e", task_spec(dataset={**trained["spec"]["dataset"], "test_data_sources": source})
    )
    assert result.code == 2 and len(result.error_lines) == 1, result.err
    assert f"none of the {len(names)} test images could be read" in result.err
