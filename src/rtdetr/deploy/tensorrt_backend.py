"""The TensorRT backend: an engine built by ``rtdetr gen_trt_engine``, run on a CUDA GPU.

The engine's metadata (class names, input size) is read from ``<engine>.json`` beside it. Inputs and
outputs live in torch CUDA tensors; the engine runs on its own torch CUDA stream.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

from rtdetr.deploy.tensorrt_common import make_logger, read_engine_metadata, require_tensorrt
from rtdetr.errors import UserError

log = logging.getLogger(__name__)

INPUT = "inputs"
OUTPUTS = ("pred_logits", "pred_boxes")
_TORCH_DTYPES = (
    ("float32", torch.float32), ("float16", torch.float16), ("bfloat16", torch.bfloat16), ("int8", torch.int8),
    ("uint8", torch.uint8), ("int32", torch.int32), ("int64", torch.int64), ("bool", torch.bool),
)  # fmt: skip


def chunk_plan(count: int, min_batch: int, max_batch: int) -> list[tuple[int, int, int]]:
    """How ``count`` images run on an engine taking batches of min_batch..max_batch:
    [(start, stop, padding)], chunks of at most max_batch, each padded up to min_batch."""
    return [
        (start, min(start + max_batch, count), max(0, min_batch - (min(start + max_batch, count) - start)))
        for start in range(0, count, max_batch)
    ]


def cuda_device(device: str | torch.device | None) -> torch.device:
    """``device`` as a CUDA torch.device (None: cuda); UserError for a CPU or malformed device."""
    try:
        dev = torch.device("cuda" if device is None else device)
    except (RuntimeError, TypeError) as exc:
        raise UserError(f"unknown device {device!r}: use cuda or cuda:N") from exc
    if dev.type != "cuda":
        raise UserError(
            f"device {device}: a TensorRT engine runs on a CUDA GPU only; use cuda or cuda:N "
            "(the ONNX file runs on the CPU)"
        )
    return dev


def torch_dtype(trt, data_type) -> torch.dtype:
    """The torch dtype of a TensorRT DataType."""
    for name, dtype in _TORCH_DTYPES:
        if hasattr(trt, name) and data_type == getattr(trt, name):
            return dtype
    raise UserError(f"engine tensor of TensorRT type {data_type}: not supported here")


class TensorRTBackend:
    """``backend(images)`` -> (pred_logits, pred_boxes) float32 CPU tensors, run by TensorRT.

    ``input_size`` is the (height, width) the engine was built for; ``batch_size`` its fixed batch
    (None when its profile spans several). Batches above the profile's max are split into chunks,
    chunks below its min padded with copies of their last image.
    """

    def __init__(self, path: str | os.PathLike, device: str | torch.device | None = None):

        self.path = Path(path)
        if not self.path.is_file():
            raise UserError(f"{self.path}: TensorRT engine not found")
        self.metadata, info = read_engine_metadata(self.path)
        self.export_info, self.build_info = info["export"], info["tensorrt"]
        if self.export_info.get("end_to_end"):
            raise UserError(
                f"{self.path}: built from an end-to-end export (postprocess inside); evaluate, inference and "
                "the Detector run the raw outputs: export again without export.end_to_end"
            )
        self.device = cuda_device(device)
        trt = require_tensorrt(f"running the TensorRT engine {self.path.name}")
        if self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        if self.device.index >= torch.cuda.device_count():
            raise UserError(f"device {self.device}: only {torch.cuda.device_count()} CUDA GPUs are visible")
        with torch.cuda.device(self.device):
            self._logger = make_logger(trt)  # TensorRT keeps a pointer to it: it must outlive the engine
            self._runtime = trt.Runtime(self._logger)
            self.engine = self._runtime.deserialize_cuda_engine(self.path.read_bytes())
            if self.engine is None:
                raise UserError(self._load_error(trt))
            self.context = self.engine.create_execution_context()
            if self.context is None:
                raise UserError(
                    f"{self.path}: TensorRT cannot create an execution context (out of GPU memory?)"
                )
            self.stream = torch.cuda.Stream(self.device)
        self._read_io(trt)
        self.name = f"tensorrt {trt.__version__} ({self.build_info.get('data_type', '?')}, {self.device})"

    def _load_error(self, trt) -> str:
        built = self.build_info.get("version")
        other = f" (it was built with TensorRT {built})" if built and built != trt.__version__ else ""
        return (
            f"{self.path}: TensorRT {trt.__version__} cannot load this engine{other}; an engine runs only with the "
            "TensorRT version and GPU model it was built for: build it again here with `rtdetr gen_trt_engine`"
        )

    def _read_io(self, trt) -> None:
        """Tensor names and dtypes, the input size and the batch range of profile 0."""
        engine = self.engine
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.output_names = [n for n in names if n not in inputs]
        if inputs != [INPUT] or any(n not in self.output_names for n in OUTPUTS):
            raise UserError(
                f"{self.path}: the engine takes {inputs} and gives {self.output_names}; expected the input "
                f"{INPUT!r} and the outputs {', '.join(OUTPUTS)} of an `rtdetr export` ONNX file"
            )
        self.dtypes = {n: torch_dtype(trt, engine.get_tensor_dtype(n)) for n in names}
        shape = tuple(engine.get_tensor_shape(INPUT))  # (B, 3, H, W); B is -1 when dynamic
        self.input_size = (int(shape[2]), int(shape[3]))
        if shape[0] < 0:
            low, _, high = engine.get_tensor_profile_shape(INPUT, 0)
            self.min_batch, self.max_batch = int(low[0]), int(high[0])
        else:
            self.min_batch = self.max_batch = int(shape[0])
        self.batch_size = self.min_batch if self.min_batch == self.max_batch else None
        if list(self.input_size) != list(self.metadata.input_size):
            log.warning(
                "%s takes %dx%d inputs but its metadata says %s; using the engine's size",
                self.path.name, *self.input_size, self.metadata.input_size,
            )  # fmt: skip
            self.metadata.input_size = list(self.input_size)

    def __call__(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        images = images.detach()
        if len(images) == 0:
            raise ValueError("no images to run")
        logits, boxes = [], []
        for start, stop, pad in chunk_plan(len(images), self.min_batch, self.max_batch):
            chunk = images[start:stop]
            if pad:
                chunk = torch.cat([chunk, chunk[-1:].expand(pad, *chunk.shape[1:])])
            out = self._run(chunk)
            logits.append(out["pred_logits"][: stop - start])
            boxes.append(out["pred_boxes"][: stop - start])
        return torch.cat(logits), torch.cat(boxes)

    def _run(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """One batch within the profile: float32 [B, 3, H, W] -> every output as float32 CPU tensors."""
        context = self.context
        with torch.cuda.device(self.device), torch.cuda.stream(self.stream):
            inputs = images.to(self.device, self.dtypes[INPUT]).contiguous()
            if not context.set_input_shape(INPUT, tuple(inputs.shape)):
                raise UserError(
                    f"{self.path}: the engine does not take input shape {list(inputs.shape)} "
                    f"(batch {self.min_batch}..{self.max_batch}, {self.input_size[0]}x{self.input_size[1]})"
                )
            context.set_tensor_address(INPUT, inputs.data_ptr())
            outputs = {}
            for name in self.output_names:
                shape = tuple(context.get_tensor_shape(name))
                outputs[name] = torch.empty(shape, dtype=self.dtypes[name], device=self.device)
                context.set_tensor_address(name, outputs[name].data_ptr())
            if not context.execute_async_v3(self.stream.cuda_stream):
                raise RuntimeError(
                    f"{self.path}: TensorRT execution failed (see the TensorRT messages above)"
                )
            self.stream.synchronize()
        return {name: tensor.float().cpu() for name, tensor in outputs.items()}
