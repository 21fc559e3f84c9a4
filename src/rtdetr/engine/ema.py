"""Exponential moving average of the model weights, as a Lightning callback."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import lightning as L
import torch

log = logging.getLogger(__name__)


class EMA(L.Callback):
    """After every ``every_n_steps`` optimizer steps: ``ema = decay * ema + (1 - decay) * w``.

    Floating-point parameters and buffers are averaged; other buffers are copied. Validation runs
    on the EMA weights unless ``validate_original_weights``. The EMA weights are saved in the
    checkpoint's callback state, so a resumed run continues the same average.
    """

    def __init__(self, decay: float = 0.999, every_n_steps: int = 1, validate_original_weights: bool = False,
                 cpu_offload: bool = False):  # fmt: skip
        self.decay = decay
        self.every_n_steps = every_n_steps
        self.validate_original_weights = validate_original_weights
        self.cpu_offload = cpu_offload
        self.weights: dict[str, torch.Tensor] | None = None
        self._loaded: dict[str, torch.Tensor] | None = None
        self._backup: dict[str, torch.Tensor] | None = None

    @property
    def state_key(self) -> str:
        return "EMA"

    def _model_state(self, pl_module: L.LightningModule) -> dict[str, torch.Tensor]:
        return pl_module.model.state_dict()

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        device = "cpu" if self.cpu_offload else pl_module.device
        source = self._loaded if self._loaded is not None else self._model_state(pl_module)
        self.weights = {k: v.detach().clone().to(device) for k, v in source.items()}
        self._loaded = None

    @torch.no_grad()
    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args) -> None:
        if trainer.global_step % self.every_n_steps or self.weights is None:
            return
        for name, value in self._model_state(pl_module).items():
            ema = self.weights[name]
            if ema.is_floating_point():
                ema.lerp_(value.detach().to(ema.device, ema.dtype), 1.0 - self.decay)
            else:
                ema.copy_(value)

    @contextlib.contextmanager
    def swapped(self, pl_module: L.LightningModule) -> Iterator[None]:
        """Run the block with the EMA weights in the model, then restore the trained weights."""
        if self.weights is None:
            yield
            return
        backup = {k: v.detach().clone() for k, v in self._model_state(pl_module).items()}
        pl_module.model.load_state_dict(self.weights)
        try:
            yield
        finally:
            pl_module.model.load_state_dict(backup)

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.validate_original_weights or self.weights is None or trainer.sanity_checking:
            return
        self._backup = {k: v.detach().clone() for k, v in self._model_state(pl_module).items()}
        pl_module.model.load_state_dict(self.weights)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._backup is not None:
            pl_module.model.load_state_dict(self._backup)
            self._backup = None

    def state_dict(self) -> dict:
        weights = None if self.weights is None else {k: v.detach().cpu() for k, v in self.weights.items()}
        return {"decay": self.decay, "weights": weights}

    def load_state_dict(self, state_dict: dict) -> None:
        self._loaded = state_dict.get("weights")
