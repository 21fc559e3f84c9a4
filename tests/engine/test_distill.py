"""The distill task: a student trained by the train engine plus the distance of its features to a frozen
teacher's, with TAO's spec and TAO's defects fixed.

The module-level tests use tiny models on one 64 px batch; the runs through the CLI and `fit` (marked
slow) train tiny models for one epoch on the shipped BCCD sample at 128 px.
"""

from __future__ import annotations

import copy
import json
from importlib import resources
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml

import rtdetr
from rtdetr.cli import main
from rtdetr.common.status import StatusLogger, read_status
from rtdetr.config import spec_to_dict
from rtdetr.config.schema import ModelConfig, OptimConfig
from rtdetr.engine.distill import DistillModule, copy_encoder_decoder, load_teacher
from rtdetr.engine.module import DetectionModule
from rtdetr.engine.trainer import build_criterion, build_module, fit
from rtdetr.errors import SpecError, UserError
from rtdetr.loss import Binding
from rtdetr.loss.distill import iou_loss, kl, l1, l2
from rtdetr.model import build_model
from rtdetr.model.checkpoint import (
    ModelMetadata,
    build_from_metadata,
    load_model,
    read_checkpoint,
    save_checkpoint,
)
from synthetic import tiny_spec  # tests/synthetic.py, on the path via tests/conftest.py

TINY = dict(
    backbone="resnet_18", num_queries=10, hidden_dim=32, feat_channels=[32, 32, 32], nheads=4,
    dim_feedforward=64, dec_dim_feedforward=64, dec_layers=2, dn_number=5, expansion=0.5,
)  # fmt: skip


def _tiny(seed: int, **changes) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(num_classes=3, **{**TINY, **changes})


def _settings() -> dict:
    return {"optim": OptimConfig(), "metadata": ModelMetadata(model=dict(TINY), num_classes=3)}


def _distill(student, teacher, bindings, coef: float = 1.0) -> DistillModule:
    module = DistillModule(
        student,
        build_criterion(ModelConfig(), 3),
        teacher=teacher,
        bindings=bindings,
        distillation_loss_coef=coef,
        **_settings(),
    )
    module.logged = {}
    module.log = lambda name, value, **kwargs: module.logged.__setitem__(name, value)  # no trainer here
    return module


def _batch() -> tuple[torch.Tensor, list[dict]]:
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    targets = [
        {"labels": torch.tensor([1, 2]), "boxes": torch.tensor([[0.3, 0.3, 0.2, 0.2], [0.7, 0.6, 0.3, 0.4]])},
        {"labels": torch.tensor([0]), "boxes": torch.tensor([[0.5, 0.5, 0.5, 0.5]])},
    ]
    return images, targets


MIXED = [
    Binding("srcs", "srcs", "IOU", 20.0),
    Binding("encoder.input_proj.0", "encoder.input_proj.0", "L2", 3.0),
    Binding("dsrcs", "dsrcs", "L1", 2.0),
    Binding("backbone", "backbone", "KL", 0.5),
]


# ------------------------------------------------------------------------------- the loss
def test_a_teacher_identical_to_the_student_gives_binding_losses_of_exactly_zero():
    """Computing as the teacher does (eval mode: BatchNorm on running statistics; no autograd and
    frozen parameters: PyTorch's attention takes another kernel for parameters that require
    gradients), the student gives the teacher's values: every binding, feature or hooked module,
    gives exactly 0."""
    student = _tiny(0)
    bindings = [
        *MIXED,
        Binding("dsrcs", "dsrcs", "IOU"),
        Binding("decoder.dec_score_head.1", "decoder.dec_score_head.1", "KL"),
    ]
    module = _distill(student.requires_grad_(False), copy.deepcopy(student), bindings).eval()
    with torch.no_grad():
        module.training_loss(*_batch())
    assert [module.logged[name].item() for name in module.distiller.names] == [0.0] * len(bindings)
    assert module.logged["distill_loss"].item() == 0.0


def test_coefficient_zero_is_train_exactly_and_c_scales_the_term_by_c():
    """TAO never applies distillation_loss_coef. Here coefficient 0 gives train's loss and gradients
    bit for bit (the term is measured, without a graph), and coefficient c adds c x the sum of the
    weighted binding losses. TAO's teacher is in eval mode only because nothing switches it back;
    here its train() keeps it in eval mode, it runs without autograd and its statistics never move."""
    student, teacher = _tiny(0), _tiny(1)
    frozen = {k: v.clone() for k, v in teacher.state_dict().items()}
    images, targets = _batch()
    plain = DetectionModule(copy.deepcopy(student), build_criterion(ModelConfig(), 3), **_settings()).train()
    torch.manual_seed(5)  # the denoising queries' noise
    det = plain.training_loss(images, targets)
    det.backward()
    grads = {n: p.grad for n, p in plain.model.named_parameters() if p.grad is not None}

    sums = {}
    for coef in (0.0, 1.0, 2.5):
        module = _distill(copy.deepcopy(student), teacher, MIXED, coef).train()
        assert module.model.training and not any(m.training for m in module.teacher.modules())
        torch.manual_seed(5)
        loss = module.training_loss(images, targets)
        total = sum(module.logged[name] for name in module.distiller.names)
        sums[coef] = total
        assert torch.equal(module.logged["distill_loss"], coef * total)
        assert torch.equal(loss, det + coef * total)
        loss.backward()
        own = {n: p.grad for n, p in module.model.named_parameters() if p.grad is not None}
        same = [torch.equal(own[n], grads[n]) for n in grads]
        if coef == 0:
            assert torch.equal(loss, det) and own.keys() == grads.keys() and all(same)
        else:  # the term reaches the student's encoder
            assert not torch.equal(
                own["encoder.input_proj.0.0.weight"], grads["encoder.input_proj.0.0.weight"]
            )
    assert sums[0.0] > 0 and torch.equal(sums[0.0], sums[1.0]) and torch.equal(sums[1.0], sums[2.5])
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    assert all(torch.equal(v, frozen[k]) for k, v in teacher.state_dict().items())
    module.eval()
    module.train()
    assert not any(m.training for m in module.teacher.modules())


def test_every_binding_mix_gets_its_own_values():
    """TAO never attaches the hooks of module-path bindings (L1/L2/KL crash) and misaligns them when
    IOU bindings are mixed in: each binding here equals its loss on independently computed values."""
    student, teacher = _tiny(0), _tiny(1)
    module = _distill(student, teacher, MIXED).eval()
    images, targets = _batch()
    module.training_loss(images, targets)
    with torch.no_grad():
        s, t = {}, {}
        student(images, features=s)
        teacher(images, features=t)
        s_backbone, t_backbone = student.backbone(images), teacher.backbone(images)
        expected = [
            20.0 * iou_loss(s["srcs"], t["srcs"], t, targets),
            3.0
            * l2(student.encoder.input_proj[0](s_backbone[0]), teacher.encoder.input_proj[0](t_backbone[0])),
            2.0 * sum(l1(a, b) for a, b in zip(s["dsrcs"], t["dsrcs"])),
            0.5 * sum(kl(a, b) for a, b in zip(s_backbone, t_backbone)),
        ]
    got = [module.logged[name].item() for name in module.distiller.names]
    assert got == pytest.approx([e.item() for e in expected], rel=1e-5)
    assert all(e > 0 for e in expected)


# ------------------------------------------------------------------------------ bindings
def test_unknown_names_are_one_line_with_a_suggestion():
    with pytest.raises(UserError) as info:
        _distill(
            _tiny(0), _tiny(1), [Binding("srcs", "srcs", "IOU"), Binding("encoder.inputproj.0", "srcs", "L2")]
        )
    assert str(info.value) == (
        "distill.bindings[1].teacher_module_name: 'encoder.inputproj.0' is neither srcs nor dsrcs nor a module "
        "of the teacher; did you mean 'encoder.input_proj.0'?"
    )
    with pytest.raises(UserError, match=r"bindings\[0\].student_module_name: 'neck' .* module paths start with "
                       r"backbone, encoder, decoder$"):  # fmt: skip
        _distill(_tiny(0), _tiny(1), [Binding("srcs", "neck", "L1")])


def test_the_dry_forward_reports_shapes_in_one_line_and_changes_nothing():
    module = _distill(
        _tiny(0), _tiny(1, dim_feedforward=128), [Binding(*["encoder.encoder.0.layers.0.linear1"] * 2, "L2")]
    )
    with pytest.raises(UserError) as info:
        module.check_bindings((64, 64))
    assert str(info.value).startswith(
        "distill.bindings[0] (L2, teacher encoder.encoder.0.layers.0.linear1, student "
        "encoder.encoder.0.layers.0.linear1): the teacher gives [2, 4, 128], the student [2, 4, 64]; "
    )
    # the student's decoder layers carry its denoising queries in training: said so
    layers = _distill(_tiny(0), _tiny(1), [Binding(*["decoder.decoder.layers.0"] * 2, "L2")])
    with pytest.raises(
        UserError, match=r"the teacher gives \[2, 10, 32\], the student \[2, \d+, 32\]; .*denoising"
    ):
        layers.check_bindings((64, 64))
    # a passing check leaves weights, BatchNorm statistics, random generator and modes as they were
    module = _distill(_tiny(0), _tiny(1), MIXED).eval()
    state = {k: v.clone() for k, v in module.state_dict().items()}
    rng = torch.get_rng_state()
    module.check_bindings((64, 64))
    assert all(torch.equal(v, module.state_dict()[k]) for k, v in state.items())
    assert torch.equal(torch.get_rng_state(), rng) and not module.training


# --------------------------------------------------------------------------- checkpoints
def test_checkpoints_hold_the_student_only_and_a_resume_keeps_the_loaded_teacher():
    module = _distill(_tiny(0), _tiny(1), MIXED)
    checkpoint = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(checkpoint)
    assert set(checkpoint["state_dict"]) == set(module.saved_state_dict())
    assert checkpoint["state_dict"] and not any(k.startswith("teacher.") for k in checkpoint["state_dict"])
    assert checkpoint["rtdetr"]["num_classes"] == 3
    resumed = _distill(_tiny(2), _tiny(1), MIXED)  # the teacher as loaded from its file
    resumed.on_load_checkpoint(checkpoint)
    resumed.load_state_dict(checkpoint["state_dict"])  # strict, as Lightning restores
    assert all(torch.equal(v, resumed.model.state_dict()[k]) for k, v in module.model.state_dict().items())
    assert all(
        torch.equal(v, resumed.teacher.state_dict()[k]) for k, v in module.teacher.state_dict().items()
    )


def test_teacher_weights_load_from_our_checkpoints_and_tao_s_and_a_misfit_is_one_line(tmp_path):
    source = _tiny(3)
    ours = save_checkpoint(tmp_path / "teacher.pth", source, ModelMetadata(model=dict(TINY), num_classes=3))
    tao = tmp_path / "tao.pth"
    torch.save(
        {"state_dict": {f"model.model.{k}": v for k, v in source.state_dict().items()}, "epoch": 3}, tao
    )
    for path in (ours, tao):
        teacher = _tiny(4)
        load_teacher(teacher, path, dict(TINY), 3)
        assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in source.state_dict().items())
    with pytest.raises(UserError) as info:
        load_teacher(_tiny(5, dec_layers=1), ours, {**TINY, "dec_layers": 1}, 3)
    message = str(info.value)
    assert "\n" not in message and message.startswith(
        f"distill.pretrained_teacher_model_path: {ours} does not fit distill.teacher (0 tensors of another "
        "shape, 0 missing, "
    )
    assert "the checkpoint's model has dec_layers 2 (distill.teacher.dec_layers: 1)" in message
    with pytest.raises(
        UserError, match="does not fit distill.teacher .* num_classes 3 \\(dataset.num_classes: 5\\)"
    ):
        load_teacher(build_model(num_classes=5, **TINY), ours, dict(TINY), 5)


def test_load_teacher_enc_dec_copies_matching_encoder_and_decoder_tensors():
    student, teacher = _tiny(0), _tiny(1, dec_layers=3)
    backbone = {k: v.clone() for k, v in student.backbone.state_dict().items()}
    copied = copy_encoder_decoder(student, teacher)
    theirs = teacher.state_dict()
    own = student.state_dict()
    shared = [k for k in own if k.startswith(("encoder.", "decoder.")) and k in theirs]
    assert copied == len(shared) > 0  # the student's 2 decoder layers take the teacher's first 2
    assert all(torch.equal(own[k], theirs[k]) for k in shared)
    assert all(torch.equal(v, student.backbone.state_dict()[k]) for k, v in backbone.items())


# ----------------------------------------------------------------------------- the spec
def _distill_spec(tmp_path: Path, teacher_path, **model) -> dict:
    spec = tiny_spec(tmp_path, tmp_path / "results")
    spec["model"].update(model)
    spec["dataset"]["augmentation"].update(train_spatial_size=[64, 64], eval_spatial_size=[64, 64])
    spec["distill"] = {
        "teacher": {**spec["model"], "dec_layers": 3},
        "pretrained_teacher_model_path": str(teacher_path),
        "bindings": [{"teacher_module_name": "srcs", "student_module_name": "srcs", "criterion": "IOU"}],
    }
    return spec


def test_build_module_uses_train_s_matcher_and_the_teacher_s_file(tmp_path):
    """TAO's distiller matches with class cost vfl_loss_coef (1); here the train criterion's
    class_cost (2). load_teacher_enc_dec copies the teacher's encoder into the student."""
    spec = _distill_spec(tmp_path, tmp_path / "teacher.pth", load_teacher_enc_dec=True)
    cfg = rtdetr.load_spec(spec, action="distill")
    meta = ModelMetadata(model=spec_to_dict(cfg.distill.teacher), num_classes=cfg.dataset.num_classes)
    torch.manual_seed(9)
    save_checkpoint(tmp_path / "teacher.pth", build_from_metadata(meta), meta)
    data = SimpleNamespace(class_names=None, label_to_category=None, val_gt=None)
    module = build_module(cfg, data, task="distill")
    assert isinstance(module, DistillModule)
    assert (
        cfg.model.vfl_loss_coef == 1.0 and module.criterion.matcher.class_cost == cfg.model.class_cost == 2.0
    )
    stored = read_checkpoint(tmp_path / "teacher.pth")["state_dict"]
    assert all(torch.equal(v, stored["model." + k]) for k, v in module.teacher.model.state_dict().items())
    assert torch.equal(
        module.model.encoder.input_proj[0][0].weight, module.teacher.model.encoder.input_proj[0][0].weight
    )
    assert not isinstance(build_module(cfg, data), DistillModule)  # the train task: no teacher


def test_the_spec_asks_for_bindings_and_a_teacher_of_the_student_s_width(tmp_path):
    spec = _distill_spec(tmp_path, tmp_path / "teacher.pth")
    spec["distill"]["teacher"].update(hidden_dim=32, feat_channels=[32, 32, 32], feat_strides=[8, 16, 32])
    spec["distill"]["bindings"] = []
    with pytest.raises(SpecError) as info:
        rtdetr.load_spec(spec, action="distill")
    lines = info.value.lines()
    assert "spec: distill.bindings: required for distill but not set" in lines
    assert (
        "spec: distill.teacher.hidden_dim: value 32 differs from model.hidden_dim 64: teacher and student must "
        "share it (their features are compared without a projection)"
    ) in lines
    rtdetr.load_spec(spec, action="train")  # train reads no teacher


# ---------------------------------------------------------------- runs on the shipped sample
SAMPLE = Path(str(resources.files("rtdetr") / "assets" / "bccd_sample"))


def _sample_spec(results: Path, split: str) -> dict:
    """The tiny model of tests/synthetic.py on the BCCD sample at 128 px, trained on ``split``."""
    spec = tiny_spec(SAMPLE, results, num_epochs=1)
    spec["dataset"]["train_data_sources"] = [
        {"image_dir": str(SAMPLE / "images"), "json_file": str(SAMPLE / f"{split}.json")}
    ]
    spec["dataset"]["val_data_sources"] = {
        "image_dir": str(SAMPLE / "images"),
        "json_file": str(SAMPLE / "val.json"),
    }
    spec["dataset"]["num_classes"] = 4
    return spec


@pytest.fixture(scope="module")
def sample_teacher(tmp_path_factory) -> dict:
    """A tiny model trained 1 epoch by `rtdetr train` on the sample's 16 val images: the teacher, and
    the train run that distillation with coefficient 0 must reproduce."""
    root = tmp_path_factory.mktemp("teacher")
    spec = _sample_spec(root / "results", "val")
    path = root / "train.yaml"
    path.write_text(yaml.safe_dump(spec))
    assert main(["-q", "train", "-e", str(path)]) == 0
    return {"spec": spec, "checkpoint": root / "results" / "train" / "model_epoch_000.pth"}


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return read_checkpoint(path)["state_dict"]


@pytest.mark.slow
def test_distill_through_the_cli_then_evaluate_and_export(sample_teacher, tmp_path, cli):
    """`rtdetr distill` of a smaller student (1 decoder layer) on the 48 training images, multi-scale,
    with EMA: the checkpoints hold the student only and evaluate and export; status.json and
    metrics.csv carry each binding's loss and the whole term."""
    spec = _sample_spec(tmp_path / "results", "train")
    spec["model"].update(dec_layers=1, dim_feedforward=64)
    spec["dataset"]["augmentation"]["multi_scales"] = [96, 128]
    spec["train"].update(enable_ema=True, ema={"decay": 0.5})
    spec["distill"] = {
        "teacher": sample_teacher["spec"]["model"],
        "pretrained_teacher_model_path": str(sample_teacher["checkpoint"]),
        "bindings": [{"teacher_module_name": b.teacher, "student_module_name": b.student, "criterion": b.criterion,
                      "weight": b.weight} for b in MIXED],
    }  # fmt: skip
    path = tmp_path / "distill.yaml"
    path.write_text(yaml.safe_dump(spec))
    result = cli("-q", "distill", "-e", path)
    assert result.code == 0, result.err
    results = tmp_path / "results" / "distill"
    for name in ("model_epoch_000.pth", "model_epoch_000-EMA.pth"):
        state = _weights(results / name)
        assert state and not [k for k in state if "teacher" in k]
        assert load_model(results / name).decoder.decoder.layers.__len__() == 1
    epoch = next(s for s in read_status(results) if s.get("epoch") == 0)["kpi"]
    names = [f"distill_{i}_{b.criterion}_{b.student}" for i, b in enumerate(MIXED)]
    assert {"train_loss", "distill_loss", "val_mAP", *names} <= set(epoch)
    assert epoch["distill_loss"] == pytest.approx(sum(epoch[n] for n in names), rel=1e-5)
    assert 0 < epoch["distill_loss"] < epoch["train_loss"]
    header = (results / "logs" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"distill_loss_step", "distill_loss_epoch", *(f"{n}_step" for n in names)} <= set(header)

    checkpoint = results / "model_epoch_000.pth"
    evaluate = cli(
        "-q", "evaluate", "-e", path, f"evaluate.checkpoint={checkpoint}",
        f"dataset.test_data_sources.image_dir={SAMPLE / 'images'}",
        f"dataset.test_data_sources.json_file={SAMPLE / 'val.json'}",
    )  # fmt: skip
    assert evaluate.code == 0, evaluate.err
    stats = json.loads((tmp_path / "results" / "evaluate" / "results.json").read_text())["stats"]
    assert 0 <= stats["mAP50"] <= 1
    onnx = tmp_path / "student.onnx"
    export = cli(
        "-q", "export", "-e", path, f"export.checkpoint={checkpoint}", f"export.onnx_file={onnx}",
        "export.input_width=128", "export.input_height=128",
    )  # fmt: skip
    assert export.code == 0, export.err
    assert onnx.stat().st_size > 100_000


@pytest.mark.slow
def test_coefficient_zero_distill_reproduces_the_train_run_and_resumes(sample_teacher, tmp_path):
    """The same spec as the teacher's train run, distilled with coefficient 0, ends with bit-identical
    weights (same engine: data, seeds, steps); after its validation epoch the teacher is in eval mode
    without gradients. Run again with 2 epochs, it resumes from its checkpoint with the teacher's file."""
    spec = copy.deepcopy(sample_teacher["spec"])
    spec["results_dir"] = str(tmp_path / "results")
    spec["model"]["distillation_loss_coef"] = 0.0
    spec["distill"] = {
        "teacher": spec["model"],
        "pretrained_teacher_model_path": str(sample_teacher["checkpoint"]),
        "bindings": [{"teacher_module_name": "srcs", "student_module_name": "srcs", "criterion": "IOU"}],
    }
    results = tmp_path / "results" / "distill"
    results.mkdir(parents=True)
    module = fit(rtdetr.load_spec(spec, action="distill"), results, StatusLogger(results), task="distill")
    trained = _weights(sample_teacher["checkpoint"])
    distilled = _weights(results / "model_epoch_000.pth")
    assert distilled.keys() == trained.keys()
    assert all(torch.equal(distilled[k], trained[k]) for k in trained)
    assert not any(m.training for m in module.teacher.modules())
    assert all(p.grad is None for p in module.teacher.parameters())

    resumed = fit(
        rtdetr.load_spec(spec, ["train.num_epochs=2"], action="distill"),
        results,
        StatusLogger(results),
        task="distill",
    )
    assert any(s["message"].startswith("Resuming training from") for s in read_status(results))
    assert _weights(results / "model_epoch_001.pth").keys() == trained.keys()
    assert all(torch.equal(v, trained["model." + k]) for k, v in resumed.teacher.model.state_dict().items())


@pytest.mark.slow
def test_two_ddp_processes_in_bf16(small_squares, tmp_path):
    """Distill runs on the train engine's hardware paths: 2 gloo processes with bf16 autocast (the
    teacher, a submodule without trainable parameters, inside DDP), then evaluates its checkpoint."""
    import os
    import subprocess
    import sys

    spec = tiny_spec(small_squares, tmp_path / "results", num_epochs=1)
    cfg = rtdetr.load_spec(spec, action="train")
    meta = ModelMetadata(model=spec_to_dict(cfg.model), num_classes=cfg.dataset.num_classes)
    torch.manual_seed(3)
    teacher = save_checkpoint(tmp_path / "teacher.pth", build_from_metadata(meta), meta)
    spec["train"].update(precision="bf16", num_gpus=2, gpu_ids=[0, 1])
    spec["distill"] = {
        "teacher": spec["model"],
        "pretrained_teacher_model_path": str(teacher),
        "bindings": [
            {"teacher_module_name": "srcs", "student_module_name": "srcs", "criterion": "IOU", "weight": 20},
            {"teacher_module_name": "dsrcs", "student_module_name": "dsrcs", "criterion": "L2"},
        ],
    }
    path = tmp_path / "distill.yaml"
    path.write_text(yaml.safe_dump(spec))
    run = subprocess.run(
        [sys.executable, "-m", "rtdetr.cli", "-q", "distill", "-e", str(path)],
        capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    results = tmp_path / "results" / "distill"
    status = read_status(results)
    assert status[-1]["status"] == "SUCCESS"
    epoch = next(s for s in status if s.get("epoch") == 0)["kpi"]
    assert epoch["distill_loss"] > 0 and epoch["distill_1_L2_dsrcs"] > 0
    state = _weights(results / "model_epoch_000.pth")
    assert state and not [k for k in state if "teacher" in k]
    assert main(["-q", "evaluate", "-e", str(path), f"evaluate.checkpoint={results / 'model_epoch_000.pth'}",
                 f"dataset.test_data_sources.image_dir={small_squares / 'images'}",
                 f"dataset.test_data_sources.json_file={small_squares / 'val.json'}",
                 "train.num_gpus=1", "train.gpu_ids=[0]"]) == 0  # fmt: skip
