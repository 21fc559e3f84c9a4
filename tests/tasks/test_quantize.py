"""The quantize task: an INT8 ONNX (QDQ, per-channel weights) that evaluate, inference and the Detector
run, with the model's metadata kept; clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest
import torch

from rtdetr import Detector
from rtdetr.deploy.export import read_onnx_metadata


def _quantize(onnx_file: Path, data: Path, folder: Path) -> Path:
    """``onnx_file`` quantized by the CLI, calibrated on 24 of the training images."""
    from rtdetr.cli import main

    spec = folder / "spec.yaml"
    spec.write_text(json.dumps({"results_dir": str(folder / "results")}))
    output = folder / "model_int8.onnx"
    args = ["-q", "quantize", "-e", str(spec), f"quantize.onnx_file={onnx_file}", f"quantize.output_file={output}",
            f"quantize.cal_image_dir=[{data / 'images' / 'train_*.png'}]", "quantize.cal_images=24"]  # fmt: skip
    assert main(args) == 0
    return output


@pytest.fixture(scope="module")
def quantized(exported, trained, tmp_path_factory):
    """The trained model's INT8 file (for the accuracy test)."""
    return _quantize(exported, trained["data"], tmp_path_factory.mktemp("quantized"))


@pytest.fixture(scope="module")
def untrained_quantized(untrained_exported, untrained, tmp_path_factory):
    """The untrained model's INT8 file (for the tests of its structure, warnings and errors)."""
    return _quantize(untrained_exported, untrained["data"], tmp_path_factory.mktemp("untrained_quantized"))


def test_the_int8_model_keeps_the_contract_and_metadata(untrained_quantized, untrained_exported):
    quantized, exported = untrained_quantized, untrained_exported
    proto = onnx.load(str(quantized))
    ops = [n.op_type for n in proto.graph.node]
    assert ops.count("QuantizeLinear") > 20 and ops.count("DequantizeLinear") > 20
    assert [i.name for i in proto.graph.input] == ["inputs"]
    assert [o.name for o in proto.graph.output] == ["pred_logits", "pred_boxes"]
    assert quantized.stat().st_size < 0.4 * exported.stat().st_size  # int8 weights
    meta, info = read_onnx_metadata(quantized)
    assert meta.class_names == ["class_0", "red", "green"] and meta.input_size == [128, 128]
    assert info["quantization"]["calibration_images"] == 24
    assert info["quantization"]["calibration_method"] == "Percentile" and info["quantization"]["per_channel"]
    assert info["quantization"]["reduce_range"] is True


def test_weights_are_7_bit_by_default(untrained_quantized):
    """8-bit weights saturate ONNX Runtime's int8 kernels on CPUs without VNNI (on an AVX2 AMD EPYC
    the BCCD model's mAP50 fell from 0.53 to 0.007); 7-bit weights (reduce_range) keep it at 0.53."""
    from onnx import numpy_helper

    proto = onnx.load(str(untrained_quantized))
    inits = {t.name: t for t in proto.graph.initializer}
    conv_weights = {n.input[1] for n in proto.graph.node if n.op_type == "Conv"}
    weights = [
        numpy_helper.to_array(inits[n.input[0]])
        for n in proto.graph.node
        if n.op_type == "DequantizeLinear" and n.output[0] in conv_weights and n.input[0] in inits
    ]
    assert len(weights) > 10 and all(w.dtype.name == "int8" for w in weights)
    assert max(int(abs(w.astype(int)).max()) for w in weights) <= 64


def test_an_8_bit_file_warns_on_a_cpu_without_vnni(
    untrained_quantized, untrained_exported, untrained, tmp_path, monkeypatch, caplog
):
    from rtdetr.cli import main
    from rtdetr.deploy import OnnxBackend, onnx_backend

    quantized, exported, trained = untrained_quantized, untrained_exported, untrained

    spec = tmp_path / "spec.yaml"
    spec.write_text(json.dumps({"results_dir": str(tmp_path / "results")}))
    eight_bit = tmp_path / "model_int8_8bit.onnx"
    args = ["-q", "quantize", "-e", str(spec), f"quantize.onnx_file={exported}", f"quantize.output_file={eight_bit}",
            f"quantize.cal_image_dir=[{trained['data'] / 'images' / 'train_*.png'}]", "quantize.cal_images=8",
            "quantize.reduce_range=false"]  # fmt: skip
    assert main(args) == 0
    monkeypatch.setattr(onnx_backend, "x86_without_vnni", lambda: True)
    with caplog.at_level("WARNING", logger="rtdetr.deploy.onnx_backend"):
        OnnxBackend(quantized, device="cpu")
        assert not caplog.records
        OnnxBackend(eight_bit, device="cpu")
    assert len(caplog.records) == 1 and "quantize.reduce_range=true" in caplog.records[0].getMessage()
    monkeypatch.setattr(onnx_backend, "x86_without_vnni", lambda: False)
    caplog.clear()
    OnnxBackend(eight_bit, device="cpu")
    assert not caplog.records


def test_attention_products_and_softmax_stay_float(untrained_quantized):
    """ONNX Runtime's QDQ quantizer ignores MatMulConstBOnly: without our exclusion attention's
    activation-by-activation MatMuls (and the softmax between them) were quantized, which made the
    INT8 model slower (QLinearSoftmax) and less accurate."""
    proto = onnx.load(str(untrained_quantized))
    weights = {t.name for t in proto.graph.initializer}
    produced_by = {o: n for n in proto.graph.node for o in n.output}
    matmuls = [n for n in proto.graph.node if n.op_type == "MatMul"]

    def dequantized(name: str) -> bool:
        return name in produced_by and produced_by[name].op_type == "DequantizeLinear"

    def is_weight(name: str) -> bool:  # a weight, possibly behind its DequantizeLinear
        return name in weights or (dequantized(name) and produced_by[name].input[0] in weights)

    activation = [n for n in matmuls if not is_weight(n.input[1])]
    linear = [n for n in matmuls if is_weight(n.input[1])]
    assert activation and linear  # the encoder's and decoder's attention; the linear layers
    assert not any(dequantized(i) for n in activation for i in n.input), [n.name for n in activation]
    assert all(dequantized(n.input[0]) and dequantized(n.input[1]) for n in linear)
    softmax = [n for n in proto.graph.node if n.op_type == "Softmax"]
    assert softmax and not any(dequantized(n.input[0]) for n in softmax)


@pytest.mark.slow
def test_evaluate_and_the_detector_run_it_close_to_fp32(
    cli, task_spec, quantized, exported, trained, tmp_path
):
    stats = {}
    for name, model in (("fp32", exported), ("int8", quantized)):
        result = cli("evaluate", "-e", task_spec(), f"evaluate.trt_engine={model}",
                     f"evaluate.results_dir={tmp_path / name}")  # fmt: skip
        assert result.code == 0, result.err
        stats[name] = json.loads((tmp_path / name / "results.json").read_text())["stats"]
    # a tiny model on 16 images: the stated tolerance is 0.05 mAP50 (measured about 0.01)
    assert stats["int8"]["mAP50"] >= stats["fp32"]["mAP50"] - 0.05, stats
    image = trained["data"] / "images" / "test_0000.png"
    (fp32,) = Detector.from_file(exported, device="cpu").predict(image, conf=0.0)
    (int8,) = Detector.from_file(quantized, device="cpu").predict(image, conf=0.0)
    assert len(int8) == len(fp32) and abs(float(int8.scores[0]) - float(fp32.scores[0])) < 0.1


@pytest.mark.slow
def test_a_saturated_model_calibrates_with_minmax(cli, trained, tmp_path):
    """Equal class scores everywhere (a flat score head): the query selection takes the first tokens,
    at 416 px the invalid anchors of the finest grid's top row, whose boxes saturate at 1; tensors
    whose values differ only in their last bits, which ONNX Runtime's histogram calibrators cannot
    bin ("Too many bins for data range"). quantize falls back to MinMax and says so."""
    checkpoint = torch.load(trained["checkpoint"], map_location="cpu", weights_only=False)
    checkpoint["state_dict"]["model.decoder.enc_score_head.weight"].zero_()
    torch.save(checkpoint, tmp_path / "flat.pth")
    spec = tmp_path / "spec.yaml"
    spec.write_text(json.dumps({"results_dir": str(tmp_path / "results")}))
    fp32, int8 = tmp_path / "m416.onnx", tmp_path / "m416_int8.onnx"
    result = cli("export", "-e", spec, f"export.checkpoint={tmp_path / 'flat.pth'}", f"export.onnx_file={fp32}",
                 "export.input_width=416", "export.input_height=416", "export.batch_size=1")  # fmt: skip
    assert result.code == 0, result.err
    result = cli("quantize", "-e", spec, f"quantize.onnx_file={fp32}", f"quantize.output_file={int8}",
                 f"quantize.cal_image_dir=[{trained['data'] / 'images' / 'train_*.png'}]", "quantize.cal_images=4",
                 "quantize.calibration_method=Percentile")  # fmt: skip
    assert result.code == 0, result.err
    assert "calibration_method Percentile: ONNX Runtime's histogram failed" in result.err
    assert read_onnx_metadata(int8)[1]["quantization"]["calibration_method"] == "MinMax"
    image = trained["data"] / "images" / "test_0000.png"
    (want,) = Detector.from_file(fp32, device="cpu").predict(image, conf=0.0)
    (got,) = Detector.from_file(int8, device="cpu").predict(image, conf=0.0)
    assert abs(float(got.scores[0]) - float(want.scores[0])) < 0.1


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("quantize.output_file={quantized}", "exists; remove it or set quantize.overwrite=true"),
        ("quantize.output_file={exported}", "the same file as quantize.onnx_file"),
        ("quantize.cal_image_dir=[{tmp}/*.jpg]", "quantize.cal_image_dir[0]"),
        ("quantize.onnx_file={tmp}/none.onnx", "quantize.onnx_file: {tmp}/none.onnx: ONNX file not found"),
        ("quantize.onnx_file={tmp}/spec.yaml", "not a readable ONNX file"),
        ("quantize.onnx_file={quantized}", "is already quantized"),
        ("quantize.op_types=[conv,Foo,Gemm]", "quantize.op_types: not ONNX operators: ['conv', 'Foo']"),
        ("quantize.op_types=[]", "quantize.op_types: empty"),
        ("quantize.op_types=[Softplus]", "quantize.op_types: nothing to quantize: no node of ['Softplus']"),
    ],
)
def test_bad_input_is_one_clear_line(
    cli, untrained_exported, untrained_quantized, untrained, tmp_path, override, expected
):
    exported, quantized, trained = untrained_exported, untrained_quantized, untrained
    spec = tmp_path / "spec.yaml"
    spec.write_text(json.dumps({"results_dir": str(tmp_path / "results")}))
    names = {"quantized": quantized, "exported": exported, "tmp": tmp_path}
    args = {
        "quantize.onnx_file": str(exported),
        "quantize.output_file": str(tmp_path / "out.onnx"),
        "quantize.cal_image_dir": f"[{trained['data'] / 'images'}]",
    }
    key, value = override.format(**names).split("=", 1)
    args[key] = value
    result = cli("quantize", "-e", spec, *(f"{k}={v}" for k, v in args.items()))
    assert result.code == 2
    assert len(result.error_lines) == 1 and expected.format(**names) in result.error_lines[0], result.err
    assert not (tmp_path / "out.onnx").exists()
