"""Evaluation of a model on a COCO dataset: its detections, the 12 COCO numbers and per-class table,
the confusion matrix, plots, and the report files (results.json, predictions.json, plots/)."""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torchvision.ops import box_iou
from tqdm import tqdm

from rtdetr.common.files import atomic_write_text
from rtdetr.data.coco import CocoSource
from rtdetr.data.dataset import CocoDetection
from rtdetr.data.loader import make_loader
from rtdetr.errors import UserError
from rtdetr.evaluation.coco import STAT_NAMES, coco_ground_truth, coco_results, evaluate_coco, without_images
from rtdetr.evaluation.plots import plot_confusion, plot_pr_curves, plot_pr_per_class

log = logging.getLogger(__name__)

RESULTS_JSON = "results.json"
PREDICTIONS_JSON = "predictions.json"  # the evaluated detections, a COCO results list
CONFUSION_CONF = 0.25  # the confusion matrix counts detections at or above max(this, conf_threshold)

STAT_LABELS = {
    "mAP": "AP @[IoU=0.50:0.95 | area=all | maxDets=100]",
    "mAP50": "AP @[IoU=0.50 | area=all | maxDets=100]",
    "mAP75": "AP @[IoU=0.75 | area=all | maxDets=100]",
    "mAP_small": "AP @[IoU=0.50:0.95 | area=small | maxDets=100]",
    "mAP_medium": "AP @[IoU=0.50:0.95 | area=medium | maxDets=100]",
    "mAP_large": "AP @[IoU=0.50:0.95 | area=large | maxDets=100]",
    "AR1": "AR @[IoU=0.50:0.95 | area=all | maxDets=1]",
    "AR10": "AR @[IoU=0.50:0.95 | area=all | maxDets=10]",
    "AR100": "AR @[IoU=0.50:0.95 | area=all | maxDets=100]",
    "AR_small": "AR @[IoU=0.50:0.95 | area=small | maxDets=100]",
    "AR_medium": "AR @[IoU=0.50:0.95 | area=medium | maxDets=100]",
    "AR_large": "AR @[IoU=0.50:0.95 | area=large | maxDets=100]",
}


def detect_dataset(
    detector,
    source,
    conf: float = 0.0,
    *,
    batch_size: int = 4,
    workers: int = 0,
    dataset_type: str = "serialized",
    unreadable: list[int] | None = None,
) -> list[dict]:
    """COCO results (bbox xywh in original pixels, the source's category ids) of ``detector`` (a
    rtdetr.Detector) on every image of ``source`` (a rtdetr.data.coco.CocoSource), score >= conf.

    Images are prepared at the detector's input size. Detections of a class that no category of the
    source maps to are dropped (with a warning). The ids of images that cannot be read are appended
    to ``unreadable`` (leave them out of the ground truth: ``metrics.without_images``)."""
    loader = make_loader(
        CocoDetection(source.records, detector.preset, dataset_type=dataset_type, substitute_unreadable=False),
        batch_size=batch_size, workers=workers, pin_memory=False, train=False, seed=0,
    )  # fmt: skip
    to_category = np.asarray(source.label_to_category)
    results: list[dict] = []
    with tqdm(total=len(source.records), unit="img", desc="evaluate", disable=None) as bar:
        for images, targets in loader:
            canvas = torch.stack([t["canvas_size"] for t in targets])
            orig = torch.stack([t["orig_size"] for t in targets])
            for t, det in zip(targets, detector.detect_batch(images, canvas, orig, conf)):
                if t.get("unreadable"):
                    if unreadable is not None:
                        unreadable.append(int(t["image_id"]))
                    continue
                results += coco_results(
                    [int(t["image_id"])], [det.boxes], [det.scores], [to_category[det.labels]]
                )
            bar.update(len(targets))
    unmapped = sum(1 for r in results if r["category_id"] < 0)
    if unmapped:
        log.warning(
            "%d detections of classes without a category in the test data are not evaluated", unmapped
        )
    return [r for r in results if r["category_id"] >= 0]


def metrics_table(stats: dict, per_class: Sequence[dict]) -> str:
    """The 12 COCO numbers, then one row per class (AP, AP50, AR100; -1 where a class has no boxes)."""
    lines = [f"{STAT_LABELS[name]:<50} {name:<11} = {stats[name]:.4f}" for name in STAT_NAMES]
    width = max([len("class")] + [len(str(row["name"])) for row in per_class])
    lines += ["", f"{'class':<{width}}  {'id':>5}  {'AP':>7}  {'AP50':>7}  {'AR100':>7}"]
    for row in per_class:
        lines.append(
            f"{row['name']:<{width}}  {row['category_id']:>5}  {row['AP']:>7.4f}  {row['AP50']:>7.4f}  {row['AR100']:>7.4f}"
        )
    return "\n".join(lines)


def confusion_matrix(
    gt: dict, results: Sequence[dict], category_ids: Sequence[int], iou: float = 0.5, conf: float = 0.25
) -> np.ndarray:
    """Counts [K + 1, K + 1]: row = true class, column = predicted class, index K = background.

    Per image, detections with score >= ``conf`` are matched greedily (highest score first) to the
    unmatched ground-truth box of highest IoU >= ``iou`` of any class; a matched pair counts at
    (true, predicted), an unmatched detection at (background, predicted), a missed box at (true,
    background). Crowd boxes and categories outside ``category_ids`` are left out.
    """
    index = {int(c): i for i, c in enumerate(category_ids)}
    k = len(category_ids)
    matrix = np.zeros((k + 1, k + 1), dtype=np.int64)
    truth: dict[int, list] = defaultdict(list)
    for a in gt["annotations"]:
        if not a.get("iscrowd", 0) and int(a["category_id"]) in index:
            truth[int(a["image_id"])].append(a)
    preds: dict[int, list] = defaultdict(list)
    for r in results:
        if r["score"] >= conf and int(r["category_id"]) in index:
            preds[int(r["image_id"])].append(r)
    for image_id in {int(i["id"]) for i in gt["images"]}:
        g, p = truth.get(image_id, []), sorted(preds.get(image_id, []), key=lambda r: -r["score"])
        g_cls = [index[int(a["category_id"])] for a in g]
        p_cls = [index[int(r["category_id"])] for r in p]
        matched = np.zeros(len(g), dtype=bool)
        if g and p:
            ious = box_iou(_xyxy([r["bbox"] for r in p]), _xyxy([a["bbox"] for a in g])).numpy()
            for i, pc in enumerate(p_cls):
                candidates = np.where(~matched & (ious[i] >= iou), ious[i], -1.0)
                j = int(candidates.argmax())
                if candidates[j] >= 0:
                    matched[j] = True
                    matrix[g_cls[j], pc] += 1
                else:
                    matrix[k, pc] += 1
        else:
            for pc in p_cls:
                matrix[k, pc] += 1
        for j in np.where(~matched)[0]:
            matrix[g_cls[j], k] += 1
    return matrix


def _xyxy(xywh: list) -> torch.Tensor:
    b = torch.tensor(xywh, dtype=torch.float64).reshape(-1, 4)
    return torch.cat([b[:, :2], b[:, :2] + b[:, 2:]], 1)


def evaluate_detector(
    detector,
    source: CocoSource,
    out_dir: str | Path,
    *,
    conf_threshold: float = 0.0,
    class_ids: Sequence[int] | None = None,
    batch_size: int = 4,
    workers: int = 0,
    dataset_type: str = "serialized",
    model_name: str = "",
) -> dict:
    """Evaluate ``detector`` (a rtdetr.Detector) on ``source``; write predictions.json, results.json
    and plots/ into ``out_dir``, print the metrics table, and return the report (results.json's
    content: stats, per_class, confusion_matrix, counts)."""
    out_dir = Path(out_dir)
    gt = coco_ground_truth(source.records, source.label_to_category, source.categories)
    known = {c["id"] for c in gt["categories"]}
    for i, c in enumerate(class_ids or []):
        if c not in known:
            raise UserError(
                f"dataset.eval_class_ids[{i}]: {c} is not a category of {', '.join(source.json_files)} "
                f"(categories: {', '.join(map(str, sorted(known)))})"
            )
    unreadable: list[int] = []
    results = detect_dataset(detector, source, conf_threshold, batch_size=batch_size, workers=workers,
                             dataset_type=dataset_type, unreadable=unreadable)  # fmt: skip
    if len(unreadable) == len(source.records):
        raise UserError(
            f"{', '.join(source.json_files)}: none of the {len(unreadable)} test images could be read; nothing to evaluate"
        )
    if unreadable:
        log.warning("%d unreadable images left out of the metrics", len(unreadable))
        gt = without_images(gt, unreadable)
    atomic_write_text(out_dir / PREDICTIONS_JSON, json.dumps(results) + "\n")
    metrics = evaluate_coco(gt, results, class_ids=class_ids)
    stats, per_class = metrics["stats"], metrics["per_class"]
    print(metrics_table(stats, per_class))
    names = {c["id"]: c["name"] for c in gt["categories"]}
    evaluated = list(class_ids or sorted(names))
    conf = max(CONFUSION_CONF, conf_threshold)
    matrix = confusion_matrix(gt, results, evaluated, iou=0.5, conf=conf)
    plots = out_dir / "plots"
    plot_pr_curves(metrics["pr50"], names, plots / "pr_curve.png")
    plot_pr_per_class(metrics["pr50"], names, plots / "pr_curves_per_class.png")
    plot_confusion(matrix, [names[c] for c in evaluated], plots / "confusion_matrix.png", conf=conf, iou=0.5)
    report = {
        "model": model_name,
        "test_data": source.json_files,
        "images": len(source.records) - len(unreadable),  # the images scored
        "unreadable_images": len(unreadable),
        "detections": len(results),
        "input_size": list(detector.input_size),
        "conf_threshold": conf_threshold,
        "eval_class_ids": None if class_ids is None else list(class_ids),
        "stats": stats,
        "per_class": per_class,
        "confusion_matrix": {"labels": [names[c] for c in evaluated] + ["background"], "counts": matrix.tolist(),
                             "score_threshold": conf, "iou": 0.5},
    }  # fmt: skip
    atomic_write_text(out_dir / RESULTS_JSON, json.dumps(report, indent=2) + "\n")
    log.info("metrics in %s, plots in %s", out_dir / RESULTS_JSON, plots)
    return report
