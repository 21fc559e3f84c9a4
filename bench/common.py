"""Helpers shared by the benchmark scripts (run as `python bench/<script>.py`)."""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path


def cpu_name() -> str:
    """The CPU model name from /proc/cpuinfo, else what the platform module knows."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def argument_parser(doc: str, bccd: bool = False) -> argparse.ArgumentParser:
    """A parser described by the first paragraph of ``doc`` (the script's docstring) that shows
    each option's default in --help; with ``bccd``, its first option is --data, the BCCD root
    (see `check_bccd`)."""
    parser = argparse.ArgumentParser(
        description=doc.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    if bccd:
        parser.add_argument(
            "--data", type=Path, required=True, help="BCCD root (images/, annotations/instances_*.json)"
        )
    return parser


def bccd_sources(data: Path) -> dict:
    """The spec's dataset sources for the BCCD root ``data``: train on its train split, validate on
    its val split (all images in images/, COCO files in annotations/)."""
    return {
        "train_data_sources": [
            {
                "image_dir": str(data / "images"),
                "json_file": str(data / "annotations/instances_train.json"),
            }
        ],
        "val_data_sources": {
            "image_dir": str(data / "images"),
            "json_file": str(data / "annotations/instances_val.json"),
        },
    }


def check_bccd(parser: argparse.ArgumentParser, data: Path) -> None:
    """Exits through ``parser.error`` unless ``data`` holds annotations/instances_train.json."""
    if not (data / "annotations" / "instances_train.json").is_file():
        parser.error(f"--data {data}: no annotations/instances_train.json")


def engine_optimizer(model, spec):
    """The optimizer `rtdetr train` builds for ``model`` from ``spec`` (its train.optim section and
    the model section's parameter-name lists): the engine's parameter groups and optimizer."""
    from rtdetr.cpu.optim_step import in_place_variant
    from rtdetr.engine.optim import build_optimizer, param_groups

    o = spec.train.optim
    groups = param_groups(
        model, lr=o.lr, lr_backbone=o.lr_backbone, weight_decay=o.weight_decay,
        backbone_names=spec.model.backbone_names, linear_proj_names=spec.model.linear_proj_names,
        lr_linear_proj_mult=o.lr_linear_proj_mult,
    )  # fmt: skip
    return build_optimizer(
        groups, optimizer=o.optimizer, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay,
        variant=in_place_variant,
    )  # fmt: skip


def command_line(argv: list[str] | None) -> str:
    """The benchmark's command as run: the script's name and its arguments (``argv``, else sys.argv)."""
    return " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])])


def machine(threads: int | str, **versions: str) -> dict:
    """The report's machine section: CPU name and count, python and torch versions, then
    ``versions`` (e.g. transformers=...), then ``threads``."""
    import torch

    from rtdetr.deploy.onnx_backend import cpu_has_vnni

    return {
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),  # AVX2, AVX512, ...
        "cpu_vnni": cpu_has_vnni(),  # None: unknown
        "python": platform.python_version(),
        "torch": torch.__version__,
        **versions,
        "threads": threads,
    }


def target_verdict(claim: str, ratio: float, met: bool) -> dict:
    """Prints whether the target ``claim`` (on the ratio ``ratio``) is ``met``; returns the report's
    target_ratio and target_met fields."""
    print(f"\ntarget {claim}: {'met' if met else 'NOT met'}")
    return {"target_ratio": ratio, "target_met": met}


def write_report(out: Path, report: dict) -> None:
    """Writes ``report`` as indented JSON to ``out`` (creating its folder) and says so on stderr."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}", file=sys.stderr)
