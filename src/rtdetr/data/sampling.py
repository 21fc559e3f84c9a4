"""Deterministic batching: every random choice of an epoch derives from (seed, epoch, index).

`EpochBatchSampler` yields batches of keys ``(index, epoch, scale)``; `KeyedDataset` seeds the
augmentation of each sample from its key. The samples and batches of an epoch therefore do not
depend on the number of loader workers, on the epochs before it (a resumed run continues exactly),
or on the number of processes: with W ranks, rank r's batch b is the r-th slice of the global batch
b that one process with a W times larger batch would see. A seed of None (``train.seed`` < 0) is a
fresh random one for each run, rank 0's shared by every rank (see `run_seed`).
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator, Sequence

import torch
import torch.distributed as dist
from torch.utils.data import Dataset, Sampler


def _rank_world(world_size: int) -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, world_size


def _fresh_seed() -> int:
    return random.SystemRandom().randrange(2**63)


def run_seed() -> int:
    """A fresh random seed, the same in every process of a distributed run (rank 0's, broadcast):
    the ranks must draw the same order of the training set to take disjoint slices of it."""
    value = _fresh_seed()
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        box = [value]
        dist.broadcast_object_list(box, src=0)
        value = box[0]
    return value


def _seed(seed: int, epoch: int, index: int | None = None) -> int:
    """The seed of an epoch's order (and, with ``index``, of one sample's augmentation), folded into
    the range torch.manual_seed takes (a large ``train.seed`` such as a date would overflow it)."""
    value = seed * 1_000_003 + epoch
    if index is not None:
        value = value * 10_000_019 + index
    return value % 2**63


class EpochBatchSampler(Sampler):
    """Batches of ``(index, epoch, scale)`` keys for one rank.

    Training (``drop_last``): a permutation per (seed, epoch), the last incomplete global batch
    dropped, one ``scale`` per global batch drawn from ``scales`` (0 = no rescaling). Evaluation:
    in order, the last global batch padded with repeats so that every rank has the same count.
    ``seed`` None: a random one drawn at the first iteration that needs one (`run_seed`).
    """

    def __init__(
        self,
        num_samples: int,
        batch_size: int,
        *,
        shuffle: bool,
        drop_last: bool,
        seed: int | None = 0,
        scales: Sequence[int] = (),
        world_size: int = 1,
    ):
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.seed = seed
        self.scales = list(scales)
        self.world_size = world_size
        self.epoch = 0
        # Lightning calls set_epoch on `loader.batch_sampler.sampler` at the start of each epoch.
        self.sampler = _EpochSetter(self)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _num_global_batches(self, world: int) -> int:
        size = self.batch_size * world
        return self.num_samples // size if self.drop_last else math.ceil(self.num_samples / size)

    def __len__(self) -> int:
        return self._num_global_batches(_rank_world(self.world_size)[1])

    def __iter__(self) -> Iterator[list[tuple[int, int, int]]]:
        rank, world = _rank_world(self.world_size)
        if self.seed is None and (self.shuffle or self.scales):
            self.seed = run_seed()  # every rank iterates at the same point: the broadcast meets
        seed = _seed(self.seed or 0, self.epoch)
        if self.shuffle:
            order = torch.randperm(self.num_samples, generator=torch.Generator().manual_seed(seed)).tolist()
        else:
            order = list(range(self.num_samples))
        rng = random.Random(seed)
        size = self.batch_size * world
        for b in range(self._num_global_batches(world)):
            chunk = order[b * size : (b + 1) * size]
            if len(chunk) < size and world > 1:
                # evaluation only: pad with repeats of the first items so that every rank runs as many
                # batches (the evaluator counts each image once); one process takes the short batch
                chunk = chunk + (order * math.ceil(size / len(order)))[: size - len(chunk)]
            scale = rng.choice(self.scales) if self.scales else 0
            mine = chunk[rank * self.batch_size : (rank + 1) * self.batch_size]
            yield [(index, self.epoch, scale) for index in mine]


class _EpochSetter:
    def __init__(self, owner: EpochBatchSampler):
        self.owner = owner

    def set_epoch(self, epoch: int) -> None:
        self.owner.set_epoch(epoch)


class KeyedDataset(Dataset):
    """Wraps a dataset so that ``ds[(index, epoch, scale)]`` runs its augmentation with a generator
    seeded from the key; the target records the batch ``scale`` for the collate function. ``seed``
    None: a random one (each rank its own: the ranks augment different samples)."""

    def __init__(self, dataset: Dataset, seed: int | None = 0):
        self.dataset = dataset
        self.seed = _fresh_seed() if seed is None else seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key):
        if isinstance(key, int):
            return self.dataset[key]
        index, epoch, scale = key
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(_seed(self.seed, epoch, index))
            image, target = self.dataset[index]
        if scale:
            target["scale"] = scale
        return image, target
