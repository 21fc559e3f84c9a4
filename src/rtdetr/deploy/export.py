"""ONNX export with TAO's contract, the model's metadata inside, and DeepStream's files beside it.

The graph: input ``inputs`` [B, 3, H, W] (RGB / 255, no mean/std); outputs ``pred_logits`` [B, Q, C]
(raw logits) and ``pred_boxes`` [B, Q, 4] (normalised cxcywh), no postprocess. With
``end_to_end`` the postprocess is inside instead: a second input ``orig_target_sizes`` [B, 2]
int64 (w, h), as in the original RT-DETR's export, and outputs ``labels`` [B, K] int64, ``boxes``
[B, K, 4] xyxy in those pixels and ``scores`` [B, K] (the top K = num_select by score).
The model's metadata (class names, category ids, input size, the model section) is stored as JSON
under the ONNX metadata key ``rtdetr``, so evaluate, inference and the Detector run the file alone.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import onnx
import torch
from torch import nn

from rtdetr.common.files import atomic_write, atomic_write_text, check_output_file
from rtdetr.errors import UserError
from rtdetr.model.checkpoint import ModelMetadata
from rtdetr.model.postprocess import select_detections

log = logging.getLogger(__name__)

METADATA_KEY = "rtdetr"
MIN_OPSET = 16  # GridSample (deformable attention) is an ONNX operator from opset 16
# the newest opset of torch's TorchScript exporter (the one used: dynamo=False)
MAX_OPSET = getattr(torch.onnx._constants, "ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET", 20)
RAW_OUTPUTS = ("pred_logits", "pred_boxes")
END_TO_END_OUTPUTS = ("labels", "boxes", "scores")


class RawOutputs(nn.Module):
    """The model with TAO's two outputs as a tuple."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.model(inputs)
        return out["pred_logits"], out["pred_boxes"]


class EndToEnd(nn.Module):
    """The model and its postprocess: (labels, boxes xyxy in pixels, scores), top ``num_select``."""

    def __init__(self, model: nn.Module, num_select: int):
        super().__init__()
        self.model, self.num_select = model, num_select

    def forward(self, inputs: torch.Tensor, orig_target_sizes: torch.Tensor):
        out = self.model(inputs)
        hw = orig_target_sizes.flip(-1)  # (w, h) -> (h, w)
        scores, labels, boxes = select_detections(out["pred_logits"], out["pred_boxes"], hw, self.num_select)
        return labels, boxes, scores


def metadata_props(meta: ModelMetadata, **export_info) -> dict[str, str]:
    """The ONNX metadata entries of a model: ``rtdetr`` (JSON of the metadata and export settings)."""
    return {METADATA_KEY: json.dumps({**meta.to_dict(), "export": export_info})}


@dataclass
class OnnxModelInfo:
    """What an rtdetr ONNX file says about itself."""

    metadata: ModelMetadata
    export_info: dict  # the export settings (input_size, batch_size, opset, end_to_end, quantization, ...)
    batch: int | None  # the fixed batch of input ``inputs``, None when dynamic
    input_size: tuple[int, int] | None  # its fixed (h, w), None when dynamic


def inspect_onnx(path: str | os.PathLike, where: str = "") -> OnnxModelInfo:
    """Read an ``rtdetr export`` ONNX file's metadata and input shape (not its weights).

    One-line UserError, starting with ``where`` (e.g. the spec field), for a missing, unreadable or
    foreign file.
    """
    path = Path(path)
    where = f"{where}: {path}" if where else str(path)
    if not path.is_file():
        raise UserError(f"{where}: {'not a file' if path.exists() else 'ONNX file not found'}")
    if path.stat().st_size == 0:
        raise UserError(f"{where}: not a readable ONNX file: the file is empty")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf's DecodeError and friends
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{where}: not a readable ONNX file: {first}") from exc
    props = {p.key: p.value for p in proto.metadata_props}
    if METADATA_KEY not in props:
        raise UserError(f"{where}: an ONNX file without rtdetr metadata; export it with `rtdetr export`")
    try:
        data = json.loads(props[METADATA_KEY])
        meta = ModelMetadata.from_dict(data)
    except (ValueError, TypeError) as exc:
        raise UserError(f"{where}: its rtdetr metadata is damaged: {exc}") from exc
    inputs = {i.name: i for i in proto.graph.input}
    if "inputs" not in inputs:
        raise UserError(f"{where}: no input named 'inputs' (inputs: {', '.join(inputs)})")
    dims = [
        d.dim_value if d.HasField("dim_value") else None for d in inputs["inputs"].type.tensor_type.shape.dim
    ]
    if len(dims) != 4:
        raise UserError(f"{where}: input 'inputs' must be [B, 3, H, W], got {dims}")
    size = (int(dims[2]), int(dims[3])) if dims[2] and dims[3] else None
    return OnnxModelInfo(meta, data.get("export", {}), dims[0], size)


def read_onnx_metadata(path: str | os.PathLike) -> tuple[ModelMetadata, dict]:
    """(ModelMetadata, export settings) stored in an ONNX file by export_onnx."""
    info = inspect_onnx(path)
    return info.metadata, info.export_info


def export_onnx(
    model: nn.Module,
    meta: ModelMetadata,
    path: str | os.PathLike,
    *,
    height: int,
    width: int,
    batch_size: int = -1,
    opset: int = 17,
    end_to_end: bool = False,
    num_select: int = 300,
    device: str | torch.device = "cpu",
    overwrite: bool = False,
    verbose: bool = False,
) -> Path:
    """Export ``model`` (fused first; the original is left as it is) to ``path`` and check it.

    batch_size -1 makes the batch axis dynamic (on every input and output), else it is fixed.
    Height and width are fixed (TAO's contract; TensorRT builds for them).
    """
    path = Path(path)
    if opset < MIN_OPSET:
        raise UserError(
            f"export.opset_version: {opset} is too old: deformable attention needs GridSample, an ONNX "
            f"operator from opset {MIN_OPSET}; use {MIN_OPSET} or newer (17 is the default)"
        )
    if opset > MAX_OPSET:
        raise UserError(
            f"export.opset_version: {opset} is newer than torch {torch.__version__}'s ONNX exporter "
            f"supports ({MAX_OPSET}); use {MIN_OPSET}-{MAX_OPSET} (17 is the default)"
        )
    check_output_file(path, "export.onnx_file", overwrite, "export.overwrite")
    if path.suffix.lower() != ".onnx":
        log.warning(
            "export.onnx_file %s: evaluate and inference recognise ONNX files by the suffix .onnx", path
        )
    if batch_size == 0 or batch_size < -1:
        raise UserError(f"export.batch_size: {batch_size}; use -1 (dynamic) or a batch size >= 1")
    if getattr(model, "frozen_fm", None) is not None and (height % 64 or width % 64):
        raise UserError(
            f"export.input_height, input_width: {height}x{width}: a model with a frozen foundation model "
            "(model.frozen_fm) takes sides that are multiples of 64"
        )
    net = copy.deepcopy(model).to(device).eval()
    if hasattr(net, "deploy"):
        net.deploy()
    batch = 1 if batch_size == -1 else batch_size
    images = torch.rand(batch, 3, height, width, device=device)
    if end_to_end:
        wrapper, args = (
            EndToEnd(net, num_select),
            (images, torch.tensor([[width, height]] * batch, device=device)),
        )
        inputs, outputs = ["inputs", "orig_target_sizes"], list(END_TO_END_OUTPUTS)
    else:
        wrapper, args = RawOutputs(net), (images,)
        inputs, outputs = ["inputs"], list(RAW_OUTPUTS)
    dynamic = {name: {0: "batch"} for name in inputs + outputs} if batch_size == -1 else None
    created = [p for p in (path.parent, *path.parent.parents) if not p.exists()]  # deepest first
    path.parent.mkdir(parents=True, exist_ok=True)
    # a name of its own (never a user's file that happens to look like one), removed whatever happens
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
            warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
            torch.onnx.export(
                wrapper, args, str(tmp), input_names=inputs, output_names=outputs, opset_version=opset,
                dynamic_axes=dynamic, do_constant_folding=True, verbose=verbose, dynamo=False,
            )  # fmt: skip
        proto = onnx.load(str(tmp))
        queries, k = (
            int(meta.model.get("num_queries", 300)),
            min(num_select, int(meta.model.get("num_queries", 300)) * meta.num_classes),
        )
        _set_output_dims(proto, {
            "pred_logits": [None, queries, meta.num_classes], "pred_boxes": [None, queries, 4],
            "labels": [None, k], "boxes": [None, k, 4], "scores": [None, k],
        })  # fmt: skip
        export_info = {
            "input_size": [height, width], "batch_size": batch_size, "opset": opset,
            "end_to_end": end_to_end, "num_select": num_select, "inputs": inputs, "outputs": outputs,
        }  # fmt: skip
        meta = copy.copy(meta)
        meta.input_size = [height, width]
        for key, value in metadata_props(meta, **export_info).items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, value
        onnx.checker.check_model(proto, full_check=True)
        atomic_write(path, lambda fh: fh.write(proto.SerializeToString()), mode="wb")
    except BaseException:
        tmp.unlink(missing_ok=True)
        for folder in created:  # a failed export leaves no empty folders of its own behind
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise
    finally:
        tmp.unlink(missing_ok=True)
    log.info("exported %s (%.1f MB)", path, path.stat().st_size / 1e6)
    return path


def _set_output_dims(proto: onnx.ModelProto, dims: dict[str, list[int | None]]) -> None:
    """Write the known sizes of the outputs' non-batch axes (the tracer leaves some symbolic)."""
    for output in proto.graph.output:
        for dim, value in zip(output.type.tensor_type.shape.dim, dims.get(output.name, [])):
            if value is not None:
                dim.Clear()
                dim.dim_value = value


# ----------------------------------------------------------------------------------- DeepStream
def class_zero_is_real(meta: ModelMetadata) -> bool:
    """Whether logit index 0 is a class of the data (not the empty slot TAO's convention leaves for
    category ids starting at 1)."""
    if meta.category_ids is not None:
        return meta.category_ids[0] >= 0
    return not (meta.class_names and meta.class_names[0] in ("class_0", "background", "bg", "__background__"))


def deepstream_files(
    onnx_path: str | os.PathLike, meta: ModelMetadata, height: int, width: int
) -> dict[Path, str]:
    """DeepStream's ``labels.txt`` and ``nvinfer_config.txt`` for the ONNX file, with the values TAO
    writes: {path beside the ONNX file: text}."""
    onnx_path = Path(onnx_path)
    names = meta.class_names or [f"class_{i}" for i in range(meta.num_classes)]
    labels = onnx_path.parent / "labels.txt"
    config = "\n".join(
        [
            "[property]",
            "gie-unique-id=1",
            "net-scale-factor=0.00392156862745098",
            "offsets=0;0;0",
            "model-color-format=0",
            f"onnx-file={onnx_path.name}",
            f"labelfile-path={labels.name}",
            f"infer-dims=3;{height};{width}",
            f"num-detected-classes={len(names)}",
            "network-type=0",
            "cluster-mode=4",
            "maintain-aspect-ratio=1",
            "output-blob-names=pred_boxes;pred_logits",
            "",
            "[class-attrs-all]",
            "pre-cluster-threshold=0.5",
            "topk=20",
            "",
        ]
    )
    return {labels: "".join(f"{name}\n" for name in names), onnx_path.parent / "nvinfer_config.txt": config}


def check_deepstream_files(files: dict[Path, str], overwrite: bool) -> None:
    """UserError when a DeepStream file beside the ONNX already exists with other contents (another
    model's), unless ``overwrite``; called before anything is written."""
    for path, text in files.items():
        if not overwrite and path.exists() and path.read_text(encoding="utf-8") != text:
            raise UserError(
                f"export.onnx_file: {path} exists and describes another model; export into another folder, "
                "remove it, or set export.overwrite=true"
            )


def write_deepstream_files(files: dict[Path, str], meta: ModelMetadata) -> list[Path]:
    """Write the files of deepstream_files; a warning when class 0 is a real class, which DeepStream's
    RT-DETR parser drops as background."""
    written = [atomic_write_text(path, text) for path, text in files.items()]
    if class_zero_is_real(meta):
        name = (meta.class_names or ["class_0"])[0]
        log.warning(
            "class 0 of this model (%r) is a real class, but DeepStream's RT-DETR parser treats class 0 as "
            "background and drops its detections; use category ids starting at 1 to keep every class",
            name,
        )
    return written
