"""The inference task: TAO's outputs, the COCO detections file, videos, bad input, and agreement with
the Detector API and with evaluate."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from coco_reference import pycocotools_stats  # tests/, on the path via tests/conftest.py
from rtdetr import Detector
from rtdetr.common.status import read_status
from rtdetr.data.video import VideoReader, VideoWriter
from rtdetr.errors import UserError

KITTI = re.compile(
    r"^(\S+) 0\.00 0 0\.00 (-?\d+\.\d{3}) (-?\d+\.\d{3}) (-?\d+\.\d{3}) (-?\d+\.\d{3}) "
    r"0\.00 0\.00 0\.00 0\.00 0\.00 0\.00 0\.00 (\d\.\d{3})$"
)
CONF = 0.3


def _test_images(trained) -> list[Path]:
    return sorted((trained["data"] / "images").glob("test_*.png"))


@pytest.mark.slow
def test_outputs_are_tao_labels_annotated_images_and_coco_json(cli, task_spec, trained, tmp_path):
    result = cli("inference", "-e", task_spec(inference={"conf_threshold": CONF}))
    assert result.code == 0, result.err
    out = tmp_path / "results" / "inference"
    images = _test_images(trained)
    detections = json.loads((out / "detections.json").read_text())
    assert [i["file_name"] for i in detections["images"]] == [str(p) for p in images]
    assert {c["name"] for c in detections["categories"]} == {"class_0", "red", "green"}
    assert detections["annotations"] and min(a["score"] for a in detections["annotations"]) >= CONF
    for path in images:
        lines = (out / "labels" / f"{path.stem}.txt").read_text().splitlines()
        for line in lines:
            match = KITTI.match(line)
            assert match and match.group(1) in ("red", "green", "class_0"), line
            x1, y1, x2, y2, score = (float(v) for v in match.groups()[1:])
            assert 0 <= x1 <= x2 <= 128 and 0 <= y1 <= y2 <= 128 and score >= CONF
        annotated = Image.open(out / "images_annotated" / path.name)
        assert annotated.size == Image.open(path).size
        if lines:
            assert not np.array_equal(np.asarray(annotated), np.asarray(Image.open(path).convert("RGB")))
    assert sum(len((out / "labels" / f"{p.stem}.txt").read_text().splitlines()) for p in images) == len(
        detections["annotations"]
    )
    kpi = next(s["kpi"] for s in read_status(out) if "images" in s.get("kpi", {}))
    assert (
        kpi["images"] == 16 and kpi["detections"] == len(detections["annotations"]) and kpi["unreadable"] == 0
    )


@pytest.mark.slow
def test_the_detector_api_gives_the_cli_detections(cli, task_spec, trained, tmp_path):
    assert cli("inference", "-e", task_spec(inference={"conf_threshold": CONF})).code == 0
    written = json.loads((tmp_path / "results" / "inference" / "detections.json").read_text())
    by_image: dict[int, list] = {}
    for a in written["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a)

    detector = Detector.from_checkpoint(
        trained["checkpoint"], device="cpu", input_size=(128, 128), num_select=30
    )
    images = _test_images(trained)
    results = detector.predict(images, conf=CONF, batch_size=5)
    assert len(results) == len(images)
    for image, det in zip(written["images"], results):
        rows = by_image.get(image["id"], [])
        assert det.source == image["file_name"] and len(det) == len(rows)
        if rows:
            xywh = np.array([r["bbox"] for r in rows])
            np.testing.assert_allclose(det.boxes[:, :2], xywh[:, :2], atol=1e-4)
            np.testing.assert_allclose(det.boxes[:, 2:], xywh[:, :2] + xywh[:, 2:], atol=1e-4)
            np.testing.assert_allclose(det.scores, [r["score"] for r in rows], atol=1e-6)
            assert det.names == [detector.class_names[i] for i in det.labels]
    # the batch size does not change the result; arrays and PIL images give what their files give
    one_by_one = detector.predict(images[:3], conf=CONF, batch_size=1)
    arrays = detector.predict([np.asarray(Image.open(p).convert("RGB")) for p in images[:3]], conf=CONF)
    for a, b, c in zip(results[:3], one_by_one, arrays):
        np.testing.assert_allclose(a.boxes, b.boxes, atol=1e-4)
        np.testing.assert_allclose(a.boxes, c.boxes, atol=1e-4)
        np.testing.assert_allclose(a.scores, c.scores, atol=1e-6)
    single = detector.predict(Image.open(images[0]), conf=CONF)
    assert len(single) == 1 and len(single[0]) == len(results[0])
    # gray and RGBA arrays as their PIL images; empty images are one clear error
    rgb = np.asarray(Image.open(images[0]).convert("RGB"))
    gray, rgba = (
        np.asarray(Image.fromarray(rgb).convert("L")),
        np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)]),
    )
    from_arrays = detector.predict([gray, rgba], conf=CONF)
    from_pil = detector.predict([Image.fromarray(gray), Image.fromarray(rgba)], conf=CONF)
    for a, b in zip(from_arrays, from_pil):
        np.testing.assert_allclose(a.boxes, b.boxes, atol=1e-4)
    np.testing.assert_allclose(from_arrays[1].boxes, results[0].boxes, atol=1e-4)
    for empty, message in (
        (np.zeros((0, 0, 3), np.uint8), "an empty image array"),
        (Image.new("RGB", (0, 0)), "an empty image"),
    ):
        with pytest.raises(UserError, match=message):
            detector.predict(empty)


@pytest.mark.slow
def test_evaluate_equals_pycocotools_on_the_detections_inference_writes(cli, task_spec, trained, tmp_path):
    spec = task_spec(evaluate={"conf_threshold": CONF}, inference={"conf_threshold": CONF})
    assert cli("evaluate", "-e", spec).code == 0
    assert cli("inference", "-e", spec).code == 0
    report = json.loads((tmp_path / "results" / "evaluate" / "results.json").read_text())
    written = json.loads((tmp_path / "results" / "inference" / "detections.json").read_text())
    gt = json.loads((trained["data"] / "test.json").read_text())
    image_id = {str(trained["data"] / "images" / i["file_name"]): i["id"] for i in gt["images"]}
    local = {i["id"]: image_id[i["file_name"]] for i in written["images"]}
    predictions = [
        {
            "image_id": local[a["image_id"]],
            "category_id": a["category_id"],
            "bbox": a["bbox"],
            "score": a["score"],
        }
        for a in written["annotations"]
        if a["category_id"] in (1, 2)
    ]
    reference = pycocotools_stats(trained["data"] / "test.json", predictions)
    assert list(report["stats"].values()) == pytest.approx(reference, abs=1e-6)
    assert report["stats"]["mAP50"] > 0.3


@pytest.mark.slow
def test_internal_layout_classmap_and_colours(cli, task_spec, trained, tmp_path):
    classmap = tmp_path / "classes.txt"
    classmap.write_text("background\nrouge\nvert\n")
    spec = task_spec(
        dataset={"infer_data_sources": {"image_dir": [str(trained["data"] / "images" / "test_000*.png")],
                                        "classmap": str(classmap)}},
        inference={"conf_threshold": CONF, "is_internal": True, "color_map": {"rouge": "#00ffff", "vert": "navy"},
                   "outline_width": 2},
    )  # fmt: skip
    assert cli("inference", "-e", spec).code == 0
    base = tmp_path / "results" / "inference" / trained["data"].name  # the images' grandparent folder
    labels = sorted((base / "labels").glob("*.txt"))
    assert [p.stem for p in labels] == [f"test_{i:04d}" for i in range(10)]
    names = {line.split()[0] for p in labels for line in p.read_text().splitlines()}
    assert names and names <= {"background", "rouge", "vert"}
    assert len(list((base / "images_annotated").glob("*.png"))) == 10


@pytest.mark.parametrize(
    ("sections", "expected"),
    [
        ({"inference": {"color_map": {"red": "blurple"}}}, "inference.color_map.red: unknown colour 'blurple'"),
        ({"dataset": {"infer_data_sources": {"image_dir": ["{empty}"], "classmap": ""}}}, "no image or video files"),
        ({"dataset": {"infer_data_sources": {"image_dir": ["{tmp}/nope"], "classmap": ""}}}, "no such file or folder"),
        ({"dataset": {"infer_data_sources": {"image_dir": ["{tmp}/*.jpg"], "classmap": ""}}}, "matches no file"),
        ({"dataset": {"infer_data_sources": {"image_dir": ["{images}"], "classmap": "{tmp}/two.txt"}}},
         "has 2 class names but the model has 3 classes"),
    ],
)  # fmt: skip
def test_bad_input_is_one_clear_line(cli, untrained_task_spec, untrained, tmp_path, sections, expected):
    task_spec, trained = untrained_task_spec, untrained
    (tmp_path / "empty").mkdir()
    (tmp_path / "two.txt").write_text("a\nb\n")
    text = json.dumps(sections).replace("{empty}", str(tmp_path / "empty")).replace("{tmp}", str(tmp_path))
    sections = json.loads(text.replace("{images}", str(trained["data"] / "images")))
    result = cli("inference", "-e", task_spec(**sections))
    assert result.code == 2
    assert len(result.error_lines) == 1 and expected in result.error_lines[0], result.err


def test_a_folder_mixing_good_and_bad_files_processes_the_good_ones(
    cli, untrained_task_spec, untrained, tmp_path
):
    task_spec, trained = untrained_task_spec, untrained
    folder = tmp_path / "mixed"
    folder.mkdir()
    good = _test_images(trained)[:2]
    for path in good:
        shutil.copy(path, folder / path.name)
    (folder / "broken.png").write_bytes(good[0].read_bytes()[:200])  # truncated
    (folder / "notes.txt").write_text("not an image")
    spec = task_spec(dataset={"infer_data_sources": {"image_dir": [str(folder)], "classmap": ""}})
    result = cli("inference", "-e", spec)
    assert result.code == 0, result.err
    out = tmp_path / "results" / "inference"
    assert sorted(p.name for p in (out / "labels").glob("*.txt")) == sorted(f"{p.stem}.txt" for p in good)
    assert "broken.png" in result.err  # the warning names the file
    kpi = next(s["kpi"] for s in read_status(out) if "images" in s.get("kpi", {}))
    assert kpi["images"] == 2 and kpi["unreadable"] == 1


def test_inputs_with_the_same_stem_keep_their_own_outputs(cli, untrained_task_spec, untrained, tmp_path):
    task_spec, trained = untrained_task_spec, untrained
    image = _test_images(trained)[0]
    for folder in ("one", "two"):
        (tmp_path / folder).mkdir()
        shutil.copy(image, tmp_path / folder / "same.png")
    shutil.copy(image, tmp_path / "one" / "same.jpg")  # another extension, the same stem
    spec = task_spec(dataset={"infer_data_sources": {"image_dir": [str(tmp_path / "one"), str(tmp_path / "two")],
                                                     "classmap": ""}})  # fmt: skip
    assert cli("inference", "-e", spec).code == 0
    out = tmp_path / "results" / "inference"
    assert sorted(p.name for p in (out / "labels").iterdir()) == ["same.txt", "same_2.txt", "same_3.txt"]
    assert sorted(p.name for p in (out / "images_annotated").iterdir()) == [
        "same.jpg",
        "same_2.png",
        "same_3.png",
    ]


@pytest.mark.slow
def test_a_video_gives_an_annotated_video_and_labels_per_frame(cli, task_spec, trained, tmp_path):
    frames = [Image.open(p).convert("RGB") for p in _test_images(trained)[:5]]
    video = tmp_path / "clip.mp4"
    writer = VideoWriter(video, 10, 128, 128)
    for frame in frames:
        writer.write(frame)
    writer.close()
    spec = task_spec(
        dataset={"infer_data_sources": {"image_dir": [str(video)], "classmap": ""}},
        inference={"conf_threshold": CONF},
    )
    assert cli("inference", "-e", spec).code == 0
    out = tmp_path / "results" / "inference"
    with VideoReader(out / "images_annotated" / "clip.mp4") as annotated:
        decoded = list(annotated)
    assert len(decoded) == 5 and decoded[0].size == (128, 128)
    labels = sorted((out / "labels" / "clip").glob("*.txt"))
    assert [p.name for p in labels] == [f"clip_{i:06d}.txt" for i in range(5)]
    detections = json.loads((out / "detections.json").read_text())
    assert [i["frame"] for i in detections["images"]] == list(range(5))
    assert sum(len(p.read_text().splitlines()) for p in labels) == len(detections["annotations"]) > 0
