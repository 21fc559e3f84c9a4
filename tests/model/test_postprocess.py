"""Post-processing against a brute-force reference."""

from __future__ import annotations

import torch

from rtdetr.model import PostProcessor


def test_top_detections_match_brute_force():
    g = torch.Generator().manual_seed(0)
    logits, boxes = torch.randn(2, 7, 3, generator=g), torch.rand(2, 7, 4, generator=g) * 0.5 + 0.1
    sizes = torch.tensor([[480, 640], [300, 200]])  # (h, w)
    results = PostProcessor(num_select=5)({"pred_logits": logits, "pred_boxes": boxes}, sizes)
    for b, result in enumerate(results):
        candidates = []
        for q in range(7):
            cx, cy, w, h = boxes[b, q].tolist()
            H, W = sizes[b].tolist()
            box = [(cx - w / 2) * W, (cy - h / 2) * H, (cx + w / 2) * W, (cy + h / 2) * H]
            candidates += [(torch.sigmoid(logits[b, q, c]).item(), c, box) for c in range(3)]
        candidates.sort(key=lambda t: -t[0])
        assert result["scores"].tolist() == [s for s, _, _ in candidates[:5]]
        assert result["labels"].tolist() == [c for _, c, _ in candidates[:5]]
        assert torch.allclose(result["boxes"], torch.tensor([bx for _, _, bx in candidates[:5]]), atol=1e-4)


def test_category_map_and_num_select_clamped():
    logits, boxes = torch.randn(1, 2, 3), torch.rand(1, 2, 4)
    result = PostProcessor(num_select=300, category_map=[1, 5, 90])(
        {"pred_logits": logits, "pred_boxes": boxes}, torch.tensor([[10, 10]])
    )[0]
    assert len(result["scores"]) == 6
    assert set(result["labels"].tolist()) == {1, 5, 90}
