"""Devices, precision and distributed strategy from the train section, checked before anything runs."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy

from rtdetr.config.schema import TrainConfig
from rtdetr.errors import UserError

log = logging.getLogger(__name__)

PRECISION = {"fp32": "32-true", "fp16": "16-mixed", "bf16": "bf16-mixed"}


@dataclass
class Hardware:
    accelerator: str  # "cuda" or "cpu"
    devices: list[int] | int  # CUDA device ids, or a number of CPU processes
    num_nodes: int
    strategy: object  # a Lightning strategy or "auto"
    precision: str  # Lightning precision
    sync_batchnorm: bool

    @property
    def world_size(self) -> int:
        count = len(self.devices) if isinstance(self.devices, list) else self.devices
        return count * self.num_nodes


def resolve_hardware(train: TrainConfig, cuda_available: bool | None = None) -> Hardware:
    """Map num_gpus, gpu_ids, num_nodes, precision and distributed_strategy to Lightning settings.

    Without CUDA, ``num_gpus`` processes run on the CPU (gloo backend); fp16 and FSDP need CUDA and
    stop here with one clear line.
    """
    cuda = torch.cuda.is_available() if cuda_available is None else cuda_available
    if cuda:
        count = torch.cuda.device_count() if cuda_available is None else max(train.gpu_ids) + 1
        missing = [i for i in train.gpu_ids if i >= count]
        if missing:
            raise UserError(f"train.gpu_ids: {missing} not present (this machine has {count} CUDA devices)")
        accelerator, devices = "cuda", list(train.gpu_ids)
    else:
        accelerator, devices = "cpu", train.num_gpus
        if train.num_gpus > 1:
            log.warning(
                "no CUDA device: running train.num_gpus=%d processes on the CPU (gloo)", train.num_gpus
            )
    if train.precision == "fp16" and not cuda:
        raise UserError("train.precision: fp16 needs a CUDA GPU; use bf16 or fp32 on the CPU")
    if train.precision == "bf16" and cuda and cuda_available is None and not torch.cuda.is_bf16_supported():
        raise UserError("train.precision: this GPU does not support bf16; use fp16 or fp32")
    world = (len(devices) if isinstance(devices, list) else devices) * train.num_nodes
    if train.distributed_strategy == "fsdp":
        if not cuda:
            raise UserError("train.distributed_strategy: fsdp needs CUDA GPUs; use ddp on the CPU")
        strategy = FSDPStrategy()
    elif world > 1:
        strategy = DDPStrategy(process_group_backend="nccl" if cuda else "gloo", find_unused_parameters=False)
    else:
        strategy = "auto"
    if train.num_nodes > 1 and "MASTER_ADDR" not in os.environ:
        log.warning(
            "train.num_nodes=%d but MASTER_ADDR is not set; launch each node with torchrun or SLURM",
            train.num_nodes,
        )
    return Hardware(
        accelerator=accelerator,
        devices=devices,
        num_nodes=train.num_nodes,
        strategy=strategy,
        precision=PRECISION[train.precision],
        sync_batchnorm=world > 1 and cuda,  # SyncBatchNorm runs on GPUs only
    )
