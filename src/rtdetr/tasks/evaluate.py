"""The evaluate task: `rtdetr evaluate -e spec.yaml`: COCO metrics of a model on the test data."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from rtdetr.config import ExperimentConfig
from rtdetr.errors import UserError
from rtdetr.fileio import atomic_write_text
from rtdetr.status import StatusLogger
from rtdetr.tasks.files import TaskFiles

log = logging.getLogger(__name__)

RESULTS_JSON = "results.json"
PREDICTIONS_JSON = "predictions.json"  # the evaluated detections, a COCO results list
OWNED = (RESULTS_JSON, PREDICTIONS_JSON, "dataset_issues.log", "plots")
CONFUSION_CONF = 0.25  # the confusion matrix counts detections at or above max(this, conf_threshold)


def input_size(cfg: ExperimentConfig, section: str) -> list[int]:
    """evaluate.input_height/input_width when both are set, else dataset.augmentation.eval_spatial_size."""
    task = getattr(cfg, section)
    height, width = task.input_height, task.input_width
    if (height is None) != (width is None):
        raise UserError(f"{section}.input_width and {section}.input_height go together: set both or neither")
    return (
        [int(height), int(width)] if height is not None else list(cfg.dataset.augmentation.eval_spatial_size)
    )


def model_file(cfg: ExperimentConfig, section: str) -> str:
    """The model a task runs: ``trt_engine`` (an exported model) when set, else ``checkpoint``."""
    task = getattr(cfg, section)
    return task.trt_engine or task.checkpoint


def keep_host_memory_for_cpu_model(detector) -> None:
    """A PyTorch model on the CPU reuses freed activations instead of faulting them in each batch
    (``rtdetr.engine.host_memory``; the ONNX Runtime and TensorRT backends have their own arenas)."""
    from rtdetr.deploy import TorchBackend
    from rtdetr.engine.host_memory import keep_freed_host_memory

    if isinstance(detector.backend, TorchBackend) and detector.backend.device.type == "cpu":
        keep_freed_host_memory()


def files(cfg: ExperimentConfig) -> TaskFiles:
    inputs = {
        "evaluate.trt_engine" if cfg.evaluate.trt_engine else "evaluate.checkpoint": model_file(
            cfg, "evaluate"
        ),
        "dataset.test_data_sources.json_file": cfg.dataset.test_data_sources.json_file,
    }
    return TaskFiles(inputs=inputs, owned=OWNED)


def run(cfg: ExperimentConfig, results_dir: Path, status: StatusLogger) -> dict:
    from rtdetr.detector import Detector
    from rtdetr.engine.data import read_sources, write_issues
    from rtdetr.engine.metrics import coco_ground_truth, evaluate_coco, without_images
    from rtdetr.evaluation import (
        confusion_matrix,
        detect_dataset,
        metrics_table,
        plot_confusion,
        plot_pr_curves,
        plot_pr_per_class,
    )

    ev, d = cfg.evaluate, cfg.dataset
    size = input_size(cfg, "evaluate")
    detector = Detector.from_file(
        model_file(cfg, "evaluate"), input_size=size, preserve_aspect_ratio=d.augmentation.preserve_aspect_ratio,
        num_select=cfg.model.num_select,
    )  # fmt: skip
    keep_host_memory_for_cpu_model(detector)
    if detector.num_classes != d.num_classes:
        raise UserError(
            f"dataset.num_classes is {d.num_classes} but the model {model_file(cfg, 'evaluate')} has "
            f"{detector.num_classes} classes; set dataset.num_classes={detector.num_classes}"
        )
    issues: list[str] = []
    source = read_sources(cfg, "test", issues)
    write_issues(results_dir, issues)
    gt = coco_ground_truth(source.records, source.label_to_category, source.categories)
    class_ids = None if d.eval_class_ids is None else [int(c) for c in d.eval_class_ids]
    known = {c["id"] for c in gt["categories"]}
    for i, c in enumerate(class_ids or []):
        if c not in known:
            raise UserError(
                f"dataset.eval_class_ids[{i}]: {c} is not a category of {d.test_data_sources.json_file} "
                f"(categories: {', '.join(map(str, sorted(known)))})"
            )

    unreadable: list[int] = []
    results = detect_dataset(detector, source, ev.conf_threshold, batch_size=d.batch_size, workers=d.workers,
                             dataset_type=d.dataset_type, unreadable=unreadable)  # fmt: skip
    if len(unreadable) == len(source.records):
        raise UserError(
            f"{', '.join(source.json_files)}: none of the {len(unreadable)} test images could be read; nothing to evaluate"
        )
    if unreadable:
        log.warning("%d unreadable images left out of the metrics", len(unreadable))
        gt = without_images(gt, unreadable)
    atomic_write_text(results_dir / PREDICTIONS_JSON, json.dumps(results) + "\n")
    metrics = evaluate_coco(gt, results, class_ids=class_ids)
    stats, per_class = metrics["stats"], metrics["per_class"]
    print(metrics_table(stats, per_class))
    names = {c["id"]: c["name"] for c in gt["categories"]}
    evaluated = class_ids or sorted(names)
    conf = max(CONFUSION_CONF, ev.conf_threshold)
    matrix = confusion_matrix(gt, results, evaluated, iou=0.5, conf=conf)
    plots = results_dir / "plots"
    plot_pr_curves(metrics["pr50"], names, plots / "pr_curve.png")
    plot_pr_per_class(metrics["pr50"], names, plots / "pr_curves_per_class.png")
    plot_confusion(matrix, [names[c] for c in evaluated], plots / "confusion_matrix.png", conf=conf, iou=0.5)
    report = {
        "model": str(model_file(cfg, "evaluate")),
        "test_data": source.json_files,
        "images": len(source.records) - len(unreadable),  # the images scored
        "unreadable_images": len(unreadable),
        "detections": len(results),
        "input_size": list(detector.input_size),
        "conf_threshold": ev.conf_threshold,
        "eval_class_ids": class_ids,
        "stats": stats,
        "per_class": per_class,
        "confusion_matrix": {"labels": [names[c] for c in evaluated] + ["background"], "counts": matrix.tolist(),
                             "score_threshold": conf, "iou": 0.5},
    }  # fmt: skip
    atomic_write_text(results_dir / RESULTS_JSON, json.dumps(report, indent=2) + "\n")
    status.write(
        "RUNNING", "Evaluation finished.", kpi={"test_mAP": stats["mAP"], "test_mAP50": stats["mAP50"]}
    )
    log.info("metrics in %s, plots in %s", results_dir / RESULTS_JSON, plots)
    return report
