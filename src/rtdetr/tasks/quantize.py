"""The quantize task: `rtdetr quantize -e spec.yaml`: an INT8 model for CPUs, an ONNX file for ONNX
Runtime or an OpenVINO IR (NNCF)."""

from __future__ import annotations

from pathlib import Path

from rtdetr.common.status import StatusLogger
from rtdetr.config import ExperimentConfig
from rtdetr.deploy.quantize import quantize_onnx
from rtdetr.deploy.quantize_openvino import quantize_openvino
from rtdetr.tasks.files import TaskFiles


def files(cfg: ExperimentConfig) -> TaskFiles:
    q = cfg.quantize
    outputs = {"quantize.output_file": q.output_file}
    if q.backend == "openvino" and q.output_file:
        outputs["quantize.output_file (its .bin)"] = str(Path(q.output_file).with_suffix(".bin"))
    return TaskFiles(inputs={"quantize.onnx_file": q.onnx_file}, outputs=outputs)


def run(cfg: ExperimentConfig, results_dir: Path, status: StatusLogger) -> dict:
    q = cfg.quantize
    if q.backend == "openvino":
        summary = quantize_openvino(
            q.onnx_file, q.output_file, list(q.cal_image_dir), cal_images=q.cal_images,
            preserve_aspect_ratio=cfg.dataset.augmentation.preserve_aspect_ratio,
            exclude_nodes=list(q.exclude_nodes), overwrite=q.overwrite,
        )  # fmt: skip
    else:
        summary = quantize_onnx(
            q.onnx_file, q.output_file, list(q.cal_image_dir), cal_images=q.cal_images,
            preserve_aspect_ratio=cfg.dataset.augmentation.preserve_aspect_ratio,
            calibration_method=q.calibration_method, per_channel=q.per_channel, reduce_range=q.reduce_range,
            op_types=list(q.op_types), exclude_nodes=list(q.exclude_nodes), overwrite=q.overwrite,
        )  # fmt: skip
    status.write(
        "RUNNING",
        f"Quantized {q.onnx_file} to {q.output_file}.",
        kpi={"calibration_images": summary["calibration_images"]},
    )
    print(f"quantized: {q.output_file}")
    return summary
