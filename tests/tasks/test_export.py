"""The export task: TAO's ONNX contract, parity with PyTorch, metadata, DeepStream files, and the
exported model run by evaluate, inference and the Detector with the checkpoint's results."""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from rtdetr import Detector
from rtdetr.common import files as fileio
from rtdetr.common.status import read_status
from rtdetr.deploy import OnnxBackend, OpenVinoBackend, TorchBackend
from rtdetr.deploy.export import class_zero_is_real, read_onnx_metadata
from rtdetr.model.checkpoint import ModelMetadata, load_model


def _dims(value_info) -> list:
    return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]


@pytest.mark.slow
def test_the_onnx_contract_metadata_and_deepstream_files(exported, trained):
    proto = onnx.load(str(exported))
    onnx.checker.check_model(proto, full_check=True)
    assert [i.name for i in proto.graph.input] == ["inputs"]
    assert [o.name for o in proto.graph.output] == ["pred_logits", "pred_boxes"]
    assert _dims(proto.graph.input[0]) == ["batch", 3, 128, 128]
    assert _dims(proto.graph.output[0]) == ["batch", 30, 3] and _dims(proto.graph.output[1]) == [
        "batch",
        30,
        4,
    ]
    assert proto.opset_import[0].version == 17
    meta, info = read_onnx_metadata(exported)
    assert meta.class_names == ["class_0", "red", "green"] and meta.category_ids == [-1, 1, 2]
    assert meta.input_size == [128, 128] and meta.model["backbone"] == "resnet_18vd"
    assert info["batch_size"] == -1 and info["opset"] == 17
    ops = [node.op_type for node in proto.graph.node]
    fused = load_model(trained["checkpoint"]).deploy()  # RepVGG branches and conv + BatchNorm fused
    assert "BatchNormalization" not in ops
    assert ops.count("Conv") == sum(isinstance(m, torch.nn.Conv2d) for m in fused.modules())
    folder = exported.parent
    assert (folder / "labels.txt").read_text().splitlines() == ["class_0", "red", "green"]
    config = (folder / "nvinfer_config.txt").read_text()
    for line in ("net-scale-factor=0.00392156862745098", "offsets=0;0;0", "model-color-format=0",
                 "network-type=0", "cluster-mode=4", "maintain-aspect-ratio=1",
                 "output-blob-names=pred_boxes;pred_logits", "infer-dims=3;128;128", "num-detected-classes=3",
                 "labelfile-path=labels.txt", "onnx-file=model.onnx", "pre-cluster-threshold=0.5", "topk=20"):  # fmt: skip
        assert line in config.splitlines()
    status = read_status(folder / "results" / "export")
    assert status[-1]["status"] == "SUCCESS"
    assert next(s["kpi"] for s in status if s.get("kpi"))["max_abs_diff_vs_pytorch"] <= 1e-4


@pytest.mark.slow
@pytest.mark.parametrize("batch", [1, 3])
def test_onnx_runtime_matches_pytorch(exported, trained, batch):
    images = torch.rand(batch, 3, 128, 128, generator=torch.Generator().manual_seed(batch))
    reference = TorchBackend.from_checkpoint(trained["checkpoint"], device="cpu", fuse=False)(images)
    session = ort.InferenceSession(str(exported), providers=["CPUExecutionProvider"])
    logits, boxes = session.run(None, {"inputs": images.numpy()})
    assert np.abs(logits - reference[0].numpy()).max() <= 1e-4
    assert np.abs(boxes - reference[1].numpy()).max() <= 1e-4


@pytest.mark.slow
def test_fixed_batch_end_to_end_and_errors(cli, trained, task_spec, tmp_path):
    common = [f"export.checkpoint={trained['checkpoint']}", "export.input_width=96", "export.input_height=96",
              f"results_dir={tmp_path / 'results'}"]  # fmt: skip
    spec = tmp_path / "spec.yaml"
    spec.write_text("{}")
    fixed = tmp_path / "fixed.onnx"
    assert cli("export", "-e", spec, *common, f"export.onnx_file={fixed}", "export.batch_size=2").code == 0
    assert _dims(onnx.load(str(fixed)).graph.input[0]) == [2, 3, 96, 96]
    backend = OnnxBackend(fixed, device="cpu")  # runs any batch: split and padded to 2
    images = torch.rand(3, 3, 96, 96)
    reference = TorchBackend.from_checkpoint(trained["checkpoint"], device="cpu")(images)
    for ours, ref in zip(backend(images), reference):
        assert ours.shape == ref.shape and (ours - ref).abs().max() <= 1e-4

    other = cli(
        "export", "-e", spec, *common, f"export.onnx_file={tmp_path / 'other.onnx'}", "export.input_width=64"
    )
    assert other.code == 2 and "nvinfer_config.txt exists and describes another model" in other.error_lines[0]
    assert not (tmp_path / "other.onnx").exists()  # nothing written
    again = cli("export", "-e", spec, *common, f"export.onnx_file={fixed}")
    assert again.code == 2 and "exists; remove it or set export.overwrite=true" in again.error_lines[0]
    assert cli("export", "-e", spec, *common, f"export.onnx_file={fixed}", "export.overwrite=true").code == 0
    old = cli(
        "export",
        "-e",
        spec,
        *common,
        f"export.onnx_file={tmp_path / 'old' / 'old.onnx'}",
        "export.opset_version=15",
    )
    assert old.code == 2 and "export.opset_version: 15 is too old" in old.error_lines[0]
    assert not (tmp_path / "old" / "old.onnx").exists()

    e2e = tmp_path / "e2e.onnx"
    assert cli("export", "-e", spec, *common, f"export.onnx_file={e2e}", "export.end_to_end=true").code == 0
    session = ort.InferenceSession(str(e2e), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["inputs", "orig_target_sizes"]
    assert [o.name for o in session.get_outputs()] == ["labels", "boxes", "scores"]
    image = torch.rand(1, 3, 96, 96)
    labels, boxes, scores = session.run(
        None, {"inputs": image.numpy(), "orig_target_sizes": np.array([[200, 100]])}
    )
    detector = Detector.from_checkpoint(
        trained["checkpoint"], device="cpu", input_size=(96, 96), num_select=30
    )
    (det,) = detector.detect_batch(
        image, torch.tensor([[100.0, 200.0]]), torch.tensor([[100, 200]]), conf=0.0
    )
    assert scores.shape == (1, 90)  # model.num_select 300 (the spec default) of 30 queries x 3 classes
    np.testing.assert_allclose(scores[0, :30], det.scores, atol=1e-5)  # both sorted by score
    np.testing.assert_array_equal(labels[0, :30], det.labels)
    clipped = np.minimum(np.maximum(boxes[0, :30], 0), [200, 100, 200, 100])
    np.testing.assert_allclose(clipped, det.boxes, atol=1e-3)
    with pytest.raises(Exception, match="end-to-end export"):
        OnnxBackend(e2e, device="cpu")


def test_output_paths_opsets_and_sizes_that_cannot_work_are_one_line(cli, untrained, tmp_path):
    trained = untrained
    common = [f"export.checkpoint={trained['checkpoint']}", "export.input_width=96", "export.input_height=96",
              f"results_dir={tmp_path / 'results'}"]  # fmt: skip
    spec = tmp_path / "spec.yaml"
    spec.write_text("{}")
    (tmp_path / "folder.onnx").mkdir()
    (tmp_path / "afile").write_text("")
    cases = [
        (["export.onnx_file={t}/folder.onnx", "export.overwrite=true"], "export.onnx_file: {t}/folder.onnx is a folder"),
        (["export.onnx_file={t}/afile/m.onnx"], "export.onnx_file: {t}/afile/m.onnx: {t}/afile is a file, not a folder"),
        (["export.onnx_file={t}/new.onnx", "export.opset_version=30"], "export.opset_version: 30 is newer than"),
        (["export.onnx_file={t}/new/tiny.onnx", "export.input_width=32", "export.input_height=32"],
         "the input is too small for this model: its feature maps (4x4 + 2x2 + 1x1) give 21 query candidates"),
    ]  # fmt: skip
    for overrides, expected in cases:
        result = cli("export", "-e", spec, *common, *(o.format(t=tmp_path) for o in overrides))
        assert result.code == 2 and len(result.error_lines) == 1, result.err
        assert expected.format(t=tmp_path) in result.error_lines[0]
    assert sorted(p.name for p in tmp_path.glob("*.onnx")) == ["folder.onnx"]  # nothing written
    assert not (tmp_path / "new").exists()  # nor a folder left behind by the failed export

    # a folder that cannot be written (read-only file systems too; root passes every mode check,
    # so the check is simulated): one line before the export runs
    read_only = tmp_path / "ro"
    read_only.mkdir()
    real_access = os.access
    fake = lambda path, mode: False if Path(path) == read_only else real_access(path, mode)  # noqa: E731
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(os, "access", fake)
        for target in (read_only / "m.onnx", read_only / "sub" / "m.onnx"):
            result = cli("export", "-e", spec, *common, f"export.onnx_file={target}")
            assert result.code == 2 and len(result.error_lines) == 1, result.err
            assert f"export.onnx_file: {target}: cannot write in {read_only}" in result.err

    # written files get the usual permissions (0644 under umask 022), not a temporary file's 0600
    plain = tmp_path / "plain" / "model"
    result = cli("export", "-e", spec, *common, f"export.onnx_file={plain}")
    assert result.code == 0 and "recognise ONNX files by the suffix .onnx" in result.err
    for name in ("model", "labels.txt", "nvinfer_config.txt"):
        assert stat.S_IMODE((plain.parent / name).stat().st_mode) == 0o666 & ~fileio._UMASK, name
    # an end-to-end graph over it: the DeepStream files beside now describe something else
    result = cli("export", "-e", spec, *common, f"export.onnx_file={plain}", "export.end_to_end=true",
                 "export.overwrite=true")  # fmt: skip
    assert result.code == 0 and "describe this file as a raw-output export" in result.err


@pytest.mark.slow
@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_evaluate_and_inference_run_the_onnx_file_with_the_checkpoints_results(
    cli, task_spec, exported, tmp_path, runtime
):
    spec = task_spec(inference={"conf_threshold": 0.3})
    runs = {}
    for name, model in (("pth", None), ("onnx", str(exported))):
        extra = [f"evaluate.trt_engine={model}", f"inference.trt_engine={model}", f"evaluate.runtime={runtime}",
                 f"inference.runtime={runtime}"] if model else []  # fmt: skip
        for task in ("evaluate", "inference"):
            result = cli(task, "-e", spec, f"{task}.results_dir={tmp_path / name / task}", *extra)
            assert result.code == 0, result.err
        runs[name] = tmp_path / name
    stats = {n: json.loads((d / "evaluate" / "results.json").read_text())["stats"] for n, d in runs.items()}
    for key in stats["pth"]:
        assert abs(stats["pth"][key] - stats["onnx"][key]) <= 1e-3, key
    labels = sorted(p.name for p in (runs["pth"] / "inference" / "labels").glob("*.txt"))
    assert labels == sorted(p.name for p in (runs["onnx"] / "inference" / "labels").glob("*.txt"))
    for name in labels:
        a, b = ((runs[n] / "inference" / "labels" / name).read_text().split("\n") for n in ("pth", "onnx"))
        assert len(a) == len(b)
        for line_a, line_b in zip(a, b):  # the same lines, up to the last printed digit
            assert line_a.split()[0:1] == line_b.split()[0:1]
            np.testing.assert_allclose([float(v) for v in line_a.split()[1:]], [float(v) for v in line_b.split()[1:]],
                                       atol=1.5e-3)  # fmt: skip
    detector = Detector.from_file(exported, device="cpu")
    assert detector.input_size == (128, 128) and detector.class_names == ["class_0", "red", "green"]


def test_model_files_under_other_names_and_empty_ones(untrained_exported, tmp_path):
    from rtdetr.errors import UserError

    exported = untrained_exported

    renamed = tmp_path / "model_without_suffix"
    shutil.copy(exported, renamed)
    # recognised by content, by either runtime
    assert isinstance(Detector.from_file(renamed, device="cpu", runtime="onnxruntime").backend, OnnxBackend)
    assert isinstance(Detector.from_file(renamed, device="cpu", runtime="openvino").backend, OpenVinoBackend)
    with pytest.raises(
        UserError, match=r"an ONNX model, not a checkpoint: run it as evaluate.trt_engine"
    ) as err:
        Detector.from_checkpoint(exported, device="cpu")
    assert "weights_only" not in str(err.value)
    (tmp_path / "empty.onnx").write_bytes(b"")
    with pytest.raises(UserError, match=r"empty.onnx: not a readable ONNX file: the file is empty"):
        Detector.from_file(tmp_path / "empty.onnx", device="cpu")


def test_class_zero_is_real_only_when_a_category_maps_to_it():
    assert not class_zero_is_real(ModelMetadata(model={}, num_classes=3, category_ids=[-1, 1, 2]))
    assert class_zero_is_real(ModelMetadata(model={}, num_classes=80, category_ids=[1, 2, 3]))
    assert class_zero_is_real(ModelMetadata(model={}, num_classes=2, class_names=["cat", "dog"]))
