"""A job's spec: the experiment's base spec, the job's specs on top, the service's values filled in,
then validated by the toolkit's own loader before the job exists.

Filled in by the service:

- ``results_dir`` is the job's folder (each task writes ``<job folder>/<action>``); the tasks'
  own ``results_dir`` fields are cleared.
- Dataset paths come from the experiment's datasets when the spec names none (train and val for
  train and distill, test, or else val, for evaluate and inference), and ``dataset.num_classes`` from
  the train datasets.
- A child job (``parent_job_id``) takes its parent's model: the checkpoint of the epoch with the best
  ``val_mAP50`` (or the latest checkpoint) of a train or distill parent, as the pretrained model of
  train, the teacher of distill, the checkpoint of evaluate, inference and export, with the parent's
  ``model`` section (distill: as ``distill.teacher``) unless the spec names another than the default;
  the ONNX file of an export or quantize parent for gen_trt_engine, quantize, evaluate and inference.
- Output files (``export.onnx_file``, ``quantize.output_file``, ``gen_trt_engine.trt_engine``) go
  into the job's folder.

Every path a spec names must lie in the data folder (outside its ``.service`` folder); the outputs
of the action must lie in the job's own folder. Relative paths are taken from the data folder.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from rtdetr.common.dotted import get_path, set_path
from rtdetr.common.status import read_status
from rtdetr.config import load_spec, reference, spec_to_dict
from rtdetr.config.fields import MISSING_VALUE
from rtdetr.config.rules import TASKS
from rtdetr.errors import SpecError, abbreviate
from rtdetr.service.datasets import inside
from rtdetr.tasks.runner import results_dir_of

# every field of the spec that names a file or folder ([] = each item of a list)
PATH_FIELDS = (
    "results_dir",
    "model.pretrained_backbone_path",
    "model.frozen_fm.checkpoint",
    "dataset.train_data_sources[].image_dir",
    "dataset.train_data_sources[].json_file",
    "dataset.val_data_sources.image_dir",
    "dataset.val_data_sources.json_file",
    "dataset.test_data_sources.image_dir",
    "dataset.test_data_sources.json_file",
    "dataset.infer_data_sources.image_dir[]",
    "dataset.infer_data_sources.classmap",
    "train.resume_training_checkpoint_path",
    "train.results_dir",
    "train.pretrained_model_path",
    "evaluate.checkpoint",
    "evaluate.results_dir",
    "evaluate.trt_engine",
    "inference.checkpoint",
    "inference.results_dir",
    "inference.trt_engine",
    "export.checkpoint",
    "export.onnx_file",
    "export.results_dir",
    "gen_trt_engine.onnx_file",
    "gen_trt_engine.trt_engine",
    "gen_trt_engine.results_dir",
    "gen_trt_engine.timing_cache",
    "gen_trt_engine.calibration.cal_image_dir[]",
    "gen_trt_engine.calibration.cal_cache_file",
    "distill.teacher.pretrained_backbone_path",
    "distill.teacher.frozen_fm.checkpoint",
    "distill.pretrained_teacher_model_path",
    "quantize.onnx_file",
    "quantize.output_file",
    "quantize.results_dir",
    "quantize.cal_image_dir[]",
    "automl.results_dir",
)

# what each action writes outside its results folder: kept in the job's own folder
OUTPUT_FIELDS = {
    "export": ("export.onnx_file",),
    "gen_trt_engine": (
        "gen_trt_engine.trt_engine",
        "gen_trt_engine.timing_cache",
        "gen_trt_engine.calibration.cal_cache_file",
    ),
    "quantize": ("quantize.output_file",),
}
# default names of those outputs, in the job's <action> folder
OUTPUT_NAMES = {
    "export.onnx_file": "model.onnx",
    "gen_trt_engine.trt_engine": "model.engine",
    "quantize.output_file": "model_int8.onnx",
}
RESULTS_SECTIONS = ("train", "evaluate", "inference", "export", "gen_trt_engine", "quantize", "automl")
LATEST = "rtdetr_model_latest.pth"  # the train task's link to its newest checkpoint


def deep_merge(base: Mapping, over: Mapping) -> dict:
    """``over`` on top of ``base``: mappings merge key by key, anything else (lists too) replaces."""
    out = copy.deepcopy(dict(base))
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def is_unset(value: Any) -> bool:
    return value is None or value == "" or value == MISSING_VALUE or value == [] or value == [""]


def unset_sources(value: Any) -> bool:
    """Whether a train_data_sources value names no data: unset, or only sources with empty paths
    (as in the default spec that `get-spec` returns)."""
    if is_unset(value):
        return True
    return isinstance(value, list) and all(
        isinstance(s, Mapping) and all(is_unset(v) for v in s.values()) for s in value
    )


def service_default_spec() -> dict:
    """The default spec as the service hands it out (`get-spec`): ``dataset.num_classes`` is left
    null, so that a job run with it takes the count from the experiment's datasets."""
    spec = reference.default_spec()
    spec["dataset"]["num_classes"] = None
    return spec


def _fill(spec: dict, dotted: str, value: Any) -> None:
    """Set ``dotted`` to ``value`` unless the spec gives it a value."""
    if value is not None and is_unset(get_path(spec, dotted)):
        set_path(spec, dotted, value)


def _values(spec: Any, dotted: str, prefix: str = "") -> Iterator[tuple[str, Any, list]]:
    """(concrete field, value, (container, key)) for a PATH_FIELDS entry; lists expand item by item."""
    head, _, rest = dotted.partition(".")
    name = head.removesuffix("[]")
    if not isinstance(spec, Mapping) or name not in spec:
        return
    value = spec[name]
    here = f"{prefix}{name}"
    if head.endswith("[]"):
        if not isinstance(value, list):
            return
        for i, item in enumerate(value):
            if rest:
                yield from _values(item, rest, f"{here}[{i}].")
            else:
                yield f"{here}[{i}]", item, [value, i]
    elif rest:
        yield from _values(value, rest, f"{here}.")
    else:
        yield here, value, [spec, name]


# ------------------------------------------------------------------------------------- parents
def task_dir(job_dir: str | os.PathLike, action: str, specs: Mapping) -> Path:
    """Where a job's task writes its results (the runner's rule, on the job's spec)."""
    dry_run = action == "train" and get_path(specs, "train.is_dry_run") is True
    return results_dir_of(action, None, str(job_dir), dry_run)


def best_checkpoint(results: Path) -> Path | None:
    """The checkpoint of the epoch with the best val_mAP50 in status.json, else the latest one."""
    scored = []
    try:
        lines = read_status(results)
    except (OSError, ValueError):  # a status log cut short: the latest checkpoint then
        lines = []
    for line in lines:
        kpi = line.get("kpi") if isinstance(line, dict) else None
        score = kpi.get("val_mAP50") if isinstance(kpi, dict) else None
        if isinstance(score, (int, float)) and isinstance(line.get("epoch"), int):
            scored.append((float(score), line["epoch"]))
    for _, epoch in sorted(scored, reverse=True):
        path = results / f"model_epoch_{epoch:03d}.pth"
        if path.is_file():
            return Path(os.path.realpath(path))
    return latest_checkpoint(results)


def latest_checkpoint(results: Path) -> Path | None:
    """The train task's latest checkpoint in ``results`` (its link, else the highest epoch)."""
    if (results / LATEST).is_file():
        return Path(os.path.realpath(results / LATEST))
    found = sorted(results.glob("model_epoch_[0-9][0-9][0-9]*.pth"))
    found = [p for p in found if p.stem.removeprefix("model_epoch_").isdigit()]
    return max(found, key=lambda p: int(p.stem.removeprefix("model_epoch_")), default=None)


def parent_model(action: str, specs: Mapping, job_dir: str) -> dict[str, Any]:
    """What a finished job hands its children: ``checkpoint``, ``onnx`` and/or ``engine`` paths, and
    the ``model`` section a train or distill job trained."""
    out: dict[str, Any] = {}

    def put(key: str, value: Any) -> None:
        if isinstance(value, str) and not is_unset(value):
            out[key] = value

    section = None
    if action in ("train", "distill"):
        best = best_checkpoint(task_dir(job_dir, action, specs))
        put("checkpoint", str(best) if best else None)
        section = get_path(specs, "model")
    elif action == "export":
        put("checkpoint", get_path(specs, "export.checkpoint"))
        put("onnx", get_path(specs, "export.onnx_file"))
    elif action == "quantize":
        put("onnx", get_path(specs, "quantize.output_file"))
    elif action == "gen_trt_engine":
        put("onnx", get_path(specs, "gen_trt_engine.onnx_file"))
        put("engine", get_path(specs, "gen_trt_engine.trt_engine"))
    else:  # evaluate, inference: the model they ran
        put("checkpoint", get_path(specs, f"{action}.checkpoint"))
        engine = get_path(specs, f"{action}.trt_engine")
        put("engine" if str(engine).endswith(".engine") else "onnx", engine)
    out = {k: v for k, v in out.items() if os.path.exists(v)}
    if isinstance(section, Mapping) and "checkpoint" in out:
        out["model"] = copy.deepcopy(dict(section))
    return out


def _take_model(spec: dict, action: str, model: Mapping | None) -> None:
    """A child of a train or distill job builds the parent's model (distill: as its teacher), unless
    its spec names another than the default one."""
    if not model or action not in ("train", "evaluate", "inference", "export", "distill"):
        return
    target = "distill.teacher" if action == "distill" else "model"
    given = get_path(spec, target)
    if given in (None, {}) or given == get_path(reference.default_spec(), target):
        set_path(spec, target, copy.deepcopy(dict(model)))


# ------------------------------------------------------------------------------------- filling
def fill_spec(
    action: str,
    spec: dict,
    job_dir: Path,
    datasets: Mapping[str, list[Mapping[str, str]]],
    num_classes: int | None,
    parent: Mapping[str, str] | None,
) -> list[str]:
    """Fill the service's values into ``spec`` in place (rules in the module docstring).

    datasets: role ("train", "val", "test") -> [{"image_dir", "json_file"}]; parent: the parent's
    ``parent_model``, None without a parent. Returns problems (a parent without the model needed)."""
    problems = []
    spec["results_dir"] = str(job_dir)
    for section in RESULTS_SECTIONS:
        if isinstance(spec.get(section), dict) and spec[section].get("results_dir") is not None:
            spec[section]["results_dir"] = None

    train, val = datasets.get("train") or [], datasets.get("val") or []
    test = datasets.get("test") or val
    if train and unset_sources(get_path(spec, "dataset.train_data_sources")):
        set_path(spec, "dataset.train_data_sources", [dict(d) for d in train])
    if val:
        _fill(spec, "dataset.val_data_sources.image_dir", val[0]["image_dir"])
        _fill(spec, "dataset.val_data_sources.json_file", val[0]["json_file"])
    if test:
        _fill(spec, "dataset.test_data_sources.image_dir", test[0]["image_dir"])
        _fill(spec, "dataset.test_data_sources.json_file", test[0]["json_file"])
        _fill(spec, "dataset.infer_data_sources.image_dir", [test[0]["image_dir"]])
    if num_classes is not None and get_path(spec, "dataset.num_classes") is None:
        set_path(spec, "dataset.num_classes", num_classes)
    calibration = [train[0]["image_dir"]] if train else None

    own = job_dir / action
    for field in OUTPUT_FIELDS.get(action, ()):
        if field in OUTPUT_NAMES:
            _fill(spec, field, str(own / OUTPUT_NAMES[field]))

    if parent is None:
        if action == "quantize":
            _fill(spec, "quantize.cal_image_dir", calibration)
        return problems
    checkpoint, onnx, engine = parent.get("checkpoint"), parent.get("onnx"), parent.get("engine")
    _take_model(spec, action, parent.get("model"))
    needs = {
        "train": ("train.pretrained_model_path", checkpoint, "a checkpoint"),
        "distill": ("distill.pretrained_teacher_model_path", checkpoint, "a checkpoint"),
        "export": ("export.checkpoint", checkpoint, "a checkpoint"),
        "gen_trt_engine": ("gen_trt_engine.onnx_file", onnx, "an ONNX file"),
        "quantize": ("quantize.onnx_file", onnx, "an ONNX file"),
    }
    if action in ("evaluate", "inference"):
        if engine or onnx:
            needs[action] = (f"{action}.trt_engine", engine or onnx, "a model")
        else:
            needs[action] = (f"{action}.checkpoint", checkpoint, "a model")
    field, value, what = needs[action]
    if value is None and is_unset(get_path(spec, field)):
        problems.append(f"parent_job_id: the parent job left no {what.split(' ', 1)[1]} for {field}")
    _fill(spec, field, value)
    if action == "quantize":
        _fill(spec, "quantize.cal_image_dir", calibration)
    if action == "gen_trt_engine":
        _fill(spec, "gen_trt_engine.calibration.cal_image_dir", calibration)
    return problems


# ------------------------------------------------------------------------------------- paths
def _is_path_value(value: Any) -> bool:
    return isinstance(value, str) and not is_unset(value) and "${" not in value


def absolutize(spec: dict, action: str, data_dir: Path, job_dir: Path) -> None:
    """Relative paths in place: outputs of the action from its folder in the job, others from the
    data folder."""
    outputs = OUTPUT_FIELDS.get(action, ())
    for pattern in PATH_FIELDS:
        base = job_dir / action if pattern in outputs else data_dir
        for _, value, (container, key) in list(_values(spec, pattern)):
            if _is_path_value(value) and not os.path.isabs(os.path.expanduser(value)):
                container[key] = str(base / value)


def path_problems(spec: Mapping, action: str, data_dir: Path, job_dir: Path) -> list[str]:
    """One problem per path of ``spec`` outside where it may be (rules in the module docstring)."""
    problems = []
    service = data_dir / ".service"
    outputs = OUTPUT_FIELDS.get(action, ())
    for pattern in PATH_FIELDS:
        for field, value, _ in _values(spec, pattern):
            if not _is_path_value(value):
                continue
            shown = abbreviate(value, 120)
            path = os.path.expanduser(value)
            if ".." in Path(path).parts:
                problems.append(f"{field}: '{shown}' contains '..'; give a path without it")
            elif pattern in outputs and not inside(path, job_dir):
                problems.append(f"{field}: '{shown}' is outside the job's folder {job_dir}, where it must be")
            elif not inside(path, data_dir) or inside(path, service):
                problems.append(
                    f"{field}: '{shown}' is outside the data folder {data_dir}; name a path in it"
                )
    return problems


def build_job_spec(
    action: str,
    specs: Mapping,
    base_spec: Mapping,
    data_dir: Path,
    job_dir: Path,
    datasets: Mapping[str, list[Mapping[str, str]]],
    num_classes: int | None = None,
    parent: Mapping[str, str] | None = None,
) -> dict:
    """The complete, validated spec a job runs with, as plain data. SpecError lists every problem:
    the loader's (unknown keys, types, ranges, values the action requires), the parent's and the
    paths'."""
    if action not in TASKS:
        raise SpecError([f"action: '{abbreviate(action)}' is not one of {', '.join(TASKS)}"])
    spec = deep_merge(base_spec, specs)
    problems = fill_spec(action, spec, job_dir, datasets, num_classes, parent)
    absolutize(spec, action, data_dir, job_dir)
    try:
        resolved = spec_to_dict(load_spec(spec, action=action))
    except SpecError as exc:
        problems += [p.removeprefix("spec: ") for p in exc.problems]
        resolved = None
    problems += path_problems(resolved or spec, action, data_dir, job_dir)
    if action == "automl" and not is_unset(get_path(resolved or spec, "automl.storage")):
        problems.append("automl.storage: a job keeps its study in its own folder; leave automl.storage unset")
    if problems:
        raise SpecError(list(dict.fromkeys(problems)))
    return resolved
