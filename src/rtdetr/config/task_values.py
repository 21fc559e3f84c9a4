"""Values that several tasks derive from a spec in the same way."""

from __future__ import annotations

from rtdetr.config.schema import ExperimentConfig
from rtdetr.errors import UserError


def input_size(cfg: ExperimentConfig, section: str) -> list[int]:
    """``<section>.input_height/input_width`` when both are set, else
    dataset.augmentation.eval_spatial_size: [height, width]."""
    task = getattr(cfg, section)
    height, width = task.input_height, task.input_width
    if (height is None) != (width is None):
        raise UserError(f"{section}.input_width and {section}.input_height go together: set both or neither")
    return (
        [int(height), int(width)] if height is not None else list(cfg.dataset.augmentation.eval_spatial_size)
    )


def model_file(cfg: ExperimentConfig, section: str) -> str:
    """The model a task runs: ``trt_engine`` (an exported model) when set, else ``checkpoint``."""
    task = getattr(cfg, section)
    return task.trt_engine or task.checkpoint


def model_input(cfg: ExperimentConfig, section: str) -> dict[str, str]:
    """{the field naming the model a task runs: its path}."""
    field = "trt_engine" if getattr(cfg, section).trt_engine else "checkpoint"
    return {f"{section}.{field}": model_file(cfg, section)}
