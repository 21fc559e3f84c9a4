"""Image loading: modes -> 8-bit RGB, EXIF orientation, unreadable files never stop an epoch."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from PIL import Image

from rtdetr.data.dataset import CocoDetection
from rtdetr.data.images import load_image, to_rgb
from rtdetr.data.transforms import EvalPreset


def _pixels(path):
    image = load_image(path)
    assert image.mode == "RGB"
    return np.asarray(image)


def test_grayscale_to_rgb(tmp_path):
    Image.new("L", (4, 3), 77).save(tmp_path / "g.png")
    assert (_pixels(tmp_path / "g.png") == 77).all()


def test_rgba_drops_alpha(tmp_path):
    Image.new("RGBA", (4, 3), (10, 20, 30, 0)).save(tmp_path / "a.png")
    assert (_pixels(tmp_path / "a.png") == [10, 20, 30]).all()


def test_palette_to_rgb(tmp_path):
    image = Image.new("P", (4, 3), 1)
    image.putpalette([0, 0, 0, 250, 120, 5] + [0] * 762)
    image.save(tmp_path / "p.png")
    assert (_pixels(tmp_path / "p.png") == [250, 120, 5]).all()


def test_cmyk_to_rgb(tmp_path):
    Image.new("CMYK", (4, 3), (0, 255, 255, 0)).save(tmp_path / "c.jpg", quality=100)
    red = _pixels(tmp_path / "c.jpg")
    assert (red[..., 0] > 240).all() and (red[..., 1:] < 15).all()


@pytest.mark.parametrize(
    ("dtype", "mode", "name"), [(np.uint16, "I;16", "deep.png"), (np.int32, "I", "deep.tif")]
)
def test_high_bit_depth_scaled_not_clipped(tmp_path, dtype, mode, name):
    Image.fromarray(np.array([[0, 257, 32896, 65535]], dtype=dtype)).save(tmp_path / name)
    assert Image.open(tmp_path / name).mode == mode
    assert _pixels(tmp_path / name)[0, :, 0].tolist() == [0, 1, 128, 255]


def test_float_and_big_endian_modes():
    floats = Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32))
    assert np.asarray(to_rgb(floats))[0, :, 1].tolist() == [0, 128, 255]
    big_endian = Image.fromarray(np.array([[0, 32896, 65535]], dtype=">u2"))
    assert big_endian.mode == "I;16B" and np.asarray(to_rgb(big_endian))[0, :, 2].tolist() == [0, 128, 255]


def test_exif_orientation_applied(tmp_path):
    stored = Image.new("RGB", (4, 2), (0, 0, 0))
    stored.putpixel((0, 0), (255, 0, 0))  # red at the stored top-left
    exif = Image.Exif()
    exif[0x0112] = 6  # display = stored rotated 90 degrees clockwise
    stored.save(tmp_path / "rot.jpg", exif=exif, quality=100, subsampling=0)
    upright = _pixels(tmp_path / "rot.jpg")
    assert upright.shape == (4, 2, 3)  # (h, w) swapped
    assert upright[0, 1, 0] > 200 and upright[0, 0, 0] < 60  # red moved to the top-right


def test_unreadable_images_are_skipped(tmp_path, caplog):
    good = tmp_path / "good.png"
    Image.new("RGB", (8, 6), (1, 2, 3)).save(good)
    Image.new("RGB", (64, 48), (9, 9, 9)).save(tmp_path / "full.jpg")
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (tmp_path / "text.jpg").write_text("not an image")
    records = [
        {"image_id": i, "file_name": str(tmp_path / name), "height": 6, "width": 8, "boxes": [], "labels": [],
         "crowd_boxes": [], "crowd_labels": []}
        for i, name in enumerate(["truncated.jpg", "text.jpg", "good.png"])
    ]  # fmt: skip
    dataset = CocoDetection(records, EvalPreset([4, 4]), dataset_type="default")
    with caplog.at_level(logging.WARNING, logger="rtdetr"):
        ids = [int(dataset[i][1]["image_id"]) for i in (0, 1, 2, 0, 1)]
    assert ids == [2, 2, 2, 2, 2]  # the next readable image stands in
    assert dataset.unreadable == 2
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2  # once per file
    assert "truncated.jpg" in warnings[0] and "text.jpg" in warnings[1]

    # evaluation: each image stays itself, the unreadable ones marked and blank (no boxes)
    scored = CocoDetection(records, EvalPreset([4, 4]), dataset_type="default", substitute_unreadable=False)
    with caplog.at_level(logging.WARNING, logger="rtdetr"):
        samples = [scored[i] for i in (0, 1, 2, 0)]
    assert [int(t["image_id"]) for _, t in samples] == [0, 1, 2, 0]
    assert [bool(t.get("unreadable")) for _, t in samples] == [True, True, False, True]
    assert all(len(t["boxes"]) == 0 for _, t in samples) and samples[0][0].shape == samples[2][0].shape
    assert scored.unreadable == 2 and "left out of the metrics" in caplog.records[-1].getMessage()


def test_images_left_out_do_not_count_as_missed():
    from rtdetr.evaluation.coco import evaluate_coco, without_images

    gt = {
        "images": [{"id": 1, "width": 50, "height": 50}, {"id": 2, "width": 50, "height": 50}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [5, 5, 10, 10], "area": 100, "iscrowd": 0},
            {"id": 2, "image_id": 2, "category_id": 1, "bbox": [5, 5, 20, 20], "area": 400, "iscrowd": 0},
        ],
        "categories": [{"id": 1, "name": "a"}],
    }
    found = [{"image_id": 1, "category_id": 1, "bbox": [5, 5, 10, 10], "score": 0.9}]
    assert evaluate_coco(gt, found)["stats"]["mAP50"] < 0.6  # image 2's box missed
    assert evaluate_coco(without_images(gt, [2]), found)["stats"]["mAP50"] == 1.0
    assert without_images(gt, []) is gt
