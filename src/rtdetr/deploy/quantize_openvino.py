"""CPU INT8 with OpenVINO: NNCF post-training quantization of an exported model, calibrated on images.

NNCF reads the FP32 ONNX file through OpenVINO, calibrates activation ranges on images prepared
exactly as the Detector prepares them (the calibration reader of ``rtdetr quantize``), quantizes
with its transformer scheme (weights int8 per channel; the attention's softmax and the layer norms
stay in float) and writes an OpenVINO IR (``.xml`` + ``.bin``) that carries the model's metadata in
its runtime info, so evaluate, inference and the Detector run it like the ONNX files.
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

from rtdetr.common.files import check_output_file
from rtdetr.deploy.calibration import calibration_batches, calibration_images
from rtdetr.deploy.openvino_backend import IR_SUFFIX, RT_INFO_KEY, import_openvino
from rtdetr.deploy.quantize import quantizable_onnx
from rtdetr.errors import UserError

log = logging.getLogger(__name__)


def _nncf(section: str):
    import_openvino(f"{section}.backend openvino")
    # NNCF imports torch's extension builder, which warns on machines without a CUDA toolkit
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    try:
        import nncf
    except ImportError as exc:
        raise UserError(
            f"{section}.backend openvino: NNCF is not installed: pip install 'rtdetr[openvino]'"
        ) from exc
    return nncf


def quantize_openvino(
    onnx_file: str | os.PathLike,
    output_file: str | os.PathLike,
    cal_image_dir: Sequence[str],
    *,
    cal_images: int = 100,
    preserve_aspect_ratio: bool = False,
    exclude_nodes: Sequence[str] = (),
    overwrite: bool = False,
    section: str = "quantize",
) -> dict:
    """Quantize ``onnx_file`` (an ``rtdetr export`` output) to the OpenVINO IR ``output_file`` (``.xml``,
    its ``.bin`` beside it); returns a summary. ``exclude_nodes`` are node-name patterns (``*``
    wildcards) kept in float. UserError for a missing/foreign input, an existing output (unless
    ``overwrite``), another suffix than .xml, too few images, or OpenVINO/NNCF not installed."""
    source, output = Path(onnx_file), Path(output_file)
    field = f"{section}.output_file"
    if output.suffix.lower() != IR_SUFFIX:
        raise UserError(f"{field}: {output}: an OpenVINO IR is written as NAME.xml (its weights as NAME.bin)")
    info = quantizable_onnx(source, output, overwrite, section)
    weights = output.with_suffix(".bin")
    check_output_file(
        weights, field, overwrite, f"{section}.overwrite", source=(source, f"{section}.onnx_file")
    )
    nncf = _nncf(section)
    ov = import_openvino(section)
    batch = info.batch or 1
    images_field = f"{section}.cal_image_dir"
    paths = calibration_images(
        cal_image_dir, batch, field=images_field, requirement="the ONNX file's batch size"
    )
    count = max(batch, min(cal_images, len(paths)) // batch * batch)
    model = ov.Core().read_model(str(source))
    names = [op.get_friendly_name() for op in model.get_ops()]
    patterns = list(exclude_nodes)
    excluded = [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in patterns)]
    if patterns and not excluded:
        log.warning("%s.exclude_nodes: no node matches %s", section, patterns)
    batches = list(calibration_batches(paths, info.input_size, preserve_aspect_ratio, batch, count // batch,
                                       field=images_field, requirement="the ONNX file's batch size", minimum=1))  # fmt: skip
    count = len(batches) * batch
    log.info("calibrating on %d images with NNCF, %d nodes kept in float", count, len(excluded))
    chatter = io.StringIO()  # NNCF draws progress bars on stdout
    with contextlib.redirect_stdout(chatter):
        quantized = nncf.quantize(
            model,
            nncf.Dataset(batches),
            model_type=nncf.ModelType.TRANSFORMER,
            preset=nncf.QuantizationPreset.MIXED,
            subset_size=len(batches),
            ignored_scope=nncf.IgnoredScope(names=excluded, validate=False) if excluded else None,
        )
    log.debug("%s", chatter.getvalue())
    summary = {
        "backend": "openvino", "calibration_images": count, "excluded_nodes": len(excluded),
        "nncf": nncf.__version__, "source": str(source),
    }  # fmt: skip
    data = {**info.metadata.to_dict(), "export": {**info.export_info, "quantization": summary}}
    quantized.set_rt_info(json.dumps(data), [RT_INFO_KEY])
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{output.stem}.", dir=output.parent) as tmp:
        staged = Path(tmp) / output.name
        ov.save_model(quantized, str(staged), compress_to_fp16=False)
        # the weights, then the graph that reads them
        os.replace(staged.with_suffix(".bin"), weights)
        os.replace(staged, output)
    log.info(
        "wrote %s and %s (%.1f MB, from %.1f MB)",
        output, weights.name, weights.stat().st_size / 1e6, source.stat().st_size / 1e6,
    )  # fmt: skip
    return summary
