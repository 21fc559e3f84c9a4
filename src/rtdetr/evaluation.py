"""Evaluation: detections of a dataset, the metrics table, the confusion matrix and the PNG plots."""

from __future__ import annotations

import logging
import os
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torchvision.ops import box_iou
from tqdm import tqdm

from rtdetr.engine.metrics import STAT_NAMES

log = logging.getLogger(__name__)

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
    from rtdetr.data.dataset import CocoDetection
    from rtdetr.engine.data import make_loader
    from rtdetr.engine.metrics import coco_results

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


def plot_pr_curves(pr50: dict[int, list[float]], names: dict[int, str], path: str | os.PathLike) -> Path:
    """Precision-recall curves at IoU 0.5: each class (thin) and their mean (bold), AP50 in the legend."""
    plt = _pyplot()
    recall = np.linspace(0, 1, 101)
    fig, ax = plt.subplots(figsize=(7, 5))
    curves = []
    for cat, values in pr50.items():
        p = np.asarray(values, dtype=float)
        if (p < 0).all():  # no ground truth of this class
            continue
        curves.append(np.where(p < 0, 0, p))
        if len(pr50) <= 20:
            ax.plot(recall, curves[-1], linewidth=1, label=f"{names.get(cat, cat)} {curves[-1].mean():.3f}")
    if curves:
        mean = np.mean(curves, axis=0)
        ax.plot(recall, mean, color="black", linewidth=3, label=f"all classes {mean.mean():.3f}")
    ax.set(
        xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02), title="Precision-recall, IoU 0.5"
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    return _save(fig, path, plt)


def plot_pr_per_class(pr50: dict[int, list[float]], names: dict[int, str], path: str | os.PathLike) -> Path:
    """One small precision-recall panel (IoU 0.5) per class, in a grid."""
    plt = _pyplot()
    cats = list(pr50)
    cols = min(5, max(1, len(cats)))
    rows = (len(cats) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 2.6 * rows), squeeze=False)
    recall = np.linspace(0, 1, 101)
    for ax, cat in zip(axes.flat, cats):
        p = np.asarray(pr50[cat], dtype=float)
        title = str(names.get(cat, cat))
        if (p < 0).all():
            ax.set_title(f"{title}: no boxes", fontsize=9)
        else:
            p = np.where(p < 0, 0, p)
            ax.plot(recall, p)
            ax.set_title(f"{title}: AP50 {p.mean():.3f}", fontsize=9)
        ax.set(xlim=(0, 1), ylim=(0, 1.02))
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(cats) :]:
        ax.axis("off")
    return _save(fig, path, plt)


def plot_confusion(
    matrix: np.ndarray, names: Sequence[str], path: str | os.PathLike, conf: float, iou: float
) -> Path:
    """The confusion matrix, each row normalised by its number of true boxes; counts in the cells."""
    plt = _pyplot()
    labels = [*names, "background"]
    totals = matrix.sum(1, keepdims=True)
    norm = np.divide(matrix, totals, out=np.zeros(matrix.shape, dtype=float), where=totals > 0)
    size = max(5.0, 0.45 * len(labels) + 2)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    image = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
    ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=8)
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    ax.set(xlabel="predicted", ylabel="true", title=f"Confusion matrix (score >= {conf:g}, IoU >= {iou:g})")
    if len(labels) <= 30:
        for (i, j), count in np.ndenumerate(matrix):
            if count:
                ax.text(j, i, str(count), ha="center", va="center", fontsize=7,
                        color="white" if norm[i, j] > 0.5 else "black")  # fmt: skip
    return _save(fig, path, plt)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | os.PathLike, plt) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
