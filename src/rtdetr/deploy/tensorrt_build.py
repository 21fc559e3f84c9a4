"""TensorRT engines from exported ONNX files: settings checks, INT8 calibration, the build.

The ONNX contract (``rtdetr export``): input ``inputs`` [B, 3, H, W] float32 RGB / 255 with H and W
fixed and B fixed or dynamic; outputs ``pred_logits`` [B, Q, C] and ``pred_boxes`` [B, Q, 4]. The
engine is built for that H x W, with an optimization profile over B when B is dynamic.

Beside the engine, ``<engine>.json`` holds the model's metadata (class names, category ids, input
size, the model section) and the build settings: TensorRT engines carry no user metadata, and this
file lets evaluate, inference and the Detector run the engine alone.

Calibration images are preprocessed exactly as the Detector prepares images (``load_image`` then
``EvalPreset``): RGB / 255, no mean/std (TAO calibrates with ImageNet mean/std; we do not).

``tensorrt`` is imported inside the functions that need it: the settings checks run on any machine.
"""

from __future__ import annotations

import difflib
import fnmatch
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import torch

from rtdetr.common.files import atomic_write, check_output_file
from rtdetr.deploy import calibration
from rtdetr.deploy.export import inspect_onnx
from rtdetr.deploy.tensorrt_common import (
    ENGINE_SUFFIXES,
    INPUT_NAME,
    engine_metadata_path,
    make_logger,
    require_tensorrt,
    write_engine_metadata,
)
from rtdetr.errors import UserError
from rtdetr.model.checkpoint import ModelMetadata

log = logging.getLogger(__name__)

DATA_TYPES = ("FP32", "FP16", "INT8")
LAYER_PRECISIONS = ("fp32", "fp16", "int8")
SECTION = "gen_trt_engine"
CAL_DIR_FIELD = f"{SECTION}.calibration.cal_image_dir"
# the calibration images and batches of gen_trt_engine (errors name its cal_image_dir field)
calibration_images = partial(calibration.calibration_images, field=CAL_DIR_FIELD)
calibration_batches = partial(calibration.calibration_batches, field=CAL_DIR_FIELD)


# --------------------------------------------------------------------------- spec checks
@dataclass
class BuildSettings:
    """What ``check_build_settings`` resolved from a gen_trt_engine section, before any TensorRT call.

    input_size (h, w) and onnx_batch (None when dynamic) come from the ONNX file; the profile
    batches are the spec's, or the fixed batch; calibration_images is empty unless INT8 calibrates
    from images (an existing cal_cache_file is reused instead).
    """

    onnx_path: Path
    engine_path: Path
    metadata: ModelMetadata
    export_info: dict
    input_size: tuple[int, int]
    onnx_batch: int | None
    min_batch: int
    opt_batch: int
    max_batch: int
    data_type: str
    layers_precision: list[tuple[str, str]] = field(default_factory=list)
    calibration_images: list[Path] = field(default_factory=list)
    cal_cache_file: Path | None = None


def check_data_type(data_type: str) -> str:
    """``data_type`` upper-cased; UserError unless FP32, FP16 or INT8."""
    value = str(data_type).upper()
    if value not in DATA_TYPES:
        raise UserError(f"{SECTION}.tensorrt.data_type: {data_type!r}; use one of {', '.join(DATA_TYPES)}")
    return value


def parse_layers_precision(entries: Iterable[str], data_type: str) -> list[tuple[str, str]]:
    """'layer_name:precision' entries -> [(layer_name, precision)], precision fp32, fp16 or int8.

    The name is everything before the last ':' and may use the wildcards * and ?. fp16 needs
    data_type FP16 or INT8 and int8 needs INT8: TensorRT only picks a precision it is allowed to use.
    """
    data_type = check_data_type(data_type)
    parsed = []
    for i, entry in enumerate(entries):
        where = f"{SECTION}.tensorrt.layers_precision[{i}]"
        name, sep, precision = str(entry).rpartition(":")
        precision = precision.strip().lower()
        if not sep or not name.strip():
            raise UserError(
                f"{where}: {entry!r} is not 'layer_name:precision' (precision fp32, fp16 or int8)"
            )
        if precision not in LAYER_PRECISIONS:
            raise UserError(f"{where}: {entry!r}: unknown precision {precision!r}; use fp32, fp16 or int8")
        if precision == "fp16" and data_type == "FP32":
            raise UserError(f"{where}: {entry!r} needs tensorrt.data_type FP16 or INT8 (it is FP32)")
        if precision == "int8" and data_type != "INT8":
            raise UserError(f"{where}: {entry!r} needs tensorrt.data_type INT8 (it is {data_type})")
        parsed.append((name.strip(), precision))
    return parsed


def profile_batches(
    onnx_batch: int | None, batch_size: int, min_batch: int, opt_batch: int, max_batch: int
) -> tuple[int, int, int]:
    """(min, opt, max) batch of the engine: a fixed-batch ONNX file's own batch; else ``batch_size``
    when it is >= 1, else the profile min <= opt <= max."""
    if batch_size == 0 or batch_size < -1:
        raise UserError(f"{SECTION}.batch_size: {batch_size}; use -1 (the optimization profile) or >= 1")
    if onnx_batch is not None:
        if batch_size not in (-1, onnx_batch):
            raise UserError(
                f"{SECTION}.batch_size: {batch_size} but the ONNX file has a fixed batch of {onnx_batch}; "
                f"set batch_size to -1 or {onnx_batch}, or export with export.batch_size -1"
            )
        return onnx_batch, onnx_batch, onnx_batch
    if batch_size >= 1:
        return batch_size, batch_size, batch_size
    if min(min_batch, opt_batch, max_batch) < 1 or not min_batch <= opt_batch <= max_batch:
        raise UserError(
            f"{SECTION}.tensorrt: batch sizes must satisfy 1 <= min_batch_size <= opt_batch_size <= "
            f"max_batch_size, got {min_batch}, {opt_batch}, {max_batch}"
        )
    return min_batch, opt_batch, max_batch


def read_onnx_input(path: Path) -> tuple[ModelMetadata, dict, int | None, tuple[int, int]]:
    """(metadata, export settings, batch or None when dynamic, (h, w)) of an rtdetr ONNX file."""
    info = inspect_onnx(path, f"{SECTION}.onnx_file")
    if info.input_size is None:
        raise UserError(
            f"{SECTION}.onnx_file: {path}: input {INPUT_NAME!r} must have a fixed height and width; "
            "export with export.input_height and export.input_width"
        )
    return info.metadata, info.export_info, info.batch, info.input_size


def check_build_settings(section) -> BuildSettings:
    """Check a ``gen_trt_engine`` spec section (GenTrtEngineConfig) without TensorRT: the ONNX file
    and its metadata, batch sizes, data type, layers_precision, and for INT8 the calibration images
    (at least cal_batches x cal_batch_size) or an existing calibration cache. UserError naming the
    field otherwise."""
    data_type = check_data_type(section.tensorrt.data_type)
    layers = parse_layers_precision(section.tensorrt.layers_precision, data_type)
    onnx_path = Path(section.onnx_file).expanduser()
    meta, export_info, onnx_batch, size = read_onnx_input(onnx_path)
    given = (section.input_height, section.input_width)
    if given != (None, None) and given != size:
        set_fields = ", ".join(
            f"{SECTION}.{name} {value}"
            for name, value in zip(("input_height", "input_width"), given)
            if value
        )
        log.warning(
            "%s but %s takes %dx%d inputs (height x width): the engine is built for the ONNX file's size",
            set_fields, onnx_path.name, *size,
        )  # fmt: skip
    spec = section.tensorrt
    batches = profile_batches(
        onnx_batch, section.batch_size, spec.min_batch_size, spec.opt_batch_size, spec.max_batch_size
    )
    if onnx_batch is not None:
        log.info("%s has a fixed batch of %d: tensorrt.*_batch_size do not apply", onnx_path.name, onnx_batch)
    engine_path = check_engine_path(section.trt_engine, onnx_path)
    if section.timing_cache and Path(section.timing_cache).is_dir():
        raise UserError(f"{SECTION}.timing_cache: {section.timing_cache} is a folder; give a file path")
    settings = BuildSettings(
        onnx_path=onnx_path, engine_path=engine_path, metadata=meta, export_info=export_info, input_size=size,
        onnx_batch=onnx_batch, min_batch=batches[0], opt_batch=batches[1], max_batch=batches[2],
        data_type=data_type, layers_precision=layers,
    )  # fmt: skip
    if data_type == "INT8":
        check_calibration(section.calibration, settings)
    return settings


def check_engine_path(value: str, onnx_path: Path) -> Path:
    """The engine path (a file that can be written, not the ONNX file; an existing engine is rebuilt,
    as TAO does); a warning when its suffix is not one evaluate and inference recognise."""
    path = Path(value).expanduser()
    check_output_file(path, f"{SECTION}.trt_engine", True, "", source=(onnx_path, f"{SECTION}.onnx_file"))
    if path.suffix.lower() not in ENGINE_SUFFIXES:
        log.warning(
            "%s.trt_engine %s: evaluate and inference recognise engines by the suffix %s",
            SECTION, path, ", ".join(ENGINE_SUFFIXES),
        )  # fmt: skip
    return path


def check_calibration(cal, settings: BuildSettings) -> None:
    """Fill settings.cal_cache_file and calibration_images from a CalibrationConfig (INT8 builds)."""
    if settings.onnx_batch is not None and cal.cal_batch_size != settings.onnx_batch:
        raise UserError(
            f"{SECTION}.calibration.cal_batch_size: {cal.cal_batch_size} but the ONNX file has a fixed batch of "
            f"{settings.onnx_batch}; set cal_batch_size={settings.onnx_batch} or export with export.batch_size -1"
        )
    settings.cal_cache_file = Path(cal.cal_cache_file).expanduser() if cal.cal_cache_file else None
    if settings.cal_cache_file is not None and settings.cal_cache_file.is_dir():
        raise UserError(
            f"{SECTION}.calibration.cal_cache_file: {settings.cal_cache_file} is a folder; give a file path"
        )
    if settings.cal_cache_file is not None and settings.cal_cache_file.is_file():
        log.info(
            "INT8: reusing the calibration cache %s (delete it to calibrate again)", settings.cal_cache_file
        )
        return
    if not cal.cal_image_dir:
        missing = f" ({settings.cal_cache_file} does not exist yet)" if settings.cal_cache_file else ""
        raise UserError(
            f"{CAL_DIR_FIELD}: INT8 needs calibration images, or an existing calibration.cal_cache_file{missing}"
        )
    settings.calibration_images = calibration_images(cal.cal_image_dir, cal.cal_batches * cal.cal_batch_size)


# ---------------------------------------------------------------------------- calibration
def make_calibrator(
    batches: Iterable[np.ndarray],
    batch_size: int,
    input_size: Sequence[int],
    cache_file: str | os.PathLike | None = None,
    device: str | torch.device = "cuda",
):
    """A TensorRT IInt8EntropyCalibrator2 fed from ``batches`` (float32 [batch_size, 3, H, W]) through
    one torch buffer on ``device``.

    With ``cache_file``: an existing file is handed to TensorRT instead of calibrating (no batch is
    read), and a new calibration is written there. An error while reading batches (which TensorRT's
    callback cannot raise) is kept in ``calibrator.error`` and raised by build_engine.
    """
    trt = require_tensorrt()

    height, width = int(input_size[0]), int(input_size[1])

    class EntropyCalibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self):
            trt.IInt8EntropyCalibrator2.__init__(self)
            self.batch_size = int(batch_size)
            self.cache_file = Path(cache_file) if cache_file else None
            self.batches = iter(batches)
            self.images = torch.empty((self.batch_size, 3, height, width), dtype=torch.float32, device=device)
            # for an end-to-end export: orig_target_sizes [B, 2] (w, h) int64, the network's own size
            self.sizes = torch.tensor([[width, height]] * self.batch_size, dtype=torch.int64, device=device)
            self.done = 0
            self.error: Exception | None = None

        def get_batch_size(self) -> int:
            return self.batch_size

        def get_batch(self, names):
            """Device addresses of the next batch, one per input name; None when done (or failed)."""
            if self.error is not None:
                return None
            try:
                batch = next(self.batches, None)
                if batch is None:
                    return None
                if tuple(batch.shape) != tuple(self.images.shape):
                    raise ValueError(
                        f"calibration batch of shape {list(batch.shape)}, expected {list(self.images.shape)}"
                    )
                self.images.copy_(torch.from_numpy(batch))
                if self.images.is_cuda:
                    torch.cuda.synchronize(self.images.device)
                buffers = {INPUT_NAME: self.images, "orig_target_sizes": self.sizes}
                unknown = [n for n in names if n not in buffers]
                if unknown:
                    raise ValueError(f"no calibration data for the network inputs {unknown}")
                self.done += 1
                log.debug("calibration batch %d", self.done)
                return [int(buffers[n].data_ptr()) for n in names]
            except Exception as exc:  # TensorRT's callback cannot carry it: build_engine raises it
                self.error = exc
                return None

        def read_calibration_cache(self):
            if self.cache_file is not None and self.cache_file.is_file():
                log.info("INT8: calibration cache %s", self.cache_file)
                return self.cache_file.read_bytes()
            return None

        def write_calibration_cache(self, cache) -> None:
            if self.cache_file is not None:
                atomic_write(self.cache_file, lambda fh: fh.write(bytes(cache)), mode="wb")
                log.info("INT8: wrote the calibration cache %s", self.cache_file)

    return EntropyCalibrator()


# ------------------------------------------------------------------------------------ build
def build_engine(
    onnx_path: str | os.PathLike,
    engine_path: str | os.PathLike,
    *,
    data_type: str = "FP32",
    workspace_mb: int = 1024,
    min_batch: int = 1,
    opt_batch: int = 1,
    max_batch: int = 4,
    timing_cache: str | os.PathLike | None = None,
    layers_precision: Sequence[str] = (),
    calibrator=None,
    verbose: bool = False,
    extra_info: dict | None = None,
) -> Path:
    """Build a TensorRT engine from an rtdetr ONNX file and write it (atomically) with ``<engine>.json``.

    The profile covers batches min..max (tuned for opt) when the ONNX batch is dynamic; a fixed-batch
    file keeps its batch. FP16 allows half precision; INT8 (needs ``calibrator``, see make_calibrator)
    allows int8 and half. ``layers_precision`` pins layers ('name:fp32', wildcards allowed) and makes
    TensorRT obey. ``timing_cache`` is read when it exists and written after the build.
    ``extra_info`` is added to the "tensorrt" entry of ``<engine>.json``.
    """
    onnx_path, engine_path = Path(onnx_path), Path(engine_path)
    data_type = check_data_type(data_type)
    layers = parse_layers_precision(layers_precision, data_type)
    meta, export_info, onnx_batch, size = read_onnx_input(onnx_path)
    batches = profile_batches(onnx_batch, -1, min_batch, opt_batch, max_batch)
    if data_type == "INT8" and calibrator is None:
        raise UserError(f"{SECTION}.tensorrt.data_type INT8 needs a calibrator (calibration images or cache)")
    if workspace_mb < 1:
        raise UserError(f"{SECTION}.tensorrt.workspace_size: {workspace_mb} MB; use at least 1")
    trt = require_tensorrt()

    logger = make_logger(trt, verbose)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # TensorRT 10: explicit batch is the only mode
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)).strip().splitlines()[0] for i in range(parser.num_errors)]
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise UserError(
            f"{SECTION}.onnx_file: TensorRT {trt.__version__} cannot parse {onnx_path}: "
            f"{errors[0] if errors else 'unknown error'}{more}"
        )
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mb) << 20)
    add_profiles(builder, config, network, batches, calibrator)
    set_precision(trt, config, network, data_type, layers, calibrator)
    cache_path = Path(timing_cache) if timing_cache else None
    use_timing_cache(config, cache_path)

    log.info(
        "building a %s TensorRT %s engine for %dx%d inputs, batch %d..%d (this can take minutes)",
        data_type, trt.__version__, *size, batches[0], batches[2],
    )  # fmt: skip
    serialized = builder.build_serialized_network(network, config)
    if calibrator is not None and calibrator.error is not None:
        error = calibrator.error
        raise error if isinstance(error, UserError) else UserError(f"INT8 calibration failed: {error}")
    if serialized is None:
        raise UserError(
            f"TensorRT could not build the engine from {onnx_path}: see its messages above "
            f"({SECTION}.verbose: true shows more)"
        )
    if calibrator is not None and calibrator.done:
        log.info("INT8: calibrated on %d batches of %d images", calibrator.done, calibrator.batch_size)
    if cache_path is not None:
        timing = config.get_timing_cache()
        atomic_write(cache_path, lambda fh: fh.write(bytes(timing.serialize())), mode="wb")
    atomic_write(engine_path, lambda fh: fh.write(memoryview(serialized)), mode="wb")
    build_info = {
        "version": trt.__version__,
        "gpu": torch.cuda.get_device_name(),
        "onnx_file": str(onnx_path),
        "data_type": data_type,
        "min_batch_size": batches[0],
        "opt_batch_size": batches[1],
        "max_batch_size": batches[2],
        "workspace_size": int(workspace_mb),
        "layers_precision": [f"{name}:{precision}" for name, precision in layers],
        **(extra_info or {}),
    }
    write_engine_metadata(engine_path, meta, export_info, build_info)
    log.info(
        "wrote %s (%.1f MB) and %s",
        engine_path,
        engine_path.stat().st_size / 1e6,
        engine_metadata_path(engine_path).name,
    )
    return engine_path


def add_profiles(builder, config, network, batches: tuple[int, int, int], calibrator) -> None:
    """The optimization profile (batch min/opt/max) over the inputs' dynamic batch axis, and for INT8
    the calibration profile (every batch = the calibrator's). Nothing for a fixed-batch network."""
    inputs = [network.get_input(i) for i in range(network.num_inputs)]
    for tensor in inputs:
        shape = tuple(tensor.shape)
        if any(d < 0 for d in shape[1:]):
            raise UserError(
                f"{SECTION}.onnx_file: input {tensor.name} has dynamic dimensions besides the batch {list(shape)}; "
                "export with fixed input_height and input_width"
            )
    dynamic = [t for t in inputs if tuple(t.shape)[0] < 0]
    if not dynamic:
        fixed = tuple(inputs[0].shape)[0] if inputs else None
        if calibrator is not None and calibrator.batch_size != fixed:
            raise UserError(
                f"{SECTION}.calibration.cal_batch_size: {calibrator.batch_size} but the network has a fixed batch of {fixed}"
            )
        return

    def profile(low: int, opt: int, high: int):
        p = builder.create_optimization_profile()
        for t in dynamic:
            rest = tuple(t.shape)[1:]
            p.set_shape(t.name, (low, *rest), (opt, *rest), (high, *rest))
        return p

    config.add_optimization_profile(profile(*batches))
    if calibrator is not None:  # TensorRT calibrates at the calibration profile's opt shape
        b = calibrator.batch_size
        config.set_calibration_profile(profile(b, b, b))


def set_precision(trt, config, network, data_type: str, layers: list[tuple[str, str]], calibrator) -> None:
    """Builder flags for the data type (INT8 also allows FP16 for layers without int8 kernels) and the
    per-layer constraints of layers_precision, which TensorRT then obeys."""
    if data_type in ("FP16", "INT8"):
        config.set_flag(trt.BuilderFlag.FP16)
    if data_type == "INT8":
        config.set_flag(trt.BuilderFlag.INT8)
        config.int8_calibrator = calibrator
    if not layers:
        return
    pinned = apply_layers_precision(trt, network, layers)
    config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
    log.info("layers_precision: %d layers pinned", pinned)


def apply_layers_precision(trt, network, layers: list[tuple[str, str]]) -> int:
    """Set ``precision`` and the floating outputs' type of each layer matched by (name or wildcard
    pattern, precision); layers with no floating output (shapes, indices) are left alone. UserError
    for a name that matches no layer. Returns the number of layers changed."""
    types = {"fp32": trt.float32, "fp16": trt.float16, "int8": trt.int8}
    floating = (trt.float32, trt.float16)
    all_layers = [network.get_layer(i) for i in range(network.num_layers)]
    names = [layer.name for layer in all_layers]
    changed = 0
    for pattern, precision in layers:
        wildcard = any(c in pattern for c in "*?[")
        matched = [
            layer for layer in all_layers
            if (fnmatch.fnmatchcase(layer.name, pattern) if wildcard else layer.name == pattern)
        ]  # fmt: skip
        if not matched:
            close = difflib.get_close_matches(pattern, names, n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else " (wildcards * and ? match several)"
            raise UserError(f"{SECTION}.tensorrt.layers_precision: no layer {pattern!r} in the network{hint}")
        for layer in matched:
            outputs = [j for j in range(layer.num_outputs) if layer.get_output(j).dtype in floating]
            if not outputs:
                continue
            layer.precision = types[precision]
            for j in outputs:
                layer.set_output_type(j, types[precision])
            changed += 1
    return changed


def use_timing_cache(config, path: Path | None) -> None:
    """Give the builder a timing cache: the file's when it exists and fits, else a new one."""
    if path is None:
        return
    blob = path.read_bytes() if path.is_file() else b""
    cache = config.create_timing_cache(blob) if blob else None
    if cache is not None and config.set_timing_cache(cache, ignore_mismatch=False):
        log.info("timing cache: %s", path)
        return
    if blob:
        log.warning("timing cache %s does not fit this TensorRT or GPU: starting a new one", path)
    config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)
