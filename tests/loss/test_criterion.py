"""RTDETRCriterion: each loss against its formula written out, output keys, denoising, gradients."""

from __future__ import annotations

import math

import pytest
import torch
from torchvision.ops import box_convert, box_iou, generalized_box_iou

from rtdetr.loss import HungarianMatcher, RTDETRCriterion, paired_box_iou, total_loss
from rtdetr.model.decoder import RTDETRDecoder
from rtdetr.model.denoising import contrastive_denoising_group

WEIGHTS = {"weight_vfl": 1.5, "weight_bbox": 4.0, "weight_giou": 3.0}


class FixedMatcher:
    """Returns the given per-image [(query, target), ...] pairs, whatever the outputs."""

    def __init__(self, pairs):
        self.pairs = pairs

    def __call__(self, outputs, targets):
        return [
            (
                torch.tensor([q for q, _ in p], dtype=torch.int64),
                torch.tensor([t for _, t in p], dtype=torch.int64),
            )
            for p in self.pairs
        ]


def corners(box):
    cx, cy, w, h = (float(v) for v in box)
    return cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2


def iou_giou_by_hand(a, b):
    ax0, ay0, ax1, ay1 = corners(a)
    bx0, by0, bx1, by1 = corners(b)
    inter = max(0.0, min(ax1, bx1) - max(ax0, bx0)) * max(0.0, min(ay1, by1) - max(ay0, by0))
    union = (ax1 - ax0) * (ay1 - ay0) + (bx1 - bx0) * (by1 - by0) - inter
    hull = (max(ax1, bx1) - min(ax0, bx0)) * (max(ay1, by1) - min(ay0, by0))
    return inter / union, inter / union - (hull - union) / hull


def sigmoid(x):
    return 1 / (1 + math.exp(-x))


def vfl_by_hand(outputs, targets, pairs, num_boxes, alpha=0.75, gamma=2.0):
    """sum over b, q, c of w * BCE(x, t) / num_boxes, with t the IoU at the matched class."""
    logits, boxes = outputs["pred_logits"].detach(), outputs["pred_boxes"].detach()
    total = 0.0
    for b, (image_pairs, t) in enumerate(zip(pairs, targets)):
        matched = dict(image_pairs)
        for q in range(logits.shape[1]):
            for c in range(logits.shape[2]):
                x = float(logits[b, q, c])
                p = sigmoid(x)
                y = score = 0.0
                if q in matched and int(t["labels"][matched[q]]) == c:
                    y = 1.0
                    score = iou_giou_by_hand(boxes[b, q], t["boxes"][matched[q]])[0]
                weight = alpha * p**gamma * (1 - y) + score
                total += weight * -(score * math.log(p) + (1 - score) * math.log(1 - p))
    return total / num_boxes


def focal_by_hand(outputs, targets, pairs, num_boxes, alpha=0.75, gamma=2.0):
    logits = outputs["pred_logits"].detach()
    total = 0.0
    for b, (image_pairs, t) in enumerate(zip(pairs, targets)):
        matched = dict(image_pairs)
        for q in range(logits.shape[1]):
            for c in range(logits.shape[2]):
                p = sigmoid(float(logits[b, q, c]))
                y = 1.0 if q in matched and int(t["labels"][matched[q]]) == c else 0.0
                p_t = p * y + (1 - p) * (1 - y)
                alpha_t = alpha * y + (1 - alpha) * (1 - y)
                total += alpha_t * (1 - p_t) ** gamma * -math.log(p_t)
    return total / num_boxes


def box_losses_by_hand(outputs, targets, pairs, num_boxes):
    boxes = outputs["pred_boxes"].detach()
    l1 = giou = 0.0
    for b, (image_pairs, t) in enumerate(zip(pairs, targets)):
        for q, j in image_pairs:
            l1 += sum(abs(float(p) - float(g)) for p, g in zip(boxes[b, q], t["boxes"][j]))
            giou += 1 - iou_giou_by_hand(boxes[b, q], t["boxes"][j])[1]
    return l1 / num_boxes, giou / num_boxes


def dn_outputs_for(targets, num_classes, num_layers, seed=0, num_denoising=6):
    """Denoising meta from the model's own builder and random per-layer predictions to match it."""
    torch.manual_seed(seed)
    dn = contrastive_denoising_group(
        targets, num_classes, 5, torch.nn.Embedding(num_classes + 1, 8), num_denoising
    )
    num_dn = dn.meta["dn_num_split"][0]
    g = torch.Generator().manual_seed(seed)
    layers = []
    for _ in range(num_layers):
        logits = torch.randn(len(targets), num_dn, num_classes, generator=g).requires_grad_()
        boxes = (torch.rand(len(targets), num_dn, 2, generator=g) * 0.4 + 0.3).repeat(1, 1, 2) * torch.tensor(
            [1.0, 1.0, 0.5, 0.5]
        )
        layers.append({"pred_logits": logits, "pred_boxes": boxes.requires_grad_()})
    return layers, dn.meta


PAIRS = [[(2, 1), (0, 0)], [], [(3, 0)]]  # image 1 has no targets


@pytest.fixture
def fixed_case(make_outputs, make_targets):
    outputs = make_outputs(3, 4, 3, seed=1)
    targets = make_targets([2, 0, 1], 3, seed=2)
    return outputs, targets


def test_final_layer_losses_match_formulas(fixed_case):
    outputs, targets = fixed_case
    losses = RTDETRCriterion(3, FixedMatcher(PAIRS), **WEIGHTS)(outputs, targets)
    assert set(losses) == {"loss_vfl", "loss_bbox", "loss_giou"}
    l1, giou = box_losses_by_hand(outputs, targets, PAIRS, num_boxes=3)
    assert losses["loss_vfl"].item() == pytest.approx(1.5 * vfl_by_hand(outputs, targets, PAIRS, 3), rel=1e-5)
    assert losses["loss_bbox"].item() == pytest.approx(4.0 * l1, rel=1e-5)
    assert losses["loss_giou"].item() == pytest.approx(3.0 * giou, rel=1e-5)
    for value in losses.values():
        assert value.shape == () and value.dtype == torch.float32


def test_focal_alternative(fixed_case):
    outputs, targets = fixed_case
    criterion = RTDETRCriterion(3, FixedMatcher(PAIRS), loss_types=("focal",), weight_focal=2.0)
    losses = criterion(outputs, targets)
    assert set(losses) == {"loss_focal"}
    assert losses["loss_focal"].item() == pytest.approx(
        2.0 * focal_by_hand(outputs, targets, PAIRS, 3), rel=1e-5
    )


def test_vfl_iou_target_is_detached(fixed_case):
    outputs, targets = fixed_case
    losses = RTDETRCriterion(3, FixedMatcher(PAIRS), loss_types=("vfl",))(outputs, targets)
    losses["loss_vfl"].backward()
    assert outputs["pred_boxes"].grad is None
    assert outputs["pred_logits"].grad.abs().sum() > 0


def full_outputs(make_outputs, targets, num_classes, aux=True, dn=True, num_layers=3):
    outputs = make_outputs(len(targets), 6, num_classes, seed=10)
    if aux:
        outputs["aux_outputs"] = [
            make_outputs(len(targets), 6, num_classes, seed=11 + i) for i in range(num_layers - 1)
        ]
        outputs["enc_outputs"] = make_outputs(len(targets), 6, num_classes, seed=20)
    if dn:
        outputs["dn_outputs"], outputs["dn_meta"] = dn_outputs_for(
            targets, num_classes, num_layers if aux else 1
        )
    return outputs


@pytest.mark.parametrize("aux", [True, False])
@pytest.mark.parametrize("dn", [True, False])
def test_loss_keys_follow_outputs(aux, dn, make_outputs, make_targets):
    targets = make_targets([2, 0, 3], 4, seed=3)
    outputs = full_outputs(make_outputs, targets, 4, aux=aux, dn=dn)
    losses = RTDETRCriterion(4, HungarianMatcher())(outputs, targets)
    suffixes = [""]
    if aux:
        suffixes += ["_aux_0", "_aux_1", "_enc"]
    if dn:
        suffixes += [f"_dn_{i}" for i in range(3 if aux else 1)]
    assert set(losses) == {f"loss_{name}{s}" for name in ("vfl", "bbox", "giou") for s in suffixes}
    assert all(torch.isfinite(v) for v in losses.values())


def test_aux_and_enc_are_matched_independently(make_outputs, make_targets):
    """Each auxiliary output gets exactly the losses it would get as a final layer of its own."""
    targets = make_targets([2, 0, 3], 4, seed=3)
    outputs = full_outputs(make_outputs, targets, 4, dn=False)
    criterion = RTDETRCriterion(4, HungarianMatcher(), **WEIGHTS)
    losses = criterion(outputs, targets)
    for suffix, part in [
        ("_aux_0", outputs["aux_outputs"][0]),
        ("_aux_1", outputs["aux_outputs"][1]),
        ("_enc", outputs["enc_outputs"]),
    ]:
        alone = criterion(part, targets)
        for name, value in alone.items():
            torch.testing.assert_close(losses[name + suffix], value)


def test_denoising_uses_fixed_assignment_over_groups(make_targets):
    targets = make_targets([2, 0, 1], 3, seed=4)
    layers, meta = dn_outputs_for(targets, 3, num_layers=2)
    num_group = meta["dn_num_group"]
    assert num_group == 3  # num_denoising 6 // max 2 targets
    # positive query k of image i pairs with target k mod N_i
    pairs = [
        [(int(q), k % max(len(t["labels"]), 1)) for k, q in enumerate(idx)]
        for idx, t in zip(meta["dn_positive_idx"], targets)
    ]
    assert [len(p) for p in pairs] == [6, 0, 3]
    outputs = {"pred_logits": layers[0]["pred_logits"], "pred_boxes": layers[0]["pred_boxes"]}
    outputs.update(dn_outputs=layers, dn_meta=meta)
    criterion = RTDETRCriterion(3, FixedMatcher([[], [], []]), **WEIGHTS)
    losses = criterion(outputs, targets)
    dn_boxes = 3 * num_group  # 3 targets in the batch, normalised per group
    for i, layer in enumerate(layers):
        l1, giou = box_losses_by_hand(layer, targets, pairs, dn_boxes)
        assert losses[f"loss_bbox_dn_{i}"].item() == pytest.approx(4.0 * l1, rel=1e-5)
        assert losses[f"loss_giou_dn_{i}"].item() == pytest.approx(3.0 * giou, rel=1e-5)
        assert losses[f"loss_vfl_dn_{i}"].item() == pytest.approx(
            1.5 * vfl_by_hand(layer, targets, pairs, dn_boxes), rel=1e-5
        )


def test_denoising_losses_do_not_grow_with_groups(make_outputs, make_targets):
    """Repeating one group's predictions G times leaves every denoising loss unchanged."""
    targets = make_targets([2, 1], 3, seed=5)
    single = make_outputs(2, 4, 3, seed=6)  # per image: 2 positives then 2 negatives
    meta_1 = {
        "dn_positive_idx": [torch.tensor([0, 1]), torch.tensor([0])],
        "dn_num_group": 1,
        "dn_num_split": [4, 6],
    }
    meta_3 = {
        "dn_positive_idx": [torch.tensor([0, 1, 4, 5, 8, 9]), torch.tensor([0, 4, 8])],
        "dn_num_group": 3,
        "dn_num_split": [12, 6],
    }
    tiled = {k: v.detach().repeat(1, 3, 1) for k, v in single.items()}
    criterion = RTDETRCriterion(3, HungarianMatcher())
    final = make_outputs(2, 6, 3, seed=7)
    one = criterion({**final, "dn_outputs": [single], "dn_meta": meta_1}, targets)
    three = criterion({**final, "dn_outputs": [tiled], "dn_meta": meta_3}, targets)
    for name in ("loss_vfl_dn_0", "loss_bbox_dn_0", "loss_giou_dn_0"):
        torch.testing.assert_close(one[name], three[name])


def test_gradients_reach_every_output(make_outputs, make_targets):
    targets = make_targets([2, 0, 3], 4, seed=3)
    outputs = full_outputs(make_outputs, targets, 4)
    total_loss(RTDETRCriterion(4, HungarianMatcher())(outputs, targets)).backward()
    parts = [outputs, *outputs["aux_outputs"], outputs["enc_outputs"], *outputs["dn_outputs"]]
    for part in parts:
        for key in ("pred_logits", "pred_boxes"):
            grad = part[key].grad
            assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_no_targets_gives_only_the_negative_vfl_term(make_outputs, make_targets):
    outputs = make_outputs(2, 5, 3, seed=8)
    outputs["aux_outputs"] = [make_outputs(2, 5, 3, seed=9)]
    targets = make_targets([0, 0], 3)
    losses = RTDETRCriterion(3, HungarianMatcher())(outputs, targets)
    assert all(torch.isfinite(v) for v in losses.values())
    assert losses["loss_bbox"].item() == losses["loss_giou"].item() == 0.0
    x = outputs["pred_logits"].detach().double()
    expected = (0.75 * x.sigmoid() ** 2 * torch.nn.functional.softplus(x)).sum()  # num_boxes clamped to 1
    assert losses["loss_vfl"].item() == pytest.approx(expected.item(), rel=1e-5)
    total_loss(losses).backward()
    assert torch.isfinite(outputs["pred_logits"].grad).all()


def test_num_boxes_is_averaged_over_ranks(monkeypatch, make_targets):
    """Another rank holding 7 boxes: (3 + 7) / 2 = 5; with no boxes anywhere it is clamped to 1."""
    other_rank = {"count": 7.0}

    def all_reduce(tensor):
        tensor += other_rank["count"]

    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda: 2)
    monkeypatch.setattr(torch.distributed, "all_reduce", all_reduce)
    cpu = torch.device("cpu")
    assert RTDETRCriterion.num_boxes(make_targets([2, 1], 3), cpu) == 5.0
    other_rank["count"] = 0.0
    assert RTDETRCriterion.num_boxes(make_targets([0, 0], 3), cpu) == 1.0
    assert RTDETRCriterion.num_boxes(make_targets([1, 0], 3), cpu) == 1.0  # 0.5 -> 1


def test_float32_under_autocast(fixed_case):
    outputs, targets = fixed_case
    half = {k: v.detach().bfloat16() for k, v in outputs.items()}
    criterion = RTDETRCriterion(3, FixedMatcher(PAIRS))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = criterion(half, targets)
    reference = criterion({k: v.float() for k, v in half.items()}, targets)
    for name, value in losses.items():
        assert value.dtype == torch.float32
        torch.testing.assert_close(value, reference[name])


def test_paired_box_iou_is_the_diagonal(make_targets):
    a = box_convert(make_targets([6], 2, seed=1)[0]["boxes"], "cxcywh", "xyxy")
    b = box_convert(make_targets([6], 2, seed=2)[0]["boxes"], "cxcywh", "xyxy")
    b[0] = a[0]  # identical
    b[1] = a[1] + 2  # disjoint
    iou, giou = paired_box_iou(a, b)
    torch.testing.assert_close(iou, box_iou(a, b).diag())
    torch.testing.assert_close(giou, generalized_box_iou(a, b).diag())
    point = torch.tensor([[0.5, 0.5, 0.5, 0.5]])
    assert all(torch.isfinite(v).all() for v in paired_box_iou(point, point))


def test_total_loss_sums():
    losses = {"a": torch.tensor(1.5), "b": torch.tensor(2.0)}
    assert total_loss(losses).item() == 3.5
    with pytest.raises(ValueError):
        total_loss({})


def test_bad_arguments(fixed_case, make_targets):
    with pytest.raises(ValueError, match="loss_types"):
        RTDETRCriterion(3, HungarianMatcher(), loss_types=("vfl", "ce"))
    outputs, targets = fixed_case
    criterion = RTDETRCriterion(3, HungarianMatcher())
    with pytest.raises(KeyError, match="dn_meta"):
        criterion({**outputs, "dn_outputs": []}, targets)
    meta = {
        "dn_positive_idx": [torch.tensor([0]), torch.tensor([], dtype=torch.int64), torch.tensor([0])],
        "dn_num_group": 1,
    }
    dn = {k: v.detach() for k, v in outputs.items()}
    with pytest.raises(ValueError, match="positive queries"):
        criterion({**outputs, "dn_outputs": [dn], "dn_meta": meta}, targets)  # image 0 has 2 targets


@pytest.mark.parametrize("aux_loss", [True, False])
def test_decoder_training_outputs_contract(aux_loss, make_targets):
    """The criterion consumes the decoder's training dict as is."""
    torch.manual_seed(0)
    decoder = RTDETRDecoder(
        num_classes=4, hidden_dim=32, num_queries=8, feat_channels=(16, 16, 16), nhead=4, num_layers=2,
        dim_feedforward=32, num_denoising=6, aux_loss=aux_loss,
    )  # fmt: skip
    decoder.train()
    feats = [torch.randn(2, 16, s, s) for s in (8, 4, 2)]
    targets = make_targets([2, 0], 4, seed=1)
    losses = RTDETRCriterion(4, HungarianMatcher())(decoder(feats, targets), targets)
    suffixes = ["", "_dn_0"] + (["_aux_0", "_enc", "_dn_1"] if aux_loss else [])
    assert set(losses) == {f"loss_{name}{s}" for name in ("vfl", "bbox", "giou") for s in suffixes}
    total_loss(losses).backward()
    assert decoder.dec_score_head[-1].weight.grad is not None
