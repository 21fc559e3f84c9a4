"""Speed-ups for running on the CPU; a reader of the GPU path can skip this folder.

``speed_up_cpu_training`` is the one call the trainer makes when it trains on the CPU:

- ``host_memory``: freed activation memory is kept for reuse instead of being returned to the
  operating system and faulted in again every batch (also used by evaluate and inference);
- ``conv_grad``: convolution weight gradients by im2col + GEMM where oneDNN's kernel is slow;
- ``sync_bn``: BatchNorm statistics over the whole batch of several CPU processes (what
  SyncBatchNorm does on GPUs);
- ``optim_step``: the fused optimizer step updates channels-last weights in place.
"""

from __future__ import annotations

import os

import torch

from rtdetr.cpu.conv_grad import use_gemm_weight_grad
from rtdetr.cpu.host_memory import keep_freed_host_memory
from rtdetr.cpu.optim_step import in_place_variant
from rtdetr.cpu.sync_bn import convert_to_global_batchnorm

__all__ = ["keep_freed_host_memory", "speed_up_cpu_training"]


def speed_up_cpu_training(module, processes_per_node: int = 1) -> None:
    """Apply the CPU speed-ups to a training module (rtdetr.engine.module.DetectionModule, after its
    model is built and laid out, before training starts); ``processes_per_node`` CPU processes share
    this machine's cores (DDP on the CPU)."""
    keep_freed_host_memory()
    if processes_per_node > 1:
        # processes on one machine share its cores: oversubscribed OpenMP threads are very slow
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // processes_per_node))
        convert_to_global_batchnorm(module.model)
    use_gemm_weight_grad(module.model)
    module.optimizer_variant = in_place_variant
