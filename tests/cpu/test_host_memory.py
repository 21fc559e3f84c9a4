"""keep_freed_host_memory: a large block freed and allocated again is not faulted in again."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
    reason="the settings are glibc's",
)

# Allocates, touches and frees 256 MB four times; prints whether the settings took effect, the
# fewest minor page faults of one round, and how much of the freed block the process still holds.
PROBE = """
import resource, sys, torch
from rtdetr.cpu.host_memory import keep_freed_host_memory
rss = lambda: int(open("/proc/self/statm").read().split()[1]) * 4096
faults = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_minflt
print(keep_freed_host_memory())
base = rss()
counts = []
for _ in range(4):
    before = faults()
    torch.ones(64 << 20)
    counts.append(faults() - before)
print(min(counts), rss() - base)
"""
SIZE = 256 << 20
PAGES = SIZE // 4096


def _probe(env_value: str | None) -> tuple[bool, int, int]:
    env = {k: v for k, v in os.environ.items() if k != "RTDETR_HOST_ALLOCATOR"}
    if env_value is not None:
        env["RTDETR_HOST_ALLOCATOR"] = env_value
    out = subprocess.run(
        [sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True, timeout=120
    ).stdout.split()
    return out[0] == "True", int(out[1]), int(out[2])


@pytest.mark.slow
def test_freed_blocks_are_reused_without_page_faults():
    tuned, faults, kept = _probe(None)
    assert tuned
    assert kept > SIZE * 0.9  # the freed block stays with the process
    assert faults < PAGES // 20  # and is reused: a few hundred faults at most, against 65536 pages


@pytest.mark.slow
def test_default_setting_keeps_glibc_behaviour():
    tuned, faults, kept = _probe("default")
    assert not tuned
    # glibc unmaps the block when it is freed and maps it afresh: every page faults again (fewer
    # with transparent huge pages)
    assert kept < SIZE * 0.1
    assert faults > PAGES // 600


def test_evaluate_and_inference_apply_it_to_pytorch_models_on_the_cpu(monkeypatch):
    import torch

    from rtdetr.cpu import host_memory
    from rtdetr.deploy import Detector, TorchBackend

    keep_host_memory_for_cpu_model = Detector.reuse_host_memory  # what evaluate and inference call

    calls = []
    monkeypatch.setattr(host_memory, "keep_freed_host_memory", lambda: calls.append(1) or True)

    class FakeDetector:
        def __init__(self, backend):
            self.backend = backend

    keep_host_memory_for_cpu_model(FakeDetector(object()))  # e.g. ONNX Runtime: its own arena
    assert calls == []
    keep_host_memory_for_cpu_model(FakeDetector(TorchBackend(torch.nn.Identity(), None, torch.device("cpu"))))
    assert calls == [1]
