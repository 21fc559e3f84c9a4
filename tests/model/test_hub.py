"""Weights by hub name (hf://ORG/REPO), offline, from a Hugging Face cache filled here: a tiny RT-DETR
in transformers' format and a timm ResNet-18. Loaded by name, they give what the same weights give
from local files; a name that is not cached is one line, exit 2, nothing written."""

from __future__ import annotations

import json

import numpy as np
import pytest
import timm
import torch
from huggingface_hub import constants
from safetensors.torch import save_file
from test_checkpoint_convert import _tiny_hf  # tests/model/test_checkpoint_convert.py

from rtdetr.config import load_spec
from rtdetr.data.sample import write_sample
from rtdetr.deploy.detector import Detector
from rtdetr.errors import UserError
from rtdetr.model import build_model, hub
from rtdetr.model.checkpoint import load_model
from rtdetr.model.convert import convert_hf

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _snapshot(cache, repo: str):
    root = cache / f"models--{repo.replace('/', '--')}"
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(COMMIT)
    folder = root / "snapshots" / COMMIT
    folder.mkdir(parents=True)
    return folder


@pytest.fixture
def offline_hub(tmp_path_factory, monkeypatch):
    """A Hugging Face cache with test/tiny-rtdetr (4 classes) and timm/resnet18.test, offline."""
    cache = tmp_path_factory.mktemp("hub")
    torch.manual_seed(0)
    _tiny_hf(num_labels=4).save_pretrained(_snapshot(cache, "test/tiny-rtdetr"))
    backbone = _snapshot(cache, "timm/resnet18.test")
    torch.manual_seed(1)
    save_file(
        timm.create_model("resnet18", pretrained=False).state_dict(), str(backbone / "model.safetensors")
    )
    (backbone / "config.json").write_text(json.dumps({"architecture": "resnet18", "num_classes": 1000}))
    (_snapshot(cache, "test/tiny-v2") / "config.json").write_text(json.dumps({"model_type": "rt_detr_v2"}))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    root = tmp_path_factory.mktemp("bccd")
    write_sample(root)
    return root


def test_an_rtdetr_by_name_detects_as_the_same_weights_from_a_local_file(offline_hub, sample, tmp_path):
    local = convert_hf(
        offline_hub / "models--test--tiny-rtdetr" / "snapshots" / COMMIT, tmp_path / "local.pth"
    )
    image = sorted((sample / "images").glob("*.jpg"))[0]
    by_name = Detector.from_pretrained("hf://test/tiny-rtdetr", input_size=(64, 64)).predict(image, conf=0.0)[
        0
    ]
    by_file = Detector.from_file(local, input_size=(64, 64)).predict(image, conf=0.0)[0]
    np.testing.assert_array_equal(by_name.boxes, by_file.boxes)
    np.testing.assert_array_equal(by_name.scores, by_file.scores)
    converted = offline_hub / "rtdetr" / f"test--tiny-rtdetr--{COMMIT}.pth"
    assert converted.is_file()  # converted once, beside the download
    assert Detector.from_pretrained(f"hf://test/tiny-rtdetr@{COMMIT}").num_classes == 4


def test_detect_and_evaluate_take_a_name(offline_hub, sample, tmp_path, cli, monkeypatch):
    monkeypatch.chdir(tmp_path)
    images = sorted((sample / "images").glob("*.jpg"))[:3]
    result = cli(
        "detect", *map(str, images), "--model", "hf://test/tiny-rtdetr", "--conf", "0.0", "--output", "found"
    )
    assert result.code == 0, result.err
    assert "3 images" in result.out and len(list((tmp_path / "found" / "labels").glob("*.txt"))) == 3
    spec = {
        "results_dir": str(tmp_path / "results"),
        "dataset": {"test_data_sources": {"image_dir": str(sample / "images"),
                                          "json_file": str(sample / "annotations" / "instances_val.json")},
                    "num_classes": 4, "batch_size": 8, "workers": 0,
                    "augmentation": {"eval_spatial_size": [64, 64]}},
    }  # fmt: skip
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    runs = {}
    local = convert_hf(
        offline_hub / "models--test--tiny-rtdetr" / "snapshots" / COMMIT, tmp_path / "local.pth"
    )
    for label, model in (("name", "hf://test/tiny-rtdetr"), ("file", str(local))):
        out = tmp_path / f"eval_{label}"
        result = cli(
            "evaluate",
            "-e",
            tmp_path / "spec.json",
            f"evaluate.checkpoint={model}",
            f"evaluate.results_dir={out}",
        )
        assert result.code == 0, result.err
        runs[label] = json.loads((out / "results.json").read_text())["stats"]
    assert runs["name"] == runs["file"]


def test_a_timm_backbone_by_name_loads_as_the_file(offline_hub):
    path = hub.local_path("hf://timm/resnet18.test", "model.pretrained_backbone_path")
    assert path.endswith("model.safetensors")
    model = build_model(num_classes=4, backbone="resnet_18", pretrained_backbone_path=path)
    reference = timm.create_model("resnet18", pretrained=False)
    reference.load_state_dict(dict(__import__("safetensors.torch", fromlist=["load_file"]).load_file(path)))
    ours = dict(model.backbone.named_parameters())
    conv = next(v for k, v in ours.items() if k.endswith("conv1.weight"))
    torch.testing.assert_close(conv, reference.conv1.weight)


def test_fine_tuning_an_other_class_count_checkpoint_by_name_reports_the_new_head(
    offline_hub, sample, tmp_path, cli
):
    converted = hub.local_path("hf://test/tiny-rtdetr", "train.pretrained_model_path")
    section = {**load_model(converted).metadata.model, "num_select": 30}
    spec = {
        "results_dir": str(tmp_path / "results"), "model": section,
        "dataset": {"train_data_sources": [{"image_dir": str(sample / "images"),
                                            "json_file": str(sample / "annotations" / "instances_val.json")}],
                    "val_data_sources": {"image_dir": str(sample / "images"),
                                         "json_file": str(sample / "annotations" / "instances_val.json")},
                    "num_classes": 6, "batch_size": 8, "workers": 0,
                    "augmentation": {"train_spatial_size": [64, 64], "eval_spatial_size": [64, 64],
                                     "multi_scales": []}},
        "train": {"num_epochs": 1, "pretrained_model_path": "hf://test/tiny-rtdetr", "activation_checkpoint": False},
    }  # fmt: skip
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    result = cli("train", "-e", tmp_path / "spec.json")
    assert result.code == 0, result.err
    assert (tmp_path / "results" / "train" / "model_epoch_000.pth").is_file()
    spec["model"] = {**section, "dec_layers": 1}  # the checkpoint has 2
    spec["results_dir"] = str(tmp_path / "other")
    (tmp_path / "other.json").write_text(json.dumps(spec))
    refused = cli("train", "-e", tmp_path / "other.json")
    lines = refused.err.strip().splitlines()
    assert refused.code == 2 and "does not fit the spec's model" in lines[-1]
    assert "dec_layers 2 (model.dec_layers: 1)" in lines[-1]
    report = result.err  # what was loaded, what was skipped and left at initialisation: the class heads
    assert "loaded 496 of 503 tensors" in report and "left at initialisation (7)" in report
    assert "decoder.enc_score_head.weight (4, 64) -> (6, 64)" in report
    saved = (tmp_path / "results" / "train" / "experiment.yaml").read_text()
    assert str(converted) in saved  # the name resolved to the cached conversion


def test_a_name_that_is_not_cached_offline_is_one_line_and_nothing_is_written(
    offline_hub, tmp_path, cli, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    result = cli("detect", "x.jpg", "--model", "hf://test/absent", "--output", "out")
    lines = result.err.strip().splitlines()
    assert result.code == 2 and len(lines) == 1, result.err
    assert (
        "hf://test/absent is not in the Hugging Face cache" in lines[0]
        and "rtdetr download hf://test/absent" in lines[0]
    )
    assert not (tmp_path / "out").exists()
    with pytest.raises(UserError, match="a hub name is hf://ORG/REPO"):
        hub.parse_name("hf://only-one-part")
    with pytest.raises(UserError, match="hf://test/tiny-v2 is a rt_detr_v2 model; rtdetr holds RT-DETR"):
        hub.resolve("hf://test/tiny-v2", "inference.checkpoint")
    result = cli("download", "hf://test/tiny-rtdetr")
    assert result.code == 0 and f"test--tiny-rtdetr--{COMMIT}.pth" in result.out


def test_quickstart_fine_tunes_a_name_it_can_have_and_else_trains_from_scratch(offline_hub, tmp_path):
    from rtdetr.tasks.quickstart import pretrained_weights, quickstart_spec

    weights, why = pretrained_weights("hf://test/tiny-rtdetr")
    assert weights is not None and weights.is_file() and why == ""
    spec = quickstart_spec(tmp_path, 2, 192, weights)
    model = load_model(weights).metadata.model
    assert (
        spec["model"]["hidden_dim"] == model["hidden_dim"]
        and spec["model"]["dec_layers"] == model["dec_layers"]
    )
    assert spec["train"]["pretrained_model_path"] == str(weights) and spec["train"]["optim"]["lr"] == 1e-4
    assert spec["dataset"]["augmentation"]["multi_scales"] == [160, 192, 224, 256]
    load_spec(spec, action="train")
    missing, why = pretrained_weights("hf://test/absent")
    assert missing is None and "rtdetr download hf://test/absent" in why
    scratch = quickstart_spec(tmp_path, 2)
    assert scratch["train"]["pretrained_model_path"] is None and scratch["model"]["hidden_dim"] == 128


def test_a_frozen_fm_checkpoint_by_name_is_the_repositorys_weights_file(offline_hub):
    from safetensors.torch import save_file

    from rtdetr.model.radio import build_radio, load_radio
    from rtdetr.tasks.runner import resolve_hub_names

    tiny = {"width": 32, "depth": 1, "heads": 2, "grid": 8}
    source = build_radio("radio_v2-b", **tiny)
    folder = _snapshot(offline_hub, "test/tiny-radio")
    save_file({f"radio_model.model.{k}": v.contiguous() for k, v in source.state_dict().items()},
              str(folder / "model.safetensors"))  # fmt: skip
    cfg = load_spec({"model": {"frozen_fm": {"enabled": True, "backbone": "radio_v2-b",
                                             "checkpoint": "hf://test/tiny-radio"}}})  # fmt: skip
    resolve_hub_names(cfg)
    assert cfg.model.frozen_fm.checkpoint == str(folder / "model.safetensors")
    target = build_radio("radio_v2-b", **tiny)
    load_radio(target, cfg.model.frozen_fm.checkpoint)
    assert all(torch.equal(target.state_dict()[k], v) for k, v in source.state_dict().items())
