"""Memory budget: the model's size counted without allocating it, and refusals before any build."""

from __future__ import annotations

import dataclasses
import functools
import time

import pytest
import torch

import rtdetr
from rtdetr.config.loader import spec_to_dict
from rtdetr.errors import SpecError, UserError
from rtdetr.model import budget
from rtdetr.model.budget import (
    GB,
    check_model_budget,
    check_training_budget,
    estimate_model_size,
    estimate_training,
    memory_bytes,
)
from rtdetr.model.checkpoint import ModelMetadata, build_from_metadata

# every model field at its largest bound: a model of ~1.3 T parameters
LARGEST = {
    "backbone": "resnet_101", "hidden_dim": 4096, "nheads": 64, "feat_channels": [4096] * 3,
    "enc_layers": 32, "dec_layers": 32, "dim_feedforward": 16384, "dec_dim_feedforward": 16384,
    "num_queries": 5000, "depth_mult": 10, "expansion": 8, "num_points": 32, "dn_number": 1000,
}  # fmt: skip


def _section(**changes) -> dict:
    return spec_to_dict(rtdetr.load_spec({"model": changes}).model)


def test_estimate_counts_exactly_what_build_model_builds():
    from rtdetr.model.factory import build_model, model_kwargs

    section = _section(backbone="resnet_18vd", expansion=0.5, dec_layers=3)
    size = estimate_model_size(section, 7)
    model = build_model(**model_kwargs(section, 7))
    assert size.parameters == sum(p.numel() for p in model.parameters())
    assert size.parameter_bytes == 4 * size.parameters
    assert size.buffer_bytes == sum(b.numel() * b.element_size() for b in model.buffers())


def test_estimate_is_fast_even_at_the_largest_bounds():
    section = _section(**LARGEST)
    start = time.perf_counter()
    size = estimate_model_size(section, 100_000)
    assert time.perf_counter() - start < 5.0
    assert size.parameters > 10**12


def test_estimate_refuses_a_section_outside_the_bounds():
    # a checkpoint's metadata is not validated by load_spec: the estimate checks it first
    section = _section() | {"enc_layers": 100_000_000_000}
    with pytest.raises(
        SpecError, match=r"model.enc_layers: value 100000000000 is above this toolkit's limit 32"
    ):
        estimate_model_size(section, 80)
    with pytest.raises(SpecError, match="dataset.num_classes"):
        estimate_model_size(_section(), 10**12)
    with pytest.raises(SpecError, match="model.hidden_dim: value 258 must be divisible by nheads"):
        estimate_model_size(_section() | {"hidden_dim": 258, "feat_channels": [258] * 3}, 80)


def test_a_model_that_cannot_fit_is_refused_in_one_line():
    with pytest.raises(UserError) as caught:
        check_model_budget(_section(**LARGEST), 80, memory=24 * GB)
    message = str(caught.value)
    assert message.startswith("model: ~") and "M parameters need ~" in message
    assert "this machine has 24.0 GB" in message and "\n" not in message and len(message) < 300


def test_training_counts_gradients_and_moments():
    section = _section()  # resnet_50: ~43 M parameters, ~172 MB of weights
    size = check_model_budget(section, 80, memory=1 * GB)  # weights twice: fits
    assert 40e6 < size.parameters < 45e6
    with pytest.raises(UserError, match="weights, gradients and AdamW moments"):
        check_model_budget(section, 80, training=True, memory=int(0.6 * GB))


def test_build_from_metadata_refuses_before_allocating(monkeypatch):
    from rtdetr.model import factory

    real_build = factory.build_model
    devices = []

    @functools.wraps(real_build)  # keeps its signature, which model_kwargs reads
    def recording_build(**kwargs):
        devices.append(torch.get_default_device().type)
        return real_build(**kwargs)

    monkeypatch.setattr(factory, "build_model", recording_build)
    monkeypatch.setattr(budget, "memory_bytes", lambda device=None: 2 * GB)
    meta = ModelMetadata(
        model=_section(hidden_dim=2048, feat_channels=[2048] * 3, dim_feedforward=8192, dec_layers=16),
        num_classes=80,
    )
    with pytest.raises(UserError, match=r"model: ~\d+ M parameters need ~.* this machine has 2.0 GB"):
        build_from_metadata(meta)
    assert devices == ["meta"]  # counted on the meta device, never built for real


def test_build_from_metadata_refuses_a_hostile_checkpoint_section():
    meta = ModelMetadata(model=_section() | {"dec_layers": 10**300}, num_classes=80)
    start = time.perf_counter()
    with pytest.raises(SpecError, match="model.dec_layers"):
        build_from_metadata(meta)
    assert time.perf_counter() - start < 2.0


def test_memory_of_this_machine_is_read():
    memory = memory_bytes()
    assert memory is None or memory > 256 * 2**20
    assert memory_bytes("cpu") == memory


def test_training_activations_pass_real_specs_and_refuse_impossible_ones():
    cfg = rtdetr.load_spec(
        overrides=["dataset.batch_size=16", "dataset.augmentation.train_spatial_size=[640,640]"]
    )
    estimate = check_training_budget(cfg, memory=24 * GB)
    assert estimate.batch_size == 16 and estimate.size == (800, 800)  # the largest multi_scales size
    aug = dataclasses.replace(
        cfg.dataset.augmentation, train_spatial_size=[100_000, 100_000], multi_scales=[]
    )
    huge = dataclasses.replace(cfg, dataset=dataclasses.replace(cfg.dataset, batch_size=4, augmentation=aug))
    with pytest.raises(UserError) as caught:
        check_training_budget(huge, memory=24 * GB)
    message = str(caught.value)
    assert message.startswith("training: batch 4 at 100000x100000 needs ~")
    assert "\n" not in message and len(message) < 300


def test_training_estimate_grows_with_batch_and_size():
    cfg = rtdetr.load_spec(overrides=["dataset.augmentation.multi_scales=[]"])
    small = estimate_training(cfg)
    bigger = estimate_training(
        rtdetr.load_spec(overrides=["dataset.augmentation.multi_scales=[]", "dataset.batch_size=8"])
    )
    larger = estimate_training(
        rtdetr.load_spec(
            overrides=[
                "dataset.augmentation.multi_scales=[]",
                "dataset.augmentation.train_spatial_size=[1280,1280]",
            ]
        )
    )
    assert bigger.activation_bytes == 2 * small.activation_bytes
    assert larger.activation_bytes == 4 * small.activation_bytes
    assert small.model_bytes == small.model.bytes_needed(4)
