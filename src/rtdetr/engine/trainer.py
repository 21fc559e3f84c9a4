"""`fit`: a training run from a validated spec, with TAO's outputs in the results directory."""

from __future__ import annotations

import importlib.util
import logging
import warnings
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger, WandbLogger
from lightning.pytorch.utilities.exceptions import SIGTERMException

from rtdetr import __version__
from rtdetr.common.status import StatusLogger
from rtdetr.config import ExperimentConfig, spec_to_dict
from rtdetr.cpu import speed_up_cpu_training
from rtdetr.engine.callbacks import (
    AtomicCheckpointIO,
    DeferredInterrupt,
    StatusCallback,
    TAOCheckpoint,
    latest_checkpoint,
    progress_bar,
)
from rtdetr.engine.data import TrainingData, build_training_data
from rtdetr.engine.distill import DistillModule, bindings_of, build_teacher, copy_encoder_decoder
from rtdetr.engine.ema import EMA
from rtdetr.engine.hardware import resolve_hardware
from rtdetr.engine.model_setup import (
    enable_activation_checkpointing,
    freeze,
    load_pretrained_model,
    state_misfit,
)
from rtdetr.engine.module import DetectionModule
from rtdetr.engine.optim import backbone_prefixes, resumed_changes
from rtdetr.errors import UserError
from rtdetr.evaluation.plots import plot_curves
from rtdetr.log import quiet_lightning
from rtdetr.loss import HungarianMatcher, RTDETRCriterion
from rtdetr.model.budget import check_training_budget, memory_bytes
from rtdetr.model.checkpoint import ModelMetadata, build_from_metadata, read_checkpoint

log = logging.getLogger(__name__)


class TrainingTerminated(UserError):
    """SIGTERM (a cluster's pre-emption or `kill`) stopped training at the next step."""

    kind = "Interrupted"
    exit_code = 143  # 128 + SIGTERM, as a process killed by it


def build_criterion(model_cfg, num_classes: int) -> RTDETRCriterion:
    """The matcher and losses of the spec's model section."""
    matcher = HungarianMatcher(
        class_cost=model_cfg.class_cost, bbox_cost=model_cfg.bbox_cost, giou_cost=model_cfg.giou_cost
    )
    return RTDETRCriterion(
        num_classes,
        matcher,
        weight_vfl=model_cfg.vfl_loss_coef,
        weight_bbox=model_cfg.bbox_loss_coef,
        weight_giou=model_cfg.giou_loss_coef,
        loss_types=tuple(model_cfg.loss_types),
        alpha=model_cfg.alpha,
        gamma=model_cfg.gamma,
    )


def resume_path(cfg: ExperimentConfig, results_dir: Path) -> Path | None:
    """resume_training_checkpoint_path, else the latest checkpoint in the results directory."""
    explicit = cfg.train.resume_training_checkpoint_path
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            raise UserError(f"train.resume_training_checkpoint_path: {path}: checkpoint not found")
        return path
    return latest_checkpoint(results_dir)


def check_resume_checkpoint(path: Path, module: L.LightningModule, explicit: bool) -> dict:
    """The checkpoint to resume from; one-line UserError, before anything is touched, when it is not
    a readable rtdetr checkpoint or does not fit the spec's model and optimizer."""
    where = (
        "train.resume_training_checkpoint_path"
        if explicit
        else "resuming from the results_dir's latest checkpoint"
    )
    fix = (
        "give a checkpoint of this spec's model"
        if explicit
        else "train with the spec this results_dir was trained with, or use a new results_dir"
    )
    try:
        checkpoint = read_checkpoint(path)
    except UserError as exc:
        raise UserError(f"{where}: {exc}") from exc
    misfit = state_misfit(checkpoint["state_dict"], module.saved_state_dict(), "the spec's model")
    if misfit:
        raise UserError(f"{where}: {path} does not fit this spec's model {misfit}; {fix}")
    saved = (checkpoint.get("optimizer_states") or [None])[0]
    if saved is not None:
        mine = _optimizer_layout(module.optim.optimizer, module.param_groups())
        saved_layout = _optimizer_layout(None, saved["param_groups"])
        if saved_layout != mine:
            raise UserError(
                f"{where}: {path} holds the optimizer state of {saved_layout}, "
                f"this spec trains {mine}: train.optim.optimizer, train.freeze, model.train_backbone or "
                f"model.backbone_names differ from the checkpoint's run; restore them, or start from its weights with "
                f"train.pretrained_model_path and a new results_dir"
            )
    return checkpoint


def resume_changes(checkpoint: dict, module: DetectionModule) -> list[str]:
    """The optimizer and schedule settings in which the spec differs from the checkpoint's run."""
    saved = (checkpoint.get("optimizer_states") or [None])[0]
    if saved is None:
        return []
    schedulers = checkpoint.get("lr_schedulers") or [{}]
    lambdas = schedulers[0].get("lr_lambdas") or [None]
    schedule = lambdas[0] if isinstance(lambdas[0], dict) else None
    return resumed_changes(saved["param_groups"], schedule, module.param_groups(), module.optim)


def _optimizer_layout(kind: str | None, groups: list[dict]) -> str:
    """An optimizer and its groups' sizes, e.g. ``AdamW (backbone 12, base 80)``; ``kind`` None reads
    it from a saved state's groups (SGD's carry "nesterov", AdamW's "betas")."""
    kind = kind or ("SGD" if "nesterov" in groups[0] else "AdamW")
    sizes = [f"{group.get('name', i)} {len(group['params'])}" for i, group in enumerate(groups)]
    return f"{kind} ({', '.join(sizes)})"


def build_module(cfg: ExperimentConfig, data: TrainingData, task: str = "train") -> DetectionModule:
    """Model (with pretrained weights, frozen parts), criterion and optimizer settings; for the
    distill task a DistillModule with its teacher, whose bindings a dry forward has checked."""
    meta = ModelMetadata(
        model=spec_to_dict(cfg.model),
        num_classes=cfg.dataset.num_classes,
        class_names=data.class_names,
        category_ids=data.label_to_category,
        input_size=list(cfg.dataset.augmentation.eval_spatial_size),
        toolkit_version=__version__,
    )
    model = build_from_metadata(meta, load_pretrained_backbone=True, training=True)
    if not cfg.model.pretrained_backbone_path and not cfg.train.pretrained_model_path:
        log.info(
            "the %s backbone starts from random weights (nothing is downloaded: give a weights file as "
            "model.pretrained_backbone_path, or a whole model as train.pretrained_model_path)",
            cfg.model.backbone,
        )
    backbone_prefixes(model, cfg.model.backbone_names)  # a name that matches nothing: refused before training
    if cfg.train.pretrained_model_path:
        load_pretrained_model(model, cfg.train.pretrained_model_path, spec_to_dict(cfg.model),
                              cfg.dataset.num_classes, data.class_names)  # fmt: skip
    teacher = build_teacher(cfg, cfg.dataset.num_classes) if task == "distill" else None
    if teacher is not None and cfg.model.load_teacher_enc_dec:
        copy_encoder_decoder(model, teacher)
    frozen = list(cfg.train.freeze)
    if frozen:
        freeze(model, frozen)
    if not cfg.model.train_backbone:
        frozen.append("backbone")
    if cfg.train.activation_checkpoint:
        enable_activation_checkpointing(model)
    settings = {
        "optim": cfg.train.optim,
        "metadata": meta,
        "backbone_names": cfg.model.backbone_names,
        "linear_proj_names": cfg.model.linear_proj_names,
        "num_select": cfg.model.num_select,
        "label_to_category": data.label_to_category,
        "val_gt": data.val_gt,
        "seed": cfg.train.seed,
        "frozen": frozen,
    }
    criterion = build_criterion(cfg.model, cfg.dataset.num_classes)  # distill's matcher is train's
    if teacher is None:
        return DetectionModule(model, criterion, **settings)
    module = DistillModule(
        model,
        criterion,
        teacher=teacher,
        bindings=bindings_of(cfg),
        distillation_loss_coef=cfg.model.distillation_loss_coef,
        **settings,
    )
    module.check_bindings(cfg.dataset.augmentation.train_spatial_size)
    return module


def _loggers(cfg: ExperimentConfig, results_dir: Path) -> list:
    loggers = [
        CSVLogger(save_dir=results_dir, name="logs", version=""),
        TensorBoardLogger(save_dir=results_dir, name="tensorboard", version="", default_hp_metric=False),
    ]
    w = cfg.wandb
    if w.enable:
        if importlib.util.find_spec("wandb") is None:
            raise UserError("wandb.enable: install the wandb extra: pip install 'rtdetr[wandb]'")
        loggers.append(
            WandbLogger(
                project=w.project,
                entity=w.entity,
                name=w.name,
                tags=w.tags,
                id=w.run_id,
                save_dir=str(results_dir),
                mode=w.mode,
                save_code=w.save_code,
                sync_tensorboard=w.sync_tensorboard,
                reinit=w.reinit,
            )  # fmt: skip
        )
    return loggers


def _keep_previous_metrics(log_dir: Path) -> None:
    """Lightning's CSV logger starts metrics.csv afresh: keep the earlier part of a resumed run."""
    current = log_dir / "metrics.csv"
    if current.exists():
        part = 1 + len(list(log_dir.glob("metrics.part*.csv")))
        current.rename(log_dir / f"metrics.part{part:02d}.csv")


def check_training_memory(cfg: ExperimentConfig, hardware) -> None:
    """UserError before data or model are built when the spec's training cannot fit: in the first
    GPU's memory, or on the CPU in this machine's memory shared by its processes."""
    if hardware.accelerator == "cuda":
        check_training_budget(cfg, memory=memory_bytes(f"cuda:{hardware.devices[0]}"))
        return
    total = memory_bytes()
    per_node = max(1, hardware.world_size // hardware.num_nodes)
    check_training_budget(cfg, memory=total // per_node if total else None)


def seed_run(seed: int) -> None:
    """train.seed: seed every generator (and the loader workers') with it; a negative seed turns
    seeding off, torch's generator then starts from a fresh random seed (not its fixed default)."""
    if seed >= 0:
        L.seed_everything(seed, workers=True, verbose=False)
    else:
        torch.seed()


def fit(
    cfg: ExperimentConfig, results_dir: Path, status: StatusLogger, task: str = "train"
) -> DetectionModule:
    """Train as the spec says (``task`` "distill": with distillation from the spec's teacher);
    checkpoints, logs and plots go to ``results_dir``."""
    t = cfg.train
    quiet_lightning()
    hardware = resolve_hardware(t)
    check_training_memory(cfg, hardware)
    seed_run(t.seed)
    torch.backends.cudnn.benchmark = t.cudnn.benchmark
    torch.backends.cudnn.deterministic = t.cudnn.deterministic

    data = build_training_data(cfg, results_dir, world_size=hardware.world_size)
    module = build_module(cfg, data, task)
    if t.distributed_strategy != "fsdp":  # FSDP flattens the parameters into one contiguous buffer
        module.to_channels_last()
    if hardware.accelerator == "cpu":
        speed_up_cpu_training(module, processes_per_node=hardware.world_size // hardware.num_nodes)

    ema = (
        EMA(t.ema.decay, t.ema.every_n_steps, t.ema.validate_original_weights, t.ema.cpu_offload)
        if t.enable_ema
        else None
    )
    interrupt = DeferredInterrupt()
    callbacks = [interrupt, StatusCallback(status), progress_bar()]
    if ema is not None:
        callbacks.append(ema)
    callbacks.append(TAOCheckpoint(results_dir, t.checkpoint_interval, ema))
    dry = t.is_dry_run
    trainer = L.Trainer(
        accelerator=hardware.accelerator,
        devices=hardware.devices,
        num_nodes=hardware.num_nodes,
        strategy=hardware.strategy,
        precision=hardware.precision,
        sync_batchnorm=hardware.sync_batchnorm,
        max_epochs=1 if dry else t.num_epochs,
        limit_train_batches=1 if dry else None,
        limit_val_batches=1 if dry else None,
        check_val_every_n_epoch=1 if dry else t.validation_interval,  # a dry run validates one batch
        gradient_clip_val=t.clip_grad_norm or None,
        gradient_clip_algorithm="norm",
        deterministic=False,
        benchmark=t.cudnn.benchmark,
        default_root_dir=results_dir,
        enable_checkpointing=False,
        logger=_loggers(cfg, results_dir),
        callbacks=callbacks,
        plugins=[AtomicCheckpointIO()],
        use_distributed_sampler=False,
        num_sanity_val_steps=0,
        log_every_n_steps=1,
        enable_model_summary=t.verbose,
    )
    trainer._rtdetr_dry_run = dry
    ckpt = None if dry else resume_path(cfg, results_dir)
    if ckpt is not None:
        checkpoint = check_resume_checkpoint(ckpt, module, bool(cfg.train.resume_training_checkpoint_path))
        changes = resume_changes(checkpoint, module)
        del checkpoint
        log.info("resuming from %s", ckpt)
        if changes:
            log.warning(
                "resuming with the spec's settings, changed since the checkpoint: %s", "; ".join(changes)
            )
        changed = (
            f" with the spec's settings changed since the checkpoint: {'; '.join(changes)}" if changes else ""
        )
        status.write("RUNNING", f"Resuming training from {ckpt}{changed}.")
        _keep_previous_metrics(results_dir / "logs")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*The number of training batches.*")
        warnings.filterwarnings("ignore", message=".*It is recommended to use `self.log\\('val_mAP.*")
        warnings.filterwarnings("ignore", message=".*isinstance\\(treespec, LeafSpec\\)` is deprecated.*")
        # the frozen parts' norm layers and a distillation teacher are in eval mode on purpose
        warnings.filterwarnings("ignore", message=".*module\\(s\\) in eval mode at the start of training.*")
        try:
            with interrupt:
                trainer.fit(module, data.train_loader, data.val_loader, ckpt_path=ckpt)
        except SystemExit as exc:  # how Lightning ends a run stopped by a signal
            if not isinstance(exc, SIGTERMException):
                if trainer.interrupted:  # Ctrl+C: Lightning exits 1 silently; here 130 and a status line
                    raise KeyboardInterrupt from exc
                raise
            latest = latest_checkpoint(results_dir)
            resume = (
                f"run the same command to resume from {latest}" if latest else "no checkpoint was written yet"
            )
            raise TrainingTerminated(
                f"SIGTERM received during epoch {trainer.current_epoch} (step {trainer.global_step}); training "
                f"stopped, the checkpoints written so far are intact; {resume}"
            ) from exc
        except Exception as exc:
            if interrupt.requested:  # e.g. loader workers ended by the same Ctrl+C: it is the interrupt
                raise KeyboardInterrupt from exc
            raise
    if trainer.is_global_zero:
        logs = results_dir / "logs"
        plot_curves([*sorted(logs.glob("metrics.part*.csv")), logs / "metrics.csv"], results_dir / "plots")
    return module
