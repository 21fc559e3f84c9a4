"""Backbone factory, torchvision/timm-compatible plain ResNets, pretrained loading, freezing."""

from __future__ import annotations

import pytest
import torch
import torchvision

from rtdetr.errors import UserError
from rtdetr.model import available_backbones, build_backbone, build_model, load_pretrained_backbone
from rtdetr.model.layers import FrozenBatchNorm2d


def test_unknown_backbone_lists_the_available_names():
    with pytest.raises(ValueError) as error:
        build_model(num_classes=3, backbone="convnext_nope")
    message = str(error.value)
    assert "\n" not in message and "convnext_nope" in message
    assert all(name in message for name in available_backbones())


# Every ResNet at the default levels, and all four levels for all but resnet_101* (same layout as
# resnet_50*, slow to build); the other families have tests of their own (test_backbone_*.py).
RESNETS = [name for name in available_backbones() if name.startswith("resnet_")]
LEVEL_CASES = [(name, [1, 2, 3]) for name in RESNETS] + [
    (name, [0, 1, 2, 3]) for name in RESNETS if not name.startswith("resnet_101")
]


@pytest.mark.parametrize(("name", "return_idx"), LEVEL_CASES)
def test_levels_channels_and_strides(name, return_idx):
    backbone = build_backbone(name, return_idx).eval()
    expansion = 4 if name.split("_")[1].rstrip("vd") in ("50", "101") else 1
    assert backbone.out_channels == [64 * 2**i * expansion for i in return_idx]
    assert backbone.out_strides == [4 * 2**i for i in return_idx]
    with torch.no_grad():
        feats = backbone(torch.rand(1, 3, 64, 96))
    assert [tuple(f.shape[1:]) for f in feats] == [
        (c, 64 // s, 96 // s) for c, s in zip(backbone.out_channels, backbone.out_strides)
    ]


@pytest.mark.parametrize("depth", [18, 50])
def test_plain_resnet_loads_torchvision_weights_and_matches_its_features(tmp_path, depth):
    reference = getattr(torchvision.models, f"resnet{depth}")(weights=None).eval()
    path = tmp_path / "backbone.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in reference.state_dict().items()}}, path)

    backbone = build_backbone(f"resnet_{depth}", [1, 2, 3], pretrained_path=path).eval()
    report = load_pretrained_backbone(backbone, path)
    assert report.missing == [] and report.mismatched == []
    assert sorted(report.unexpected) == ["module.fc.bias", "module.fc.weight"]

    x = torch.rand(1, 3, 96, 64)
    with torch.no_grad():
        ours = backbone(x)
        h = reference.maxpool(reference.relu(reference.bn1(reference.conv1(x))))
        expected = []
        for name in ("layer1", "layer2", "layer3", "layer4"):
            h = getattr(reference, name)(h)
            expected.append(h)
    for a, b in zip(ours, expected[1:]):
        assert torch.allclose(a, b, atol=1e-5)


def test_plain_resnet_reports_unmatched_keys(caplog):
    state = torchvision.models.resnet18(weights=None).state_dict()
    state["layer1.0.conv1.weight"] = torch.zeros(1)
    del state["layer2.0.bn1.running_var"]
    backbone = build_backbone("resnet_18", [1, 2, 3])
    with caplog.at_level("WARNING"):
        report = load_pretrained_backbone(backbone, state)
    assert report.mismatched == ["layer1.0.conv1.weight"]
    assert report.missing == ["layer1.0.conv1.weight", "layer2.0.bn1.running_var"]
    assert "layer2.0.bn1.running_var" in caplog.text


def test_timm_resnet_names_load():
    import timm

    state = timm.create_model("resnet18", pretrained=False).state_dict()
    report = load_pretrained_backbone(build_backbone("resnet_18", [1, 2, 3]), state)
    assert report.missing == [] and report.mismatched == []


def test_freezing_defaults_and_overrides():
    r50vd = build_backbone("resnet_50vd")
    assert any(isinstance(m, FrozenBatchNorm2d) for m in r50vd.modules())
    assert not any(p.requires_grad for p in r50vd.conv1.parameters())
    assert all(p.requires_grad for p in r50vd.res_layers.parameters())
    r18vd = build_backbone("resnet_18vd")
    assert not any(isinstance(m, FrozenBatchNorm2d) for m in r18vd.modules())
    assert all(p.requires_grad for p in r18vd.parameters())
    r50 = build_backbone("resnet_50", freeze_norm=False, freeze_at=-1)
    assert all(p.requires_grad for p in r50.parameters())
    tao_default = build_backbone("resnet_50")
    assert not any(p.requires_grad for p in tao_default.layer1.parameters())
    assert all(p.requires_grad for p in tao_default.layer2.parameters())


def test_pretrained_backbone_file_errors_name_the_setting(tmp_path):
    backbone = build_backbone("resnet_18", [1, 2, 3])
    with pytest.raises(UserError, match=r"^model.pretrained_backbone_path: .*missing.pth: file not found$"):
        load_pretrained_backbone(backbone, tmp_path / "missing.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="junk.pth: not a readable checkpoint"):
        load_pretrained_backbone(backbone, tmp_path / "junk.pth")
    # weights of something else entirely: refused, not a silently random backbone
    torch.save({"head.weight": torch.zeros(3, 3)}, tmp_path / "other.pth")
    with pytest.raises(UserError, match="other.pth: no tensor fits the backbone .*'head.weight'"):
        load_pretrained_backbone(backbone, tmp_path / "other.pth")
