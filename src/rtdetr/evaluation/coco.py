"""COCO bbox evaluation with faster-coco-eval: the 12 standard numbers and per-class AP/AR."""

from __future__ import annotations

import contextlib
import copy
import io
import logging
from collections.abc import Collection, Sequence

import numpy as np
from faster_coco_eval import COCO, COCOeval_faster

log = logging.getLogger(__name__)

STAT_NAMES = (
    "mAP", "mAP50", "mAP75", "mAP_small", "mAP_medium", "mAP_large",
    "AR1", "AR10", "AR100", "AR_small", "AR_medium", "AR_large",
)  # fmt: skip


def coco_results(
    image_ids: Sequence[int],
    boxes_xyxy: Sequence[np.ndarray],
    scores: Sequence[np.ndarray],
    category_ids: Sequence[np.ndarray],
) -> list[dict]:
    """COCO result records (bbox xywh in original pixels) from per-image xyxy detections."""
    out = []
    for image_id, b, s, c in zip(image_ids, boxes_xyxy, scores, category_ids):
        b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
        xywh = np.concatenate([b[:, :2], b[:, 2:] - b[:, :2]], 1)
        out.extend(
            {
                "image_id": int(image_id),
                "category_id": int(ci),
                "bbox": [float(v) for v in box],
                "score": float(si),
            }
            for box, si, ci in zip(xywh, np.asarray(s), np.asarray(c))
        )
    return out


def without_images(gt: dict, image_ids: Collection[int]) -> dict:
    """``gt`` (COCO JSON layout) without the images ``image_ids`` and their annotations: images left
    out of an evaluation (unreadable) must not count as missed."""
    if not image_ids:
        return gt
    drop = set(image_ids)
    return {
        **gt,
        "images": [im for im in gt["images"] if im["id"] not in drop],
        "annotations": [a for a in gt["annotations"] if a["image_id"] not in drop],
    }


def evaluate_coco(gt: dict, results: list[dict], class_ids: Sequence[int] | None = None) -> dict:
    """COCO bbox metrics of ``results`` against the ground-truth dict ``gt`` (COCO JSON layout).

    Only the images present in ``gt`` are evaluated; ``class_ids`` restricts the categories.
    Returns {"stats": {name: value} for the 12 COCO numbers, "per_class": [{category_id, name, AP,
    AP50, AR100}, ...], "pr50": {category_id: precision at IoU 0.5 for each of the 101 recall
    thresholds 0.00..1.00 (-1 where undefined)}}. With no detections at all every number is 0.
    """
    gt = copy.copy(gt)
    gt.setdefault("info", {})
    gt.setdefault("licenses", [])
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO(gt)
        if not results:
            return _empty(coco_gt, class_ids)
        coco_dt = coco_gt.loadRes(results)
        evaluator = COCOeval_faster(coco_gt, coco_dt, iouType="bbox", print_function=log.debug)
        if class_ids is not None:
            evaluator.params.catIds = [int(c) for c in class_ids]
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    stats = {name: float(v) for name, v in zip(STAT_NAMES, evaluator.stats[:12])}
    precision = evaluator.eval["precision"]  # [T, R, K, A, M]
    pr50 = {
        int(c): [float(v) for v in precision[0, :, k, 0, -1]] for k, c in enumerate(evaluator.params.catIds)
    }
    return {"stats": stats, "per_class": _per_class(coco_gt, evaluator), "pr50": pr50}


def _per_class(coco_gt: COCO, evaluator: COCOeval_faster) -> list[dict]:
    precision = evaluator.eval["precision"]  # [T, R, K, A, M]
    recall = evaluator.eval["recall"]  # [T, K, A, M]
    rows = []
    for k, cat_id in enumerate(evaluator.params.catIds):
        p = precision[:, :, k, 0, -1]
        p50 = precision[0, :, k, 0, -1]
        r = recall[:, k, 0, -1]
        rows.append(
            {
                "category_id": int(cat_id),
                "name": coco_gt.cats.get(cat_id, {}).get("name", str(cat_id)),
                "AP": _mean(p),
                "AP50": _mean(p50),
                "AR100": _mean(r),
            }
        )
    return rows


def _mean(values: np.ndarray) -> float:
    valid = values[values > -1]
    return float(valid.mean()) if valid.size else -1.0


def _empty(coco_gt: COCO, class_ids: Sequence[int] | None) -> dict:
    """The metrics of no detections: 0, or -1 (undefined) for a class without ground truth."""
    cats = list(class_ids) if class_ids is not None else sorted(coco_gt.cats)
    with_boxes = {a["category_id"] for a in coco_gt.dataset["annotations"] if not a.get("iscrowd", 0)}
    rows = []
    for c in cats:
        value = 0.0 if c in with_boxes else -1.0
        name = coco_gt.cats.get(c, {}).get("name", str(c))
        rows.append({"category_id": int(c), "name": name, "AP": value, "AP50": value, "AR100": value})
    return {
        "stats": dict.fromkeys(STAT_NAMES, 0.0),
        "pr50": {int(c): [0.0 if c in with_boxes else -1.0] * 101 for c in cats},
        "per_class": rows,
    }


def coco_ground_truth(
    records: Sequence[dict], label_to_category: Sequence[int], categories: dict[int, str]
) -> dict:
    """A COCO ground-truth dict from cleaned per-image records (boxes xyxy pixels, logit labels).

    Crowd boxes are kept as ``iscrowd`` annotations (matched but neither counted nor penalised).
    Areas are box areas.
    """
    images, annotations = [], []
    for r in records:
        images.append({"id": int(r["image_id"]), "width": int(r["width"]), "height": int(r["height"])})
        for boxes, labels, crowd in (
            (r["boxes"], r["labels"], 0),
            (r.get("crowd_boxes", []), r.get("crowd_labels", []), 1),
        ):
            for (x1, y1, x2, y2), label in zip(boxes, labels):
                w, h = x2 - x1, y2 - y1
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": int(r["image_id"]),
                        "category_id": int(label_to_category[label]),
                        "bbox": [float(x1), float(y1), float(w), float(h)],
                        "area": float(w * h),
                        "iscrowd": crowd,
                    }
                )
    used = {c for c in label_to_category if c >= 0}
    cats = [{"id": int(c), "name": categories.get(c, str(c))} for c in sorted(used)]
    return {"images": images, "annotations": annotations, "categories": cats}
