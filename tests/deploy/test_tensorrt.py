"""gen_trt_engine and the TensorRT backend, without a GPU: spec checks, calibration data equal to the
Detector's preprocessing, the one-line errors on a machine without TensorRT, and the build wiring
against a stand-in of the TensorRT API (tests/deploy/conftest.py)."""

from __future__ import annotations

import functools
import json

import numpy as np
import pytest
import torch

from rtdetr.common.status import read_status
from rtdetr.config.schema import GenTrtEngineConfig
from rtdetr.data.images import load_image
from rtdetr.deploy import OnnxBackend, load_backend
from rtdetr.deploy import tensorrt_build as tb
from rtdetr.deploy import tensorrt_common as tc
from rtdetr.deploy.detector import Detector
from rtdetr.deploy.tensorrt_backend import chunk_plan, cuda_device
from rtdetr.errors import UserError

NO_TRT = "needs TensorRT and a CUDA GPU"


def _section(onnx, tmp_path, **changes) -> GenTrtEngineConfig:
    section = GenTrtEngineConfig(onnx_file=str(onnx), trt_engine=str(tmp_path / "out" / "model.engine"))
    section.input_width = section.input_height = 64
    for key, value in changes.items():
        target = section
        *parents, name = key.split("__")
        for parent in parents:
            target = getattr(target, parent)
        setattr(target, name, value)
    return section


def _spec(tmp_path, onnx, **gen) -> dict:
    return {
        "results_dir": str(tmp_path / "results"),
        "gen_trt_engine": {
            "onnx_file": str(onnx), "trt_engine": str(tmp_path / "model.engine"),
            "input_width": 64, "input_height": 64, **gen,
        },
    }  # fmt: skip


# ------------------------------------------------------------------------------ calibration data
@pytest.mark.parametrize("preserve", [False, True])
def test_calibration_batches_equal_the_detectors_preprocessing(tiny_onnx, calibration_dir, preserve):
    detector = Detector(OnnxBackend(tiny_onnx, device="cpu"), preserve_aspect_ratio=preserve)
    paths = sorted(calibration_dir.glob("*.png"))
    batches = list(tb.calibration_batches(paths, (64, 64), preserve, batch_size=2, batches=3))
    assert len(batches) == 3
    for i, batch in enumerate(batches):
        assert batch.dtype == np.float32 and batch.shape == (2, 3, 64, 64) and batch.flags["C_CONTIGUOUS"]
        for j in range(2):
            expected = detector.prepare(load_image(paths[2 * i + j]))[0].numpy()
            np.testing.assert_array_equal(batch[j], expected)


def test_an_unreadable_image_is_skipped_and_replaced_by_the_next(calibration_dir, caplog):
    (calibration_dir / "img_1.png").write_bytes(b"not an image")
    paths = sorted(calibration_dir.glob("*.png"))
    batches = list(tb.calibration_batches(paths, (64, 64), False, batch_size=5, batches=1))
    expected = [tb.calibration_batches([p], (64, 64), False, 1, 1) for p in paths if p.name != "img_1.png"]
    np.testing.assert_array_equal(batches[0], np.concatenate([next(e) for e in expected]))
    assert "img_1.png" in caplog.text
    with pytest.raises(UserError, match=r"only 5 readable images \(1 unreadable\).* = 6"):
        list(tb.calibration_batches(paths, (64, 64), False, batch_size=3, batches=2))
    # with a minimum (quantize): fewer batches once the minimum is reached, an error before
    assert len(list(tb.calibration_batches(paths, (64, 64), False, batch_size=2, batches=3, minimum=1))) == 2
    assert "5 readable images (1 unreadable): calibrating on 4, not 6" in caplog.text
    with pytest.raises(UserError, match=r"only 5 readable images \(1 unreadable\).* = 6"):
        list(tb.calibration_batches(paths, (64, 64), False, batch_size=6, batches=2, minimum=1))


def test_calibration_images_needs_enough_images_and_no_videos(calibration_dir):
    images = tb.calibration_images([str(calibration_dir)], needed=6)
    assert sorted(images) == sorted(calibration_dir.glob("*.png"))
    assert images == tb.calibration_images([str(calibration_dir)], needed=6)  # a fixed order
    with pytest.raises(UserError) as err:
        tb.calibration_images([str(calibration_dir)], needed=8)
    assert str(err.value) == (
        "gen_trt_engine.calibration.cal_image_dir: found 6 images, INT8 calibration needs "
        "cal_batches x cal_batch_size = 8"
    )
    (calibration_dir / "clip.mp4").write_bytes(b"")
    with pytest.raises(UserError, match=r"cal_image_dir: .*clip\.mp4 is a video"):
        tb.calibration_images([str(calibration_dir)], needed=1)


# ------------------------------------------------------------------------------- spec checks
def test_check_build_settings_resolves_the_onnx_file(tiny_onnx, tiny_onnx_batch2, tmp_path):
    s = tb.check_build_settings(_section(tiny_onnx, tmp_path, tensorrt__max_batch_size=8))
    assert (s.input_size, s.onnx_batch, s.min_batch, s.opt_batch, s.max_batch) == ((64, 64), None, 1, 1, 8)
    assert s.metadata.class_names == ["cat", "dog", "bird"] and s.data_type == "FP32"
    s = tb.check_build_settings(_section(tiny_onnx, tmp_path, batch_size=3))
    assert (s.min_batch, s.opt_batch, s.max_batch) == (3, 3, 3)
    s = tb.check_build_settings(_section(tiny_onnx_batch2, tmp_path))
    assert (s.onnx_batch, s.min_batch, s.max_batch) == (2, 2, 2)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"tensorrt__layers_precision": ["no_colon"]}, "layers_precision[0]: 'no_colon' is not 'layer_name:precision'"),
        ({"tensorrt__layers_precision": ["a:fp32", "/x/Add:fp64"]}, "layers_precision[1]: '/x/Add:fp64': unknown precision 'fp64'"),
        ({"tensorrt__layers_precision": [":fp32"]}, "is not 'layer_name:precision'"),
        ({"tensorrt__layers_precision": ["/x:fp16"]}, "'/x:fp16' needs tensorrt.data_type FP16 or INT8 (it is FP32)"),
        ({"tensorrt__layers_precision": ["/x:int8"], "tensorrt__data_type": "FP16"}, "needs tensorrt.data_type INT8"),
        ({"tensorrt__min_batch_size": 2, "tensorrt__opt_batch_size": 1}, "min_batch_size <= opt_batch_size <= max_batch_size, got 2, 1, 4"),
        ({"tensorrt__opt_batch_size": 8}, "got 1, 8, 4"),
        ({"tensorrt__data_type": "INT4"}, "gen_trt_engine.tensorrt.data_type: 'INT4'"),
        ({"tensorrt__data_type": "INT8"}, "cal_image_dir: INT8 needs calibration images, or an existing calibration.cal_cache_file"),
        ({"batch_size": -3}, "gen_trt_engine.batch_size: -3"),
        ({"trt_engine": "."}, "gen_trt_engine.trt_engine: . is a folder"),
        ({"trt_engine": "{onnx}"}, "gen_trt_engine.trt_engine: the same file as gen_trt_engine.onnx_file"),
        ({"trt_engine": "{onnx}/model.engine"}, "model.engine: {onnx} is a file, not a folder"),
    ],
)  # fmt: skip
def test_spec_mistakes_are_one_clear_error(tiny_onnx, tmp_path, changes, message):
    changes = {k: v.format(onnx=tiny_onnx) if isinstance(v, str) else v for k, v in changes.items()}
    with pytest.raises(UserError) as err:
        tb.check_build_settings(_section(tiny_onnx, tmp_path, **changes))
    assert message.format(onnx=tiny_onnx) in str(err.value) and "\n" not in str(err.value)


def test_onnx_file_problems(tiny_onnx, tiny_onnx_batch2, tmp_path, calibration_dir):
    with pytest.raises(UserError, match=r"^gen_trt_engine.onnx_file: .*missing.onnx: ONNX file not found"):
        tb.check_build_settings(_section(tmp_path / "missing.onnx", tmp_path))
    (tmp_path / "junk.onnx").write_bytes(b"\x00junk")
    with pytest.raises(UserError, match=r"^gen_trt_engine.onnx_file: .*junk.onnx: not a readable ONNX file"):
        tb.check_build_settings(_section(tmp_path / "junk.onnx", tmp_path))
    import onnx

    proto = onnx.load(str(tiny_onnx))
    del proto.metadata_props[:]
    onnx.save(proto, str(tmp_path / "plain.onnx"))
    with pytest.raises(UserError, match=r"plain.onnx: an ONNX file without rtdetr metadata; export it"):
        tb.check_build_settings(_section(tmp_path / "plain.onnx", tmp_path))
    with pytest.raises(UserError, match=r"batch_size: 4 but the ONNX file has a fixed batch of 2"):
        tb.check_build_settings(_section(tiny_onnx_batch2, tmp_path, batch_size=4))
    int8 = {"tensorrt__data_type": "INT8", "calibration__cal_image_dir": [str(calibration_dir)]}
    with pytest.raises(UserError, match=r"cal_batch_size: 1 but the ONNX file has a fixed batch of 2"):
        tb.check_build_settings(_section(tiny_onnx_batch2, tmp_path, **int8))


def test_int8_lists_calibration_images_or_reuses_an_existing_cache(tiny_onnx, tmp_path, calibration_dir):
    int8 = {"tensorrt__data_type": "INT8", "calibration__cal_image_dir": [str(calibration_dir)]}
    s = tb.check_build_settings(
        _section(tiny_onnx, tmp_path, **int8, calibration__cal_batches=3, calibration__cal_batch_size=2)
    )
    assert len(s.calibration_images) == 6
    with pytest.raises(
        UserError, match=r"found 6 images, INT8 calibration needs cal_batches x cal_batch_size = 9"
    ):
        tb.check_build_settings(
            _section(tiny_onnx, tmp_path, **int8, calibration__cal_batches=3, calibration__cal_batch_size=3)
        )
    cache = tmp_path / "cal.bin"
    cache.write_bytes(b"cache")
    s = tb.check_build_settings(
        _section(tiny_onnx, tmp_path, tensorrt__data_type="INT8", calibration__cal_cache_file=str(cache))
    )
    assert s.calibration_images == [] and s.cal_cache_file == cache


def test_chunk_plan_splits_above_max_and_pads_below_min():
    assert chunk_plan(10, 1, 4) == [(0, 4, 0), (4, 8, 0), (8, 10, 0)]
    assert chunk_plan(3, 2, 2) == [(0, 2, 0), (2, 3, 1)]
    assert chunk_plan(1, 4, 8) == [(0, 1, 3)]


# --------------------------------------------------------------------- no TensorRT on this machine
def test_the_cli_ends_in_one_tensorrt_error_after_the_spec_checks(
    cli, write_spec, tiny_onnx, calibration_dir, tmp_path, no_tensorrt
):
    calibration = {"cal_image_dir": [str(calibration_dir)], "cal_batch_size": 2, "cal_batches": 3}
    spec = write_spec(_spec(tmp_path, tiny_onnx, tensorrt={"data_type": "INT8"}, calibration=calibration))
    result = cli("gen_trt_engine", "-e", spec)
    assert result.code == 2
    assert len(result.error_lines) == 1, result.err
    assert result.error_lines[0].startswith("error: gen_trt_engine needs TensorRT and a CUDA GPU (")
    assert result.error_lines[0].endswith(
        "install the tensorrt extra (pip install 'rtdetr[tensorrt]') on a machine with an NVIDIA GPU"
    )
    status = read_status(tmp_path / "results" / "gen_trt_engine")
    assert status[-1]["status"] == "FAILURE" and NO_TRT in status[-1]["message"]
    assert not (tmp_path / "model.engine").exists()


def test_the_cli_reports_spec_mistakes_before_tensorrt(
    cli, write_spec, tiny_onnx, calibration_dir, tmp_path, no_tensorrt
):
    calibration = {"cal_image_dir": [str(calibration_dir)], "cal_batch_size": 4, "cal_batches": 2}
    spec = write_spec(_spec(tmp_path, tiny_onnx, tensorrt={"data_type": "INT8"}, calibration=calibration))
    result = cli("gen_trt_engine", "-e", spec)
    assert result.code == 2 and result.error_lines == [
        "error: gen_trt_engine.calibration.cal_image_dir: found 6 images, INT8 calibration needs "
        "cal_batches x cal_batch_size = 8"
    ]
    assert read_status(tmp_path / "results" / "gen_trt_engine")[-1]["status"] == "FAILURE"
    for gen, expected in [
        ({"onnx_file": str(tmp_path / "nope.onnx")}, "gen_trt_engine.onnx_file: "),
        ({"tensorrt": {"layers_precision": ["/x/Add"]}}, "gen_trt_engine.tensorrt.layers_precision[0]: "),
        (
            {"tensorrt": {"min_batch_size": 4, "opt_batch_size": 2}},
            "gen_trt_engine.tensorrt.opt_batch_size: ",
        ),
    ]:
        result = cli("gen_trt_engine", "-e", write_spec(_spec(tmp_path, tiny_onnx, **gen)))
        assert result.code == 2 and len(result.error_lines) == 1, result.err
        assert expected in result.error_lines[0], result.err  # a spec rule starts with the spec's path


def test_require_tensorrt_names_what_is_missing(monkeypatch, no_tensorrt):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UserError, match=r"\(TensorRT is not installed and PyTorch sees no CUDA GPU\)"):
        tc.require_tensorrt()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with pytest.raises(
        UserError, match=r"^gen_trt_engine needs TensorRT and a CUDA GPU \(TensorRT is not installed\)"
    ):
        tc.require_tensorrt()


def test_require_tensorrt_without_a_gpu(fake_tensorrt, monkeypatch):
    assert tc.require_tensorrt() is fake_tensorrt
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(
        UserError,
        match=r"^gen_trt_engine needs TensorRT and a CUDA GPU \(PyTorch sees no CUDA GPU\): install",
    ):
        tc.require_tensorrt()


def test_load_backend_of_an_engine_gives_the_tensorrt_error(tmp_path, tiny_onnx, no_tensorrt):
    engine = tmp_path / "x.engine"
    with pytest.raises(UserError, match=r"x.engine: TensorRT engine not found"):
        load_backend(engine)
    engine.write_bytes(b"engine")
    with pytest.raises(UserError, match=r"x.engine.json is missing beside the engine: .* copy it along"):
        load_backend(engine)
    meta, export_info, _, _ = tb.read_onnx_input(tiny_onnx)
    tc.write_engine_metadata(engine, meta, export_info, {"data_type": "FP16"})
    with pytest.raises(UserError) as err:
        load_backend(engine)
    assert str(err.value).startswith("running the TensorRT engine x.engine needs TensorRT and a CUDA GPU (")
    with pytest.raises(UserError, match=r"device cpu: a TensorRT engine runs on a CUDA GPU only"):
        load_backend(engine, device="cpu")
    assert cuda_device("cuda:1") == torch.device("cuda", 1)


# ------------------------------------------------------------------- the build, on a fake TensorRT
def test_build_engine_fp16_profile_timing_cache_and_metadata(fake_tensorrt, tiny_onnx, tmp_path):
    engine, cache = tmp_path / "e" / "model.engine", tmp_path / "timing.cache"
    kwargs = dict(
        data_type="FP16", workspace_mb=256, min_batch=1, opt_batch=2, max_batch=4, timing_cache=cache
    )
    assert tb.build_engine(tiny_onnx, engine, **kwargs) == engine
    network, config, _ = fake_tensorrt.builds[-1]
    assert config.flags == {fake_tensorrt.BuilderFlag.FP16}
    assert config.pool_limits[fake_tensorrt.MemoryPoolType.WORKSPACE] == 256 << 20
    assert [p.shapes for p in config.profiles] == [
        {"inputs": ((1, 3, 64, 64), (2, 3, 64, 64), (4, 3, 64, 64))}
    ]
    assert engine.read_bytes() == b"fake-engine" and cache.read_bytes() == b"+timing"
    data = json.loads(tc.engine_metadata_path(engine).read_text())
    assert data["class_names"] == ["cat", "dog", "bird"] and data["input_size"] == [64, 64]
    assert data["export"]["batch_size"] == -1
    assert {k: data["tensorrt"][k] for k in ("data_type", "min_batch_size", "opt_batch_size", "max_batch_size")} == {
        "data_type": "FP16", "min_batch_size": 1, "opt_batch_size": 2, "max_batch_size": 4,
    }  # fmt: skip
    meta, info = tc.read_engine_metadata(engine)
    assert meta.num_classes == 3 and info["tensorrt"]["version"] == "10.0.0-fake"
    tb.build_engine(tiny_onnx, engine, **kwargs)  # the second build starts from the saved timing cache
    assert (
        fake_tensorrt.builds[-1][1].created_caches == [b"+timing"] and cache.read_bytes() == b"+timing+timing"
    )


def test_build_engine_fixed_batch_has_no_profile(fake_tensorrt, tiny_onnx_batch2, tmp_path):
    tb.build_engine(tiny_onnx_batch2, tmp_path / "b2.engine", min_batch=1, opt_batch=1, max_batch=8)
    _, config, _ = fake_tensorrt.builds[-1]
    assert config.profiles == [] and config.flags == set()
    assert json.loads((tmp_path / "b2.engine.json").read_text())["tensorrt"]["max_batch_size"] == 2


def test_layers_precision_pins_matching_floating_layers(fake_tensorrt, tiny_onnx, tmp_path):
    import onnx

    nodes = onnx.load(str(tiny_onnx)).graph.node
    conv = next(n.name for n in nodes if n.op_type == "Conv")
    shape = next(n.name for n in nodes if n.op_type == "Shape")
    adds = [n.name for n in nodes if n.op_type == "Add" and n.name.startswith("/model/decoder")]
    assert adds, "the tiny model's decoder has Add nodes"
    precisions = [f"{conv}:fp32", f"{shape}:fp16", "/model/decoder/*Add*:fp16"]
    tb.build_engine(tiny_onnx, tmp_path / "m.engine", data_type="FP16", layers_precision=precisions)
    network, config, _ = fake_tensorrt.builds[-1]
    layers = {layer.name: layer for layer in network.layers}
    f32, f16 = fake_tensorrt.float32, fake_tensorrt.float16
    assert layers[conv].precision == f32 and layers[conv].output_types == {0: f32}
    assert layers[shape].precision is None  # an integer layer: left alone
    assert all(layers[name].precision == f16 for name in adds)
    assert fake_tensorrt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS in config.flags
    with pytest.raises(UserError, match=rf"no layer '{conv}x' in the network; did you mean {conv}"):
        tb.build_engine(tiny_onnx, tmp_path / "m.engine", layers_precision=[f"{conv}x:fp32"])


def test_int8_calibrates_with_the_detectors_inputs_and_reuses_the_cache(
    fake_tensorrt, tiny_onnx, calibration_dir, tmp_path
):
    paths = sorted(calibration_dir.glob("*.png"))
    cache = tmp_path / "cal.bin"
    batches = tb.calibration_batches(paths, (64, 64), True, batch_size=3, batches=2)
    calibrator = tb.make_calibrator(batches, 3, (64, 64), cache, device="cpu")
    tb.build_engine(tiny_onnx, tmp_path / "q.engine", data_type="INT8", max_batch=8, calibrator=calibrator)
    _, config, seen = fake_tensorrt.builds[-1]
    assert config.flags == {fake_tensorrt.BuilderFlag.FP16, fake_tensorrt.BuilderFlag.INT8}
    assert config.calibration_profile.shapes == {"inputs": ((3, 3, 64, 64),) * 3}
    expected = list(tb.calibration_batches(paths, (64, 64), True, batch_size=3, batches=2))
    assert len(seen) == 2 and all(np.array_equal(a, b) for a, b in zip(seen, expected))
    assert cache.read_bytes() == b"fake-calibration" and calibrator.done == 2
    reuse = tb.make_calibrator(iter(()), 3, (64, 64), cache, device="cpu")
    tb.build_engine(tiny_onnx, tmp_path / "q.engine", data_type="INT8", calibrator=reuse)
    assert fake_tensorrt.builds[-1][2] == [] and reuse.done == 0


def test_a_calibration_error_stops_the_build(fake_tensorrt, tiny_onnx, calibration_dir, tmp_path):
    paths = sorted(calibration_dir.glob("*.png"))[:4]
    calibrator = tb.make_calibrator(
        tb.calibration_batches(paths, (64, 64), False, 3, 2), 3, (64, 64), device="cpu"
    )
    with pytest.raises(UserError, match=r"only 4 readable images"):
        tb.build_engine(tiny_onnx, tmp_path / "q.engine", data_type="INT8", calibrator=calibrator)
    assert not (tmp_path / "q.engine").exists()


def test_the_cli_builds_an_int8_engine_on_the_fake(
    cli, write_spec, fake_tensorrt, monkeypatch, tiny_onnx, calibration_dir, tmp_path
):
    import rtdetr.tasks.gen_trt_engine as task

    monkeypatch.setattr(task, "make_calibrator", functools.partial(tb.make_calibrator, device="cpu"))
    calibration = {
        "cal_image_dir": [str(calibration_dir)], "cal_batch_size": 2, "cal_batches": 3,
        "cal_cache_file": str(tmp_path / "cal.bin"),
    }  # fmt: skip
    spec = write_spec(
        {
            **_spec(tmp_path, tiny_onnx, tensorrt={"data_type": "INT8"}, calibration=calibration),
            "dataset": {"augmentation": {"preserve_aspect_ratio": True}},
        }
    )
    result = cli("gen_trt_engine", "-e", spec)
    assert result.code == 0, result.err
    assert f"engine: {tmp_path / 'model.engine'}" in result.out
    _, _, seen = fake_tensorrt.builds[-1]
    order = tb.calibration_images([str(calibration_dir)], 6)
    expected = np.concatenate(list(tb.calibration_batches(order, (64, 64), True, 2, 3)))
    np.testing.assert_array_equal(np.concatenate(seen), expected)
    info = json.loads((tmp_path / "model.engine.json").read_text())["tensorrt"]
    assert info["calibration"]["preserve_aspect_ratio"] is True and info["data_type"] == "INT8"
    status = read_status(tmp_path / "results" / "gen_trt_engine")
    assert [s["status"] for s in status][-2:] == ["RUNNING", "SUCCESS"]
    assert str(tmp_path / "model.engine") in status[-2]["message"]


def test_onnx_parse_errors_are_one_line(fake_tensorrt, monkeypatch, tiny_onnx, tmp_path):
    class Failing(fake_tensorrt.OnnxParser):
        def parse_from_file(self, path):
            self.num_errors = 2
            return False

        def get_error(self, i):
            return f"In node {i}: UNSUPPORTED_NODE: GridSample\nmore"

    monkeypatch.setattr(fake_tensorrt, "OnnxParser", Failing)
    with pytest.raises(UserError) as err:
        tb.build_engine(tiny_onnx, tmp_path / "m.engine")
    assert str(err.value).endswith("In node 0: UNSUPPORTED_NODE: GridSample (and 1 more)")
    assert "\n" not in str(err.value)
