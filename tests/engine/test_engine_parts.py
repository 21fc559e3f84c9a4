"""Engine parts in isolation: parameter groups, schedule, EMA, hardware, pretrained, freeze, sampling."""

from __future__ import annotations

import types

import pytest
import torch
from torch import nn

from rtdetr.config import load_spec
from rtdetr.cpu.optim_step import in_place_variant
from rtdetr.data.sampling import EpochBatchSampler, KeyedDataset
from rtdetr.engine.ema import EMA
from rtdetr.engine.hardware import resolve_hardware
from rtdetr.engine.model_setup import (
    enable_activation_checkpointing,
    freeze,
    load_pretrained_model,
    use_channels_last,
)
from rtdetr.engine.optim import StepSchedule, base_lr, build_optimizer, param_groups
from rtdetr.errors import UserError
from rtdetr.model import build_model

TINY = dict(
    num_classes=3, backbone="resnet_18vd", hidden_dim=32, feat_channels=[32, 32, 32], nheads=4,
    dim_feedforward=64, dec_dim_feedforward=64, dec_layers=2, num_queries=10, dn_number=4, expansion=0.5,
)  # fmt: skip


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model(**TINY)


def test_param_groups_apply_lr_backbone_linear_proj_and_no_decay(model):
    groups = {g["name"]: g for g in param_groups(model, lr=1e-3, lr_backbone=1e-5, weight_decay=1e-4,
                                                  lr_linear_proj_mult=0.1)}  # fmt: skip
    names = {id(p): n for n, p in model.named_parameters()}
    backbone = {
        names[id(p)] for g in groups.values() if g["name"].startswith("backbone") for p in g["params"]
    }
    trainable_backbone = {
        n for n, p in model.named_parameters() if n.startswith("backbone.") and p.requires_grad
    }
    assert backbone == trainable_backbone and backbone  # lr_backbone really applies (TAO: matches nothing)
    assert groups["backbone"]["lr"] == 1e-5
    proj = {names[id(p)] for name in ("linear_proj", "linear_proj_no_decay") for p in groups[name]["params"]}
    assert proj and all("sampling_offsets" in n for n in proj)
    assert groups["linear_proj"]["lr"] == pytest.approx(1e-4)
    no_decay = {names[id(p)] for p in groups["base_no_decay"]["params"]}
    assert groups["base_no_decay"]["weight_decay"] == 0.0 and groups["base"]["weight_decay"] == 1e-4
    assert any("norm" in n for n in no_decay) and any(n.endswith(".bias") for n in no_decay)
    assert all(not n.endswith("bias") for p in groups["base"]["params"] for n in [names[id(p)]])
    assert any(n.endswith("in_proj_bias") for n in no_decay)
    # a module that holds a norm (ConvNormLayer) is no norm: its convolution keeps weight decay
    conv_weights = {n for n, m in model.named_modules() if type(m).__name__ == "ConvNormLayer"}
    conv_weights = {f"{n}.conv.weight" for n in conv_weights if not n.startswith("backbone.")}
    assert conv_weights and conv_weights <= {names[id(p)] for p in groups["base"]["params"]}
    total = sum(len(g["params"]) for g in groups.values())
    assert total == sum(1 for p in model.parameters() if p.requires_grad)
    # the logged lr is train.optim.lr's, whatever order the groups come in
    opt = build_optimizer(
        list(groups.values())[::-1], optimizer="AdamW", lr=1e-3, momentum=0.9, weight_decay=0
    )
    assert opt.param_groups[0]["lr"] != 1e-3 and base_lr(opt) == 1e-3


def test_backbone_names_narrow_the_backbone_group_and_typos_are_refused(model):
    def backbone_group(names):
        groups = param_groups(model, lr=1e-3, lr_backbone=1e-5, weight_decay=0, backbone_names=names)
        by_id = {id(p): n for n, p in model.named_parameters()}
        return {by_id[id(p)] for g in groups if g["name"] == "backbone" for p in g["params"]}

    everything = backbone_group(["backbone.0"])  # TAO's spelling of the whole backbone
    assert everything == backbone_group(["backbone"]) and len(everything) > 10
    last_stage = backbone_group(["backbone.0.res_layers.3"])
    assert last_stage and last_stage < everything
    assert all(n.startswith("backbone.res_layers.3.") for n in last_stage)
    with pytest.raises(UserError, match="model.backbone_names: 'backbone.1' matches no parameter"):
        backbone_group(["backbone.1"])


@pytest.mark.parametrize("kind", ["AdamW", "SGD"])
def test_optimizers(model, kind):
    groups = param_groups(model, lr=1e-3, lr_backbone=1e-4, weight_decay=1e-4)
    opt = build_optimizer(groups, optimizer=kind, lr=1e-3, momentum=0.8, weight_decay=1e-4)
    assert type(opt).__name__ == kind
    key = "betas" if kind == "AdamW" else "momentum"
    assert opt.param_groups[0][key] == ((0.8, 0.999) if kind == "AdamW" else 0.8)
    assert opt.param_groups[0]["fused"]  # torch's fused kernel on the CPU
    # the same update as torch's default implementation
    torch.manual_seed(0)
    weights = [torch.randn(5, 3), torch.randn(7)]
    runs = []
    for fused in (True, False):
        params = [nn.Parameter(w.clone()) for w in weights]
        groups = [
            {"params": params[:1], "lr": 1e-3, "weight_decay": 1e-4},
            {"params": params[1:], "lr": 1e-4},
        ]
        if fused:
            opt = build_optimizer(groups, optimizer=kind, lr=1e-3, momentum=0.8, weight_decay=1e-4)
        else:
            opt = getattr(torch.optim, kind)(groups, lr=1e-3, weight_decay=1e-4, foreach=False,
                                             **({"betas": (0.8, 0.999)} if kind == "AdamW" else {"momentum": 0.8}))  # fmt: skip
        for step in range(3):
            for i, p in enumerate(params):
                p.grad = torch.full_like(p, 0.1 * (step + 1) * (i + 1)) + p.detach()
            opt.step()
        runs.append(params)
    for a, b, w in zip(*runs, weights):
        assert not torch.allclose(a, w) and torch.allclose(a, b, atol=1e-7)


@pytest.mark.parametrize("kind", ["AdamW", "SGD"])
def test_fused_step_updates_channels_last_weights_in_place(kind):
    """The fused CPU step on channels-last weights: the same update to the bit as torch's own fused
    optimizer, no copy of any tensor, and the usual shapes and layouts between steps (a closure
    that runs the backward, as Lightning passes one, sees them too)."""
    from torch.profiler import profile

    runs = []
    for ours in (True, False):
        torch.manual_seed(0)
        net = nn.Sequential(nn.Conv2d(8, 16, 3), nn.Conv2d(16, 4, 1)).to(memory_format=torch.channels_last)
        groups = [{"params": list(net.parameters())}]
        extra = {"betas": (0.8, 0.999)} if kind == "AdamW" else {"momentum": 0.8}
        if ours:
            opt = build_optimizer(
                groups, optimizer=kind, lr=1e-2, momentum=0.8, weight_decay=1e-4, variant=in_place_variant
            )
        else:
            opt = getattr(torch.optim, kind)(groups, lr=1e-2, weight_decay=1e-4, fused=True, **extra)
        x = torch.rand(2, 8, 9, 9).contiguous(memory_format=torch.channels_last)

        def closure(opt=opt, net=net, x=x):
            opt.zero_grad()
            assert net[0].weight.shape == (16, 8, 3, 3)  # the usual shape while the model runs
            loss = net(x).square().mean()
            loss.backward()
            return loss

        for _ in range(3):
            opt.step(closure)
        closure()
        with profile() as prof:  # the update alone
            opt.step()
        copies = [e.key for e in prof.key_averages() if e.key in ("aten::contiguous", "aten::clone")]
        runs.append((net, opt, copies))
    (ours, ours_opt, ours_copies), (ref, ref_opt, ref_copies) = runs
    assert ref_copies and not ours_copies  # torch's kernel copies channels-last gradients; ours does not
    for a, b in zip(ours.parameters(), ref.parameters()):
        assert torch.equal(a, b) and a.shape == b.shape and a.stride() == b.stride()
    weight = ours[0].weight
    for key, value in ours_opt.state[weight].items():
        if value.dim() == 4:
            assert value.shape == weight.shape and value.is_contiguous(memory_format=torch.channels_last), key
            assert torch.equal(value, ref_opt.state[ref[0].weight][key])
    assert ours_opt.state_dict()["state"][0].keys() == ref_opt.state_dict()["state"][0].keys()


def test_step_schedule_multistep_steplr_warmup():
    multi = StepSchedule(steps_per_epoch=10, kind="MultiStep", milestones=[2, 4], decay=0.1, warmup_steps=5)
    assert [multi(s) for s in (0, 4, 5, 19, 20, 39, 40)] == pytest.approx(
        [0.2, 1.0, 1.0, 1.0, 0.1, 0.1, 0.01]
    )
    step = StepSchedule(steps_per_epoch=10, kind="StepLR", step_size=3, decay=0.5)
    assert [step(s) for s in (0, 29, 30, 60)] == pytest.approx([1.0, 1.0, 0.5, 0.25])
    # resumed at epoch 1 (step 10) with twice as many steps per epoch: the drop at epoch 2 comes at
    # step 30, not at step 20 where the first run's 10 steps per epoch would put it
    multi.start_epoch(10, 1, 20)
    assert [multi(s) for s in (10, 29, 30, 49, 50)] == pytest.approx([1.0, 1.0, 0.1, 0.1, 0.1])


def test_ema_update_formula_and_swap():
    net = nn.Linear(2, 2)
    module = types.SimpleNamespace(model=net, device=torch.device("cpu"))
    ema = EMA(decay=0.9, every_n_steps=2)
    ema.on_fit_start(None, module)
    start = net.weight.detach().clone()
    with torch.no_grad():
        net.weight.add_(1.0)
    ema.on_train_batch_end(types.SimpleNamespace(global_step=1), module)  # not an update step
    assert torch.equal(ema.weights["weight"], start)
    ema.on_train_batch_end(types.SimpleNamespace(global_step=2), module)
    assert torch.allclose(ema.weights["weight"], 0.9 * start + 0.1 * (start + 1.0))
    with ema.swapped(module):
        assert torch.allclose(net.weight, ema.weights["weight"])
    assert torch.allclose(net.weight, start + 1.0)
    restored = EMA()
    restored.load_state_dict(ema.state_dict())
    restored.on_fit_start(None, module)
    assert torch.equal(restored.weights["weight"], ema.weights["weight"])


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["train.precision=fp16"], "fp16 needs a CUDA GPU"),
        (["train.distributed_strategy=fsdp"], "fsdp needs CUDA GPUs"),
    ],
)
def test_hardware_errors_on_cpu(overrides, message):
    with pytest.raises(UserError, match=message):
        resolve_hardware(load_spec({}, overrides).train, cuda_available=False)


def test_hardware_mapping():
    cpu = resolve_hardware(
        load_spec({}, ["train.num_gpus=2", "train.gpu_ids=[0,1]"]).train, cuda_available=False
    )
    assert (cpu.accelerator, cpu.devices, cpu.world_size, cpu.sync_batchnorm) == ("cpu", 2, 2, False)
    assert type(cpu.strategy).__name__ == "DDPStrategy"
    gpu = resolve_hardware(
        load_spec({}, ["train.num_gpus=2", "train.gpu_ids=[2,3]", "train.precision=bf16"]).train,
        cuda_available=True,
    )
    assert (gpu.accelerator, gpu.devices, gpu.precision, gpu.sync_batchnorm) == (
        "cuda",
        [2, 3],
        "bf16-mixed",
        True,
    )
    one = resolve_hardware(load_spec({}).train, cuda_available=False)
    assert (one.strategy, one.precision) == ("auto", "32-true")


def test_pretrained_model_partial_load_reports_skips(tmp_path, model):
    other = build_model(**{**TINY, "num_classes": 5})
    torch.save({"state_dict": {f"model.{k}": v for k, v in other.state_dict().items()}}, tmp_path / "p.pth")
    target = build_model(**TINY)
    report = load_pretrained_model(target, tmp_path / "p.pth")
    assert report.mismatched and all(
        "score_head" in m or "denoising_class_embed" in m for m in report.mismatched
    )
    assert torch.equal(
        target.state_dict()["backbone.conv1.conv1_1.conv.weight"],
        other.state_dict()["backbone.conv1.conv1_1.conv.weight"],
    )
    with pytest.raises(UserError, match="file not found"):
        load_pretrained_model(target, tmp_path / "missing.pth")


def test_pretrained_class_rows_are_mapped_by_name(tmp_path):
    """An 80-class COCO-style checkpoint fine-tuned on classes with COCO names: the rows of the
    matching names are copied into every class-sized tensor, the others keep their initialisation."""
    from rtdetr.model.checkpoint import ModelMetadata, save_checkpoint

    section = {k: v for k, v in TINY.items() if k != "num_classes"}
    coco = ["person", "bicycle", "car", "traffic light", "dog"]
    torch.manual_seed(1)
    source = build_model(**{**TINY, "num_classes": 5})
    save_checkpoint(
        tmp_path / "coco.pth", source, ModelMetadata(model=section, num_classes=5, class_names=coco)
    )
    torch.manual_seed(2)
    target = build_model(**{**TINY, "num_classes": 4})
    before = {k: v.clone() for k, v in target.state_dict().items()}
    ours = ["Dog", "class_1", "traffic_light", "zebra"]  # class_1: an unnamed logit index matches nothing
    report = load_pretrained_model(target, tmp_path / "coco.pth", class_names=ours)
    theirs, after = source.state_dict(), target.state_dict()
    class_tensors = [k for k in after if "score_head" in k or "denoising_class_embed" in k]
    assert class_tensors and sorted(report.mapped) == sorted(class_tensors)
    assert not report.mismatched
    for name in class_tensors:
        assert torch.equal(after[name][0], theirs[name][4])  # Dog <- dog
        assert torch.equal(after[name][2], theirs[name][3])  # traffic_light <- traffic light
        assert torch.equal(after[name][1], before[name][1]) and torch.equal(after[name][3], before[name][3])
    embed = "decoder.denoising_class_embed.weight"
    assert torch.equal(after[embed][-1], theirs[embed][-1])  # the mask token
    plain = build_model(**{**TINY, "num_classes": 4})
    unmatched = load_pretrained_model(plain, tmp_path / "coco.pth", class_names=["a", "b", "c", "d"])
    assert not unmatched.mapped and len(unmatched.mismatched) == len(class_tensors)


def test_freeze_and_activation_checkpointing():
    net = build_model(**TINY)
    freeze(net, ["encoder"])
    assert not any(p.requires_grad for p in net.encoder.parameters())
    assert any(p.requires_grad for p in net.decoder.parameters())
    with pytest.raises(UserError, match="no submodule named"):
        freeze(net, ["neck"])
    torch.manual_seed(0)
    x = torch.rand(1, 3, 64, 64)
    targets = [{"labels": torch.tensor([1]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2]])}]
    plain = build_model(**TINY).train()
    ckpt = build_model(**TINY).train()
    ckpt.load_state_dict(plain.state_dict())
    assert enable_activation_checkpointing(ckpt) == 1 + 2  # one encoder layer, two decoder layers
    assert list(dict(ckpt.named_parameters())) == list(dict(plain.named_parameters()))
    torch.manual_seed(1)
    a = plain(x, targets)["pred_logits"].sum()
    torch.manual_seed(1)
    b = ckpt(x, targets)["pred_logits"].sum()
    a.backward()
    b.backward()
    assert torch.allclose(a, b)
    g1 = dict(plain.named_parameters())["decoder.decoder.layers.0.linear1.weight"].grad
    g2 = dict(ckpt.named_parameters())["decoder.decoder.layers.0.linear1.weight"].grad
    assert torch.allclose(g1, g2, atol=1e-6)


def test_sampler_shards_global_batches_across_ranks(monkeypatch):
    import rtdetr.data.sampling as sampling

    single = list(EpochBatchSampler(20, 4, shuffle=True, drop_last=True, seed=3, scales=[320, 352]))
    shards = []
    for rank in (0, 1):
        monkeypatch.setattr(sampling, "_rank_world", lambda w, r=rank: (r, 2))
        shards.append(
            list(
                EpochBatchSampler(
                    20, 2, shuffle=True, drop_last=True, seed=3, scales=[320, 352], world_size=2
                )
            )
        )
    monkeypatch.undo()
    assert len(single) == len(shards[0]) == len(shards[1]) == 5
    for b, batch in enumerate(single):
        assert shards[0][b] + shards[1][b] == batch  # same samples, same scale, same epoch
    sampler = EpochBatchSampler(20, 4, shuffle=True, drop_last=True, seed=3)
    sampler.sampler.set_epoch(1)  # the hook Lightning calls
    assert [k[1] for batch in sampler for k in batch] == [1] * 20
    assert list(sampler) != single


def test_eval_sampler_pads_last_batch_for_ranks(monkeypatch):
    import rtdetr.data.sampling as sampling

    monkeypatch.setattr(sampling, "_rank_world", lambda w: (1, 2))
    batches = list(EpochBatchSampler(5, 2, shuffle=False, drop_last=False, world_size=2))
    assert [[k[0] for k in b] for b in batches] == [[2, 3], [1, 2]]  # the last global batch [4, pad 0, 1, 2]
    monkeypatch.setattr(sampling, "_rank_world", lambda w: (0, 1))
    batches = list(EpochBatchSampler(5, 2, shuffle=False, drop_last=False))
    assert [[k[0] for k in b] for b in batches] == [[0, 1], [2, 3], [4]]  # one process: no repeats


def test_channels_last_training_computes_the_same_loss_and_gradients():
    torch.manual_seed(0)
    plain = build_model(**TINY).train()
    nhwc = build_model(**TINY).train()
    nhwc.load_state_dict(plain.state_dict())
    use_channels_last(nhwc)
    conv = nhwc.backbone.conv1.conv1_1.conv.weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    assert list(dict(nhwc.named_parameters())) == list(dict(plain.named_parameters()))
    x = torch.rand(2, 3, 64, 64)
    targets = [{"labels": torch.tensor([1]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2]])}] * 2
    losses = []
    for net, images in ((plain, x), (nhwc, x.contiguous(memory_format=torch.channels_last))):
        torch.manual_seed(1)
        out = net(images, targets)
        loss = out["pred_logits"].sum() + out["pred_boxes"].sum()
        loss.backward()
        losses.append(loss)
    assert torch.allclose(*losses, rtol=1e-5)
    grads = [{k: p.grad for k, p in net.named_parameters() if p.grad is not None} for net in (plain, nhwc)]
    assert grads[0].keys() == grads[1].keys()
    # the same sums in another order, amplified through training-mode BatchNorm (measured: at most
    # 4e-3 of a tensor's own norm, for tensors whose gradient is 0.4% of the largest)
    top = max(float(g.norm()) for g in grads[0].values())
    for name, g in grads[0].items():
        assert float((g - grads[1][name]).norm()) <= 1e-3 * float(g.norm()) + 1e-4 * top, name


def test_latest_checkpoint_follows_the_link_else_the_highest_epoch(tmp_path):
    from rtdetr.engine.callbacks import LATEST, latest_checkpoint

    assert latest_checkpoint(tmp_path) is None
    for name in (
        "model_epoch_000.pth",
        "model_epoch_002.pth",
        "model_epoch_010.pth",
        "model_epoch_011-EMA.pth",
    ):
        (tmp_path / name).write_bytes(b"x")
    # no link (e.g. killed between a checkpoint and its link): the highest epoch, never an EMA twin
    assert latest_checkpoint(tmp_path) == tmp_path / "model_epoch_010.pth"
    (tmp_path / LATEST).symlink_to("model_epoch_002.pth")
    assert latest_checkpoint(tmp_path) == (tmp_path / "model_epoch_002.pth").resolve()


def test_ctrl_c_is_deferred_to_the_next_step_and_a_second_one_stops_at_once():
    import os
    import signal

    from rtdetr.engine.callbacks import DeferredInterrupt

    before = signal.getsignal(signal.SIGINT)
    interrupt = DeferredInterrupt()
    with interrupt:
        interrupt.check()  # nothing yet
        os.kill(os.getpid(), signal.SIGINT)  # e.g. in the middle of a checkpoint write: no exception here
        for _ in range(1000):  # bytecode boundaries where Python runs the handler
            pass
        assert interrupt.requested
        with pytest.raises(KeyboardInterrupt):
            interrupt.on_train_batch_start(None, None, None, 0)  # the next step boundary
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)  # the second Ctrl+C
            for _ in range(1000):
                pass
    assert signal.getsignal(signal.SIGINT) is before


def test_validation_leaves_unreadable_images_out_of_loss_and_scores(model, monkeypatch, caplog, tmp_path):
    from rtdetr.engine.module import DetectionModule
    from rtdetr.engine.trainer import build_criterion
    from rtdetr.model.checkpoint import ModelMetadata

    spec = load_spec({})
    module = DetectionModule(
        model, build_criterion(spec.model, 3), optim=spec.train.optim,
        metadata=ModelMetadata(model={}, num_classes=3), num_select=5,
    )  # fmt: skip
    logged = []
    monkeypatch.setattr(
        module, "log", lambda name, value, **kw: logged.append((float(value), kw["batch_size"]))
    )
    model.eval()

    def target(image_id, unreadable=False):
        t = {
            "image_id": torch.tensor(image_id), "labels": torch.tensor([1]),
            "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2]]),
            "orig_size": torch.tensor([64, 64]), "canvas_size": torch.tensor([64, 64]),
        }  # fmt: skip
        if unreadable:
            t.update(labels=torch.zeros(0, dtype=torch.long), boxes=torch.zeros(0, 4), unreadable=True)
        return t

    counted = []  # the loss's collective (the box count across ranks) runs in every step
    count_boxes = type(module.criterion).num_boxes
    monkeypatch.setattr(
        type(module.criterion),
        "num_boxes",
        staticmethod(lambda t, d: counted.append(len(t)) or count_boxes(t, d)),
    )
    torch.manual_seed(1)
    images = torch.rand(3, 3, 64, 64)
    module.on_validation_epoch_start()
    with torch.no_grad():
        module.validation_step((images, [target(1), target(2, unreadable=True), target(3)]), 0)
        module.validation_step((images[1:2], [target(2, unreadable=True)]), 1)
        readable = module.criterion(model(images[[0, 2]]), [target(1), target(3)])
    from rtdetr.loss import total_loss

    # the loss of the two readable images alone; an all-unreadable batch logs with weight 0
    assert logged[0] == (pytest.approx(float(total_loss(readable)), rel=1e-5), 2)
    assert logged[1] == (0.0, 0) and counted == [2, 0, 2]  # the steps' counts, then the reference loss's
    assert (
        module._val_images[2] is None and len(module._val_images[1]) == 5 and len(module._val_images[3]) == 5
    )

    # an epoch without a single readable image: no mAP (not a 0.0 that looks like a score)
    module.val_gt = {"images": [{"id": 2, "width": 64, "height": 64}], "annotations": [], "categories": []}
    module._trainer = types.SimpleNamespace(sanity_checking=False, world_size=1)
    module._val_images = {2: None}
    logged.clear()
    with caplog.at_level("WARNING", logger="rtdetr"):
        module.on_validation_epoch_end()
    assert logged == [] and "no validation image could be read" in caplog.text

    # and status.json's kpi of that epoch has no mAP (Lightning's callback_metrics keep the last one)
    from rtdetr.common.status import StatusLogger, read_status
    from rtdetr.engine.callbacks import StatusCallback

    status_dir = tmp_path / "status"
    callback = StatusCallback(StatusLogger(status_dir, enabled=True))
    metrics = {"train_loss_epoch": 1.0, "val_mAP": 0.5, "val_mAP50": 0.7, "val_loss": 2.0}
    for epoch, map_epoch in ((0, 0), (1, 0)):  # epoch 1: no readable validation image
        trainer = types.SimpleNamespace(
            callback_metrics=metrics,
            is_global_zero=True,
            current_epoch=epoch,
            max_epochs=2,
            sanity_checking=False,
        )
        module.map_epoch = map_epoch
        callback.on_train_epoch_start(trainer, module)
        callback.on_validation_end(trainer, module)
        callback.on_train_epoch_end(trainer, module)
    kpis = [line["kpi"] for line in read_status(status_dir)]
    assert kpis[0] == {"train_loss": 1.0, "val_mAP": 0.5, "val_mAP50": 0.7, "val_loss": 2.0}
    assert kpis[1] == {"train_loss": 1.0, "val_loss": 2.0}


def test_progress_bar_shows_four_significant_digits(monkeypatch):
    from lightning.pytorch.callbacks import ProgressBar, RichProgressBar, TQDMProgressBar
    from lightning.pytorch.callbacks.progress import rich_progress

    from rtdetr.engine.callbacks import progress_bar

    rich = progress_bar()
    assert isinstance(rich, RichProgressBar) and rich.theme.metrics_format == ".4g"
    monkeypatch.setattr(rich_progress, "_RICH_AVAILABLE", False)  # rich not installed: tqdm
    bar = progress_bar()
    assert isinstance(bar, TQDMProgressBar)
    monkeypatch.setattr(
        ProgressBar, "get_metrics", lambda self, trainer, module: {"lr": 1.2345e-4, "v_num": 3}
    )
    assert bar.get_metrics(None, None) == {"lr": "0.0001234", "v_num": 3}


def test_large_seeds_give_valid_deterministic_batches():
    # a date as seed (20240101) overflowed torch.manual_seed in the per-sample seeding
    class Draw(torch.utils.data.Dataset):
        def __len__(self):
            return 8

        def __getitem__(self, index):
            return torch.rand(1), {}

    for seed in (20240101, 2**62):
        sampler = EpochBatchSampler(8, 4, shuffle=True, drop_last=True, seed=seed)
        keys = list(sampler)
        assert keys == list(sampler) and len(keys) == 2
        data = KeyedDataset(Draw(), seed)
        first = [data[key][0] for key in keys[0]]
        assert all(torch.equal(a, data[key][0]) for a, key in zip(first, keys[0]))


def test_negative_seed_draws_a_fresh_random_order_each_run():
    from rtdetr.data.loader import make_loader

    class Draw(torch.utils.data.Dataset):
        def __len__(self):
            return 40

        def __getitem__(self, index):
            return torch.rand(3, 4, 4), {"image_id": index}

    def order(seed):
        loader = make_loader(Draw(), batch_size=4, workers=0, pin_memory=False, train=True, seed=seed)
        return [key[0] for batch in loader.batch_sampler for key in batch]

    assert order(5) == order(5)
    runs = [order(-1) for _ in range(3)]
    assert sorted(runs[0]) == list(range(40))
    # seeding disabled: not seed 0's order, nor one run's order again (each equal by chance 1 in 40!)
    assert order(0) not in runs and runs[0] != runs[1] != runs[2]


def test_negative_seed_reseeds_torch_randomly_and_a_seed_repeats():
    from rtdetr.engine.trainer import seed_run

    def first_draw(seed):
        torch.manual_seed(0)  # what a process, or an earlier run in it, may have left
        seed_run(seed)
        return torch.rand(4)

    assert torch.equal(first_draw(7), first_draw(7))
    fresh = [first_draw(-1) for _ in range(2)]
    torch.manual_seed(0)
    assert not torch.equal(fresh[0], torch.rand(4)) and not torch.equal(fresh[0], fresh[1])


def test_frozen_decoder_keeps_its_auxiliary_and_denoising_losses(model):
    """A frozen part keeps only its norm and dropout layers in eval mode: a frozen decoder still
    returns the outputs of every layer and of the denoising groups, so every loss term is computed."""
    from rtdetr.engine.module import DetectionModule
    from rtdetr.engine.trainer import build_criterion
    from rtdetr.model.checkpoint import ModelMetadata

    spec = load_spec({})
    net = build_model(**TINY, dropout_ratio=0.1)
    freeze(net, ["decoder"])
    module = DetectionModule(
        net, build_criterion(spec.model, 3), optim=spec.train.optim,
        metadata=ModelMetadata(model={}, num_classes=3), frozen=["decoder", "encoder"],
    )  # fmt: skip
    module.train()
    assert net.training and net.decoder.training and net.encoder.training
    dropouts = [m for m in net.decoder.modules() if isinstance(m, nn.Dropout)]
    norms = [m for m in net.encoder.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert dropouts and norms and not any(m.training for m in dropouts + norms)
    assert all(m.training for m in net.backbone.modules())
    targets = [{"labels": torch.tensor([1]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2]])}]
    losses = module.criterion(net(torch.rand(1, 3, 64, 64), targets), targets)
    names = set(losses)
    assert (
        any("aux" in n for n in names) and any("dn" in n for n in names) and any("enc" in n for n in names)
    ), names


def _random_seed_worker(rank: int, port: int, queue) -> None:
    import os

    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    sampler = EpochBatchSampler(
        24, 2, shuffle=True, drop_last=True, seed=None, scales=[8, 16, 24], world_size=2
    )
    queue.put((rank, [key for batch in sampler for key in batch]))
    dist.destroy_process_group()


@pytest.mark.slow
def test_negative_seed_is_shared_by_the_ranks_of_a_distributed_run():
    # each rank drawing its own random order would give overlapping slices of the training set
    import socket

    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    procs = [ctx.Process(target=_random_seed_worker, args=(r, port, queue)) for r in range(2)]
    for p in procs:
        p.start()
    keys = dict(queue.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=60)
    indices = [k[0] for rank in (0, 1) for k in keys[rank]]
    assert sorted(indices) == list(range(24))  # disjoint slices that cover the set
    # one scale per global batch: the ranks' b-th batches agree
    assert [k[2] for k in keys[0][::2]] == [k[2] for k in keys[1][::2]]
