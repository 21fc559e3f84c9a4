"""CPU INT8: ONNX Runtime static quantization (QDQ) of an exported model, calibrated on images.

Weights are quantized per output channel (int8), activations per tensor (uint8) with ranges
calibrated on images prepared exactly as the Detector prepares them. MatMuls are quantized only
where their second input is a weight (the linear layers); attention's activation-by-activation
products stay in float, which costs little time and keeps accuracy. The result is an ONNX file
with the same inputs, outputs and rtdetr metadata, which evaluate, inference and the Detector run
like the FP32 one.
"""

from __future__ import annotations

import contextlib
import fnmatch
import io
import json
import logging
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import onnx
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process

from rtdetr.common.files import atomic_write, check_output_file
from rtdetr.deploy.calibration import calibration_batches, calibration_images
from rtdetr.deploy.export import METADATA_KEY, OnnxModelInfo, inspect_onnx
from rtdetr.errors import UserError

log = logging.getLogger(__name__)

CALIBRATION_METHODS = ("MinMax", "Entropy", "Percentile")


# batches whose activations are held in memory at once (histograms merge chunk by chunk)
CALIBRATION_CHUNK = 4


def _calibration_reader(batches: list):
    """ONNX Runtime's data reader over prepared batches, with the ``set_range`` that lets the
    calibrator collect in chunks (without it, every activation of every image stays in memory)."""

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.set_range(0, len(batches))

        def __len__(self) -> int:
            return len(batches)

        def set_range(self, start_index: int, end_index: int) -> None:
            self.window = iter(batches[start_index:end_index])

        def get_next(self):
            batch = next(self.window, None)
            return None if batch is None else {"inputs": batch}

    return Reader()


def _chunk(count: int) -> int:
    """The largest divisor of ``count`` up to CALIBRATION_CHUNK (the calibrator needs an even split)."""
    return max(d for d in range(1, min(CALIBRATION_CHUNK, count) + 1) if count % d == 0)


def _matching_nodes(model: onnx.ModelProto, patterns: Sequence[str]) -> list[str]:
    return [n.name for n in model.graph.node if any(fnmatch.fnmatchcase(n.name, p) for p in patterns)]


def _activation_matmuls(model: onnx.ModelProto) -> list[str]:
    """The MatMul nodes whose second input is not a weight (attention's query-key and weights-value
    products). ONNX Runtime's QDQ quantizer ignores its ``MatMulConstBOnly`` option and would
    quantize them, and the softmax between them with them: slower (its QLinearSoftmax costs more
    than the float one) and less accurate."""
    constants = {t.name for t in model.graph.initializer}
    constants |= {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    return [n.name for n in model.graph.node if n.op_type == "MatMul" and n.input[1] not in constants]


def _check_op_types(op_types: Sequence[str], field: str) -> None:
    """UserError for an empty list or names that are not ONNX operators (they are case-sensitive)."""
    unknown = [op for op in op_types if not (isinstance(op, str) and onnx.defs.has(op))]
    if not op_types or unknown:
        raise UserError(
            f"{field}: {f'not ONNX operators: {unknown}' if op_types else 'empty'}; give ONNX operator "
            "names as written in the graph, e.g. [Conv, MatMul, Gemm, Relu, MaxPool, Add, Concat, Resize]"
        )


def quantizable_onnx(source: Path, output: Path, overwrite: bool, section: str) -> OnnxModelInfo:
    """The metadata of ``source``, an FP32 raw-output export of a fixed input size that may be
    quantized to ``output``; one-line UserError otherwise (checked before any work)."""
    info = inspect_onnx(source, f"{section}.onnx_file")
    check_output_file(
        output,
        f"{section}.output_file",
        overwrite,
        f"{section}.overwrite",
        source=(source, f"{section}.onnx_file"),
    )
    if info.export_info.get("end_to_end"):
        raise UserError(
            f"{section}.onnx_file: {source} is an end-to-end export; quantize the raw-output export"
        )
    if info.export_info.get("quantization"):
        raise UserError(f"{section}.onnx_file: {source} is already quantized")
    if info.input_size is None:
        raise UserError(f"{section}.onnx_file: {source}: export with a fixed input_height and input_width")
    return info


def quantize_onnx(
    onnx_file: str | os.PathLike,
    output_file: str | os.PathLike,
    cal_image_dir: Sequence[str],
    *,
    cal_images: int = 100,
    preserve_aspect_ratio: bool = False,
    calibration_method: str = "Percentile",
    per_channel: bool = True,
    reduce_range: bool = True,
    op_types: Sequence[str] = ("Conv", "MatMul", "Gemm", "Relu", "MaxPool", "Add", "Concat", "Resize"),
    exclude_nodes: Sequence[str] = (),
    overwrite: bool = False,
    section: str = "quantize",
) -> dict:
    """Quantize ``onnx_file`` (an ``rtdetr export`` output) to ``output_file``; returns a summary.

    ``exclude_nodes`` are ONNX node-name patterns (``*`` wildcards) kept in float. UserError for a
    missing/foreign input, an existing output (unless ``overwrite``), or too few images.
    """
    source, output = Path(onnx_file), Path(output_file)
    info = quantizable_onnx(source, output, overwrite, section)
    _check_op_types(op_types, f"{section}.op_types")
    if calibration_method not in CALIBRATION_METHODS:
        raise UserError(
            f"{section}.calibration_method: {calibration_method!r} is not one of {CALIBRATION_METHODS}"
        )
    meta, export_info = info.metadata, info.export_info
    model = onnx.load(str(source))
    batch = info.batch or 1
    field = f"{section}.cal_image_dir"
    paths = calibration_images(cal_image_dir, batch, field=field, requirement="the ONNX file's batch size")
    count = max(batch, min(cal_images, len(paths)) // batch * batch)
    excluded = _matching_nodes(model, exclude_nodes)
    if not any(node.op_type in op_types and node.name not in excluded for node in model.graph.node):
        raise UserError(
            f"{section}.op_types: nothing to quantize: no node of {list(op_types)} outside "
            f"{section}.exclude_nodes in {source}"
        )
    if exclude_nodes and not excluded:
        log.warning("%s.exclude_nodes: no node matches %s", section, list(exclude_nodes))
    with tempfile.TemporaryDirectory(prefix="rtdetr_quantize_") as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
        float_matmuls = _activation_matmuls(onnx.load(str(prepared), load_external_data=False))
        quantized = Path(tmp) / "quantized.onnx"
        # all the files are offered: an unreadable one is replaced by the next; too few readable
        # ones calibrate on what there is (at least one batch), as too few files do
        batches = list(calibration_batches(paths, info.input_size, preserve_aspect_ratio, batch, count // batch,
                                           field=field, requirement="the ONNX file's batch size", minimum=1))  # fmt: skip
        count = len(batches) * batch
        log.info(
            "calibrating on %d images (%s), %d nodes kept in float", count, calibration_method, len(excluded)
        )
        chatter = io.StringIO()  # ONNX Runtime prints its calibration progress

        def run(method: str) -> None:
            with contextlib.redirect_stdout(chatter):
                quantize_static(
                str(prepared), str(quantized), _calibration_reader(batches),
                quant_format=QuantFormat.QDQ, per_channel=per_channel,
                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, reduce_range=reduce_range,
                calibrate_method=getattr(CalibrationMethod, method),
                op_types_to_quantize=list(op_types), nodes_to_exclude=excluded + float_matmuls,
                extra_options={"CalibMovingAverage": False, "CalibStridedMinMax": _chunk(len(batches)),
                               "MatMulConstBOnly": True},  # honoured by the QOperator format only
                )  # fmt: skip

        failure = None
        try:
            run(calibration_method)
        except ValueError as exc:
            # numpy cannot histogram a tensor whose values differ only in their last bits (a model
            # with saturated outputs, e.g. far from its training size); MinMax needs no histogram
            if calibration_method == "MinMax" or "bins" not in str(exc):
                raise
            failure = str(exc)
        if failure is not None:  # outside the except: the failed calibrator's memory is released
            log.warning(
                "%s.calibration_method %s: ONNX Runtime's histogram failed (%s): calibrating with MinMax",
                section, calibration_method, failure,
            )  # fmt: skip
            calibration_method = "MinMax"
            run(calibration_method)
        log.debug("%s", chatter.getvalue())
        result = onnx.load(str(quantized))
    if not any(node.op_type == "QuantizeLinear" for node in result.graph.node):
        raise UserError(
            f"{section}.op_types: nothing was quantized: no node of {list(op_types)} outside "
            f"{section}.exclude_nodes in {source}"
        )
    summary = {
        "calibration_method": calibration_method, "calibration_images": count, "per_channel": per_channel,
        "reduce_range": reduce_range,
        "op_types": list(op_types), "excluded_nodes": len(excluded), "float_matmuls": len(float_matmuls),
        "source": str(source),
    }  # fmt: skip
    data = {**meta.to_dict(), "export": {**export_info, "quantization": summary}}
    del result.metadata_props[:]
    entry = result.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(data)
    atomic_write(output, lambda fh: fh.write(result.SerializeToString()), mode="wb")
    log.info(
        "wrote %s (%.1f MB, from %.1f MB)", output, output.stat().st_size / 1e6, source.stat().st_size / 1e6
    )
    return summary
