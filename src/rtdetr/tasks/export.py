"""The export task: `rtdetr export -e spec.yaml`: ONNX with TAO's contract, DeepStream files beside it."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from rtdetr.common.status import StatusLogger
from rtdetr.config import ExperimentConfig
from rtdetr.deploy.export import check_deepstream_files, deepstream_files, export_onnx, write_deepstream_files
from rtdetr.deploy.parity import parity
from rtdetr.model.checkpoint import load_model
from rtdetr.tasks.files import TaskFiles

log = logging.getLogger(__name__)

PARITY_WARN = 1e-3  # ONNX Runtime vs PyTorch on a random batch: warn above this


def files(cfg: ExperimentConfig) -> TaskFiles:
    e = cfg.export
    outputs = {"export.onnx_file": e.onnx_file}
    if not e.end_to_end:  # DeepStream's files beside the ONNX file
        for name in ("labels.txt", "nvinfer_config.txt"):
            outputs[f"export.onnx_file's {name}"] = Path(e.onnx_file).parent / name
    return TaskFiles(inputs={"export.checkpoint": e.checkpoint}, outputs=outputs)


def run(cfg: ExperimentConfig, results_dir: Path, status: StatusLogger) -> Path:
    e = cfg.export
    model = load_model(e.checkpoint)
    device = "cuda" if torch.cuda.is_available() and not e.on_cpu else "cpu"
    for name, value in (("input_height", e.input_height), ("input_width", e.input_width)):
        if value % 32:
            log.warning("export.%s %d is not a multiple of 32 (the coarsest feature stride)", name, value)
    deepstream = (
        {} if e.end_to_end else deepstream_files(e.onnx_file, model.metadata, e.input_height, e.input_width)
    )
    check_deepstream_files(deepstream, e.overwrite)
    if e.end_to_end:
        config = Path(e.onnx_file).parent / "nvinfer_config.txt"
        if config.is_file() and f"onnx-file={Path(e.onnx_file).name}\n" in config.read_text(
            encoding="utf-8", errors="replace"
        ):
            log.warning(
                "export.end_to_end: %s (and labels.txt) describe this file as a raw-output export, which "
                "it no longer is; DeepStream cannot run an end-to-end graph: remove them", config
            )  # fmt: skip
    path = export_onnx(
        model, model.metadata, e.onnx_file, height=e.input_height, width=e.input_width, batch_size=e.batch_size,
        opset=e.opset_version, end_to_end=e.end_to_end, num_select=cfg.model.num_select, device=device,
        overwrite=e.overwrite, verbose=e.verbose,
    )  # fmt: skip
    kpi = {}
    if not e.end_to_end:
        diff = parity(path, model, e.input_height, e.input_width, max(e.batch_size, 1))
        kpi["max_abs_diff_vs_pytorch"] = diff
        (log.warning if diff > PARITY_WARN else log.info)(
            "ONNX Runtime vs PyTorch on a random batch: max abs difference %.2e", diff
        )
        for written in write_deepstream_files(deepstream, model.metadata):
            log.info("wrote %s", written)
    status.write("RUNNING", f"Exported {path}.", kpi=kpi)
    print(f"exported: {path}")
    return path
