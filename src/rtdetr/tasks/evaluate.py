"""The evaluate task: `rtdetr evaluate -e spec.yaml`: COCO metrics of a model on the test data."""

from __future__ import annotations

from pathlib import Path

from rtdetr.common.status import StatusLogger
from rtdetr.config import ExperimentConfig
from rtdetr.config.task_values import input_size, model_file, model_input
from rtdetr.data.sources import read_sources, write_issues
from rtdetr.deploy.detector import Detector
from rtdetr.errors import UserError
from rtdetr.evaluation.report import PREDICTIONS_JSON, RESULTS_JSON, evaluate_detector
from rtdetr.tasks.files import TaskFiles

OWNED = (RESULTS_JSON, PREDICTIONS_JSON, "dataset_issues.log", "plots")


def files(cfg: ExperimentConfig) -> TaskFiles:
    inputs = {
        **model_input(cfg, "evaluate"),
        "dataset.test_data_sources.json_file": cfg.dataset.test_data_sources.json_file,
    }
    return TaskFiles(inputs=inputs, owned=OWNED)


def run(cfg: ExperimentConfig, results_dir: Path, status: StatusLogger) -> dict:
    ev, d = cfg.evaluate, cfg.dataset
    detector = Detector.from_file(
        model_file(cfg, "evaluate"), runtime=cfg.evaluate.runtime, input_size=input_size(cfg, "evaluate"),
        preserve_aspect_ratio=d.augmentation.preserve_aspect_ratio, num_select=cfg.model.num_select,
    )  # fmt: skip
    detector.reuse_host_memory()
    if detector.num_classes != d.num_classes:
        raise UserError(
            f"dataset.num_classes is {d.num_classes} but the model {model_file(cfg, 'evaluate')} has "
            f"{detector.num_classes} classes; set dataset.num_classes={detector.num_classes}"
        )
    issues: list[str] = []
    source = read_sources(cfg, "test", issues)
    write_issues(results_dir, issues)
    report = evaluate_detector(
        detector, source, results_dir, conf_threshold=ev.conf_threshold,
        class_ids=None if d.eval_class_ids is None else [int(c) for c in d.eval_class_ids],
        batch_size=d.batch_size, workers=d.workers, dataset_type=d.dataset_type,
        model_name=str(model_file(cfg, "evaluate")),
    )  # fmt: skip
    stats = report["stats"]
    status.write(
        "RUNNING", "Evaluation finished.", kpi={"test_mAP": stats["mAP"], "test_mAP50": stats["mAP50"]}
    )
    return report
