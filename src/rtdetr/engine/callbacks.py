"""TAO's checkpoint names, status.json lines and end-of-run plots, as Lightning callbacks."""

from __future__ import annotations

import logging
import os
import re
import signal
import threading
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.plugins import TorchCheckpointIO
from lightning.pytorch.callbacks import RichProgressBar, TQDMProgressBar
from lightning.pytorch.callbacks.progress.rich_progress import RichProgressBarTheme

from rtdetr.common.files import atomic_write
from rtdetr.common.status import StatusLogger

log = logging.getLogger(__name__)

LATEST = "rtdetr_model_latest.pth"
CHECKPOINT_RE = re.compile(r"^model_epoch_(\d{3,})\.pth$")


def checkpoint_name(epoch: int, ema: bool = False) -> str:
    """TAO's name: model_epoch_000.pth (0-based epoch), model_epoch_000-EMA.pth for the EMA twin."""
    return f"model_epoch_{epoch:03d}{'-EMA' if ema else ''}.pth"


def latest_checkpoint(results_dir: str | os.PathLike) -> Path | None:
    """The newest training checkpoint in a results directory (following the latest link)."""
    results_dir = Path(results_dir)
    link = results_dir / LATEST
    if link.exists():
        return link.resolve()
    found = sorted(
        (int(m.group(1)), p)
        for p in results_dir.glob("model_epoch_*.pth")
        if (m := CHECKPOINT_RE.match(p.name))
    )
    return found[-1][1] if found else None


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes each checkpoint to a temporary file and renames it: a kill never leaves half a file."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if "state_dict" in checkpoint:  # weights of a channels-last model in the usual layout
            checkpoint = {
                **checkpoint,
                "state_dict": {k: v.contiguous() for k, v in checkpoint["state_dict"].items()},
            }
        atomic_write(path, lambda fh: torch.save(checkpoint, fh), mode="wb")


def _link_latest(results_dir: Path, target: Path) -> None:
    tmp = results_dir / f".{LATEST}.tmp"
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    tmp.symlink_to(target.name)
    os.replace(tmp, results_dir / LATEST)


class TAOCheckpoint(L.Callback):
    """Saves ``model_epoch_XXX.pth`` every ``interval`` epochs (and at the last), the EMA twin when
    an EMA callback runs, and points ``rtdetr_model_latest.pth`` at the newest."""

    def __init__(self, results_dir: str | os.PathLike, interval: int = 1, ema=None):
        self.results_dir = Path(results_dir)
        self.interval = interval
        self.ema = ema

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        epoch = trainer.current_epoch
        last = epoch + 1 >= (trainer.max_epochs or 0)
        if (epoch + 1) % self.interval and not last:
            return
        if trainer.sanity_checking or getattr(trainer, "_rtdetr_dry_run", False):
            return
        path = self.results_dir / checkpoint_name(epoch)
        for logger in trainer.loggers:  # the logs on disk reach as far as the checkpoint
            logger.save()
        if self.ema is not None and self.ema.weights is not None:
            # the twin first, so that the latest link never points at a checkpoint without its twin
            with self.ema.swapped(pl_module):
                trainer.save_checkpoint(
                    self.results_dir / checkpoint_name(epoch, ema=True), weights_only=False
                )
        trainer.save_checkpoint(path, weights_only=False)
        if trainer.is_global_zero:
            _link_latest(self.results_dir, path)
            log.info("saved %s", path)


class DeferredInterrupt(L.Callback):
    """Ctrl+C (SIGINT) stops training at the next step boundary, as SIGTERM does, instead of raising
    KeyboardInterrupt wherever the signal lands: inside a checkpoint write it would surface as
    torch.save's RuntimeError (exit 1), and native code could swallow it so that training goes on. A
    second Ctrl+C stops at once. ``requested`` tells whether an interrupt came (an error raised while
    stopping, e.g. by loader workers that the same Ctrl+C ended, is then reported as the interrupt)."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self) -> DeferredInterrupt:
        if threading.current_thread() is threading.main_thread():  # signal handlers live there only
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        log.warning("interrupted: training stops after this step (Ctrl+C again to stop at once)")

    def check(self) -> None:
        """Raise KeyboardInterrupt when an interrupt came."""
        if self.requested:
            raise KeyboardInterrupt

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.check()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.check()

    def on_validation_batch_end(
        self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0
    ) -> None:
        self.check()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.check()


class StatusCallback(L.Callback):
    """TAO status.json lines: one RUNNING line per epoch with train_loss (and the module's
    ``kpi_names``, per epoch) and, after validation, val_mAP, val_mAP50 and val_loss."""

    def __init__(self, status: StatusLogger):
        self.status = status
        self._start = 0.0
        self._epoch_times: list[float] = []
        self._validated_epoch = -1

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._validated_epoch = trainer.current_epoch

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = time.monotonic()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        metrics = trainer.callback_metrics  # on every rank: reading it runs the sync_dist collectives
        if not trainer.is_global_zero:
            return
        elapsed = time.monotonic() - self._start
        self._epoch_times.append(elapsed)
        epoch, max_epoch = trainer.current_epoch, trainer.max_epochs or 0
        kpi = {"train_loss": _float(metrics.get("train_loss_epoch"))}
        for name in getattr(pl_module, "kpi_names", ()):  # e.g. the distillation terms
            if f"{name}_epoch" in metrics:
                kpi[name] = _float(metrics[f"{name}_epoch"])
        for key in ("val_mAP", "val_mAP50", "val_loss"):
            if key in metrics and self._validated_epoch == epoch:  # callback_metrics keep stale values
                if key != "val_loss" and getattr(pl_module, "map_epoch", epoch) != epoch:
                    continue  # no image of this validation could be read: no mAP
                kpi[key] = _float(metrics[key])
        mean = sum(self._epoch_times) / len(self._epoch_times)
        self.status.write(
            "RUNNING",
            f"Train epoch {epoch} finished.",
            kpi=kpi,
            epoch=epoch,
            max_epoch=max_epoch,
            time_per_epoch=_hms(elapsed),
            eta=_hms(mean * max(0, max_epoch - epoch - 1)),
        )


def _float(value) -> float | None:
    return None if value is None else float(value)


def _hms(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def progress_bar() -> L.Callback:
    """Lightning's default progress bar (rich where installed, else tqdm) with the metrics in 4
    significant digits: an lr of 1e-4 shows as 0.0001, not rich's default 0.000."""

    class TQDMBar(TQDMProgressBar):
        def get_metrics(self, trainer, pl_module) -> dict:  # tqdm itself shows floats with 3 digits
            items = super().get_metrics(trainer, pl_module).items()
            return {k: f"{v:.4g}" if isinstance(v, float) else v for k, v in items}

    try:
        return RichProgressBar(theme=RichProgressBarTheme(metrics_format=".4g"))
    except ModuleNotFoundError:  # rich is not installed
        return TQDMBar()
