"""Memory a model and its training need, estimated before anything is allocated.

The parameter count comes from building the model on torch's meta device (shapes only, no
storage): exact for every architecture the factory builds, and quick because nothing is allocated,
even at the spec's largest bounds. The model section is checked against those bounds first, so that
a section that never went through spec validation (a checkpoint's metadata) cannot make even the
meta build slow.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from rtdetr.config.loader import spec_to_dict
from rtdetr.config.rules import model_problems
from rtdetr.config.schema import ExperimentConfig, ModelConfig
from rtdetr.config.validate import SpecBuilder
from rtdetr.errors import SpecError, UserError
from rtdetr.model import factory

GB = 1024**3
BYTES_PER_VALUE = 4  # float32 weights, gradients and optimizer moments
TRAINING_COPIES = 4  # weights, gradients and AdamW's two moments
LOADING_COPIES = 2  # the weights and, while a checkpoint loads, the file's copy of them
USABLE_FRACTION = 0.9  # of the machine's memory; the rest for the OS, the process and the data
# Training activations per input pixel and image: about a third of what resnet_18vd and resnet_50
# RT-DETR save for the backward pass in float32 (2.7 and 3.1 kB measured at 320 x 320), so that the
# estimate errs towards letting a spec run (mixed precision saves less).
ACTIVATION_BYTES_PER_PIXEL = 1024


@dataclass(frozen=True)
class ModelSize:
    """What a model's weights take: parameter count, and bytes of parameters and buffers."""

    parameters: int
    parameter_bytes: int
    buffer_bytes: int

    def bytes_needed(self, copies: int) -> int:
        """Bytes for ``copies`` copies of the parameters (weights, gradients, moments) and the buffers."""
        return copies * self.parameter_bytes + self.buffer_bytes


@dataclass(frozen=True)
class TrainingEstimate:
    """Coarse training memory: the model's copies plus the activations of one batch."""

    model: ModelSize
    model_bytes: int  # weights, gradients and AdamW moments
    activation_bytes: int
    batch_size: int
    size: tuple[int, int]  # the largest [h, w] a training batch is resized to

    @property
    def total_bytes(self) -> int:
        return self.model_bytes + self.activation_bytes


def memory_bytes(device: str | torch.device | None = None) -> int | None:
    """Memory of ``device``: a CUDA device's total memory; else this machine's RAM (MemTotal of
    /proc/meminfo or sysconf, capped by a cgroup memory limit). None where it cannot be read."""
    if device is not None and torch.device(device).type == "cuda":
        return torch.cuda.get_device_properties(torch.device(device)).total_memory
    total = _meminfo_total() or _sysconf_total()
    limit = _cgroup_limit()
    if total is None:
        return limit
    return min(total, limit) if limit else total


def _meminfo_total() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _sysconf_total() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def _cgroup_limit() -> int | None:
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            value = int(Path(path).read_text().strip())
        except (OSError, ValueError):  # absent, or "max" (no limit)
            continue
        if 0 < value < 2**60:  # cgroup v1 writes a huge number for "no limit"
            return value
    return None


def _check_section(model_section: Mapping[str, Any], num_classes: int) -> None:
    """SpecError unless the section's known fields and num_classes are within the spec's bounds and
    the model section's rules hold (a validated spec's always are; a checkpoint's metadata need not)."""

    if not isinstance(model_section, Mapping):
        raise SpecError(["model: expected a mapping (section)"])
    names = {f.name for f in dataclasses.fields(ModelConfig)}
    known = {k: v for k, v in model_section.items() if k in names}
    builder = SpecBuilder(ExperimentConfig)
    cfg = builder.build({"model": known, "dataset": {"num_classes": num_classes}})
    problems = builder.problems + model_problems(cfg.model, builder.bad_paths)
    if problems:
        raise SpecError([str(p) for p in problems])


def estimate_model_size(model_section: Mapping[str, Any], num_classes: int) -> ModelSize:
    """Parameters and bytes of the model a spec's model section and num_classes describe, counted
    on the meta device (nothing allocated). A section outside the spec's bounds is a SpecError; one
    the factory cannot build is a UserError."""
    _check_section(model_section, num_classes)

    kwargs = factory.model_kwargs(dict(model_section), num_classes)
    for name in factory.WEIGHT_FILE_ARGS:
        kwargs.pop(name, None)
    return _meta_size(tuple(sorted((k, _frozen(v)) for k, v in kwargs.items())))


def _frozen(value: Any) -> Any:
    """A hashable form of a keyword argument (lists as tuples), for the cache."""
    if isinstance(value, (list, tuple)):
        return tuple(_frozen(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((k, _frozen(v)) for k, v in value.items()))
    return value


@functools.lru_cache(maxsize=32)
def _meta_size(kwargs: tuple[tuple[str, Any], ...]) -> ModelSize:

    args = {k: list(v) if isinstance(v, tuple) else v for k, v in kwargs}
    try:
        with torch.device("meta"):
            model = factory.build_model(**args)  # looked up at call time
    except (ValueError, TypeError) as exc:
        raise UserError(f"model: {exc}") from exc
    params = list(model.parameters())
    return ModelSize(
        parameters=sum(p.numel() for p in params),
        parameter_bytes=sum(p.numel() for p in params) * BYTES_PER_VALUE,
        buffer_bytes=sum(b.numel() * b.element_size() for b in model.buffers()),
    )


def _gb(n: float) -> str:
    return f"{n / GB:.1f}"


def check_model_budget(
    model_section: Mapping[str, Any],
    num_classes: int,
    *,
    training: bool = False,
    memory: int | None = None,
) -> ModelSize:
    """The model's size; UserError when its weights (4 copies for ``training``: weights, gradients
    and AdamW's two moments; else 2: weights and a checkpoint's copy) cannot fit in ``memory``
    (default: this machine's RAM) with a margin."""
    size = estimate_model_size(model_section, num_classes)
    memory = memory_bytes() if memory is None else memory
    need = size.bytes_needed(TRAINING_COPIES if training else LOADING_COPIES)
    if memory and need > USABLE_FRACTION * memory:
        what = "weights, gradients and AdamW moments" if training else "weights and a checkpoint's copy"
        raise UserError(
            f"model: ~{size.parameters / 1e6:.0f} M parameters need ~{_gb(need)} GB ({what}), this "
            f"machine has {_gb(memory)} GB; use a smaller model (hidden_dim, dim_feedforward, "
            "enc_layers, dec_layers, num_queries, num_classes)"
        )
    return size


def estimate_training(cfg: Any) -> TrainingEstimate:
    """Coarse training memory of a spec (an ExperimentConfig): the model with gradients and AdamW
    moments, plus activations of dataset.batch_size images at the largest training size
    (train_spatial_size, or a multi_scales size when larger)."""

    size = estimate_model_size(spec_to_dict(cfg.model), cfg.dataset.num_classes)
    aug = cfg.dataset.augmentation
    sizes = [tuple(aug.train_spatial_size)] + [(s, s) for s in aug.multi_scales]
    h, w = max(sizes, key=lambda hw: math.prod(hw))
    batch = cfg.dataset.batch_size
    return TrainingEstimate(
        model=size,
        model_bytes=size.bytes_needed(TRAINING_COPIES),
        activation_bytes=batch * h * w * ACTIVATION_BYTES_PER_PIXEL,
        batch_size=batch,
        size=(h, w),
    )


def check_training_budget(cfg: Any, memory: int | None = None) -> TrainingEstimate:
    """The training estimate of a spec; UserError when it cannot fit in ``memory`` (default: this
    machine's RAM; pass ``memory_bytes(device)`` for a GPU) with a margin."""
    estimate = estimate_training(cfg)
    memory = memory_bytes() if memory is None else memory
    if memory and estimate.total_bytes > USABLE_FRACTION * memory:
        h, w = estimate.size
        raise UserError(
            f"training: batch {estimate.batch_size} at {h}x{w} needs ~{_gb(estimate.activation_bytes)} GB "
            f"of activations and ~{_gb(estimate.model_bytes)} GB for the model's weights, gradients and "
            f"AdamW moments, this machine has {_gb(memory)} GB; lower dataset.batch_size or "
            "dataset.augmentation.train_spatial_size / multi_scales"
        )
    return estimate
