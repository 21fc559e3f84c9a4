"""The quantize task: `rtdetr quantize -e spec.yaml`: an INT8 ONNX for CPUs (ONNX Runtime)."""

from __future__ import annotations

from pathlib import Path

from rtdetr.common.status import StatusLogger
from rtdetr.config import ExperimentConfig
from rtdetr.deploy.quantize import quantize_onnx
from rtdetr.tasks.files import TaskFiles


def files(cfg: ExperimentConfig) -> TaskFiles:
    q = cfg.quantize
    return TaskFiles(
        inputs={"quantize.onnx_file": q.onnx_file}, outputs={"quantize.output_file": q.output_file}
    )


def run(cfg: ExperimentConfig, results_dir: Path, status: StatusLogger) -> dict:
    q = cfg.quantize
    summary = quantize_onnx(
        q.onnx_file, q.output_file, list(q.cal_image_dir), cal_images=q.cal_images,
        preserve_aspect_ratio=cfg.dataset.augmentation.preserve_aspect_ratio,
        calibration_method=q.calibration_method, per_channel=q.per_channel, reduce_range=q.reduce_range,
        op_types=list(q.op_types),
        exclude_nodes=list(q.exclude_nodes), overwrite=q.overwrite,
    )  # fmt: skip
    status.write(
        "RUNNING",
        f"Quantized {q.onnx_file} to {q.output_file}.",
        kpi={"calibration_images": summary["calibration_images"]},
    )
    print(f"quantized: {q.output_file}")
    return summary
