"""EfficientViT (MIT) backbones: every variant's levels and parameter counts, forward shapes, freezing,
MIT/TAO/timm weight layouts against timm's network, a whole RT-DETR and its ONNX export."""

from __future__ import annotations

import functools
import io
import re

import onnxruntime as ort
import pytest
import timm
import torch
import torch.nn.functional as F
from timm.models.efficientvit_mit import EfficientVitLarge, LiteMLA
from torch import nn

from rtdetr.loss import HungarianMatcher, RTDETRCriterion
from rtdetr.model import build_backbone, build_model, load_pretrained_backbone
from rtdetr.model.backbones.efficientvit import BN_EPS, LITEMLA_EPS, VARIANTS, EfficientViT
from rtdetr.model.layers import FrozenBatchNorm2d
from rtdetr.model.testing import randomize_

# variant: (parameters of our backbone at return_idx [1, 2, 3], LayerNorms included; parameters of the
#           1000-class classification network (timm's, whose layers are MIT's); the published count in
#           millions as printed, None where none is).
# Published: MIT's table (mit-han-lab/efficientvit, applications/efficientvit_cls/README.md: B1 9.1M,
# B2 24M, B3 49M, L1 53M, L2 64M, L3 246M); B0, absent there, from timm's model card of
# efficientvit_b0.r224_in1k (huggingface.co/timm/efficientvit_b0.r224_in1k: 3.4M, "trained by paper
# authors"). The counts agree to the printed digits; relative to the printed figure B2 is 1.4% over
# ("24M" for 24.33M), the others within 0.7%. L0 has only a SAM backbone upstream, no classifier.
PARAMETERS = {
    "b0": (683_056, 3_410_008, "3.4"),
    "b1": (4_644_832, 9_102_024, "9.1"),
    "b2": (14_978_352, 24_330_712, "24"),
    "b3": (38_999_232, 48_646_056, "49"),
    "l0": (27_807_264, None, None),
    "l1": (38_039_072, 52_654_088, "53"),
    "l2": (49_092_000, 63_707_016, "64"),
    "l3": (194_001_728, 246_037_288, "246"),
}
HEAD_NAMES = [
    ("in_conv.", "op_list.0."),
    ("classifier.0.", "op_list.2.linear."),
    ("classifier.1.", "op_list.2.norm."),
    ("classifier.4.", "op_list.3.linear."),
]  # timm's ClassifierHead -> MIT's ClsHead
NORM_KEYS = [f"norm{i}.{p}" for i in (1, 2, 3) for p in ("weight", "bias")]


def count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_every_variant_builds_with_tao_levels_and_recorded_parameter_count(variant):
    with torch.device("meta"):
        backbone = build_backbone(f"efficientvit_{variant}")
    assert backbone.out_strides == [8, 16, 32]
    assert backbone.out_channels == list(VARIANTS[variant].widths[2:])
    assert count(backbone) == PARAMETERS[variant][0]


@pytest.mark.parametrize("variant", [v for v, (_, _, published) in PARAMETERS.items() if published])
def test_classification_networks_match_the_published_parameter_counts(variant):
    _, recorded, published = PARAMETERS[variant]
    with torch.device("meta"):
        network = timm.create_model(f"efficientvit_{variant}", pretrained=False)
    assert count(network) == recorded
    decimals = len(published.partition(".")[2])
    assert round(recorded / 1e6, decimals) == float(published)


@pytest.mark.parametrize("variant", ["b0", "l0"])
def test_forward_shapes_at_64px(variant):
    backbone = build_backbone(f"efficientvit_{variant}").eval()
    with torch.no_grad():
        feats = backbone(torch.rand(2, 3, 64, 64))
    assert [tuple(f.shape) for f in feats] == [
        (2, c, 64 // s, 64 // s) for c, s in zip(backbone.out_channels, backbone.out_strides)
    ]


def test_any_stages_and_only_those_needed_are_built():
    backbone = build_backbone("efficientvit_b0", [0, 1, 2, 3])
    assert backbone.out_channels == [16, 32, 64, 128] and backbone.out_strides == [4, 8, 16, 32]
    shallow = build_backbone("efficientvit_l0", [0, 1])
    assert len(shallow.stages) == 3 and shallow.out_channels == [64, 128]  # stem + 2 stages
    with torch.no_grad():
        assert [f.shape[1] for f in shallow.eval()(torch.rand(1, 3, 64, 64))] == [64, 128]
    with pytest.raises(ValueError, match="model.return_interm_indices") as error:
        EfficientViT("b0", [1, 4])
    assert "\n" not in str(error.value)


def test_freeze_at_and_freeze_norm():
    backbone = build_backbone("efficientvit_b0", freeze_at=1, freeze_norm=True)
    frozen = {n for n, p in backbone.named_parameters() if not p.requires_grad}
    assert frozen and all(n.startswith(("input_stem.", "stages.0.")) for n in frozen)
    assert all(p.requires_grad for n, p in backbone.named_parameters() if n not in frozen)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in backbone.modules())
    assert any(isinstance(m, FrozenBatchNorm2d) for m in backbone.modules())

    large = build_backbone("efficientvit_l0", freeze_at=0)
    assert {n.split(".")[1] for n, p in large.named_parameters() if not p.requires_grad} == {"0"}
    assert not any(isinstance(m, FrozenBatchNorm2d) for m in large.modules())


@functools.cache
def timm_network(variant: str) -> nn.Module:
    """timm's network of `variant` with TAO's eps values and random weights (norm statistics too); shared
    by the tests, which only read it."""
    cfg = VARIANTS[variant]
    if variant == "l0":  # not registered in timm; a small classifier, which no layout keeps
        network = EfficientVitLarge(
            widths=cfg.widths, depths=cfg.depths, head_widths=(64, 64), num_classes=10, norm_eps=BN_EPS
        )
    else:
        network = timm.create_model(
            f"efficientvit_{variant}", pretrained=False, **({"norm_eps": BN_EPS} if cfg.large else {})
        )
    for module in network.modules():
        if isinstance(module, LiteMLA):
            module.eps = LITEMLA_EPS
    return randomize_(network, seed=1).eval()


def mit_name(key: str, large: bool) -> str:
    """timm's key -> MIT's (EfficientViTCls: `backbone.` + backbone names, `head.op_list.*`)."""
    stem = "stages.0" if large else "input_stem"
    key = re.sub(r"^stem\.in_conv\.", f"{stem}.op_list.0.", key)
    key = re.sub(r"^stem\.res(\d+)\.", lambda m: f"{stem}.op_list.{int(m[1]) + 1}.", key)
    key = re.sub(r"^stages\.(\d+)\.blocks\.", lambda m: f"stages.{int(m[1]) + large}.op_list.", key)
    if key.startswith("head."):
        for timm_part, mit_part in HEAD_NAMES:
            key = key.replace(f"head.{timm_part}", f"head.{mit_part}")
        return key
    return f"backbone.{key}"


@pytest.mark.parametrize("variant", ["b0", "l0"])
@pytest.mark.parametrize("layout", ["mit", "tao", "timm"])
def test_weight_layouts_load_fully_and_give_timm_features(tmp_path, variant, layout):
    large = VARIANTS[variant].large
    reference = timm_network(variant)
    state = reference.state_dict()
    norms = {k: torch.randn(reference.feature_info[int(k[4])]["num_chs"]) for k in NORM_KEYS}
    if layout == "mit":  # a file as MIT's classifiers are saved
        mit = {mit_name(k, large): v for k, v in state.items()}
        assert any(k.startswith("head.op_list.3.linear") for k in mit)
        state = tmp_path / "mit.pt"
        torch.save({"state_dict": mit}, state)
    elif layout == "tao":  # an RT-DETR checkpoint: TAO's network has no classifier, and its LayerNorms
        backbone = {mit_name(k, large): v for k, v in state.items() if not k.startswith("head.")}
        state = {f"model.model.{k}": v for k, v in backbone.items()}
        state.update({f"model.model.backbone.{k}": v for k, v in norms.items()})
        state["model.model.encoder.input_proj.0.0.weight"] = torch.zeros(1)
        state["model.model.decoder.dec_bbox_head.0.layers.0.bias"] = torch.zeros(1)

    ours = build_backbone(f"efficientvit_{variant}").eval()
    report = load_pretrained_backbone(ours, state)
    assert report.unexpected == [] and report.mismatched == []
    # MIT's and timm's networks have no LayerNorms (TAO's additions), which keep their initial values
    assert report.missing == ([] if layout == "tao" else NORM_KEYS)

    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        feats = ours(x)
        stages = reference.forward_intermediates(x, indices=[1, 2, 3], intermediates_only=True)
    for i, (feat, stage) in enumerate(zip(feats, stages), start=1):
        weight, bias = (norms[f"norm{i}.weight"], norms[f"norm{i}.bias"]) if layout == "tao" else (None, None)
        expected = F.layer_norm(stage.permute(0, 2, 3, 1), stage.shape[1:2], weight, bias).permute(0, 3, 1, 2)
        torch.testing.assert_close(feat, expected, rtol=1e-5, atol=1e-5)


TINY_EFFICIENTVIT = dict(
    backbone="efficientvit_b0",
    hidden_dim=32,
    feat_channels=[32, 32, 32],
    nheads=4,
    dim_feedforward=64,
    dec_dim_feedforward=64,
    dec_layers=2,
    num_queries=10,
    dn_number=4,
    expansion=0.5,
)


@pytest.mark.slow
def test_rtdetr_with_efficientvit_runs_trains_and_freezes(tiny_model, make_targets):
    model = tiny_model(num_classes=3, **TINY_EFFICIENTVIT)
    assert model.encoder.in_channels == [32, 64, 128]
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        out = model.eval()(images)
    assert out["pred_logits"].shape == (2, 10, 3) and out["pred_boxes"].shape == (2, 10, 4)

    targets = make_targets(2, 3)
    losses = RTDETRCriterion(3, HungarianMatcher())(model.train()(images, targets), targets)
    sum(losses.values()).backward()
    assert all(p.grad is not None for p in model.backbone.parameters())
    assert model.backbone.input_stem.op_list[0].conv.weight.grad.abs().sum() > 0

    frozen = build_model(num_classes=3, train_backbone=False, **TINY_EFFICIENTVIT)
    assert not any(p.requires_grad for p in frozen.backbone.parameters())
    assert all(p.requires_grad for p in frozen.decoder.parameters())


@pytest.mark.slow
def test_deploy_and_onnx_export_with_efficientvit_match_pytorch(tiny_model):
    model = tiny_model(num_classes=3, **TINY_EFFICIENTVIT).eval()
    images = torch.rand(2, 3, 64, 96)
    with torch.no_grad():
        before = model(images)
    model.deploy()
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.backbone.modules())
    buffer = io.BytesIO()
    torch.onnx.export(
        model,
        (torch.rand(1, 3, 64, 64),),
        buffer,
        opset_version=17,
        input_names=["inputs"],
        output_names=["pred_logits", "pred_boxes"],
        dynamic_axes={"inputs": {0: "batch", 2: "height", 3: "width"}},
        dynamo=False,
    )
    session = ort.InferenceSession(buffer.getvalue(), providers=["CPUExecutionProvider"])
    logits, boxes = session.run(None, {"inputs": images.numpy()})
    with torch.no_grad():
        expected = model(images)
    for key in ("pred_logits", "pred_boxes"):
        assert (before[key] - expected[key]).abs().max() <= 1e-5
    assert abs(torch.from_numpy(logits) - expected["pred_logits"]).max() <= 1e-4
    assert abs(torch.from_numpy(boxes) - expected["pred_boxes"]).max() <= 1e-4
