"""model.frozen_fm: a frozen RADIO beside the backbone (a tiny RADIO, injected through the size table
the builder reads): the 4th encoder level, the image query, frozen weights, and the tasks."""

from __future__ import annotations

import json

import pytest
import torch

import rtdetr
from rtdetr.model import budget, radio
from rtdetr.model.factory import build_model
from rtdetr.tasks.quickstart import sample_dir

SMALL = dict(
    backbone="resnet_18vd", hidden_dim=64, feat_channels=[64, 64, 64], nheads=4, dim_feedforward=128,
    dec_dim_feedforward=128, dec_layers=2, num_queries=30, num_select=30, dn_number=10, expansion=0.5,
)  # fmt: skip


@pytest.fixture
def tiny_radio(monkeypatch):
    """radio_v2-b built 64 wide and 2 blocks deep (the budget's size cache cleared around it)."""
    budget._meta_size.cache_clear()
    monkeypatch.setitem(radio.SIZES, "radio_v2-b", radio.RadioSize(64, 2, 4))
    yield
    budget._meta_size.cache_clear()


def _model():
    torch.manual_seed(0)
    model = build_model(
        num_classes=4, frozen_fm="radio_v2-b", **{k: v for k, v in SMALL.items() if k != "num_select"}
    )
    with torch.no_grad():  # a RADIO whose features vary with the image
        for p in model.frozen_fm.parameters():
            p.copy_(torch.randn_like(p) * 0.2)
    return model


def _targets(n: int):
    return [
        {"labels": torch.tensor([1, 2]), "boxes": torch.tensor([[0.5, 0.5, 0.3, 0.3], [0.2, 0.3, 0.1, 0.2]])}
    ] * n


def test_four_encoder_levels_three_decoder_levels_and_a_frozen_radio(tiny_radio):
    model = _model()
    assert len(model.encoder.input_proj) == 4 and model.encoder.out_strides == [8, 16, 32, 64]
    assert len(model.decoder.input_proj) == 3 and model.decoder.summary_proj[0].in_features == 3 * 64
    model.train()
    assert not model.frozen_fm.radio.training
    images = torch.rand(2, 3, 128, 128)
    first, second = model.frozen_fm(images), model.frozen_fm(images)
    assert first[1].shape == (2, 64, 2, 2)  # stride 64
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    before = {k: v.clone() for k, v in model.frozen_fm.state_dict().items()}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    out = model(images, _targets(2))
    (
        out["pred_logits"].sigmoid().mean()
        + out["pred_boxes"].mean()
        + out["dn_outputs"][-1]["pred_boxes"].mean()
    ).backward()
    optimizer.step()
    assert all(p.grad is None for p in model.frozen_fm.parameters())
    assert model.decoder.summary_proj[0].weight.grad.abs().sum() > 0  # the image query takes part
    assert all(torch.equal(before[k], v) for k, v in model.frozen_fm.state_dict().items())


def test_the_image_query_changes_the_detections(tiny_radio):
    model = _model().eval()
    images = torch.rand(1, 3, 128, 128)
    with torch.no_grad():
        base = model(images)["pred_logits"]
        model.decoder.summary_proj[1].bias.add_(1.0)
        moved = model(images)["pred_logits"]
    assert not torch.allclose(base, moved)


@pytest.mark.slow
def test_train_evaluate_and_export_with_a_frozen_fm(tiny_radio, cli, tmp_path):
    data = sample_dir()
    val = {"image_dir": str(data / "images"), "json_file": str(data / "val.json")}
    fm = radio.build_radio("radio_v2-b")
    torch.save(
        {"state_dict": {f"radio_model.model.{k}": v for k, v in fm.state_dict().items()}},
        tmp_path / "radio.pth",
    )
    spec = {
        "results_dir": str(tmp_path / "results"),
        "model": {**SMALL, "frozen_fm": {"enabled": True, "backbone": "radio_v2-b", "checkpoint": str(tmp_path / "radio.pth")}},
        "dataset": {"train_data_sources": [val], "val_data_sources": val, "test_data_sources": val,
                    "num_classes": 4, "batch_size": 8, "workers": 0,
                    "augmentation": {"train_spatial_size": [128, 128], "eval_spatial_size": [128, 128]}},
        "train": {"num_epochs": 1, "activation_checkpoint": False},
    }  # fmt: skip
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(spec))
    result = cli("train", "-e", path)
    assert result.code == 0, result.err
    assert "multi-scale training is off" in result.err
    checkpoint = tmp_path / "results" / "train" / "model_epoch_000.pth"
    state = torch.load(checkpoint, weights_only=False)["state_dict"]
    radio_state = {k.split("frozen_fm.radio.", 1)[1]: v for k, v in state.items() if "frozen_fm.radio." in k}
    assert radio_state and all(torch.equal(radio_state[k], v) for k, v in fm.state_dict().items())
    assert cli("-q", "evaluate", "-e", path, f"evaluate.checkpoint={checkpoint}").code == 0
    onnx = tmp_path / "model.onnx"
    result = cli("-q", "export", "-e", path, f"export.checkpoint={checkpoint}", f"export.onnx_file={onnx}",
                 "export.input_width=128", "export.input_height=128")  # fmt: skip
    assert result.code == 0, result.err
    status = [
        json.loads(line)
        for line in (tmp_path / "results" / "export" / "status.json").read_text().splitlines()
    ]
    assert next(s["kpi"] for s in status if s.get("kpi"))["max_abs_diff_vs_pytorch"] <= 1e-4
    result = cli("-q", "export", "-e", path, f"export.checkpoint={checkpoint}", f"export.onnx_file={tmp_path / 'other' / 'x.onnx'}",
                 "export.input_width=160", "export.input_height=128")  # fmt: skip
    assert result.code == 2 and "multiples of 64" in result.err.strip().splitlines()[-1]
    # the ONNX file takes any batch (dynamic), and quantizes
    from rtdetr.deploy.backends import load_backend

    images = torch.rand(2, 3, 128, 128)
    with torch.no_grad():
        expected = rtdetr.load_model(checkpoint).eval()(images)
    logits, boxes = load_backend(onnx, device="cpu", runtime="onnxruntime")(images)
    assert (logits - expected["pred_logits"]).abs().max() <= 1e-4 and (
        boxes - expected["pred_boxes"]
    ).abs().max() <= 1e-4
    result = cli("-q", "quantize", "-e", path, f"quantize.onnx_file={onnx}", f"quantize.output_file={tmp_path / 'int8.onnx'}",
                 f"quantize.cal_image_dir=[{data / 'images'}]", "quantize.cal_images=4", "quantize.calibration_method=MinMax")  # fmt: skip
    assert result.code == 0, result.err
    # a frozen_fm teacher distils into a plain student
    student = {**spec, "results_dir": str(tmp_path / "distilled"), "model": dict(SMALL)}
    student["distill"] = {
        "teacher": spec["model"], "pretrained_teacher_model_path": str(checkpoint),
        "bindings": [{"teacher_module_name": "srcs", "student_module_name": "srcs", "criterion": "L2"}],
    }  # fmt: skip
    (tmp_path / "distill.json").write_text(json.dumps(student))
    result = cli("-q", "distill", "-e", tmp_path / "distill.json")
    assert result.code == 0, result.err
    assert rtdetr.load_model(tmp_path / "distilled" / "distill" / "model_epoch_000.pth").frozen_fm is None


def test_info_lists_the_foundation_model(tiny_radio, cli, write_spec):
    spec = write_spec({"model": {**SMALL, "frozen_fm": {"enabled": True, "backbone": "radio_v2-b"}},
                       "dataset": {"num_classes": 4, "augmentation": {"eval_spatial_size": [128, 128]}}})  # fmt: skip
    result = cli("info", "-e", spec)
    assert result.code == 0, result.err
    assert "frozen foundation model: radio_v2-b, 1.20 M parameters (frozen;" in result.out
    assert "summary 192, features 64" in result.out
