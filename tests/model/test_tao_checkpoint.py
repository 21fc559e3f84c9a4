"""TAO RT-DETR checkpoints (Lightning files whose keys start with model.model. and whose settings are
pickled OmegaConf objects) load safely: as pretrained weights and through `rtdetr convert`."""

from __future__ import annotations

import os

import torch
from omegaconf import OmegaConf

from rtdetr.engine.model_setup import load_pretrained_model
from rtdetr.model import build_model
from rtdetr.model.checkpoint import load_model
from rtdetr.model.weights import torch_load_weights

TINY = dict(
    backbone="resnet_18", num_queries=10, hidden_dim=32, feat_channels=[32, 32, 32], nheads=4,
    dim_feedforward=64, dec_dim_feedforward=64, dec_layers=1, dn_number=0, expansion=0.5,
)  # fmt: skip


class _WouldRunCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _tao_file(path, model, extra=None):
    """A file laid out as TAO's RT-DETR saves one: Lightning's dict, the spec as OmegaConf."""
    spec = OmegaConf.create({"model": {"backbone": "resnet_18"}, "dataset": {"num_classes": 3}})
    torch.save(
        {
            "state_dict": {f"model.model.{k}": v for k, v in model.state_dict().items()},
            "hyper_parameters": {"experiment_spec": spec},
            "tao_model": "rtdetr",
            "epoch": 3,
            **(extra or {}),
        },
        path,
    )
    return path


def test_a_tao_file_loads_as_pretrained_weights_with_every_tensor(tmp_path):
    torch.manual_seed(0)
    source = build_model(num_classes=3, **TINY).eval()
    path = _tao_file(tmp_path / "model_epoch_003.pth", source)
    target = build_model(num_classes=3, **TINY).eval()
    report = load_pretrained_model(target, path)
    assert report.missing == [] and report.unexpected == [] and report.mismatched == []
    images = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(target(images)["pred_logits"], source(images)["pred_logits"])


def test_convert_takes_a_tao_file(cli, tmp_path, write_spec):
    torch.manual_seed(1)
    source = build_model(num_classes=3, **TINY).eval()
    path = _tao_file(tmp_path / "tao.pth", source)
    spec = write_spec({"model": {**TINY, "num_select": 10}, "dataset": {"num_classes": 3}})
    result = cli("convert", "--original", path, "-e", spec, "-o", tmp_path / "ours.pth")
    assert result.code == 0, result.err
    converted = load_model(tmp_path / "ours.pth")
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(converted(images)["pred_boxes"], source(images)["pred_boxes"])


def test_settings_objects_stay_inert_and_code_still_cannot_run(tmp_path):
    marker = tmp_path / "ran"
    torch.manual_seed(2)
    model = build_model(num_classes=3, **TINY)
    data = torch_load_weights(_tao_file(tmp_path / "ok.pth", model), "train.pretrained_model_path")
    assert set(data["state_dict"]) == {f"model.model.{k}" for k in model.state_dict()}
    assert type(data["hyper_parameters"]["experiment_spec"]).__name__ == "Inert"
    evil = _tao_file(tmp_path / "evil.pth", model, extra={"callbacks": _WouldRunCode(marker)})
    try:
        torch_load_weights(evil, "train.pretrained_model_path")
    except Exception as exc:  # the project's one-line refusal
        assert "rtdetr does not load" in str(exc)
    else:
        raise AssertionError("a file with os.system in it was loaded")
    assert not marker.exists()
