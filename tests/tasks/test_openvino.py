"""OpenVINO: the runtime of ONNX files and IRs on the CPU (evaluate, inference, the Detector), NNCF's
INT8 IR from `rtdetr quantize`, and the one-line errors without the extra installed."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import openvino as ov
import pytest
import torch

from rtdetr import Detector
from rtdetr.deploy import backends, openvino_backend
from rtdetr.deploy.backends import OnnxBackend, OpenVinoBackend, load_backend
from rtdetr.errors import UserError


def _quantize_ir(cli, onnx_file: Path, data: Path, folder: Path, *extra: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    spec = folder / "spec.json"
    spec.write_text(json.dumps({"results_dir": str(folder / "results")}))
    output = folder / "model_int8.xml"
    result = cli("-q", "quantize", "-e", spec, f"quantize.onnx_file={onnx_file}", f"quantize.output_file={output}",
                 "quantize.backend=openvino", f"quantize.cal_image_dir=[{data / 'images' / 'train_*.png'}]",
                 "quantize.cal_images=8", *extra)  # fmt: skip
    assert result.code == 0, result.err
    return output


def test_openvino_gives_onnx_runtimes_outputs_on_the_same_file(untrained_exported):
    torch.manual_seed(0)
    images = torch.rand(3, 3, 128, 128)
    ort = load_backend(untrained_exported, device="cpu", runtime="onnxruntime")
    ovino = load_backend(untrained_exported, device="cpu", runtime="openvino")
    assert isinstance(ort, OnnxBackend) and isinstance(ovino, OpenVinoBackend)
    assert ovino.metadata.to_dict() == ort.metadata.to_dict() and ovino.input_size == ort.input_size == (
        128,
        128,
    )
    for a, b in zip(ort(images), ovino(images)):
        assert a.shape == b.shape and (a - b).abs().max().item() <= 1e-4
    one = ovino(images[:1])  # a dynamic batch: any size runs
    assert torch.allclose(one[0], ovino(images)[0][:1], atol=1e-5)


def test_auto_is_openvino_on_the_cpu_and_onnx_runtime_without_it(untrained_exported, monkeypatch):
    assert isinstance(load_backend(untrained_exported, device="cpu"), OpenVinoBackend)
    monkeypatch.setattr(backends, "openvino_installed", lambda: False)
    monkeypatch.setattr(openvino_backend, "openvino_installed", lambda: False)
    assert isinstance(load_backend(untrained_exported, device="cpu"), OnnxBackend)
    with pytest.raises(UserError, match=r"OpenVINO is not installed: pip install 'rtdetr\[openvino\]'"):
        load_backend(untrained_exported, device="cpu", runtime="openvino")
    with pytest.raises(UserError, match="OpenVINO is not installed"):
        Detector.from_file(untrained_exported.with_suffix(".xml"))


def test_without_openvino_the_cli_says_how_to_install_it(cli, untrained_task_spec, untrained_exported, untrained,
                                                          tmp_path, monkeypatch):  # fmt: skip
    monkeypatch.setattr(openvino_backend, "openvino_installed", lambda: False)
    monkeypatch.setattr(backends, "openvino_installed", lambda: False)
    result = cli("evaluate", "-e", untrained_task_spec(), f"evaluate.trt_engine={untrained_exported}",
                 "evaluate.runtime=openvino")  # fmt: skip
    lines = result.err.strip().splitlines()
    assert result.code == 2 and "pip install 'rtdetr[openvino]'" in lines[-1], result.err
    output = tmp_path / "int8.xml"
    result = cli("quantize", "-e", untrained_task_spec(), f"quantize.onnx_file={untrained_exported}",
                 f"quantize.output_file={output}", "quantize.backend=openvino",
                 f"quantize.cal_image_dir=[{untrained['data'] / 'images'}]")  # fmt: skip
    lines = result.err.strip().splitlines()
    assert result.code == 2 and "pip install 'rtdetr[openvino]'" in lines[-1], result.err
    assert not output.exists()


def test_an_ir_without_weights_or_metadata_and_a_wrong_output_name_are_one_line(cli, untrained_exported,
                                                                                untrained, tmp_path):  # fmt: skip
    plain = tmp_path / "plain.xml"  # converted by OpenVINO itself: no rtdetr metadata
    ov.save_model(ov.Core().read_model(str(untrained_exported)), str(plain))
    with pytest.raises(UserError, match="an OpenVINO IR without rtdetr metadata"):
        Detector.from_file(plain)
    lonely = tmp_path / "lonely.xml"
    shutil.copy(plain, lonely)
    with pytest.raises(UserError, match=r"its weights file lonely.bin is missing beside it"):
        Detector.from_file(lonely)
    with pytest.raises(UserError, match="rtdetr runs OpenVINO on the CPU"):
        load_backend(untrained_exported, device="cuda", runtime="openvino")
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"results_dir": str(tmp_path / "results")}))
    images = f"quantize.cal_image_dir=[{untrained['data'] / 'images'}]"
    result = cli("quantize", "-e", spec, f"quantize.onnx_file={untrained_exported}", "quantize.backend=openvino",
                 f"quantize.output_file={tmp_path / 'int8.onnx'}", images)  # fmt: skip
    assert result.code == 2 and "an OpenVINO IR is written as NAME.xml" in result.err.strip().splitlines()[-1]
    (tmp_path / "taken.bin").write_bytes(b"keep")
    result = cli("quantize", "-e", spec, f"quantize.onnx_file={untrained_exported}", "quantize.backend=openvino",
                 f"quantize.output_file={tmp_path / 'taken.xml'}", images)  # fmt: skip
    assert result.code == 2 and "taken.bin exists" in result.err.strip().splitlines()[-1]
    assert (tmp_path / "taken.bin").read_bytes() == b"keep" and not (tmp_path / "taken.xml").exists()


@pytest.mark.slow
def test_the_nncf_int8_ir_keeps_the_metadata_and_evaluates_close_to_fp32(cli, task_spec, exported, trained,
                                                                         tmp_path):  # fmt: skip
    ir = _quantize_ir(cli, exported, trained["data"], tmp_path / "int8")
    assert ir.with_suffix(".bin").is_file()
    detector = Detector.from_file(ir)
    assert isinstance(detector.backend, OpenVinoBackend)
    assert detector.input_size == (128, 128) and detector.class_names == ["class_0", "red", "green"]
    quantization = detector.backend.export_info["quantization"]
    assert quantization["backend"] == "openvino" and quantization["calibration_images"] == 8
    ops = {op.get_type_name() for op in ov.Core().read_model(str(ir)).get_ops()}
    assert "FakeQuantize" in ops  # NNCF's int8 quantize-dequantize pairs
    stats = {}
    for name, model in (("fp32", exported), ("int8", ir)):
        result = cli("evaluate", "-e", task_spec(), f"evaluate.trt_engine={model}",
                     f"evaluate.results_dir={tmp_path / name}")  # fmt: skip
        assert result.code == 0, result.err
        stats[name] = json.loads((tmp_path / name / "results.json").read_text())["stats"]
    # a tiny model on 16 images: the stated tolerance is 0.05 mAP50
    assert stats["int8"]["mAP50"] >= stats["fp32"]["mAP50"] - 0.05, stats
    result = cli("inference", "-e", task_spec(), f"inference.trt_engine={ir}",
                 f"inference.results_dir={tmp_path / 'inference'}")  # fmt: skip
    assert result.code == 0, result.err
    assert len(list((tmp_path / "inference" / "labels").glob("*.txt"))) == 16
