"""The distillation criteria against hand computations on fixed tensors, and the binding weights."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from rtdetr.loss import Binding, DistillationLoss
from rtdetr.loss.distill import binding_names, iou_loss, kl, l1, l2, query_mask, query_weights

S = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
T = torch.tensor([[1.5, 2.0], [2.0, 5.0]])


def test_l1_and_l2_are_the_mean_absolute_and_squared_differences():
    assert l1(S, T).item() == pytest.approx((0.5 + 0 + 1 + 1) / 4)
    assert l2(S, T).item() == pytest.approx((0.25 + 0 + 1 + 1) / 4)


def test_kl_is_teacher_to_student_over_classes_with_reduction_mean():
    student = torch.tensor([[0.0, 0.0]])  # softmax 1/2, 1/2
    teacher = torch.tensor([[math.log(3.0), 0.0]])  # softmax 3/4, 1/4
    by_hand = (0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)) / 2  # mean over the 2 elements
    assert kl(student, teacher).item() == pytest.approx(by_hand, rel=1e-6)
    with pytest.warns(UserWarning):  # TAO's call, whose reduction mean torch warns about
        reference = F.kl_div(F.log_softmax(student, -1), F.log_softmax(teacher, -1), log_target=True)
    assert kl(student, teacher).item() == pytest.approx(reference.item(), rel=1e-6)
    # a feature map [B, C, H, W]: the softmax runs over the channels (over W, of size 1, KL would be 0)
    maps = kl(student.reshape(1, 2, 1, 1), teacher.reshape(1, 2, 1, 1))
    assert maps.item() == pytest.approx(by_hand, rel=1e-6)


# A 2 x 2 teacher map of 2 channels, its locations' directions: (1, 0), (0, 1), (-1, 0), (1, 1)/sqrt 2
FEATURE = torch.tensor([[[2.0, 0.0], [-1.0, 1.0]], [[0.0, 3.0], [0.0, 1.0]]])[None]  # [1, 2, 2, 2]
QUERIES = torch.tensor([[[1.0, 0.0], [0.0, 2.0]]])  # [1, 2, 2]: directions (1, 0) and (0, 1)
GT = torch.tensor([[0.25, 0.25, 0.5, 0.5]])  # normalised cxcywh
BOXES = torch.tensor([[[0.25, 0.25, 0.5, 0.5], [0.75, 0.75, 0.2, 0.2]]])  # query 0 on the GT, 1 off it


def test_iou_query_weights_use_normalised_boxes_and_sigmoid_scores():
    """Query 0 lies exactly on the ground truth (IoU 1 in normalised coordinates; TAO compares them with
    pixel boxes, IoU ~0) and has a negative logit (TAO weights it -1, here sigmoid(-1)); query 1 does
    not overlap the ground truth: weight 0."""
    logits = torch.tensor([[[-1.0], [2.0]]])
    weights = query_weights(logits, BOXES, [{"boxes": GT}])
    sigmoid = 1 / (1 + math.exp(1))
    assert weights.tolist()[0] == pytest.approx([sigmoid, 0.0])
    # an image without ground truth gives every query weight 0
    assert query_weights(logits, BOXES, [{"boxes": torch.zeros(0, 4)}]).tolist() == [[0.0, 0.0]]


def test_iou_mask_equals_the_hand_computation():
    s = 1 / (1 + math.exp(1))  # the weight of query 0; query 1 has weight 0
    weights = torch.tensor([[s, 0.0]])
    # cosine similarity of query 0 with the 4 locations: 1, 0, -1, 1/sqrt 2; times s, floored at 0.01,
    # divided by the largest (s)
    by_hand = [[1.0, 0.01 / s], [0.01 / s, math.sqrt(0.5)]]
    mask = query_mask(FEATURE, QUERIES, weights)
    assert mask.shape == (1, 2, 2)
    assert mask[0].tolist() == [pytest.approx(row, rel=1e-6) for row in by_hand]
    # TAO's weight (the raw logit -1 times an IoU of 0 against pixel boxes) gives a uniform mask instead
    assert query_mask(FEATURE, QUERIES, torch.zeros(1, 2))[0].tolist() == [[1.0, 1.0], [1.0, 1.0]]


def test_iou_loss_is_the_mse_of_the_masked_maps_summed_over_levels():
    s = 1 / (1 + math.exp(1))
    m = [1.0, 0.01 / s, 0.01 / s, math.sqrt(0.5)]  # the mask above, row by row
    teacher_values = [(2.0, 0.0), (0.0, 3.0), (-1.0, 0.0), (1.0, 1.0)]  # per location (channel 0, 1)
    student = torch.zeros_like(FEATURE)  # MSE = mean of (mask * teacher)^2 over the 8 elements
    by_hand = sum((mi * v) ** 2 for mi, pair in zip(m, teacher_values) for v in pair) / 8
    queries = {
        "enc_topk_memory": QUERIES,
        "enc_topk_logits": torch.tensor([[[-1.0], [2.0]]]),
        "enc_topk_boxes": BOXES,
    }
    targets = [{"boxes": GT}]
    assert iou_loss([student], [FEATURE], queries, targets).item() == pytest.approx(by_hand, rel=1e-6)
    two_levels = iou_loss([student, student], [FEATURE, FEATURE], queries, targets)
    assert two_levels.item() == pytest.approx(2 * by_hand, rel=1e-6)


def test_weights_apply_once_and_bindings_of_one_student_module_both_count():
    """TAO applies the L1/L2/KL weights twice and keys the weights by student name, so that a second
    binding of the same student module overwrites the first's."""
    bindings = [
        Binding("a", "x", "L2", weight=3.0),
        Binding("b", "x", "L1", weight=0.5),
        Binding("a", "x", "KL", weight=2.0),
    ]
    loss = DistillationLoss(bindings)
    out = loss({"x": S}, {"a": T, "b": T + 1}, [])
    assert list(out) == ["distill_0_L2_x", "distill_1_L1_x", "distill_2_KL_x"]
    assert out["distill_0_L2_x"].item() == pytest.approx(3.0 * 0.5625)
    assert out["distill_1_L1_x"].item() == pytest.approx(0.5 * F.l1_loss(S, T + 1).item())
    assert out["distill_2_KL_x"].item() == pytest.approx(2.0 * kl(S, T).item())


def test_lists_are_compared_element_by_element_and_summed():
    loss = DistillationLoss([Binding("srcs", "srcs", "L1")])
    out = loss({"srcs": [S, 2 * S]}, {"srcs": [T, T]}, [])
    assert out["distill_0_L1_srcs"].item() == pytest.approx(l1(S, T).item() + l1(2 * S, T).item())


def test_identical_values_give_exactly_zero():
    maps = [torch.randn(2, 4, 3, 3), torch.randn(2, 4, 2, 2)]
    queries = {
        "enc_topk_memory": torch.randn(2, 5, 4),
        "enc_topk_logits": torch.randn(2, 5, 3),
        "enc_topk_boxes": torch.rand(2, 5, 4) * 0.5 + 0.25,
    }
    targets = [
        {"boxes": torch.tensor([[0.5, 0.5, 0.4, 0.4]])},
        {"boxes": torch.tensor([[0.3, 0.6, 0.2, 0.3]])},
    ]
    bindings = [Binding("srcs", "srcs", c, weight=2.0) for c in ("L1", "L2", "KL", "IOU")]
    out = DistillationLoss(bindings)({"srcs": maps}, {"srcs": [m.clone() for m in maps], **queries}, targets)
    assert [v.item() for v in out.values()] == [0.0, 0.0, 0.0, 0.0]


def test_binding_names_are_unique_and_an_unknown_criterion_is_refused():
    same = [Binding("srcs", "srcs", "IOU"), Binding("srcs", "srcs", "IOU")]
    assert binding_names(same) == ["distill_0_IOU_srcs", "distill_1_IOU_srcs"]
    with pytest.raises(ValueError, match="criterion must be one of"):
        Binding("srcs", "srcs", "L3")
