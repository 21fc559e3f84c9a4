"""HungarianMatcher: optimal against brute force, focal class cost, empty and non-finite inputs."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from rtdetr.loss import HungarianMatcher
from rtdetr.loss.matcher import focal_class_cost


def focal_cost_by_hand(logit: float, alpha: float = 0.25, gamma: float = 2.0) -> float:
    p = 1 / (1 + math.exp(-logit))
    return alpha * (1 - p) ** gamma * -math.log(p + 1e-8) - (1 - alpha) * p**gamma * -math.log(1 - p + 1e-8)


def xyxy(box) -> tuple[float, float, float, float]:
    cx, cy, w, h = (float(v) for v in box)
    return cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2


def giou_by_hand(a, b) -> float:
    ax0, ay0, ax1, ay1 = xyxy(a)
    bx0, by0, bx1, by1 = xyxy(b)
    inter = max(0.0, min(ax1, bx1) - max(ax0, bx0)) * max(0.0, min(ay1, by1) - max(ay0, by0))
    union = (ax1 - ax0) * (ay1 - ay0) + (bx1 - bx0) * (by1 - by0) - inter
    hull = (max(ax1, bx1) - min(ax0, bx0)) * (max(ay1, by1) - min(ay0, by0))
    return inter / union - (hull - union) / hull


def pair_cost(logits, box, label, tgt_box, weights) -> float:
    class_cost, bbox_cost, giou_cost = weights
    logits, box = logits.detach(), box.detach()
    l1 = sum(abs(float(p) - float(t)) for p, t in zip(box, tgt_box))
    cls = focal_cost_by_hand(float(logits[label]))
    return bbox_cost * l1 + class_cost * cls - giou_cost * giou_by_hand(box, tgt_box)


def brute_force(logits, boxes, labels, tgt_boxes, weights) -> tuple[float, set[tuple[int, int]]]:
    """Cheapest set of min(Q, N) (query, target) pairs, by trying every injection."""
    num_queries, num_targets = len(boxes), len(tgt_boxes)
    cost = [
        [pair_cost(logits[q], boxes[q], int(labels[t]), tgt_boxes[t], weights) for t in range(num_targets)]
        for q in range(num_queries)
    ]
    if num_targets <= num_queries:
        candidates = (
            [(q, t) for t, q in enumerate(qs)]
            for qs in itertools.permutations(range(num_queries), num_targets)
        )
    else:
        candidates = (
            [(q, t) for q, t in enumerate(ts)]
            for ts in itertools.permutations(range(num_targets), num_queries)
        )
    best = min(candidates, key=lambda pairs: sum(cost[q][t] for q, t in pairs))
    return sum(cost[q][t] for q, t in best), set(best)


@pytest.mark.parametrize("weights", [(2.0, 5.0, 2.0), (1.0, 5.0, 2.0), (0.0, 1.0, 0.0), (3.0, 0.0, 0.0)])
@pytest.mark.parametrize("seed", range(4))
def test_matches_brute_force(weights, seed, make_outputs, make_targets):
    """Random images with 0..4 targets among 5 queries (and one with more targets than queries)."""
    num_classes = 3
    sizes = [0, 1, 2, 3, 4] if seed % 2 == 0 else [4, 0, 3]
    outputs = make_outputs(len(sizes), 5, num_classes, seed=seed)
    targets = make_targets(sizes, num_classes, seed=100 + seed)
    matcher = HungarianMatcher(*weights)
    indices = matcher(outputs, targets)
    assert len(indices) == len(sizes)
    for b, ((query_idx, target_idx), t) in enumerate(zip(indices, targets)):
        assert query_idx.dtype == target_idx.dtype == torch.int64
        assert len(query_idx) == len(target_idx) == min(5, len(t["labels"]))
        best_cost, best_pairs = brute_force(
            outputs["pred_logits"][b], outputs["pred_boxes"][b], t["labels"], t["boxes"], weights
        )
        pairs = set(zip(query_idx.tolist(), target_idx.tolist()))
        got = sum(
            pair_cost(
                outputs["pred_logits"][b, q],
                outputs["pred_boxes"][b, q],
                int(t["labels"][j]),
                t["boxes"][j],
                weights,
            )
            for q, j in pairs
        )
        assert got == pytest.approx(best_cost, abs=1e-4)
        if weights[0] and weights[1]:  # continuous costs: the optimum is unique
            assert pairs == best_pairs


def test_more_targets_than_queries(make_outputs, make_targets):
    outputs = make_outputs(1, 3, 4, seed=7)
    targets = make_targets([4], 4, seed=8)
    ((query_idx, target_idx),) = HungarianMatcher()(outputs, targets)
    best_cost, best_pairs = brute_force(
        outputs["pred_logits"][0],
        outputs["pred_boxes"][0],
        targets[0]["labels"],
        targets[0]["boxes"],
        (2.0, 5.0, 2.0),
    )
    assert sorted(query_idx.tolist()) == [0, 1, 2]
    assert set(zip(query_idx.tolist(), target_idx.tolist())) == best_pairs


def test_focal_class_cost_formula():
    logits = torch.tensor([[-6.0, -1.0, 0.0], [0.5, 2.0, 9.0]])
    labels = torch.tensor([2, 0, 1, 1])
    cost = focal_class_cost(logits, labels, alpha=0.25, gamma=2.0)
    assert cost.shape == (2, 4)
    for m in range(2):
        for n in range(4):
            assert cost[m, n].item() == pytest.approx(
                focal_cost_by_hand(logits[m, labels[n]].item()), rel=1e-5, abs=1e-6
            )
    # confident in the target's class is cheap, confident against it is expensive
    assert cost[1, 1] < cost[0, 1]


def test_cost_matrix_composition(make_outputs, make_targets):
    outputs = make_outputs(2, 4, 3, seed=3)
    targets = make_targets([2, 1], 3, seed=4)
    matcher = HungarianMatcher(class_cost=1.5, bbox_cost=4.0, giou_cost=3.0)
    cost = matcher.cost_matrix(outputs, targets)
    assert cost.shape == (2, 4, 3) and cost.dtype == torch.float32 and not cost.requires_grad
    all_labels = torch.cat([t["labels"] for t in targets])
    all_boxes = torch.cat([t["boxes"] for t in targets])
    for b in range(2):
        for q in range(4):
            for n in range(3):
                expected = pair_cost(
                    outputs["pred_logits"][b, q],
                    outputs["pred_boxes"][b, q],
                    int(all_labels[n]),
                    all_boxes[n],
                    (1.5, 4.0, 3.0),
                )
                assert cost[b, q, n].item() == pytest.approx(expected, rel=1e-5, abs=1e-5)


def test_no_targets_anywhere(make_outputs, make_targets):
    outputs = make_outputs(2, 5, 3)
    indices = HungarianMatcher()(outputs, make_targets([0, 0], 3))
    for query_idx, target_idx in indices:
        assert query_idx.shape == target_idx.shape == (0,)
        assert query_idx.dtype == target_idx.dtype == torch.int64


def test_non_finite_predictions_still_match(make_outputs, make_targets):
    outputs = make_outputs(1, 5, 3)
    boxes = outputs["pred_boxes"].detach().clone()
    boxes[0, 1] = float("nan")
    boxes[0, 3] = float("inf")
    outputs = {"pred_logits": outputs["pred_logits"], "pred_boxes": boxes}
    ((query_idx, target_idx),) = HungarianMatcher()(outputs, make_targets([3], 3))
    assert len(query_idx) == 3
    assert not {1, 3} & set(query_idx.tolist())  # finite queries are preferred


def test_rejects_all_zero_costs():
    with pytest.raises(ValueError):
        HungarianMatcher(0.0, 0.0, 0.0)
