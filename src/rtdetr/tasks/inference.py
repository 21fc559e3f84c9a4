"""The inference task: `rtdetr inference -e spec.yaml`: detections in folders of images and videos."""

from __future__ import annotations

import logging
from pathlib import Path

from rtdetr.common.status import StatusLogger
from rtdetr.config import ExperimentConfig
from rtdetr.config.task_values import input_size, model_file, model_input
from rtdetr.data.classmap import read_classmap
from rtdetr.data.sources import list_inputs
from rtdetr.deploy.detector import Detector
from rtdetr.errors import UserError
from rtdetr.predict.draw import class_colours
from rtdetr.predict.runner import OutputWriter, run_inference
from rtdetr.tasks.files import TaskFiles

log = logging.getLogger(__name__)

# is_internal puts labels/ and images_annotated/ one folder down
OWNED = ("detections.json", "labels", "images_annotated", "*/labels", "*/images_annotated")


def files(cfg: ExperimentConfig) -> TaskFiles:
    inputs = {
        **model_input(cfg, "inference"),
        "dataset.infer_data_sources.classmap": cfg.dataset.infer_data_sources.classmap,
    }
    return TaskFiles(inputs=inputs, owned=OWNED)


def run(cfg: ExperimentConfig, results_dir: Path, status: StatusLogger):
    inf, d = cfg.inference, cfg.dataset
    source = d.infer_data_sources
    inputs = list_inputs(list(source.image_dir))
    detector = Detector.from_file(
        model_file(cfg, "inference"), runtime=cfg.inference.runtime, input_size=input_size(cfg, "inference"),
        preserve_aspect_ratio=d.augmentation.preserve_aspect_ratio, num_select=cfg.model.num_select,
    )  # fmt: skip
    detector.reuse_host_memory()
    if source.classmap:
        names = read_classmap(source.classmap)
        if len(names) != detector.num_classes:
            raise UserError(
                f"dataset.infer_data_sources.classmap: {source.classmap} has {len(names)} class names but the "
                f"model has {detector.num_classes} classes (line i names class index i)"
            )
        detector.class_names = names
    colours = class_colours(detector.class_names, dict(inf.color_map))
    writer = OutputWriter(
        results_dir, detector.class_names, colours, detector.metadata.category_ids,
        outline_width=inf.outline_width, is_internal=inf.is_internal,
    )  # fmt: skip
    summary = run_inference(
        detector, inputs, writer, conf=inf.conf_threshold, batch_size=d.batch_size, workers=d.workers
    )
    if not summary.images and not summary.videos:
        raise UserError(f"no readable image or video among the inputs: {summary.line()}")
    log.info("inference: %s; outputs in %s", summary.line(), results_dir)
    status.write(
        "RUNNING", f"Inference finished: {summary.line()}.",
        kpi={"images": summary.images, "frames": summary.frames, "detections": summary.detections,
             "unreadable": len(summary.unreadable)},
    )  # fmt: skip
    return summary
