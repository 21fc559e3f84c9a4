"""Samples: format, serialized == default, train/eval presets, exact mapping back to original pixels."""

from __future__ import annotations

import pickle

import pytest
import torch

from rtdetr.data.coco import load_coco
from rtdetr.data.dataset import CocoDetection, SerializedRecords
from rtdetr.data.transforms import EvalPreset, TrainPreset, build_transforms


@pytest.fixture
def records(small_coco):
    return load_coco(*small_coco, num_classes=4).records


def test_sample_format(records):
    image, target = CocoDetection(records, EvalPreset([16, 20]))[0]
    assert (
        image.dtype == torch.float32 and image.shape == (3, 16, 20) and image.min() >= 0 and image.max() <= 1
    )
    assert type(image) is torch.Tensor and type(target["boxes"]) is torch.Tensor
    assert target["labels"].dtype == torch.int64 and target["labels"].tolist() == [1, 2]
    assert target["boxes"].dtype == torch.float32 and target["boxes"].shape == (2, 4)
    assert target["image_id"].dtype == torch.int64 and int(target["image_id"]) == 1
    assert target["orig_size"].dtype == torch.int64 and target["orig_size"].tolist() == [24, 32]
    assert target["canvas_size"].dtype == torch.float32 and target["canvas_size"].tolist() == [24, 32]
    # box [2, 3, 10, 8] xywh in a 32x24 image -> normalised cxcywh
    torch.testing.assert_close(target["boxes"][0], torch.tensor([7 / 32, 7 / 24, 10 / 32, 8 / 24]))


def test_serialized_equals_default(records):
    assert len(pickle.dumps(SerializedRecords(records))) > 0
    default = CocoDetection(records, EvalPreset([16, 16]), dataset_type="default")
    serialized = CocoDetection(records, EvalPreset([16, 16]), dataset_type="serialized")
    assert len(default) == len(serialized) == 6
    for i in range(len(default)):
        (a, ta), (b, tb) = default[i], serialized[i]
        assert torch.equal(a, b) and ta.keys() == tb.keys()
        for key in ta:
            assert torch.equal(ta[key], tb[key]), key
    assert [serialized.records[i] for i in range(6)] == list(records)


def test_crowd_boxes_only_with_include_crowd(make_coco):
    anns = [
        {"image_id": 1, "category_id": 1, "bbox": [1, 1, 5, 5]},
        {"image_id": 1, "category_id": 2, "bbox": [8, 8, 5, 5], "iscrowd": 1},
    ]
    records = load_coco(*make_coco([{"id": 1}], anns), num_classes=4).records
    _, target = CocoDetection(records, TrainPreset([64, 64], 0.0, 0.0))[0]  # box stays >= 1 px
    assert target["labels"].tolist() == [1] and "iscrowd" not in target
    _, target = CocoDetection(records, EvalPreset([16, 16]), include_crowd=True)[0]
    assert target["labels"].tolist() == [1, 2] and target["iscrowd"].tolist() == [0, 1]


def test_train_preset_outputs_normalised_cxcywh(records):
    dataset = CocoDetection(records, build_transforms(True, [40, 48], distortion_prob=1.0, iou_crop_prob=1.0))
    torch.manual_seed(0)
    for _ in range(8):
        for i in range(len(dataset)):
            image, target = dataset[i]
            assert image.shape == (3, 40, 48) and image.dtype == torch.float32
            assert image.min() >= 0 and image.max() <= 1
            boxes = target["boxes"]
            assert boxes.shape == (len(target["labels"]), 4)
            if len(boxes):
                assert boxes.min() >= 0 and boxes.max() <= 1
                assert (boxes[:, 2:] > 0).all()
                x1y1, x2y2 = boxes[:, :2] - boxes[:, 2:] / 2, boxes[:, :2] + boxes[:, 2:] / 2
                assert x1y1.min() >= -1e-6 and x2y2.max() <= 1 + 1e-6


def test_stop_epoch_policy_turns_augmentation_off(records):
    preset = TrainPreset([16, 16], 1.0, 1.0, stop_epoch=3)
    dataset = CocoDetection(records, preset)
    assert "RandomIoUCrop" in preset.active_steps()
    dataset.set_epoch(3)
    assert preset.active_steps() == [
        "SanitizeBoundingBoxes",
        "RandomHorizontalFlip",
        "Resize",
        "ToDtype",
        "SanitizeBoundingBoxes",
    ]
    _, target = dataset[0]  # without zoom-out/crop, boxes are the resized originals (maybe flipped)
    torch.testing.assert_close(target["boxes"][:, 2:], torch.tensor([[10 / 32, 8 / 24]] * 2))


@pytest.mark.parametrize(("width", "height"), [(37, 23), (20, 50), (64, 64)])
def test_preserve_aspect_ratio_maps_back_exactly(make_coco, width, height):
    box = [3.25, 2.5, 11.5, 7.75]  # xywh in original pixels
    path, image_dir = make_coco(
        [{"id": 1, "width": width, "height": height}], [{"image_id": 1, "category_id": 1, "bbox": box}]
    )
    records = load_coco(path, image_dir, num_classes=4).records
    image, target = CocoDetection(records, EvalPreset([30, 40], preserve_aspect_ratio=True))[0]
    assert image.shape == (3, 30, 40)
    cx, cy, w, h = (target["boxes"][0] * target["canvas_size"].flip(0).repeat(2)).tolist()
    assert [cx - w / 2, cy - h / 2, w, h] == pytest.approx(box, abs=1e-3)
    assert target["orig_size"].tolist() == [height, width]
    # the padding is black: content only in the resized part
    scale = min(30 / height, 40 / width)
    new_h, new_w = round(height * scale), round(width * scale)
    assert image[:, new_h:, :].abs().sum() == 0 and image[:, :, new_w:].abs().sum() == 0


def test_image_size_differs_from_annotation(make_coco, caplog):
    path, image_dir = make_coco([{"id": 1}], [{"image_id": 1, "category_id": 1, "bbox": [20, 2, 12, 5]}])
    records = load_coco(path, image_dir, num_classes=4).records
    records[0].update(width=40)  # the file is 32 wide
    records[0]["boxes"] = [[20.0, 2.0, 38.0, 7.0]]
    _, target = CocoDetection(records, EvalPreset([24, 32]))[0]
    assert "is 32x24 but its annotation says 40x24" in caplog.text
    cx, _, w, _ = target["boxes"][0].tolist()
    assert cx + w / 2 == pytest.approx(1.0)
