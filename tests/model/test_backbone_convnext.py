"""ConvNeXt (v1, TAO's 512/1024/2048 projections) and ConvNeXt-V2 backbones: every variant's levels and
parameter counts, forward shapes, Meta/TAO/timm weight layouts, a whole RT-DETR and its ONNX export."""

from __future__ import annotations

import copy
import io
import re
from collections.abc import Callable

import onnxruntime as ort
import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn

from rtdetr.loss import HungarianMatcher, RTDETRCriterion
from rtdetr.model import build_backbone, build_model, load_pretrained_backbone
from rtdetr.model.testing import randomize_

V1_CHANNELS = [512, 1024, 2048]
V2_DIMS = {
    "atto": 40, "femto": 48, "pico": 64, "nano": 80, "tiny": 96, "small": 96, "base": 128, "large": 192,
    "huge": 352,
}  # fmt: skip
PROJECTIONS = [f"conv_{c}.{p}" for c in V1_CHANNELS for p in ("weight", "bias")]

# name: (parameters of our backbone at return_idx [1, 2, 3], with TAO's projections for convnext_*;
#        parameters of timm's 1000-class network; the published count in millions, None where none is)
# Published: ConvNeXt (Liu et al. 2022; Meta's README rounds T down to 28M) and ConvNeXt-V2's README.
PARAMETERS = {
    "convnext_tiny": (46_401_632, 28_589_128, 28.6),
    "convnext_small": (68_036_192, 50_223_688, 50),
    "convnext_base": (112_340_608, 88_591_464, 89),
    "convnext_large": (233_389_760, 197_767_336, 198),
    "convnext_xlarge": (397_692_672, 350_196_968, 350),
    "convnextv2_atto": (3_386_760, 3_708_400, 3.7),
    "convnextv2_femto": (4_847_472, 5_233_240, 5.2),
    "convnextv2_pico": (8_552_256, 9_066_280, 9.1),
    "convnextv2_nano": (14_981_520, 15_623_800, 15.6),
    "convnextv2_tiny": (27_864_960, 28_635_496, 28.6),
    "convnextv2_small": (49_547_904, 50_318_440, None),
    "convnextv2_base": (87_690_752, 88_717_800, 89),
    "convnextv2_large": (196_416_768, 197_956_840, 198),
    "convnextv2_huge": (657_467_008, 660_289_640, 660),
}


def empty(build: Callable[..., nn.Module], *args, **kwargs) -> nn.Module:
    """``build(*args, **kwargs)`` on the meta device, then zero-filled on the CPU: skips the networks'
    truncated-normal initialisation, slow on CPU and not needed where weights are loaded or drawn."""
    with torch.device("meta"):
        module = build(*args, **kwargs)
    module.to_empty(device="cpu")
    with torch.no_grad():
        for t in [*module.parameters(), *module.buffers()]:
            t.zero_()
    return module


def materialize(build: Callable[..., nn.Module], *args, seed: int = 0, **kwargs) -> nn.Module:
    """``empty(build, ...)`` with seeded random weights: ``randomize_``'s for convolutions, linear layers
    and norms, N(0, 0.1) for every other parameter (layer scale and GRN, whose initial 1e-6 and 0
    would make each block nearly the identity)."""
    module = empty(build, *args, **kwargs)
    covered = (nn.Conv2d, nn.Linear, nn.LayerNorm, nn.BatchNorm2d, nn.Embedding, nn.MultiheadAttention)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if not isinstance(m, covered):
                for p in m.parameters(recurse=False):
                    p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return randomize_(module, seed)


def expected_channels(name: str) -> list[int]:
    if name.startswith("convnext_"):
        return V1_CHANNELS
    dim = V2_DIMS[name.removeprefix("convnextv2_")]
    return [dim * 2, dim * 4, dim * 8]


@pytest.mark.parametrize("name", list(PARAMETERS))
def test_every_variant_builds_with_its_levels_and_parameter_counts(name):
    ours, classifier, published = PARAMETERS[name]
    with torch.device("meta"):
        backbone = build_backbone(name)
        reference = timm.create_model(name, pretrained=False, num_classes=1000)
    assert backbone.out_channels == expected_channels(name)
    assert backbone.out_strides == [8, 16, 32]
    assert sum(p.numel() for p in backbone.parameters()) == ours
    assert sum(p.numel() for p in reference.parameters()) == classifier
    if published is not None:
        assert abs(classifier / 1e6 - published) <= 0.01 * published


@pytest.mark.parametrize(
    ("name", "return_idx"),
    [("convnext_tiny", [1, 2, 3]), ("convnextv2_atto", [1, 2, 3]), ("convnextv2_nano", [1, 2, 3]),
     ("convnextv2_atto", [0, 1, 2, 3]), ("convnextv2_atto", [2])],
)  # fmt: skip
def test_forward_shapes_at_64_px(name, return_idx):
    backbone = empty(build_backbone, name, return_idx).eval()
    if name.startswith("convnextv2_"):
        dim = V2_DIMS[name.removeprefix("convnextv2_")]
        assert backbone.out_channels == [dim * 2**i for i in return_idx]
    assert backbone.out_strides == [4 * 2**i for i in return_idx]
    with torch.no_grad():
        feats = backbone(torch.rand(2, 3, 64, 64))
    assert [tuple(f.shape) for f in feats] == [
        (2, c, 64 // s, 64 // s) for c, s in zip(backbone.out_channels, backbone.out_strides)
    ]


def test_freeze_at_freezes_the_stem_and_the_first_stages():
    with torch.device("meta"):
        backbone = build_backbone("convnext_tiny", freeze_at=2)
        unfrozen = build_backbone("convnext_tiny")
    frozen = {n.split(".")[1] for n, p in backbone.named_parameters() if not p.requires_grad}
    assert frozen == {"stem_0", "stem_1", "stages_0", "stages_1"}
    assert all(p.requires_grad for p in unfrozen.parameters())


def test_v1_refuses_other_levels_in_one_line():
    with pytest.raises(ValueError) as error:
        build_model(num_classes=3, backbone="convnext_tiny", return_interm_indices=[0, 1, 2])
    message = str(error.value)
    assert "\n" not in message
    assert "model.return_interm_indices" in message and "[1, 2, 3]" in message and "[0, 1, 2]" in message


def meta_layout(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """timm's classification-network names -> those of Meta's ConvNeXt / ConvNeXt-V2 releases."""
    out = {}
    for key, value in state.items():
        key = re.sub(r"^stem\.", "downsample_layers.0.", key)
        key = re.sub(r"^stages\.(\d+)\.downsample\.", r"downsample_layers.\1.", key)
        key = re.sub(r"^stages\.(\d+)\.blocks\.", r"stages.\1.", key)
        key = key.replace("conv_dw", "dwconv").replace("mlp.fc", "pwconv")
        if ".mlp.grn." in key:
            key = key.replace("mlp.grn.weight", "grn.gamma").replace("mlp.grn.bias", "grn.beta")
            value = value.reshape(1, 1, 1, -1)
        out[key.replace("head.norm.", "norm.").replace("head.fc.", "head.")] = value
    return out


def tao_layout(
    state: dict[str, torch.Tensor], projections: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """The backbone tensors of a TAO RT-DETR checkpoint: Meta's names without the classifier (TAO builds
    it with num_classes=0) but with the final norm, plus the v1 projections, under model.model.backbone."""
    meta = {k: v for k, v in meta_layout(state).items() if not k.startswith("head.")}
    return {f"model.model.backbone.{k}": v for k, v in {**meta, **projections}.items()}


def features_only_layout(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """timm's names as its features_only network has them (stem_0, stages_1), without the head."""
    return {
        re.sub(r"^(stem|stages)\.(\d+)\.", r"\1_\2.", k): v
        for k, v in state.items()
        if not k.startswith("head.")
    }


@pytest.mark.parametrize("name", [pytest.param("convnext_tiny", marks=pytest.mark.slow), "convnextv2_atto"])
def test_meta_tao_and_timm_layouts_load_and_give_the_source_features(name):
    """Every layout loads all backbone tensors (pretrained classifiers lack the v1 projections); the
    stages then give timm's features, and with TAO's projections its projected features."""
    source = materialize(timm.create_model, name, pretrained=False, num_classes=1000).eval()
    state = source.state_dict()
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        stages = source.forward_intermediates(x, indices=[1, 2, 3], intermediates_only=True)
    v1 = name.startswith("convnext_")
    g = torch.Generator().manual_seed(1)
    projections, projected = {}, stages
    if v1:
        for f, c in zip(stages, V1_CHANNELS):
            fan_in = f.shape[1] * 9
            projections[f"conv_{c}.weight"] = torch.randn(c, f.shape[1], 3, 3, generator=g) * fan_in**-0.5
            projections[f"conv_{c}.bias"] = torch.randn(c, generator=g) * 0.1
        projected = [
            F.conv2d(f, projections[f"conv_{c}.weight"], projections[f"conv_{c}.bias"], padding=1)
            for f, c in zip(stages, V1_CHANNELS)
        ]

    layouts = {
        "meta": meta_layout(state),
        "timm": state,
        "timm features_only": features_only_layout(state),
        "tao": tao_layout(state, projections),
    }
    for layout, weights in layouts.items():
        backbone = empty(build_backbone, name).eval()
        report = load_pretrained_backbone(backbone, weights)
        complete = layout == "tao" or not v1
        assert report.missing == ([] if complete else PROJECTIONS), layout
        assert report.unexpected == [] and report.mismatched == [], layout
        with torch.no_grad():
            ours, expected = (backbone(x), projected) if complete else (backbone.body(x), stages)
        assert len(ours) == 3 and all(torch.allclose(a, b, atol=1e-5) for a, b in zip(ours, expected)), layout

    # the rest of a TAO RT-DETR checkpoint is reported under its own name
    extra = {"model.model.encoder.input_proj.0.0.weight": torch.zeros(1)}
    report = load_pretrained_backbone(backbone, {**layouts["tao"], **extra})
    assert report.unexpected == list(extra) and report.missing == []


TINY_CONVNEXT = dict(
    backbone="convnext_tiny",
    hidden_dim=32,
    feat_channels=[32] * 3,
    nheads=4,
    dim_feedforward=64,
    dec_dim_feedforward=64,
    dec_layers=2,
    num_queries=10,
    dn_number=4,
    expansion=0.5,
)


@pytest.fixture(scope="module")
def convnext_rtdetr() -> nn.Module:
    return materialize(build_model, num_classes=3, **TINY_CONVNEXT)


@pytest.mark.slow
def test_rtdetr_with_convnext_runs_trains_and_freezes(convnext_rtdetr, make_targets):
    model = copy.deepcopy(convnext_rtdetr)
    assert model.encoder.in_channels == V1_CHANNELS
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        out = model.eval()(images)
    assert out["pred_logits"].shape == (2, 10, 3) and out["pred_boxes"].shape == (2, 10, 4)

    targets = make_targets(2, 3)
    losses = RTDETRCriterion(3, HungarianMatcher())(model.train()(images, targets), targets)
    sum(losses.values()).backward()
    assert all(p.grad is not None for p in model.backbone.parameters())
    assert model.backbone.conv_2048.weight.grad.abs().sum() > 0

    with torch.device("meta"):
        frozen = build_model(num_classes=3, train_backbone=False, **TINY_CONVNEXT)
    assert not any(p.requires_grad for p in frozen.backbone.parameters())
    assert all(p.requires_grad for p in frozen.decoder.parameters())


@pytest.mark.slow
def test_onnx_export_with_convnext_matches_pytorch(convnext_rtdetr):
    model = copy.deepcopy(convnext_rtdetr).deploy()
    buffer = io.BytesIO()
    torch.onnx.export(
        model,
        (torch.rand(1, 3, 64, 64),),
        buffer,
        opset_version=17,
        input_names=["inputs"],
        output_names=["pred_logits", "pred_boxes"],
        dynamic_axes={"inputs": {0: "batch"}},
        dynamo=False,
    )
    session = ort.InferenceSession(buffer.getvalue(), providers=["CPUExecutionProvider"])
    images = torch.rand(2, 3, 64, 64)
    logits, boxes = session.run(None, {"inputs": images.numpy()})
    with torch.no_grad():
        expected = model(images)
    assert abs(torch.from_numpy(logits) - expected["pred_logits"]).max() <= 1e-4
    assert abs(torch.from_numpy(boxes) - expected["pred_boxes"]).max() <= 1e-4
