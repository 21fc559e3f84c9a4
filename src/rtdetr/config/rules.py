"""Rules that involve several fields, and the values each task requires."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator

from rtdetr.config.fields import MISSING_VALUE
from rtdetr.config.schema import ExperimentConfig, ModelConfig
from rtdetr.config.space import search_space
from rtdetr.config.validate import Problem
from rtdetr.errors import SpecError

TASKS = ("train", "evaluate", "inference", "export", "distill", "gen_trt_engine", "quantize", "automl")

# The sections each task reads: a required value ("???") left in them is an error for that task.
TASK_SECTIONS: dict[str, tuple[str, ...]] = {
    "train": ("model", "dataset", "train", "wandb"),
    "distill": ("model", "dataset", "train", "wandb", "distill"),
    "evaluate": ("model", "dataset", "evaluate"),
    "inference": ("model", "dataset", "inference"),
    "export": ("model", "export"),
    "gen_trt_engine": ("gen_trt_engine",),
    "quantize": ("quantize",),
    "automl": ("model", "dataset", "train", "wandb", "automl"),
}

# Values each task needs; a tuple lists alternatives of which one must be set.
# ``[]`` stands for every item of a list.
TASK_REQUIRED: dict[str, tuple[tuple[str, ...], ...]] = {
    "train": (
        ("dataset.train_data_sources[].image_dir",),
        ("dataset.train_data_sources[].json_file",),
        ("dataset.val_data_sources.image_dir",),
        ("dataset.val_data_sources.json_file",),
    ),
    "evaluate": (
        ("evaluate.checkpoint", "evaluate.trt_engine"),
        ("dataset.test_data_sources.image_dir",),
        ("dataset.test_data_sources.json_file",),
    ),
    "inference": (
        ("inference.checkpoint", "inference.trt_engine"),
        ("dataset.infer_data_sources.image_dir[]",),
    ),
    "export": (("export.checkpoint",), ("export.onnx_file",)),
    "gen_trt_engine": (("gen_trt_engine.onnx_file",), ("gen_trt_engine.trt_engine",)),
    "quantize": (("quantize.onnx_file",), ("quantize.output_file",), ("quantize.cal_image_dir[]",)),
}
TASK_REQUIRED["automl"] = TASK_REQUIRED["train"]
TASK_REQUIRED["distill"] = TASK_REQUIRED["train"] + (
    ("distill.pretrained_teacher_model_path",),
    ("distill.bindings[].teacher_module_name",),  # at least one binding, each naming both sides
    ("distill.bindings[].student_module_name",),
)

MAX_STRIDE = 32  # the coarsest backbone level: input sizes must be multiples of it


def is_unset(value: object) -> bool:
    return value is None or value == "" or value == MISSING_VALUE


def _resolve(obj: object, path: str) -> Iterator[tuple[str, object]]:
    """(concrete path, value) for a dotted path whose ``[]`` segments expand over list items."""
    head, _, rest = path.partition(".")
    name = head.removesuffix("[]")
    value = getattr(obj, name)
    if head.endswith("[]"):
        if not value:
            yield name, None
        for i, item in enumerate(value):
            for sub, v in _resolve(item, rest) if rest else [("", item)]:
                yield f"{name}[{i}]" + (f".{sub}" if sub else ""), v
    elif rest:
        for sub, v in _resolve(value, rest):
            yield f"{name}.{sub}", v
    else:
        yield name, value


def _missing_values(obj: object, prefix: str) -> Iterator[str]:
    """Dotted paths of every ``???`` value below a section."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        path = f"{prefix}.{f.name}"
        if dataclasses.is_dataclass(value):
            yield from _missing_values(value, path)
        elif isinstance(value, list):
            for i, item in enumerate(value):
                if dataclasses.is_dataclass(item):
                    yield from _missing_values(item, f"{path}[{i}]")
                elif item == MISSING_VALUE:
                    yield f"{path}[{i}]"
        elif value == MISSING_VALUE:
            yield path


def _teacher_fits_student(cfg: ExperimentConfig) -> Iterator[Problem]:
    """Distillation compares teacher and student features without a projection between them: they
    share hidden_dim, the encoder width and the feature strides."""
    s, t = cfg.model, cfg.distill.teacher
    why = "teacher and student must share it (their features are compared without a projection)"
    if t.hidden_dim != s.hidden_dim:
        yield Problem(
            "distill.teacher.hidden_dim",
            f"value {t.hidden_dim} differs from model.hidden_dim {s.hidden_dim}: {why}",
        )
    elif (t.encoder_hidden_dim or t.hidden_dim) != (s.encoder_hidden_dim or s.hidden_dim):
        yield Problem(
            "distill.teacher.encoder_hidden_dim",
            f"encoder width {t.encoder_hidden_dim or t.hidden_dim} differs from the student's "
            f"{s.encoder_hidden_dim or s.hidden_dim} (model.encoder_hidden_dim, or hidden_dim when null): {why}",
        )
    if list(t.feat_strides) != list(s.feat_strides):
        yield Problem(
            "distill.teacher.feat_strides",
            f"{t.feat_strides} differ from model.feat_strides {s.feat_strides}: {why}",
        )


def _automl_space(cfg: ExperimentConfig) -> Iterator[Problem]:
    """automl.parameters and automl.ranges make a search space (rtdetr.config.space)."""
    a = cfg.automl
    ranges = [dataclasses.asdict(r) for r in a.ranges]
    try:
        search_space(list(a.parameters), ranges, a.max_epochs)
    except SpecError as exc:
        for line in exc.problems:
            path, _, message = line.partition(": ")
            yield Problem(path, message)


# Cross-field rules that hold for one task only.
TASK_RULES: dict[str, tuple[Callable[[ExperimentConfig], Iterator[Problem]], ...]] = {
    "distill": (_teacher_fits_student,),
    "automl": (_automl_space,),
}


def required_problems(cfg: ExperimentConfig, task: str) -> list[Problem]:
    """Values the task needs that the spec leaves unset, and the rules that hold for that task only
    (TASK_RULES)."""
    problems = []
    covered = set()
    for alternatives in TASK_REQUIRED.get(task, ()):
        resolved = [list(_resolve(cfg, alt)) for alt in alternatives]
        covered.update(path for pairs in resolved for path, _ in pairs)
        if len(alternatives) > 1:
            if all(is_unset(v) for pairs in resolved for _, v in pairs):
                names = " or ".join(alternatives)
                problems.append(Problem(alternatives[0], f"required for {task} but not set (set {names})"))
            continue
        for path, value in resolved[0]:
            if is_unset(value):
                problems.append(Problem(path, f"required for {task} but not set"))
    for section in TASK_SECTIONS.get(task, ()):
        for path in _missing_values(getattr(cfg, section), section):
            if path not in covered:
                problems.append(Problem(path, f"required for {task} but not set"))
    for rule in TASK_RULES.get(task, ()):
        problems.extend(rule(cfg))
    return list(dict.fromkeys(problems))  # an empty list stands for each of its items' fields: once


# ------------------------------------------------------------------------- cross-field rules
Rule = Callable[[ExperimentConfig, Callable[..., bool]], Iterator[Problem]]


def _model_rules(model: ModelConfig, p: str, ok: Callable[..., bool]) -> Iterator[Problem]:
    lengths = {
        "return_interm_indices": len(model.return_interm_indices),
        "feat_strides": len(model.feat_strides),
        "feat_channels": len(model.feat_channels),
    }
    if ok(f"{p}.num_feature_levels", *(f"{p}.{k}" for k in lengths)) and any(
        n != model.num_feature_levels for n in lengths.values()
    ):
        counts = ", ".join(f"{k} has {n}" for k, n in lengths.items())
        yield Problem(
            f"{p}.num_feature_levels",
            f"num_feature_levels is {model.num_feature_levels} but {counts}; all must be equal",
        )
    if ok(f"{p}.return_interm_indices"):
        bad = [i for i in model.return_interm_indices if not 0 <= i <= 3]
        if bad or sorted(set(model.return_interm_indices)) != list(model.return_interm_indices):
            yield Problem(
                f"{p}.return_interm_indices",
                f"{model.return_interm_indices} must be increasing backbone stage indices in 0..3",
            )
        elif (
            ok(f"{p}.backbone")
            and model.backbone.startswith("convnext_")
            and list(model.return_interm_indices) != [1, 2, 3]
        ):
            yield Problem(
                f"{p}.return_interm_indices",
                f"{model.return_interm_indices}: {model.backbone} (ConvNeXt v1 with TAO's projections) gives "
                "exactly the levels [1, 2, 3]",
            )
    width = model.encoder_hidden_dim or model.hidden_dim
    if ok(f"{p}.feat_channels", f"{p}.hidden_dim", f"{p}.encoder_hidden_dim") and any(
        c != width for c in model.feat_channels
    ):
        yield Problem(
            f"{p}.feat_channels",
            f"{model.feat_channels}: each level must have the encoder width {width} "
            "(encoder_hidden_dim, or hidden_dim when that is null)",
        )
    if ok(f"{p}.feat_strides", f"{p}.return_interm_indices"):
        expected = [4 * 2**i for i in model.return_interm_indices]
        if len(model.feat_strides) == len(expected) and list(model.feat_strides) != expected:
            yield Problem(
                f"{p}.feat_strides",
                f"{model.feat_strides} do not match return_interm_indices {model.return_interm_indices} "
                f"(backbone strides {expected})",
            )
    if ok(f"{p}.use_encoder_idx", f"{p}.num_feature_levels"):
        bad = [i for i in model.use_encoder_idx if not 0 <= i < model.num_feature_levels]
        if bad:
            yield Problem(
                f"{p}.use_encoder_idx",
                f"{bad} outside the feature levels 0..{model.num_feature_levels - 1}",
            )
    if ok(f"{p}.eval_idx", f"{p}.dec_layers") and model.eval_idx >= model.dec_layers:
        yield Problem(
            f"{p}.eval_idx", f"value {model.eval_idx} must be below dec_layers ({model.dec_layers}), or -1"
        )
    if ok(f"{p}.hidden_dim", f"{p}.nheads") and model.hidden_dim % model.nheads:
        yield Problem(
            f"{p}.hidden_dim", f"value {model.hidden_dim} must be divisible by nheads ({model.nheads})"
        )
    # the encoder's attention (on the use_encoder_idx levels) splits its width over the heads and
    # its 2-D sine position embedding over 4 parts
    width_path = f"{p}.encoder_hidden_dim" if model.encoder_hidden_dim else f"{p}.hidden_dim"
    encoder_ok = ok(width_path, f"{p}.nheads", f"{p}.use_encoder_idx")
    if encoder_ok and model.use_encoder_idx and (width % model.nheads or width % 4):
        yield Problem(
            width_path,
            f"value {width}: the encoder width must be divisible by nheads ({model.nheads}) and by 4",
        )
    if (
        ok(f"{p}.expansion", f"{p}.hidden_dim", f"{p}.encoder_hidden_dim")
        and int(width * model.expansion) < 1
    ):
        yield Problem(
            f"{p}.expansion",
            f"value {model.expansion}: the CSP width int(encoder width {width} x expansion) must be at least 1",
        )
    if ok(f"{p}.loss_types") and not model.loss_types:
        yield Problem(f"{p}.loss_types", "must name at least one loss")


def _model(cfg: ExperimentConfig, ok: Callable[..., bool]) -> Iterator[Problem]:
    yield from _model_rules(cfg.model, "model", ok)
    yield from _model_rules(cfg.distill.teacher, "distill.teacher", ok)


def _num_select(cfg: ExperimentConfig, ok: Callable[..., bool]) -> Iterator[Problem]:
    m, n = cfg.model, cfg.dataset.num_classes
    if (
        ok("model.num_select", "model.num_queries", "dataset.num_classes")
        and m.num_select > m.num_queries * n
    ):
        yield Problem(
            "model.num_select",
            f"value {m.num_select} exceeds num_queries x num_classes ({m.num_queries} x {n})",
        )


def _gpus(cfg: ExperimentConfig, ok: Callable[..., bool]) -> Iterator[Problem]:
    t = cfg.train
    if ok("train.gpu_ids", "train.num_gpus") and len(t.gpu_ids) != t.num_gpus:
        yield Problem("train.gpu_ids", f"has {len(t.gpu_ids)} ids but train.num_gpus is {t.num_gpus}")
    if ok("train.gpu_ids") and any(i < 0 for i in t.gpu_ids):
        yield Problem("train.gpu_ids", f"{t.gpu_ids} holds a negative id")


def _intervals(cfg: ExperimentConfig, ok: Callable[..., bool]) -> Iterator[Problem]:
    t = cfg.train
    for name in ("checkpoint_interval", "validation_interval"):
        value = getattr(t, name)
        if ok(f"train.{name}", "train.num_epochs") and value > t.num_epochs:
            yield Problem(f"train.{name}", f"value {value} exceeds train.num_epochs ({t.num_epochs})")


def _sizes(cfg: ExperimentConfig, ok: Callable[..., bool]) -> Iterator[Problem]:
    aug = cfg.dataset.augmentation
    for name in ("train_spatial_size", "eval_spatial_size"):
        size = getattr(aug, name)
        path = f"dataset.augmentation.{name}"
        if not ok(path):
            continue
        if len(size) != 2:
            yield Problem(path, f"{size} must be [height, width]")
        elif any(s <= 0 or s % MAX_STRIDE for s in size):
            yield Problem(path, f"{size}: each side must be a positive multiple of {MAX_STRIDE}")
    if ok("dataset.augmentation.multi_scales"):
        bad = [s for s in aug.multi_scales if s <= 0 or s % MAX_STRIDE]
        if bad:
            yield Problem(
                "dataset.augmentation.multi_scales",
                f"{bad}: sizes must be positive multiples of {MAX_STRIDE}",
            )
    for section in ("inference", "export", "gen_trt_engine", "evaluate"):
        for name in ("input_width", "input_height"):
            value = getattr(getattr(cfg, section), name)
            if value is not None and ok(f"{section}.{name}") and value % MAX_STRIDE:
                yield Problem(f"{section}.{name}", f"value {value} must be a multiple of {MAX_STRIDE}")


def _batches(cfg: ExperimentConfig, ok: Callable[..., bool]) -> Iterator[Problem]:
    for section in ("export", "gen_trt_engine"):
        if ok(f"{section}.batch_size") and getattr(cfg, section).batch_size == 0:
            yield Problem(f"{section}.batch_size", "value 0: use -1 (dynamic) or a positive batch size")
    trt = cfg.gen_trt_engine.tensorrt
    names = ("min_batch_size", "opt_batch_size", "max_batch_size")
    if ok(*(f"gen_trt_engine.tensorrt.{n}" for n in names)) and not (
        trt.min_batch_size <= trt.opt_batch_size <= trt.max_batch_size
    ):
        yield Problem(
            "gen_trt_engine.tensorrt.opt_batch_size",
            f"batch sizes must satisfy min <= opt <= max, got {trt.min_batch_size}, "
            f"{trt.opt_batch_size}, {trt.max_batch_size}",
        )


def _optim(cfg: ExperimentConfig, ok: Callable[..., bool]) -> Iterator[Problem]:
    o = cfg.train.optim
    if ok("train.optim.momentum", "train.optim.optimizer") and o.optimizer == "AdamW" and o.momentum >= 1:
        yield Problem(
            "train.optim.momentum", f"value {o.momentum}: AdamW's momentum (its beta1) must be below 1"
        )


FM_STRIDE = 64  # frozen_fm's 4th encoder level is at stride 64


def _frozen_fm(cfg: ExperimentConfig, ok: Callable[..., bool]) -> Iterator[Problem]:
    """With frozen_fm the hybrid encoder's pyramid reaches stride 64: the training and evaluation sizes
    are multiples of 64 (export, evaluate and inference check theirs against the model they run)."""
    if not (ok("model.frozen_fm.enabled") and cfg.model.frozen_fm.enabled):
        return
    aug = cfg.dataset.augmentation
    for name in ("train_spatial_size", "eval_spatial_size"):
        size = getattr(aug, name)
        if ok(f"dataset.augmentation.{name}") and any(s % FM_STRIDE for s in size):
            yield Problem(
                f"dataset.augmentation.{name}",
                f"{list(size)}: with model.frozen_fm each side must be a multiple of {FM_STRIDE}",
            )


def _results_dir(cfg: ExperimentConfig, ok: Callable[..., bool]) -> Iterator[Problem]:
    if ok("results_dir") and not cfg.results_dir.strip():
        yield Problem("results_dir", "empty; give a folder, '.' for the current directory")


RULES: tuple[Rule, ...] = (
    _results_dir, _model, _num_select, _gpus, _intervals, _sizes, _batches, _optim, _frozen_fm,
)  # fmt: skip


def model_problems(model: ModelConfig, bad_paths: set[str], prefix: str = "model") -> list[Problem]:
    """Problems of the rules within one model section alone (what building the model needs)."""
    bad = set(bad_paths)

    def ok(*paths: str) -> bool:
        return not any(p in bad for p in paths)

    problems = []
    for problem in _model_rules(model, prefix, ok):
        problems.append(problem)
        bad.add(problem.path)
    return problems


def rule_problems(cfg: ExperimentConfig, bad_paths: set[str]) -> list[Problem]:
    """Problems of the cross-field rules. A rule is skipped when a field it reads was already
    reported bad, by the builder or by an earlier rule: no rule works on a value known to be invalid."""
    bad = set(bad_paths)

    def ok(*paths: str) -> bool:
        return not any(p in bad for p in paths)

    problems = []
    for rule in RULES:
        for problem in rule(cfg, ok):
            problems.append(problem)
            bad.add(problem.path)
    return problems
