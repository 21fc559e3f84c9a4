"""The model (grid_sample deformable attention, anchors from feature sizes) exports to ONNX and runs in
ONNX Runtime with dynamic batch, height and width."""

from __future__ import annotations

import io

import onnx
import onnxruntime as ort
import torch


def test_onnx_export_with_dynamic_sizes_matches_pytorch(tiny_model):
    model = tiny_model().deploy()
    buffer = io.BytesIO()
    torch.onnx.export(
        model,
        (torch.rand(1, 3, 128, 160),),
        buffer,
        opset_version=17,
        input_names=["inputs"],
        output_names=["pred_logits", "pred_boxes"],
        dynamic_axes={"inputs": {0: "batch", 2: "height", 3: "width"}},
        dynamo=False,
    )
    graph = onnx.load_from_string(buffer.getvalue()).graph
    assert "GridSample" in {node.op_type for node in graph.node}
    session = ort.InferenceSession(buffer.getvalue(), providers=["CPUExecutionProvider"])
    for shape in [(2, 3, 128, 160), (1, 3, 96, 224)]:
        images = torch.rand(*shape)
        logits, boxes = session.run(None, {"inputs": images.numpy()})
        with torch.no_grad():
            expected = model(images)
        assert abs(torch.from_numpy(logits) - expected["pred_logits"]).max() <= 1e-4
        assert abs(torch.from_numpy(boxes) - expected["pred_boxes"]).max() <= 1e-4
