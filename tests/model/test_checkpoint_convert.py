"""Checkpoints with metadata, `rtdetr.load_model`, `rtdetr convert` (transformers and original code)
and `rtdetr info`."""

from __future__ import annotations

import dataclasses
import inspect

import pytest
import torch
from transformers import RTDetrConfig, RTDetrForObjectDetection, RTDetrResNetConfig  # noqa: E402

from rtdetr.cli import main
from rtdetr.config.schema import ModelConfig
from rtdetr.errors import UserError
from rtdetr.model import build_model
from rtdetr.model.checkpoint import ModelMetadata, load_model, save_checkpoint

# Fields of the model section that are not architecture: they configure the loss, training,
# distillation or post-processing, and are read there.
NOT_ARCHITECTURE = {
    "num_select", "vfl_loss_coef", "bbox_loss_coef", "giou_loss_coef", "alpha", "gamma", "class_cost",
    "bbox_cost", "giou_cost", "clip_max_norm", "loss_types", "backbone_names", "linear_proj_names",
    "distillation_loss_coef", "load_teacher_enc_dec", "frozen_fm",
}  # fmt: skip


def test_every_architecture_field_reaches_build_model():
    params = set(inspect.signature(build_model).parameters)
    fields = {f.name for f in dataclasses.fields(ModelConfig)}
    assert fields - NOT_ARCHITECTURE <= params, fields - NOT_ARCHITECTURE - params


def _tiny_hf(num_labels: int = 3) -> RTDetrForObjectDetection:
    backbone = RTDetrResNetConfig(
        depths=[2, 2, 2, 2], layer_type="basic", hidden_sizes=[64, 128, 256, 512], out_indices=[2, 3, 4]
    )
    config = RTDetrConfig(
        backbone_config=backbone, encoder_in_channels=[128, 256, 512], encoder_hidden_dim=64, d_model=64,
        decoder_in_channels=[64, 64, 64], encoder_ffn_dim=128, decoder_ffn_dim=128, encoder_attention_heads=4,
        decoder_attention_heads=4, num_queries=30, decoder_layers=2, hidden_expansion=0.5,
        freeze_backbone_batch_norms=False, num_labels=num_labels, disable_custom_kernels=True, eval_size=None,
        id2label={i: f"class_{i}" for i in range(num_labels)},
    )  # fmt: skip
    return RTDetrForObjectDetection(config)


def test_convert_hf_folder_reproduces_transformers(tmp_path, randomize, capsys):
    torch.manual_seed(0)
    hf = randomize(_tiny_hf(), seed=3).eval()
    with torch.no_grad():
        hf.model.enc_output[0].bias.zero_()
    hf.save_pretrained(tmp_path / "hf")
    out = tmp_path / "converted.pth"
    assert main(["-q", "convert", "--hf", str(tmp_path / "hf"), "-o", str(out)]) == 0

    model = load_model(out)
    assert not model.training
    assert model.metadata.num_classes == 3
    assert model.metadata.class_names == ["class_0", "class_1", "class_2"]
    assert model.metadata.model["pe_order"] == "h_major"
    hf, model = hf.double(), model.double()
    for size in [(320, 320), (256, 384)]:
        x = torch.rand(2, 3, *size, dtype=torch.float64)
        with torch.no_grad():
            ref, got = hf(pixel_values=x), model(x)
        assert (ref.logits - got["pred_logits"]).abs().max() <= 1e-4
        assert (ref.pred_boxes - got["pred_boxes"]).abs().max() <= 1e-4


def test_convert_hf_folder_missing_weights(tmp_path, capsys):
    (tmp_path / "config.json").write_text("{}")
    assert main(["convert", "--hf", str(tmp_path), "-o", str(tmp_path / "x.pth")]) == 2
    err = capsys.readouterr().err
    assert "model.safetensors is missing" in err and "Traceback" not in err


@pytest.fixture(scope="module")
def original_r18(tmp_path_factory):
    """A checkpoint laid out as the original RT-DETR code saves it (EMA weights, 'module.' prefix)."""
    torch.manual_seed(0)
    model = build_model(num_classes=80, backbone="resnet_18vd", expansion=0.5, dec_layers=3).eval()
    path = tmp_path_factory.mktemp("orig") / "rtdetr_r18vd.pth"
    state = {f"module.{k}": v for k, v in model.state_dict().items()}
    torch.save({"ema": {"module": state, "updates": 10}, "last_epoch": 71}, path)
    return model, path


def test_convert_original_checkpoint(original_r18, tmp_path, capsys):
    source, path = original_r18
    out = tmp_path / "r18.pth"
    assert main(["-q", "convert", "--original", str(path), "--preset", "r18vd", "-o", str(out)]) == 0
    model = load_model(out)
    assert model.metadata.class_names[0] == "person" and model.metadata.category_ids[-1] == 90
    x = torch.rand(1, 3, 320, 320)
    with torch.no_grad():
        ref, got = source(x), model(x)
    assert torch.equal(ref["pred_logits"], got["pred_logits"])
    assert torch.equal(ref["pred_boxes"], got["pred_boxes"])


def test_convert_original_with_wrong_preset_lists_keys(original_r18, tmp_path, capsys):
    _, path = original_r18
    code = main(["convert", "--original", str(path), "--preset", "r34vd", "-o", str(tmp_path / "x.pth")])
    err = capsys.readouterr().err
    assert code == 2
    assert "weights do not fit the model section" in err and "missing: " in err
    assert "backbone.res_layers.0.blocks.2" in err
    assert not (tmp_path / "x.pth").exists()


def _tiny_meta(**model) -> ModelMetadata:
    section = {
        **dataclasses.asdict(ModelConfig()),
        "backbone": "resnet_18vd", "hidden_dim": 64, "feat_channels": [64, 64, 64], "nheads": 4,
        "dim_feedforward": 128, "dec_dim_feedforward": 128, "dec_layers": 2, "num_queries": 20,
        "expansion": 0.5, **model,
    }  # fmt: skip
    return ModelMetadata(model=section, num_classes=4, class_names=list("abcd"), input_size=[320, 320])


def test_load_model_rebuilds_from_the_file_alone(tmp_path):
    from rtdetr.model.checkpoint import build_from_metadata

    meta = _tiny_meta()
    torch.manual_seed(1)
    model = build_from_metadata(meta).eval()
    path = save_checkpoint(tmp_path / "m.pth", model, meta)
    loaded = load_model(path)
    assert loaded.metadata.class_names == ["a", "b", "c", "d"]
    assert loaded.metadata.toolkit_version
    x = torch.rand(1, 3, 320, 320)
    with torch.no_grad():
        assert torch.equal(model(x)["pred_logits"], loaded(x)["pred_logits"])
    out = loaded(x)
    assert out["pred_logits"].shape == (1, 20, 4) and out["pred_boxes"].shape == (1, 20, 4)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "checkpoint not found"),
        (b"not a checkpoint at all", "not a readable checkpoint"),
        ({"state_dict": {}}, "not an rtdetr checkpoint"),
    ],
)
def test_load_model_bad_files(tmp_path, content, message):
    path = tmp_path / "bad.pth"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        torch.save(content, path)
    with pytest.raises(UserError, match=message) as info:
        load_model(path)
    assert "\n" not in str(info.value)


def test_truncated_checkpoint_is_a_clear_error(tmp_path):
    from rtdetr.model.checkpoint import build_from_metadata

    meta = _tiny_meta()
    path = save_checkpoint(tmp_path / "m.pth", build_from_metadata(meta), meta)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="not a readable checkpoint"):
        load_model(path)


def test_info_reports_parameters_and_gflops(tmp_path, capsys):
    from rtdetr.model.checkpoint import build_from_metadata

    meta = _tiny_meta()
    model = build_from_metadata(meta)
    path = save_checkpoint(tmp_path / "m.pth", model, meta)
    assert main(["-q", "info", "--checkpoint", str(path)]) == 0
    out = capsys.readouterr().out
    params = sum(p.numel() for p in model.parameters())
    assert f"parameters: {params / 1e6:.2f} M" in out
    gflops = float(out.split("GFLOPs at 320x320: ")[1].split()[0])
    assert gflops > 1.0


def test_info_r18vd_matches_published_size(tmp_path, capsys):
    spec = tmp_path / "s.yaml"
    spec.write_text("model:\n  backbone: resnet_18vd\n  expansion: 0.5\n  dec_layers: 3\n")
    assert main(["-q", "info", "-e", str(spec)]) == 0
    out = capsys.readouterr().out
    params = float(out.split("parameters: ")[1].split()[0])
    gflops = float(out.split("GFLOPs at 640x640: ")[1].split()[0])
    assert 19.5 < params < 20.5  # published: 20M
    assert 57 < gflops < 63  # published: 60 GFLOPs
