"""A tiny exported model, calibration images, and a stand-in for the TensorRT Python API.

``fake_tensorrt`` is a small imitation of the part of TensorRT 10's Python API that
rtdetr.deploy.tensorrt_build calls (builder, network from the ONNX nodes, config, profiles, timing cache,
calibrator callbacks read through the pointers it returns). It checks our wiring on a machine
without a GPU; it says nothing about what the real TensorRT accepts.
"""

from __future__ import annotations

import ctypes
import enum
import sys
import types
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from PIL import Image

from rtdetr.deploy.export import export_onnx
from rtdetr.model import build_model
from rtdetr.model.checkpoint import ModelMetadata
from rtdetr.model.testing import randomize_

TINY = dict(
    num_classes=3, backbone="resnet_18vd", num_queries=10, hidden_dim=32, feat_channels=[32, 32, 32],
    nheads=4, dim_feedforward=64, dec_dim_feedforward=64, dec_layers=1, dn_number=0, expansion=0.5,
)  # fmt: skip
SIZE = 64  # input height and width of the exported tiny model


def _export(path: Path, batch_size: int) -> Path:
    torch.manual_seed(0)
    model = randomize_(build_model(**TINY), 0)
    meta = ModelMetadata(
        model={**TINY, "num_select": 10},
        num_classes=3,
        class_names=["cat", "dog", "bird"],
        input_size=[SIZE, SIZE],
    )
    return export_onnx(model, meta, path, height=SIZE, width=SIZE, batch_size=batch_size)


@pytest.fixture(scope="session")
def tiny_onnx(tmp_path_factory) -> Path:
    """An `rtdetr export`ed tiny random model: 64x64 inputs, dynamic batch, 3 classes."""
    return _export(tmp_path_factory.mktemp("onnx") / "tiny.onnx", batch_size=-1)


@pytest.fixture(scope="session")
def tiny_onnx_batch2(tmp_path_factory) -> Path:
    """The same model exported with a fixed batch of 2."""
    return _export(tmp_path_factory.mktemp("onnx2") / "tiny_b2.onnx", batch_size=2)


@pytest.fixture
def calibration_dir(tmp_path) -> Path:
    """Six images of various sizes and modes (RGB, L, RGBA, 16-bit) named img_0..img_5."""
    folder = tmp_path / "calib"
    folder.mkdir()
    rng = np.random.default_rng(0)
    sizes = [(40, 90), (100, 60), (64, 64), (33, 71), (128, 96), (50, 50)]  # (h, w)
    modes = ["RGB", "L", "RGBA", "RGB", "I;16", "RGB"]
    for i, ((h, w), mode) in enumerate(zip(sizes, modes)):
        if mode == "I;16":
            image = Image.fromarray(rng.integers(0, 65535, (h, w), dtype=np.uint16))
        else:
            image = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).convert(mode)
        image.save(folder / f"img_{i}.png")
    return folder


# ----------------------------------------------------------------------------- fake TensorRT
class DataType(enum.Enum):
    FLOAT = 0
    HALF = 1
    INT8 = 2
    INT32 = 3
    INT64 = 4
    BOOL = 5


class Severity(enum.Enum):
    INTERNAL_ERROR = 0
    ERROR = 1
    WARNING = 2
    INFO = 3
    VERBOSE = 4


class BuilderFlag(enum.Enum):
    FP16 = 0
    INT8 = 1
    OBEY_PRECISION_CONSTRAINTS = 2


class MemoryPoolType(enum.Enum):
    WORKSPACE = 0


class ILogger:
    Severity = Severity

    def __init__(self):
        pass


class IInt8EntropyCalibrator2:
    def __init__(self):
        pass


class Tensor:
    def __init__(self, name: str, shape: tuple, dtype: DataType):
        self.name, self.shape, self.dtype = name, shape, dtype


class Layer:
    def __init__(self, name: str, outputs: list[Tensor]):
        self.name, self.outputs = name, outputs
        self.precision = None
        self.output_types: dict[int, DataType] = {}

    @property
    def num_outputs(self) -> int:
        return len(self.outputs)

    def get_output(self, i: int) -> Tensor:
        return self.outputs[i]

    def set_output_type(self, i: int, dtype: DataType) -> None:
        self.output_types[i] = dtype


class Network:
    def __init__(self):
        self.inputs: list[Tensor] = []
        self.layers: list[Layer] = []

    num_inputs = property(lambda self: len(self.inputs))
    num_layers = property(lambda self: len(self.layers))

    def get_input(self, i: int) -> Tensor:
        return self.inputs[i]

    def get_layer(self, i: int) -> Layer:
        return self.layers[i]


INT_OPS = {"Shape": DataType.INT64, "Equal": DataType.BOOL, "Less": DataType.BOOL, "Greater": DataType.BOOL}


class OnnxParser:
    """Fills the network from the ONNX graph: its inputs (-1 for symbolic dims) and one layer per node."""

    def __init__(self, network: Network, logger):
        self.network = network
        self.num_errors = 0

    def parse_from_file(self, path: str) -> bool:
        graph = onnx.load(path).graph
        for value in graph.input:
            dims = tuple(
                d.dim_value if d.HasField("dim_value") else -1 for d in value.type.tensor_type.shape.dim
            )
            self.network.inputs.append(Tensor(value.name, dims, DataType.FLOAT))
        for node in graph.node:
            dtype = INT_OPS.get(node.op_type, DataType.FLOAT)
            self.network.layers.append(Layer(node.name, [Tensor(o, (), dtype) for o in node.output]))
        return True


class Profile:
    def __init__(self):
        self.shapes: dict[str, tuple] = {}

    def set_shape(self, name: str, low, opt, high) -> None:
        self.shapes[name] = (tuple(low), tuple(opt), tuple(high))


class TimingCache:
    def __init__(self, blob: bytes):
        self.blob = bytes(blob)

    def serialize(self) -> bytes:
        return self.blob + b"+timing"


class BuilderConfig:
    def __init__(self):
        self.flags: set[BuilderFlag] = set()
        self.pool_limits: dict[MemoryPoolType, int] = {}
        self.profiles: list[Profile] = []
        self.calibration_profile: Profile | None = None
        self.int8_calibrator = None
        self.timing_cache: TimingCache | None = None
        self.created_caches: list[bytes] = []

    def set_memory_pool_limit(self, pool: MemoryPoolType, size: int) -> None:
        self.pool_limits[pool] = size

    def set_flag(self, flag: BuilderFlag) -> None:
        self.flags.add(flag)

    def add_optimization_profile(self, profile: Profile) -> int:
        self.profiles.append(profile)
        return len(self.profiles) - 1

    def set_calibration_profile(self, profile: Profile) -> bool:
        self.calibration_profile = profile
        return True

    def create_timing_cache(self, blob: bytes) -> TimingCache:
        self.created_caches.append(bytes(blob))
        return TimingCache(blob)

    def set_timing_cache(self, cache: TimingCache, ignore_mismatch: bool) -> bool:
        self.timing_cache = cache
        return True

    def get_timing_cache(self) -> TimingCache:
        return self.timing_cache


class Builder:
    """Records each build in ``fake.builds`` as (network, config, calibration batches it read)."""

    def __init__(self, logger):
        self.logger = logger

    def create_network(self, flags: int) -> Network:
        assert flags == 0
        return Network()

    def create_builder_config(self) -> BuilderConfig:
        return BuilderConfig()

    def create_optimization_profile(self) -> Profile:
        return Profile()

    def build_serialized_network(self, network: Network, config: BuilderConfig) -> bytes:
        seen = []
        calibrator = config.int8_calibrator
        if BuilderFlag.INT8 in config.flags and calibrator.read_calibration_cache() is None:
            names = [t.name for t in network.inputs]
            shape = (
                config.calibration_profile.shapes[names[0]][1]
                if config.calibration_profile
                else network.inputs[0].shape
            )
            count = int(np.prod(shape))
            while (pointers := calibrator.get_batch(names)) is not None:
                data = (ctypes.c_float * count).from_address(pointers[0])
                seen.append(np.ctypeslib.as_array(data).reshape(shape).copy())
            calibrator.write_calibration_cache(b"fake-calibration")
        sys.modules["tensorrt"].builds.append((network, config, seen))
        return b"fake-engine"


def make_fake_tensorrt() -> types.ModuleType:
    trt = types.ModuleType("tensorrt")
    trt.__version__ = "10.0.0-fake"
    trt.builds = []
    trt.float32, trt.float16, trt.int8 = DataType.FLOAT, DataType.HALF, DataType.INT8
    trt.int32, trt.int64, trt.bool = DataType.INT32, DataType.INT64, DataType.BOOL
    for obj in (DataType, BuilderFlag, MemoryPoolType, ILogger, IInt8EntropyCalibrator2, OnnxParser, Builder):
        setattr(trt, obj.__name__, obj)
    return trt


@pytest.fixture
def fake_tensorrt(monkeypatch) -> types.ModuleType:
    """The fake ``tensorrt`` module installed, and PyTorch claiming a CUDA GPU (build code only:
    calibrators must be given device='cpu')."""
    trt = make_fake_tensorrt()
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *args: "Fake GPU")
    return trt


@pytest.fixture
def no_tensorrt(monkeypatch):
    """Make sure ``import tensorrt`` fails, as on this machine, even if a test process imported one."""
    monkeypatch.setitem(sys.modules, "tensorrt", None)
