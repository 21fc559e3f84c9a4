"""PNG plots of training and evaluation: loss and mAP curves per epoch, precision-recall curves,
the confusion matrix."""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure


def plot_curves(metrics_csvs: list[str | os.PathLike], out_dir: str | os.PathLike) -> list[Path]:
    """PNG plots of the loss and mAP curves per epoch from Lightning's metrics CSV files (the parts
    of a resumed run, oldest first; later values win)."""
    out_dir = Path(out_dir)
    series: dict[str, dict[int, float]] = {}
    for metrics_csv in map(Path, metrics_csvs):
        if not metrics_csv.exists():
            continue
        with metrics_csv.open() as fh:
            for row in csv.DictReader(fh):
                if not row.get("epoch"):
                    continue
                epoch = int(float(row["epoch"]))
                for key in ("train_loss_epoch", "val_loss", "val_mAP", "val_mAP50"):
                    if row.get(key):
                        series.setdefault(key, {})[epoch] = float(row[key])
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, keys, ylabel in (
        ("loss.png", ("train_loss_epoch", "val_loss"), "loss"),
        ("map.png", ("val_mAP", "val_mAP50"), "COCO mAP"),
    ):
        present = [k for k in keys if series.get(k)]
        if not present:
            continue
        fig, ax = _figure(figsize=(6, 4))
        for key in present:
            epochs = sorted(series[key])
            ax.plot(epochs, [series[key][e] for e in epochs], marker="o", label=key.replace("_epoch", ""))
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend()
        written.append(_save(fig, out_dir / name))
    return written


def plot_pr_curves(pr50: dict[int, list[float]], names: dict[int, str], path: str | os.PathLike) -> Path:
    """Precision-recall curves at IoU 0.5: each class (thin) and their mean (bold), AP50 in the legend."""
    recall = np.linspace(0, 1, 101)
    fig, ax = _figure(figsize=(7, 5))
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
    return _save(fig, path)


def plot_pr_per_class(pr50: dict[int, list[float]], names: dict[int, str], path: str | os.PathLike) -> Path:
    """One small precision-recall panel (IoU 0.5) per class, in a grid."""
    cats = list(pr50)
    cols = min(5, max(1, len(cats)))
    rows = (len(cats) + cols - 1) // cols
    fig, axes = _figure(rows, cols, figsize=(3 * cols, 2.6 * rows), squeeze=False)
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
    return _save(fig, path)


def plot_confusion(
    matrix: np.ndarray, names: Sequence[str], path: str | os.PathLike, conf: float, iou: float
) -> Path:
    """The confusion matrix, each row normalised by its number of true boxes; counts in the cells."""
    labels = [*names, "background"]
    totals = matrix.sum(1, keepdims=True)
    norm = np.divide(matrix, totals, out=np.zeros(matrix.shape, dtype=float), where=totals > 0)
    size = max(5.0, 0.45 * len(labels) + 2)
    fig, ax = _figure(figsize=(size + 1, size))
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
    return _save(fig, path)


def _figure(rows: int = 1, cols: int = 1, figsize: tuple[float, float] = (6, 4), **kwargs):
    """A figure and its axes, from matplotlib's object-oriented API: no pyplot, no global state."""
    fig = Figure(figsize=figsize)
    return fig, fig.subplots(rows, cols, **kwargs)


def _save(fig: Figure, path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path
