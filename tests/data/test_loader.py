"""Loaders: drop_last, multi-scale per batch, determinism, workers."""

from __future__ import annotations

import pytest
import torch

from rtdetr.data.coco import load_coco
from rtdetr.data.dataset import CocoDetection
from rtdetr.data.loader import BatchCollate, build_eval_loader, build_train_loader
from rtdetr.data.transforms import EvalPreset, TrainPreset
from rtdetr.errors import UserError


@pytest.fixture
def records(small_coco):
    return load_coco(*small_coco, num_classes=4).records


def _sample(size=16, n=1):
    return torch.rand(3, size, size), {"boxes": torch.rand(n, 4), "labels": torch.zeros(n, dtype=torch.int64)}


def test_multi_scale_collate_picks_one_size_per_batch():
    collate = BatchCollate([8, 12, 20], seed=0)
    sizes = []
    for _ in range(30):
        images, targets = collate([_sample(), _sample(n=2)])
        assert images.shape[:2] == (2, 3) and images.shape[2] == images.shape[3]
        assert [len(t["boxes"]) for t in targets] == [1, 2]
        sizes.append(images.shape[-1])
    assert set(sizes) == {8, 12, 20}
    again = BatchCollate([8, 12, 20], seed=0)
    assert [again([_sample()])[0].shape[-1] for _ in range(30)] == sizes
    assert BatchCollate(None)([_sample(), _sample()])[0].shape == (2, 3, 16, 16)


def test_train_loader_workers0_deterministic_and_drops_last(records):
    dataset = CocoDetection(records, TrainPreset([16, 16], 0.0, 0.0))

    def run(seed):
        torch.manual_seed(123)  # the augmentations draw from the global generator when workers=0
        loader = build_train_loader(dataset, 4, 0, False, [8, 16, 24], seed)
        return [(images.shape[-1], [int(t["image_id"]) for t in targets]) for images, targets in loader]

    first = run(0)
    assert len(first) == 1 and len(first[0][1]) == 4  # 6 images, batch 4: the last 2 dropped
    assert run(0) == first
    assert {tuple(run(s)[0][1]) for s in range(6)} != {tuple(first[0][1])}  # the seed changes the order


def test_train_loader_with_two_workers(records):
    dataset = CocoDetection(records * 4, TrainPreset([16, 16]), dataset_type="serialized")

    def run():
        loader = build_train_loader(dataset, 3, 2, True, [8, 24], seed=7)
        return [(tuple(images.shape), [int(t["image_id"]) for t in targets]) for images, targets in loader]

    batches = run()
    assert len(batches) == 8 and all(shape[0] == 3 and shape[-1] in (8, 24) for shape, _ in batches)
    assert run() == batches


def test_eval_loader_keeps_order_and_last_batch(records):
    dataset = CocoDetection(records, EvalPreset([16, 16]), dataset_type="default")
    batches = list(build_eval_loader(dataset, 4, 2, False))
    assert [images.shape[0] for images, _ in batches] == [4, 2]
    assert [int(t["image_id"]) for _, targets in batches for t in targets] == [1, 2, 3, 4, 5, 6]


def test_batch_larger_than_dataset_is_a_user_error(records):
    with pytest.raises(UserError, match="fewer than dataset.batch_size 8"):
        build_train_loader(CocoDetection(records), 8, 0, False, None, 0)


def test_multi_scale_resize_is_nearest_neighbour_as_in_tao():
    from rtdetr.data.loader import collate

    image = torch.rand(3, 16, 16)
    expected = torch.nn.functional.interpolate(image[None], size=(8, 8), mode="nearest")[0]
    assert torch.equal(expected, image[:, ::2, ::2])  # nearest: every second pixel, no blending
    images, _ = collate([(image, {"scale": 8, "boxes": torch.zeros(0, 4)})])
    assert torch.equal(images[0], expected)
    images, _ = BatchCollate([8], seed=0)([(image, {"boxes": torch.zeros(0, 4)})])
    assert torch.equal(images[0], expected)
