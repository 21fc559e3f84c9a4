"""Every backbone name the spec accepts builds, and each family's small variant trains one epoch on
the shipped sample, then evaluates and exports through the CLI."""

from __future__ import annotations

import json

import pytest
import torch

import rtdetr
from rtdetr.config.schema import ModelConfig
from rtdetr.errors import SpecError
from rtdetr.model import available_backbones, build_backbone
from rtdetr.tasks.quickstart import sample_dir

SPEC_BACKBONES = ModelConfig.__dataclass_fields__["backbone"].metadata["spec"].valid_options


def test_the_spec_accepts_exactly_the_names_the_factory_builds():
    assert sorted(SPEC_BACKBONES) == sorted(available_backbones())


@pytest.mark.parametrize("name", sorted(SPEC_BACKBONES))
def test_every_accepted_name_builds_with_strides_8_16_32(name):
    with torch.device("meta"):
        backbone = build_backbone(name, [1, 2, 3])
    assert backbone.out_strides == [8, 16, 32]
    assert len(backbone.out_channels) == 3 and all(c > 0 for c in backbone.out_channels)


def test_convnext_v1_levels_are_checked_by_validate():
    with pytest.raises(SpecError, match=r"return_interm_indices: \[0, 1, 2\]: convnext_tiny .* \[1, 2, 3\]"):
        rtdetr.load_spec(
            {
                "model": {
                    "backbone": "convnext_tiny",
                    "return_interm_indices": [0, 1, 2],
                    "feat_strides": [4, 8, 16],
                }
            }
        )
    rtdetr.load_spec({"model": {"backbone": "convnextv2_nano", "return_interm_indices": [0, 1, 2],
                                "feat_strides": [4, 8, 16]}})  # fmt: skip


@pytest.mark.slow
# ConvNeXt v1 shares convnextv2_nano's timm network; its TAO projections train and export in
# tests/model/test_backbone_convnext.py
@pytest.mark.parametrize("backbone", ["convnextv2_nano", "efficientvit_b0", "fan_tiny"])
def test_one_epoch_then_evaluate_and_export_on_the_sample(cli, tmp_path, backbone):
    data = sample_dir()
    val = {"image_dir": str(data / "images"), "json_file": str(data / "val.json")}
    source = val  # 16 images: the run checks that the backbone trains, not what it learns
    spec = {
        "results_dir": str(tmp_path / "results"),
        "model": {"backbone": backbone, "hidden_dim": 64, "feat_channels": [64, 64, 64], "nheads": 4,
                  "dim_feedforward": 128, "dec_dim_feedforward": 128, "dec_layers": 2, "num_queries": 30,
                  "num_select": 30, "dn_number": 10, "expansion": 0.5},
        "dataset": {"train_data_sources": [source], "val_data_sources": val, "test_data_sources": val,
                    "num_classes": 4, "batch_size": 8, "workers": 0,
                    "augmentation": {"train_spatial_size": [64, 64], "eval_spatial_size": [64, 64],
                                     "multi_scales": []}},
        "train": {"num_epochs": 1, "activation_checkpoint": False},
    }  # fmt: skip
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(spec))
    checkpoint = tmp_path / "results" / "train" / "model_epoch_000.pth"
    assert cli("-q", "train", "-e", path).code == 0
    result = cli("-q", "evaluate", "-e", path, f"evaluate.checkpoint={checkpoint}")
    assert result.code == 0, result.err
    stats = json.loads((tmp_path / "results" / "evaluate" / "results.json").read_text())["stats"]
    assert 0.0 <= stats["mAP50"] <= 1.0
    onnx = tmp_path / "model.onnx"
    result = cli("-q", "export", "-e", path, f"export.checkpoint={checkpoint}", f"export.onnx_file={onnx}",
                 "export.input_width=64", "export.input_height=64")  # fmt: skip
    assert result.code == 0, result.err
    status = [
        json.loads(line)
        for line in (tmp_path / "results" / "export" / "status.json").read_text().splitlines()
    ]
    assert next(s["kpi"] for s in status if s.get("kpi"))["max_abs_diff_vs_pytorch"] <= 1e-4
    assert rtdetr.load_model(checkpoint).metadata.model["backbone"] == backbone
    if backbone == "fan_tiny":
        return  # its operator types are those of convnextv2_nano, efficientvit_b0 and the decoder, quantized below
    result = cli("-q", "quantize", "-e", path, f"quantize.onnx_file={onnx}", f"quantize.output_file={tmp_path / 'int8.onnx'}",
                 f"quantize.cal_image_dir=[{data / 'images'}]", "quantize.cal_images=4")  # fmt: skip
    assert result.code == 0, result.err
    assert (tmp_path / "int8.onnx").stat().st_size < onnx.stat().st_size
