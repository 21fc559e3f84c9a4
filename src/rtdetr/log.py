"""Logging set-up: one handler on the ``rtdetr`` logger, records from rank 0 only."""

from __future__ import annotations

import logging
import os
import sys


def global_rank() -> int:
    """This process's rank in a distributed job (0 when not distributed)."""
    for name in ("RANK", "SLURM_PROCID", "LOCAL_RANK"):
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    return 0


def is_rank_zero() -> bool:
    return global_rank() == 0


class RankZeroFilter(logging.Filter):
    """Drops records in every process but rank 0 (warnings and errors of other ranks pass)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or is_rank_zero()


def setup_logging(level: int = logging.INFO) -> None:
    """Log ``rtdetr.*`` records at ``level`` and above to stderr."""
    logger = logging.getLogger("rtdetr")
    for handler in list(logger.handlers):
        if getattr(handler, "_rtdetr", False):
            logger.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler._rtdetr = True
    handler.setFormatter(logging.Formatter("%(asctime)s [%(levelname)s] %(name)s: %(message)s", "%H:%M:%S"))
    handler.addFilter(RankZeroFilter())
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False
    quiet_lightning()


def quiet_lightning() -> None:
    """Lightning's banners (GPU/TPU available, tips) only at --verbose. Importing Lightning resets its
    logger to INFO, so the engine calls this again once Lightning is imported."""
    level = (
        logging.DEBUG if logging.getLogger("rtdetr").getEffectiveLevel() <= logging.DEBUG else logging.WARNING
    )
    for name in ("lightning.pytorch", "lightning.fabric", "lightning", "pytorch_lightning"):
        logging.getLogger(name).setLevel(level)
