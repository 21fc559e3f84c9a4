"""The LightningModule: one place for the training step, the NaN guard, validation and optimizers."""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence

import lightning as L
import numpy as np
import torch
from torch import nn

from rtdetr.config.schema import OptimConfig
from rtdetr.engine.model_setup import use_channels_last
from rtdetr.engine.optim import StepSchedule, apply_spec_settings, base_lr, build_optimizer, param_groups
from rtdetr.errors import UserError
from rtdetr.evaluation.coco import coco_results, evaluate_coco, without_images
from rtdetr.loss import total_loss
from rtdetr.model.checkpoint import ModelMetadata
from rtdetr.model.postprocess import detections_per_image

log = logging.getLogger(__name__)


class TrainingDiverged(UserError):
    """The loss became NaN or infinite."""

    kind = "Training diverged"
    exit_code = 1


def seed_everything_for_step(seed: int, step: int) -> None:
    """Seed python, numpy and torch from (seed, step): a step's randomness (denoising noise, dropout)
    does not depend on what ran before it, so a resumed run continues exactly."""
    value = (seed * 1_000_003 + step) % (2**31)
    random.seed(value)
    np.random.seed(value)
    torch.manual_seed(value)


class DetectionModule(L.LightningModule):
    """Trains ``model`` with ``criterion``; validates with COCO mAP against ``val_gt``.

    Batches are (images [B, 3, H, W] in [0, 1], targets): per image "labels" [N], "boxes" [N, 4]
    normalised cxcywh, "image_id", "orig_size" (h, w) and "canvas_size" (h, w) (the original-pixel
    size the normalised boxes refer to). ``label_to_category`` maps logit index -> dataset category
    id (None: identity). ``frozen`` names submodules of ``model`` that do not train (their norm and
    dropout layers kept in eval mode).
    """

    def __init__(
        self,
        model: nn.Module,
        criterion: nn.Module,
        *,
        optim: OptimConfig,
        metadata: ModelMetadata,
        backbone_names: Sequence[str] = ("backbone.0",),
        linear_proj_names: Sequence[str] = ("reference_points", "sampling_offsets"),
        num_select: int = 300,
        label_to_category: Sequence[int] | None = None,
        val_gt: dict | None = None,
        seed: int = -1,
        frozen: Sequence[str] = (),
    ):
        super().__init__()
        self.model = model
        self.criterion = criterion
        self.optim = optim
        self.metadata = metadata
        self.backbone_names = list(backbone_names)
        self.linear_proj_names = list(linear_proj_names)
        self.num_select = num_select
        self.label_to_category = None if label_to_category is None else list(label_to_category)
        self.val_gt = val_gt
        self.seed = seed
        modules = dict(model.named_modules())
        # kept in eval mode, see train(); held as objects, whatever wrapper names them later (FSDP)
        self._frozen_modules = [modules[name] for name in frozen]
        self.channels_last = False  # see to_channels_last
        self.optimizer_variant = None  # a subclass of the fused optimizer (rtdetr.cpu sets one)
        # per validation image id: its COCO detections, None when unreadable; the first occurrence
        # counts (DDP pads a rank's last batch with repeats)
        self._val_images: dict[int, list[dict] | None] = {}
        self.map_epoch = -1  # the last epoch whose validation computed val_mAP (see StatusCallback)
        self.kpi_names: tuple[str, ...] = ()  # logged values that status.json's epoch lines also carry

    def train(self, mode: bool = True):
        """Frozen submodules (train.freeze, the backbone when model.train_backbone is false) keep their
        norm and dropout layers in eval mode: their BatchNorm statistics do not drift nor their
        dropout apply, so a frozen part computes the same function throughout training and its
        checkpointed tensors stay as loaded."""
        super().train(mode)
        if mode:  # only their norm and dropout layers: the decoder's own mode also decides its outputs
            for frozen in self._frozen_modules:
                for m in frozen.modules():
                    if isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.Dropout)):
                        m.eval()
        return self

    def forward(self, images: torch.Tensor) -> dict:
        return self.model(self._layout(images))

    def to_channels_last(self) -> None:
        """Train and validate channels-last: the model's convolution weights, and every batch."""
        use_channels_last(self.model)
        self.channels_last = True

    def _layout(self, images: torch.Tensor) -> torch.Tensor:
        return images.contiguous(memory_format=torch.channels_last) if self.channels_last else images

    # ----------------------------------------------------------------------------- training
    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        if self.seed >= 0:
            seed_everything_for_step(self.seed + self.global_rank * 7919, self.global_step)

    def on_train_start(self) -> None:
        # a resumed run trains with its spec's optimizer and schedule settings, not the checkpoint's
        if self.trainer.ckpt_path is not None:
            apply_spec_settings(
                self.trainer.optimizers[0], self.lr_schedulers(), self.param_groups(), self.optim
            )

    def on_train_epoch_start(self) -> None:
        self.train()  # Lightning leaves the modes as it finds them: the frozen parts' eval mode is ours
        # the lr schedule's epochs are this run's (see StepSchedule.start_epoch); the lr of the
        # epoch's first step follows (a resumed run's restored lr came from the old step count)
        scheduler = self.lr_schedulers()
        schedule = scheduler.lr_lambdas[0]
        if not isinstance(schedule, StepSchedule):
            return
        schedule.start_epoch(self.global_step, self.current_epoch, self.trainer.num_training_batches)
        for group, base in zip(scheduler.optimizer.param_groups, scheduler.base_lrs):
            group["lr"] = base * schedule(scheduler.last_epoch)

    def training_loss(self, images: torch.Tensor, targets: list[dict]) -> torch.Tensor:
        """The loss one training batch minimises (images already in the module's layout): the sum of
        the criterion's weighted losses. DistillModule adds its distillation term."""
        outputs = self.model(images, targets)
        return total_loss(self.criterion(outputs, targets))

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        images, targets = batch
        loss = self.training_loss(self._layout(images), targets)
        bad = not bool(torch.isfinite(loss.detach()))
        if self.trainer.strategy.reduce_boolean_decision(bad, all=False):
            raise TrainingDiverged(
                f"the training loss is {loss.item()} at epoch {self.current_epoch}, step {self.global_step} "
                f"(batch {batch_idx}); the checkpoints written so far are intact. {self._divergence_advice()}"
            )
        batch_size = images.shape[0]
        self.log(
            "train_loss",
            loss,
            on_step=True,
            on_epoch=True,
            prog_bar=True,
            batch_size=batch_size,
            sync_dist=True,
        )
        self.log(
            "lr",
            base_lr(self.trainer.optimizers[0]),
            on_step=True,
            prog_bar=True,
            batch_size=batch_size,
        )
        return loss

    def _divergence_advice(self) -> str:
        """What to change after a non-finite loss: the learning rate only when updates can be the cause."""
        if not all(bool(torch.isfinite(p).all()) for p in self.model.parameters()):
            return (
                "The model's weights hold NaN or infinity: check train.pretrained_model_path, "
                "model.pretrained_backbone_path or the checkpoint resumed from"
            )
        if self.global_step == 0:
            return (
                "It came at the first step, before any update, so the learning rate is not the cause: check "
                "the data (images and boxes) and the model's loss settings"
            )
        return "Lower train.optim.lr, keep train.clip_grad_norm > 0, or use precision fp32"

    # --------------------------------------------------------------------------- validation
    def on_validation_epoch_start(self) -> None:
        self._val_images = {}

    def validation_step(self, batch, batch_idx: int) -> None:
        images, targets = batch
        # an unreadable image (a blank stand-in) is left out of the loss and the scores alike
        for t in targets:
            if t.get("unreadable"):
                self._val_images.setdefault(int(t["image_id"]), None)
        keep = [i for i, t in enumerate(targets) if not t.get("unreadable")]
        if not keep:  # logged with weight 0, so every process logs val_loss in every step, and the
            # loss's collective (the box count across ranks) is met as in the other processes' steps
            self.criterion.num_boxes([], images.device)
            self.log("val_loss", images.new_zeros(()), on_epoch=True, batch_size=0, sync_dist=True)
            return
        if len(keep) < len(targets):
            images, targets = images[keep], [targets[i] for i in keep]
        outputs = self.model(self._layout(images))
        losses = self.criterion(outputs, targets)
        self.log("val_loss", total_loss(losses), on_epoch=True, batch_size=images.shape[0], sync_dist=True)
        canvas = torch.stack([t["canvas_size"] for t in targets])
        orig = torch.stack([t["orig_size"] for t in targets])
        per_image = detections_per_image(
            outputs["pred_logits"].float(),
            outputs["pred_boxes"].float(),
            canvas.to(images.device),
            orig,
            self.num_select,
        )
        for t, (s, lab, b) in zip(targets, per_image):
            image_id = int(t["image_id"])
            if image_id in self._val_images:
                continue
            cats = lab.cpu().numpy()
            if self.label_to_category is not None:
                cats = np.asarray(self.label_to_category)[cats]
            self._val_images[image_id] = coco_results(
                [image_id], [b.cpu().numpy()], [s.cpu().numpy()], [cats]
            )

    def on_validation_epoch_end(self) -> None:
        if self.val_gt is None or self.trainer.sanity_checking:
            return
        images = self._val_images
        if self.trainer.world_size > 1 and torch.distributed.is_initialized():
            gathered: list = [None] * self.trainer.world_size
            torch.distributed.all_gather_object(gathered, images)
            images = {}
            for part in gathered:
                for image_id, found in part.items():
                    images.setdefault(image_id, found)
        if images and all(found is None for found in images.values()):
            log.warning("no validation image could be read: val_mAP and val_mAP50 not computed this epoch")
            return
        results = [r for found in images.values() if found is not None for r in found]
        # an unreadable image is left out (not scored as missed, nor another image twice)
        unreadable = [image_id for image_id, found in images.items() if found is None]
        stats = evaluate_coco(without_images(self.val_gt, unreadable), results)["stats"]
        self.log("val_mAP", stats["mAP"], rank_zero_only=False, sync_dist=False)
        self.log("val_mAP50", stats["mAP50"], rank_zero_only=False, sync_dist=False)
        self.map_epoch = self.current_epoch

    # ---------------------------------------------------------------------------- optimizers
    def param_groups(self) -> list[dict]:
        """The optimizer's parameter groups (see rtdetr.engine.optim.param_groups)."""
        o = self.optim
        return param_groups(
            self.model,
            lr=o.lr,
            lr_backbone=o.lr_backbone,
            weight_decay=o.weight_decay,
            backbone_names=self.backbone_names,
            linear_proj_names=self.linear_proj_names,
            lr_linear_proj_mult=o.lr_linear_proj_mult,
        )

    def configure_optimizers(self):
        o = self.optim
        groups = self.param_groups()
        for g in groups:
            log.debug(
                "param group %s: %d tensors, lr %g, weight decay %g",
                g["name"],
                len(g["params"]),
                g["lr"],
                g["weight_decay"],
            )
        # Lightning clips gradients in mixed precision only when the optimizer leaves the unscaling
        # to it, which a fused one does not (it refuses with a RuntimeError at the first step)
        mixed_clipped = bool(self.trainer.gradient_clip_val) and "mixed" in str(self.trainer.precision)
        optimizer = build_optimizer(
            groups,
            optimizer=o.optimizer,
            lr=o.lr,
            momentum=o.momentum,
            weight_decay=o.weight_decay,
            fused=not mixed_clipped,
            variant=self.optimizer_variant,
        )
        steps_per_epoch = max(1, self.trainer.estimated_stepping_batches // max(1, self.trainer.max_epochs))
        schedule = StepSchedule(
            steps_per_epoch, o.lr_scheduler, o.lr_steps, o.lr_step_size, o.lr_decay, o.warmup_steps
        )
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def saved_state_dict(self) -> dict[str, torch.Tensor]:
        """The tensors a checkpoint of this module holds (and a resumed run must find there)."""
        return self.state_dict()

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["rtdetr"] = self.metadata.to_dict()
