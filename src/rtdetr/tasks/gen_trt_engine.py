"""The gen_trt_engine task: `rtdetr gen_trt_engine -e spec.yaml`: a TensorRT engine from an ONNX file.

The spec is checked (ONNX file and metadata, batch sizes, layers_precision, calibration images)
before TensorRT is needed, so mistakes are reported on any machine.
"""

from __future__ import annotations

import logging
from pathlib import Path

from rtdetr.common.status import StatusLogger
from rtdetr.config import ExperimentConfig
from rtdetr.deploy.tensorrt_build import (
    build_engine,
    calibration_batches,
    check_build_settings,
    make_calibrator,
)
from rtdetr.deploy.tensorrt_common import require_tensorrt
from rtdetr.tasks.files import TaskFiles

log = logging.getLogger(__name__)


def files(cfg: ExperimentConfig) -> TaskFiles:
    """The timing cache and the calibration cache are read and written: outputs, so that neither can
    be the ONNX file, the engine or the other."""
    g = cfg.gen_trt_engine
    outputs = {
        "gen_trt_engine.trt_engine": g.trt_engine,
        "gen_trt_engine.timing_cache": g.timing_cache,
        "gen_trt_engine.calibration.cal_cache_file": g.calibration.cal_cache_file,
    }
    return TaskFiles(inputs={"gen_trt_engine.onnx_file": g.onnx_file}, outputs=outputs)


def run(cfg: ExperimentConfig, results_dir: Path, status: StatusLogger) -> Path:
    g = cfg.gen_trt_engine
    settings = check_build_settings(g)
    require_tensorrt()
    preserve = cfg.dataset.augmentation.preserve_aspect_ratio
    calibrator, extra = None, {}
    if settings.data_type == "INT8":
        cal = g.calibration
        batches = calibration_batches(
            settings.calibration_images, settings.input_size, preserve, cal.cal_batch_size, cal.cal_batches
        )
        calibrator = make_calibrator(
            batches, cal.cal_batch_size, settings.input_size, settings.cal_cache_file
        )
        extra["calibration"] = {
            "cache_file": str(settings.cal_cache_file) if settings.cal_cache_file else None,
            "from_cache": not settings.calibration_images,
            "cal_image_dir": list(cal.cal_image_dir),
            "cal_batch_size": cal.cal_batch_size,
            "cal_batches": cal.cal_batches,
            "preserve_aspect_ratio": preserve,
        }
    path = build_engine(
        settings.onnx_path, settings.engine_path, data_type=settings.data_type,
        workspace_mb=g.tensorrt.workspace_size, min_batch=settings.min_batch, opt_batch=settings.opt_batch,
        max_batch=settings.max_batch, timing_cache=g.timing_cache, layers_precision=g.tensorrt.layers_precision,
        calibrator=calibrator, verbose=g.verbose, extra_info=extra,
    )  # fmt: skip
    status.write("RUNNING", f"Built TensorRT engine {path}.")
    print(f"engine: {path}")
    return path
