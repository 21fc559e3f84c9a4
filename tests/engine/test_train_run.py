"""End-to-end training runs on generated data: it learns, TAO's outputs, kill-and-resume, DDP, NaN.

The runs are marked slow; the refusals before training starts and the NaN at the first step are not."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

import rtdetr
from rtdetr.cli import main
from rtdetr.common.status import read_status
from rtdetr.engine.callbacks import latest_checkpoint
from rtdetr.model.checkpoint import load_model, read_checkpoint
from synthetic import make_dataset  # tests/synthetic.py, on the path via tests/conftest.py


def _run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, "-m", "rtdetr.cli", *args], capture_output=True, text=True, env=env, timeout=900
    )


def _final_kpi(results: Path) -> dict:
    lines = [
        line
        for line in read_status(results)
        if line["status"] == "RUNNING" and "val_mAP50" in line.get("kpi", {})
    ]
    return lines[-1]["kpi"]


@pytest.mark.slow
def test_small_model_learns_with_tao_outputs(trained):
    """A small RT-DETR reaches an mAP50 far above chance (~0) in 8 epochs (about a minute on an
    idle 2-core CPU; timed in docs/benchmarks.md, not here). The run is the session's `trained`
    model (tests/conftest.py: `rtdetr train`, checkpoints every 4 epochs, validation every 2), which
    the task tests use too."""
    results = trained["results"]

    kpi = _final_kpi(results)
    assert kpi["val_mAP50"] > 0.3, kpi

    # TAO's checkpoint names (0-based epochs, every checkpoint_interval), the latest link
    assert sorted(p.name for p in results.glob("model_epoch_*.pth")) == [
        "model_epoch_003.pth",
        "model_epoch_007.pth",
    ]
    assert os.readlink(results / "rtdetr_model_latest.pth") == "model_epoch_007.pth"
    # status: STARTED, one RUNNING line per epoch with train_loss, val kpis every 2 epochs, SUCCESS
    status = read_status(results)
    assert status[0]["status"] == "STARTED" and status[-1]["status"] == "SUCCESS"
    epochs = [s for s in status if s["status"] == "RUNNING" and "epoch" in s]
    assert [s["epoch"] for s in epochs] == list(range(8))
    assert all("train_loss" in s["kpi"] and s["max_epoch"] == 8 and "eta" in s for s in epochs)
    assert [("val_mAP" in s["kpi"]) for s in epochs] == [False, True] * 4
    assert {"val_mAP", "val_mAP50", "val_loss"} <= set(epochs[-1]["kpi"])
    # logs and plots
    assert (results / "logs" / "metrics.csv").read_text().count("\n") > 8
    assert list((results / "tensorboard").glob("events.out.tfevents.*"))
    assert (results / "plots" / "loss.png").stat().st_size > 1000
    assert (results / "plots" / "map.png").stat().st_size > 1000
    assert (results / "experiment.yaml").exists()
    # the checkpoint rebuilds the model alone, with class names from the data
    model = load_model(results / "model_epoch_007.pth")
    assert model.metadata.class_names == ["class_0", "red", "green"]
    # trained channels-last, saved in the usual layout
    state = torch.load(results / "model_epoch_007.pth", weights_only=False)["state_dict"]
    assert all(t.is_contiguous() for t in state.values())
    assert model.metadata.category_ids == [-1, 1, 2]


@pytest.mark.slow
def test_ema_twins_and_dry_run(small_squares, spec_file, tmp_path, cli):
    spec = spec_file(small_squares, train={"num_epochs": 2, "enable_ema": True, "ema": {"decay": 0.5}})
    assert main(["-q", "train", "-e", str(spec)]) == 0
    results = tmp_path / "results" / "train"
    names = sorted(p.name for p in results.glob("model_epoch_*.pth"))
    assert names == [
        "model_epoch_000-EMA.pth",
        "model_epoch_000.pth",
        "model_epoch_001-EMA.pth",
        "model_epoch_001.pth",
    ]
    raw = read_checkpoint(results / "model_epoch_001.pth")["state_dict"]
    ema = read_checkpoint(results / "model_epoch_001-EMA.pth")["state_dict"]
    key = "model.decoder.dec_score_head.0.weight"
    assert not torch.equal(raw[key], ema[key])
    assert load_model(results / "model_epoch_001-EMA.pth").metadata.num_classes == 3

    # resuming from a checkpoint that cannot be: one line, exit 2, the run's logs and spec untouched
    metrics = (results / "logs" / "metrics.csv").read_text()
    spec_saved = (results / "experiment.yaml").read_text()
    (results / "dataset_issues.log").write_text("an earlier run's issues\n")
    other = cli("train", "-e", spec, "train.num_epochs=3", "dataset.num_classes=5")
    assert other.code == 2 and len(other.error_lines) == 1, other.err
    assert "resuming from the results_dir's latest checkpoint: " in other.error_lines[0]
    assert "model_epoch_001.pth does not fit this spec's model (7 tensors of another shape" in other.err
    fewer = cli("train", "-e", spec, "train.num_epochs=3", "model.dec_layers=1")  # a smaller model
    assert fewer.code == 2 and "0 tensors of another shape, 0 missing, " in fewer.err, fewer.err
    foreign = cli("train", "-e", spec, "train.num_epochs=3", f"train.resume_training_checkpoint_path={spec}")
    assert foreign.code == 2 and len(foreign.error_lines) == 1, foreign.err
    assert (
        "train.resume_training_checkpoint_path: " in foreign.err
        and "not a readable checkpoint" in foreign.err
    )
    assert (results / "logs" / "metrics.csv").read_text() == metrics
    assert not list((results / "logs").glob("metrics.part*.csv"))
    assert (results / "experiment.yaml").read_text() == spec_saved
    # training data without a single box: one line, exit 2
    train_json = json.loads((small_squares / "train.json").read_text())
    empty = tmp_path / "no_boxes.json"
    empty.write_text(json.dumps({**train_json, "annotations": []}))
    source = f"dataset.train_data_sources=[{{image_dir: {small_squares / 'images'}, json_file: {empty}}}]"
    none = cli("train", "-e", spec, "train.num_epochs=3", source)
    assert (
        none.code == 2
        and len(none.error_lines) == 1
        and "no_boxes.json: no box to train on in 16 images" in none.err
    )
    assert (results / "experiment.yaml").read_text() == spec_saved  # refused runs leave both as they were
    assert (results / "dataset_issues.log").read_text() == "an earlier run's issues\n"

    # a dry run into the same results_dir: its outputs go to dry_run/, the real run's stay as they were
    status = (results / "status.json").read_text()
    dry = cli("-q", "train", "-e", spec, "train.is_dry_run=true", "train.validation_interval=2")
    assert dry.code == 0, dry.err  # (validation_interval 2: it validates its one batch all the same)
    dry_results = results / "dry_run"
    assert not list(dry_results.glob("model_epoch_*.pth"))
    assert read_status(dry_results)[-1]["status"] == "SUCCESS"
    assert any("val_loss" in json.dumps(line) for line in read_status(dry_results))
    assert (dry_results / "logs" / "metrics.csv").exists() and (dry_results / "experiment.yaml").exists()
    assert (results / "status.json").read_text() == status
    assert (results / "logs" / "metrics.csv").read_text() == metrics
    assert (results / "experiment.yaml").read_text() == spec_saved


def test_unknown_backbone_name_is_refused_before_training_starts(small_squares, spec_file, tmp_path, cli):
    spec = spec_file(small_squares, train={"num_epochs": 1})
    bad = cli("train", "-e", spec, "model.backbone_names=[nosuch]")
    assert bad.code == 2 and len(bad.error_lines) == 1, bad.err
    assert bad.error_lines[0].startswith("error: model.backbone_names: 'nosuch' matches no parameter"), (
        bad.err
    )
    results = tmp_path / "results" / "train"
    assert sorted(p.name for p in results.iterdir()) == ["experiment.yaml", "status.json"]  # no logs yet
    assert [line["status"] for line in read_status(results)] == ["STARTED", "FAILURE"]


def test_a_training_that_cannot_fit_is_refused_before_anything_is_built(
    small_squares, spec_file, tmp_path, cli
):
    spec = spec_file(small_squares)
    result = cli(
        "train", "-e", spec, "dataset.batch_size=1024", "dataset.augmentation.train_spatial_size=[8192,8192]"
    )
    assert result.code == 2 and len(result.error_lines) == 1, result.err
    assert (
        "training: batch 1024 at 8192x8192 needs" in result.err and "lower dataset.batch_size" in result.err
    )
    results = tmp_path / "results" / "train"
    assert not list(results.glob("*.pth")) and not (results / "logs").exists()


@pytest.mark.slow
def test_bf16_training_clips_gradients(small_squares, spec_file, tmp_path):
    # Lightning refuses to clip gradients in mixed precision with a fused optimizer
    spec = spec_file(small_squares, train={"num_epochs": 1, "precision": "bf16", "clip_grad_norm": 0.1})
    assert main(["-q", "train", "-e", str(spec)]) == 0
    ckpt = read_checkpoint(tmp_path / "results" / "train" / "model_epoch_000.pth")
    assert not ckpt["optimizer_states"][0]["param_groups"][0]["fused"]


@pytest.mark.slow
def test_kill_and_resume_ends_with_the_same_weights(small_squares, spec_file, tmp_path):
    """SIGKILL mid-run, then the same command again: it resumes from the last checkpoint and ends
    with the same weights as an uninterrupted run (tolerance 1e-6; CPU, fixed seed)."""
    common = {"train": {"num_epochs": 2}, "dataset": {"batch_size": 4}}
    straight = spec_file(
        small_squares, name="straight.yaml", results_dir=str(tmp_path / "straight"), **common
    )
    assert main(["-q", "train", "-e", str(straight)]) == 0

    killed = spec_file(small_squares, name="killed.yaml", results_dir=str(tmp_path / "killed"), **common)
    results = tmp_path / "killed" / "train"
    proc = subprocess.Popen([sys.executable, "-m", "rtdetr.cli", "-q", "train", "-e", str(killed)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 240
    while (
        not (results / "model_epoch_000.pth").exists() and proc.poll() is None and time.monotonic() < deadline
    ):
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (results / "model_epoch_001.pth").exists()
    # the checkpoint a resume starts from is complete (a partial temporary file may remain; the kill
    # may also land between a checkpoint and its latest link, so resume scans when the link is absent)
    load_model(latest_checkpoint(results))

    partial = results / ".model_epoch_001.pth.k3x9q2w7.tmp"  # as a kill inside a checkpoint write leaves
    if not list(results.glob(".model_epoch_*.tmp")):
        partial.write_bytes(b"partial")
    assert main(["-q", "train", "-e", str(killed)]) == 0
    assert any("Resuming training" in s["message"] for s in read_status(results))
    assert not list(results.glob(".*.tmp"))  # the resume removed the partial files of the killed run
    assert list((results / "logs").glob("metrics.part01.csv"))  # the metrics before the kill are kept
    a = read_checkpoint(tmp_path / "straight" / "train" / "model_epoch_001.pth")["state_dict"]
    b = read_checkpoint(results / "model_epoch_001.pth")["state_dict"]
    assert a.keys() == b.keys()
    worst = max((a[k].double() - b[k].double()).abs().max().item() for k in a if a[k].is_floating_point())
    assert worst <= 1e-6, worst


@pytest.mark.slow
def test_resume_with_another_batch_size_keeps_epoch_boundaries_and_frozen_parts(
    small_squares, spec_file, tmp_path, cli
):
    """A frozen backbone stays in eval mode (its BatchNorm statistics unchanged); a resume whose
    optimizer state does not fit is refused with one line; one with a different batch size drops
    the lr at its own epoch boundary (not where the first run's steps per epoch would put it)."""
    import csv

    spec = spec_file(
        small_squares,
        train={"num_epochs": 1, "optim": {"lr": 0.001, "lr_steps": [2], "lr_decay": 0.1}},
        dataset={"batch_size": 4},  # 16 images: 4 steps an epoch
        model={"train_backbone": False},
    )
    assert main(["-q", "train", "-e", str(spec)]) == 0
    results = tmp_path / "results" / "train"
    state = read_checkpoint(results / "model_epoch_000.pth")["state_dict"]
    tracked = {k: int(v) for k, v in state.items() if k.startswith("model.backbone.") and "num_batches" in k}
    assert tracked and set(tracked.values()) == {0}, tracked  # never ran a training-mode BatchNorm
    assert any(int(v) > 0 for k, v in state.items() if k.startswith("model.decoder.") and "num_batches" in k)

    unfit = cli("train", "-e", spec, "train.num_epochs=3", "model.train_backbone=true")
    assert unfit.code == 2 and len(unfit.error_lines) == 1, unfit.err
    assert "holds the optimizer state of AdamW (" in unfit.err and "model.train_backbone" in unfit.err
    sgd = cli("train", "-e", spec, "train.num_epochs=3", "train.optim.optimizer=SGD")
    assert sgd.code == 2 and "this spec trains SGD (" in sgd.err, sgd.err

    # resumed with batch 2: 8 steps an epoch; epoch 1 is steps 4-11 at lr, epoch 2 steps 12-19 at lr/10;
    # the lr and weight decay of the resumed spec apply (not the checkpoint's), and the run says so
    resumed = [
        "train.num_epochs=3",
        "dataset.batch_size=2",
        "train.optim.lr=0.002",
        "train.optim.weight_decay=0.01",
    ]
    assert main(["-q", "train", "-e", str(spec), *resumed]) == 0
    with open(results / "logs" / "metrics.csv") as fh:
        lrs = {int(r["step"]): float(r["lr"]) for r in csv.DictReader(fh) if r.get("lr")}
    assert sorted(lrs) == list(range(4, 20)), sorted(lrs)
    assert [lrs[s] for s in range(4, 12)] == pytest.approx([2e-3] * 8)
    assert [lrs[s] for s in range(12, 20)] == pytest.approx([2e-4] * 8)
    message = next(s["message"] for s in read_status(results) if s["message"].startswith("Resuming"))
    assert "learning rate of the base parameters 0.001 -> 0.002" in message, message
    assert "weight decay of the base parameters 0.0001 -> 0.01" in message, message
    groups = read_checkpoint(results / "model_epoch_002.pth")["optimizer_states"][0]["param_groups"]
    assert {g["name"]: g["weight_decay"] for g in groups}["base"] == 0.01
    assert yaml.safe_load((results / "experiment.yaml").read_text())["train"]["optim"]["lr"] == 0.002


@pytest.mark.slow
def test_a_signal_stops_training_with_a_failure_line(small_squares, spec_file, tmp_path):
    """A cluster's pre-emption (SIGTERM) or Ctrl+C (SIGINT) stops training at the next step:
    FAILURE "Interrupted: ..." in status.json, exit status 128 + signal, the checkpoints intact.
    The two runs go side by side, a core each."""
    cases = {
        "sigterm": (signal.SIGTERM, 143, "Interrupted: SIGTERM received"),
        "sigint": (signal.SIGINT, 130, "Interrupted: train stopped"),
    }
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    runs = {}
    for name in cases:
        spec = spec_file(small_squares, name=f"{name}.yaml", results_dir=str(tmp_path / name),
                         train={"num_epochs": 30}, dataset={"batch_size": 4})  # fmt: skip
        proc = subprocess.Popen(
            [sys.executable, "-m", "rtdetr.cli", "-q", "train", "-e", str(spec)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        )  # fmt: skip
        runs[name] = (proc, tmp_path / name / "train")
    try:
        deadline = time.monotonic() + 300
        waiting = dict(runs)
        while waiting:
            assert time.monotonic() < deadline, f"no checkpoint after 300 s: {sorted(waiting)}"
            for name, (proc, results) in list(waiting.items()):
                if (results / "model_epoch_000.pth").exists() or proc.poll() is not None:
                    proc.send_signal(cases[name][0])
                    del waiting[name]
            time.sleep(0.2)
        for name, (proc, results) in runs.items():
            _, err = proc.communicate(timeout=120)
            signum, code, message = cases[name]
            assert proc.returncode == code, (name, err[-2000:])
            statuses = read_status(results)
            last = statuses[-1]
            assert last["status"] == "FAILURE" and last["message"].startswith(message), last
            assert sum(s["status"] == "FAILURE" for s in statuses) == 1
            assert not (results / "model_epoch_029.pth").exists()
            load_model(results / "rtdetr_model_latest.pth")
    finally:
        for proc, _ in runs.values():
            if proc.poll() is None:
                proc.kill()
                proc.communicate()


@pytest.mark.slow
def test_ctrl_c_stops_every_ddp_rank_at_the_same_step(small_squares, spec_file, tmp_path):
    """Ctrl+C in the terminal reaches every rank of a DDP run (2 gloo processes): all stop at the same
    step boundary (a rank that went on would wait in its gradient all-reduce), exit status 130, one
    FAILURE line, the checkpoints intact."""
    spec = spec_file(small_squares, train={"num_epochs": 30}, dataset={"batch_size": 2})
    results = tmp_path / "results" / "train"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "rtdetr.cli", "-q", "train", "-e", str(spec), "train.num_gpus=2",
         "train.gpu_ids=[0,1]"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True,
    )  # fmt: skip
    deadline = time.monotonic() + 300
    while not (results / "model_epoch_000.pth").exists() and proc.poll() is None:
        assert time.monotonic() < deadline, "no checkpoint after 300 s"
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGINT)  # as the terminal does: the whole process group
    try:
        _, err = proc.communicate(timeout=120)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, err[-2000:]
    statuses = read_status(results)
    last = statuses[-1]
    assert last["status"] == "FAILURE" and last["message"].startswith("Interrupted: train stopped"), last
    assert sum(s["status"] == "FAILURE" for s in statuses) == 1
    load_model(results / "rtdetr_model_latest.pth")


@pytest.mark.slow
def test_nan_loss_stops_with_epoch_and_step(small_squares, spec_file, tmp_path, monkeypatch):
    import rtdetr.engine.module as module

    calls = {"n": 0}
    real = module.total_loss

    def poisoned(losses):
        calls["n"] += 1
        loss = real(losses)
        return loss * float("nan") if calls["n"] == 7 else loss  # step 2 of epoch 1 (4 steps/epoch + val)

    monkeypatch.setattr(module, "total_loss", poisoned)
    spec = spec_file(small_squares, train={"num_epochs": 3}, dataset={"batch_size": 4})
    cfg = rtdetr.load_spec(spec, action="train")
    from rtdetr.tasks.runner import run_task

    with pytest.raises(module.TrainingDiverged, match=r"at epoch 1, step \d+"):
        run_task("train", cfg)
    results = tmp_path / "results" / "train"
    assert load_model(results / "model_epoch_000.pth").metadata.num_classes == 3
    last = read_status(results)[-1]
    assert last["status"] == "FAILURE" and last["message"].startswith("Training diverged: ")


def test_a_nan_loss_before_any_update_does_not_blame_the_learning_rate(small_squares, spec_file, monkeypatch):
    import rtdetr.engine.module as module

    real = module.total_loss
    monkeypatch.setattr(module, "total_loss", lambda losses: real(losses) * float("nan"))
    spec = spec_file(small_squares, train={"num_epochs": 1}, dataset={"batch_size": 4})
    from rtdetr.tasks.runner import run_task

    with pytest.raises(module.TrainingDiverged, match=r"at epoch 0, step 0") as info:
        run_task("train", rtdetr.load_spec(spec, action="train"))
    assert "before any update" in str(info.value) and "train.optim.lr" not in str(info.value)


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return {k: v.double() for k, v in read_checkpoint(path)["state_dict"].items() if v.is_floating_point()}


@pytest.mark.slow
def test_ddp_step_equals_one_process_step_and_validates_every_image(trained, tmp_path, spec_file, cli):
    """One SGD step of 2 processes (gloo) x batch 4 equals one step of 1 process x batch 8, and the
    2 processes' validation scores every image once.

    Both start from the session's trained weights and see the same 8 images: data sharding, gradient
    averaging, the loss normalised by the target count across ranks and the global BatchNorm
    statistics must together give the single-process update, up to the float summation order: the
    updates agree to 1e-3 of their size (stated tolerance; measured 3.5e-4: the single process's
    channels-last BatchNorm sums in float32, ~1e-6 relative, the global BatchNorm of the 2 processes in
    float64; with contiguous weights 6e-6). A real fault (gradients not averaged, the loss not
    normalised across ranks, per-rank BatchNorm statistics) changes a large fraction of it. The backbone is frozen
    (and in eval mode, its BatchNorm statistics fixed): its max pooling sends a gradient to the arg-max of each
    window, and float-order noise flips near-ties there, which alone moves backbone gradients by
    ~1e-3 between two float32 runs.

    The 5 validation images split unevenly over the 2 ranks (the sampler repeats one): the ranks'
    detections are gathered and each image counted once, so the DDP run's val_mAP and val_mAP50
    equal those `rtdetr evaluate` computes in one process on the checkpoint it saved."""
    data = tmp_path / "eight"
    make_dataset(data, "train", 8, seed=4)
    make_dataset(data, "val", 5, seed=5)
    common = {
        "train": {"num_epochs": 1, "clip_grad_norm": 0.0, "validation_interval": 1,
                  "optim": {"optimizer": "SGD", "lr": 0.01, "lr_backbone": 0.01, "momentum": 0.0}},
        "model": {"dn_number": 0, "train_backbone": False},
    }  # fmt: skip
    val = {"image_dir": str(data / "images"), "json_file": str(data / "val.json")}
    one = spec_file(data, name="one.yaml", results_dir=str(tmp_path / "one"), **common)
    two = spec_file(data, name="two.yaml", results_dir=str(tmp_path / "two"),
                    dataset={"batch_size": 4, "test_data_sources": val}, **common)  # fmt: skip
    start = trained["checkpoint"]
    init = f"train.pretrained_model_path={start}"
    assert main(["-q", "train", "-e", str(one), init]) == 0
    ddp = _run("-q", "train", "-e", str(two), init, "train.num_gpus=2", "train.gpu_ids=[0,1]")
    assert ddp.returncode == 0, ddp.stderr[-2000:]

    w0 = _weights(start)
    w1 = _weights(tmp_path / "one" / "train" / "model_epoch_000.pth")
    w2 = _weights(tmp_path / "two" / "train" / "model_epoch_000.pth")
    assert w1.keys() == w2.keys() <= w0.keys()  # dn_number 0: no denoising embedding
    params = [k for k in w1 if "running_" not in k]
    step = torch.cat([(w1[k] - w0[k]).flatten() for k in params])
    diff = torch.cat([(w2[k] - w1[k]).flatten() for k in params])
    assert step.norm() > 1e-3  # the step moved the weights
    assert diff.norm() <= 1e-3 * step.norm(), (diff.norm().item(), step.norm().item())
    stats = [k for k in w1 if "running_" in k]  # BatchNorm statistics of the whole global batch
    worst = max((w2[k] - w1[k]).abs().max().item() for k in stats)
    assert worst <= 1e-4, worst
    status = read_status(tmp_path / "two" / "train")
    assert sum(s["status"] == "STARTED" for s in status) == 1  # rank 0 only

    kpi = _final_kpi(tmp_path / "two" / "train")
    checkpoint = tmp_path / "two" / "train" / "model_epoch_000.pth"
    assert cli("-q", "evaluate", "-e", two, f"evaluate.checkpoint={checkpoint}").code == 0
    evaluated = json.loads((tmp_path / "two" / "evaluate" / "results.json").read_text())["stats"]
    assert kpi["val_mAP50"] > 0.3, kpi  # the trained weights detect the squares
    assert kpi["val_mAP"] == pytest.approx(evaluated["mAP"], abs=1e-6), (kpi, evaluated)
    assert kpi["val_mAP50"] == pytest.approx(evaluated["mAP50"], abs=1e-6), (kpi, evaluated)
