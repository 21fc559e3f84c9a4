"""The export task: `rtdetr export -e spec.yaml`: ONNX with TAO's contract, DeepStream files beside it."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from rtdetr.config import ExperimentConfig
from rtdetr.status import StatusLogger
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
    from rtdetr.checkpoint import load_model
    from rtdetr.export import check_deepstream_files, deepstream_files, export_onnx, write_deepstream_files

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


def parity(onnx_path: Path, model: torch.nn.Module, height: int, width: int, batch: int) -> float:
    """Max abs difference of pred_logits and pred_boxes (queries paired), ONNX Runtime (CPU) vs
    ``model`` (unfused) in PyTorch, on a random batch."""
    from rtdetr.deploy import OnnxBackend, TorchBackend

    images = torch.rand(batch, 3, height, width, generator=torch.Generator().manual_seed(0))
    ours = TorchBackend(model, model.metadata, torch.device("cpu"), fuse=False)(images)
    theirs = OnnxBackend(onnx_path, device="cpu")(images)
    return output_difference(ours, theirs)


def output_difference(a: tuple[torch.Tensor, torch.Tensor], b: tuple[torch.Tensor, torch.Tensor]) -> float:
    """Largest abs difference between two runs' (pred_logits [B, Q, C], pred_boxes [B, Q, 4]), with the
    queries of each image paired to their nearest counterpart: near-equal encoder scores (e.g. on
    noise images) may pick the same queries in another order, which is not a difference."""
    worst = 0.0
    for la, ba, lb, bb in zip(*a, *b):
        qa, qb = torch.cat([la, ba], -1).double(), torch.cat([lb, bb], -1).double()
        distance = torch.cdist(qa, qb, p=float("inf"))  # [Q, Q]
        worst = max(worst, float(distance.min(1).values.max()), float(distance.min(0).values.max()))
    return worst
