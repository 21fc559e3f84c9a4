"""Data loaders: batching, per-batch multi-scale resize, seeding, deterministic batch order.

A batch is (images float32 [B, 3, H, W], targets: list of B target dicts). Boxes are normalised
cxcywh, so a multi-scale resize of the whole batch leaves the targets unchanged.
"""

from __future__ import annotations

import gc
import os
import random
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Sampler, get_worker_info

from rtdetr.data.dataset import CocoDetection
from rtdetr.data.sampling import EpochBatchSampler, KeyedDataset
from rtdetr.errors import UserError


def resize_batch(images: torch.Tensor, size: int) -> torch.Tensor:
    """A multi-scale batch resize to [size, size], nearest-neighbour as in TAO and the original RT-DETR
    (``F.interpolate``'s default mode); a batch already of that size is returned as it is."""
    if images.shape[-2:] == (size, size):
        return images
    return F.interpolate(images, size=(size, size), mode="nearest")


class BatchCollate:
    """samples -> (images [B, 3, H, W], targets list[dict]); with `multi_scales`, ONE size s is drawn
    per batch and the batch is resized to [s, s] (see resize_batch).

    The draw uses a generator seeded from `seed` in the main process (workers=0) and from the
    DataLoader's per-worker seed in a worker, so it is deterministic given the loader's seed.
    """

    def __init__(self, multi_scales: Sequence[int] | None = None, seed: int = 0):
        self.multi_scales = [int(s) for s in multi_scales or ()]
        self.seed = seed
        self._generator: torch.Generator | None = None
        self._owner: tuple[int, int | None] | None = None

    def _rng(self) -> torch.Generator:
        info = get_worker_info()
        owner = (os.getpid(), None if info is None else info.seed)
        if self._generator is None or self._owner != owner:
            seed = self.seed if info is None else info.seed
            self._generator = torch.Generator().manual_seed((seed * 1_000_003 + 12_345) % 2**63)
            self._owner = owner
        return self._generator

    def __call__(self, batch: list[tuple[torch.Tensor, dict[str, Any]]]) -> tuple[torch.Tensor, list[dict]]:
        images = torch.stack([image for image, _ in batch])
        targets = [target for _, target in batch]
        if self.multi_scales:
            size = self.multi_scales[int(torch.randint(len(self.multi_scales), (1,), generator=self._rng()))]
            images = resize_batch(images, size)
        return images, targets


def seed_worker(worker_id: int) -> None:
    """Seed numpy and random from the DataLoader's per-worker seed (torch already is)."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def init_worker(worker_id: int) -> None:
    """worker_init_fn: seed_worker, then gc.freeze() so that the worker's garbage collector never walks
    (and so copies on write) the objects inherited from the main process. Freezing is O(1)."""
    seed_worker(worker_id)
    gc.freeze()


def _loader(dataset: Dataset, batch_size: int, workers: int, pin_memory: bool, **kwargs: Any) -> DataLoader:
    return DataLoader(
        dataset,
        batch_size=batch_size,
        num_workers=workers,
        pin_memory=pin_memory and torch.cuda.is_available(),
        worker_init_fn=init_worker,
        multiprocessing_context="fork" if workers > 0 and os.name == "posix" else None,
        **kwargs,
    )


def build_train_loader(
    dataset: Dataset,
    batch_size: int,
    workers: int,
    pin_memory: bool,
    multi_scales: Sequence[int] | None,
    seed: int,
    distributed_sampler: Sampler | None = None,
) -> DataLoader:
    """Shuffled batches (the last incomplete one dropped), multi-scale when `multi_scales` is non-empty.

    Deterministic given `seed` (order, worker seeds, scale draws). With `distributed_sampler`, it
    decides the order (call its set_epoch each epoch). Call dataset.set_epoch(e) before each epoch
    for epoch-based augmentation policies (workers are re-created every epoch).
    """
    count = len(distributed_sampler) if distributed_sampler is not None else len(dataset)
    if count < batch_size:
        raise UserError(
            f"the training set has {count} images{' on this rank' if distributed_sampler else ''}, fewer than "
            f"dataset.batch_size {batch_size}, and the last incomplete batch is dropped: lower dataset.batch_size"
        )
    generator = torch.Generator().manual_seed(seed)
    return _loader(
        dataset, batch_size, workers, pin_memory,
        shuffle=distributed_sampler is None, sampler=distributed_sampler, drop_last=True,
        collate_fn=BatchCollate(multi_scales, seed), generator=generator,
    )  # fmt: skip


def build_eval_loader(
    dataset: Dataset, batch_size: int, workers: int, pin_memory: bool, sampler: Sampler | None = None
) -> DataLoader:
    """Batches in dataset order (or `sampler`'s), none dropped, no multi-scale."""
    return _loader(
        dataset, batch_size, workers, pin_memory,
        shuffle=False, sampler=sampler, drop_last=False, collate_fn=BatchCollate(None),
    )  # fmt: skip


def collate(batch: list[tuple[torch.Tensor, dict[str, Any]]]) -> tuple[torch.Tensor, list[dict]]:
    """Stack a batch; when its samples carry a multi-scale ``scale``, resize it to [scale, scale]
    (nearest-neighbour, see resize_batch).

    Boxes are normalised, so the targets stay as they are.
    """
    images = torch.stack([image for image, _ in batch])
    targets = [target for _, target in batch]
    scale = targets[0].pop("scale", 0)
    for t in targets[1:]:
        t.pop("scale", None)
    if scale:
        images = resize_batch(images, scale)
    return images, targets


def make_loader(
    dataset: CocoDetection,
    *,
    batch_size: int,
    workers: int,
    pin_memory: bool,
    train: bool,
    seed: int,
    scales: list[int] | None = None,
    world_size: int = 1,
) -> DataLoader:
    """A loader of deterministic batches (see rtdetr.data.sampling); a ``seed`` < 0 (train.seed's
    "disabled") draws a random seed for this run."""
    run_seed = None if seed < 0 else seed
    sampler = EpochBatchSampler(
        len(dataset), batch_size, shuffle=train, drop_last=train, seed=run_seed, scales=scales or (),
        world_size=world_size,
    )  # fmt: skip
    if train and len(sampler) == 0:
        raise UserError(
            f"the training set has {len(dataset)} images, fewer than one batch of dataset.batch_size "
            f"{batch_size} x {world_size} process(es); the last incomplete batch is dropped: lower dataset.batch_size"
        )
    return DataLoader(
        KeyedDataset(dataset, run_seed),
        batch_sampler=sampler,
        num_workers=workers,
        pin_memory=pin_memory and torch.cuda.is_available(),
        collate_fn=collate,
        worker_init_fn=init_worker,
        multiprocessing_context="fork" if workers > 0 and os.name == "posix" else None,
        persistent_workers=False,
    )
