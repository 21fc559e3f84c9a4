"""Everything after training: ONNX export, INT8 quantization, the TensorRT builder, the runtime
backends and the ``Detector`` API.

Modules: ``export`` (ONNX with TAO's contract, DeepStream files), ``quantize`` (ONNX Runtime INT8),
``quantize_openvino`` (NNCF INT8 for OpenVINO), ``calibration`` (calibration images, read with the
model's own preprocessing), ``tensorrt_build`` (gen_trt_engine), ``tensorrt_common`` (what the builder
and the TensorRT runtime share), ``backends`` (PyTorch, ONNX Runtime, OpenVINO and TensorRT
runners), ``detector`` (the Python API).
"""

from rtdetr.deploy.backends import OnnxBackend, OpenVinoBackend, TensorRTBackend, TorchBackend, load_backend
from rtdetr.deploy.detector import Detections, Detector

__all__ = [
    "Detections", "Detector", "OnnxBackend", "OpenVinoBackend", "TensorRTBackend", "TorchBackend", "load_backend",
]  # fmt: skip
