"""Preparing a model for training: pretrained weights, frozen parts, activation checkpointing, memory format."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from rtdetr.errors import UserError
from rtdetr.model.checkpoint import STATE_PREFIX
from rtdetr.model.convert_hf import is_tao_state_dict, tao_state_dict_to_ours
from rtdetr.model.decoder import TransformerDecoderLayer
from rtdetr.model.encoder import TransformerEncoderLayer
from rtdetr.model.factory import WEIGHT_FILE_ARGS, model_kwargs
from rtdetr.model.weights import torch_load_weights

log = logging.getLogger(__name__)


@dataclass
class LoadReport:
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # in the model, not in the file
    unexpected: list[str] = field(default_factory=list)  # in the file, not in the model
    mismatched: list[str] = field(default_factory=list)  # same name, other shape
    mapped: list[str] = field(default_factory=list)  # class tensors rebuilt from the rows of matching names


def read_model_state(model: nn.Module, path: str | os.PathLike, field: str, data: object = None
                     ) -> dict[str, torch.Tensor]:  # fmt: skip
    """The tensors of a weights file under ``model``'s names: our checkpoints, TAO's RT-DETR
    checkpoints (``model.model.*`` keys, the backbone's through its ``adapt_state_dict``) and plain
    state dicts (also under "model", "state_dict" or "ema.module"). ``field`` names the spec field
    in errors; ``data``: the file's contents when already loaded (torch_load_weights)."""
    if data is None:
        data = torch_load_weights(path, field)
    state = data
    if isinstance(data, dict) and isinstance(data.get("ema"), dict):
        state = data["ema"].get("module", data["ema"])
    elif isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
        state = data["state_dict"]
    elif isinstance(data, dict) and isinstance(data.get("model"), dict):
        state = data["model"]
    if not isinstance(state, dict):
        raise UserError(f"{field}: {path}: not a checkpoint or state dict")
    if is_tao_state_dict(state):  # a TAO RT-DETR checkpoint: its names -> ours
        state = tao_state_dict_to_ours(state, getattr(model.backbone, "adapt_state_dict", None))
    return {
        k.removeprefix("module.").removeprefix(STATE_PREFIX): v
        for k, v in state.items()
        if isinstance(k, str) and torch.is_tensor(v)
    }


# build_model arguments that do not change the tensors a model holds
NOT_IN_WEIGHTS = {
    *WEIGHT_FILE_ARGS,
    "train_backbone",
    "aux_loss",
    "label_noise_ratio",
    "box_noise_scale",
}
CLASS_TENSORS = ("score_head", "denoising_class_embed")  # sized by the number of classes


def checkpoint_metadata(data: object) -> dict:
    """The metadata a checkpoint of ours stores (model section, class names, ...), {} for other files."""
    meta = data.get("rtdetr") if isinstance(data, dict) else None
    return meta if isinstance(meta, dict) else {}


def architecture_differences(meta: dict, section: dict, num_classes: int, prefix: str,
                             ignore: Collection[str] = ()) -> str:  # fmt: skip
    """The architecture fields in which a checkpoint of ours (its ``meta``, checkpoint_metadata) differs
    from a model section (spec fields under ``prefix``), "" when none does (``ignore``: build_model
    arguments left out, e.g. num_classes) or the file carries no model section."""
    if not isinstance(meta.get("model"), dict):
        return ""
    theirs = model_kwargs(meta["model"], int(meta.get("num_classes", num_classes)))
    ours = model_kwargs(section, num_classes)
    names = {"num_classes": "dataset.num_classes"}
    diffs = [
        f"{k} {theirs[k]} ({names.get(k, prefix + k)}: {ours[k]})"
        for k in ours
        if k in theirs and k not in NOT_IN_WEIGHTS and k not in ignore and theirs[k] != ours[k]
    ]
    return f"; the checkpoint's model has {', '.join(diffs[:4])}" if diffs else ""


def _class_key(name: str) -> str:
    """A class name compared case-, "_"- and "-"-blind; "" for the filler names of unnamed logit
    indices (``class_3``), which match nothing."""
    if re.fullmatch(r"class_\d+", name.strip()):
        return ""
    return " ".join(name.replace("_", " ").replace("-", " ").lower().split())


def map_class_rows(state: dict[str, torch.Tensor], own: dict[str, torch.Tensor], theirs: Sequence[str],
                   ours: Sequence[str]) -> dict[str, list[str]]:  # fmt: skip
    """Class-sized tensors of another class count, rebuilt for ``own``'s classes: the rows of the
    classes whose names match (case, "_" and "-" aside; e.g. a COCO checkpoint's "person" and "car")
    are copied from ``state``, the others keep ``own``'s initialisation; the denoising embedding's
    last row (the mask token) is copied too. Returns {tensor name: [matched class names]}; the
    rebuilt tensors are put in ``state``."""
    index = {}
    for j, name in enumerate(theirs):
        if _class_key(name):
            index.setdefault(_class_key(name), j)
    pairs = [(i, index[_class_key(n)]) for i, n in enumerate(ours) if _class_key(n) in index]
    mapped: dict[str, list[str]] = {}
    if not pairs:
        return mapped
    for name, value in list(state.items()):
        target = own.get(name)
        if target is None or target.shape == value.shape or not any(c in name for c in CLASS_TENSORS):
            continue
        if target.shape[1:] != value.shape[1:]:
            continue
        extra = 1 if "denoising_class_embed" in name else 0  # the mask token after the classes
        if value.shape[0] - extra != len(theirs) or target.shape[0] - extra != len(ours):
            continue
        rows = target.clone()
        for i, j in pairs:
            rows[i] = value[j]
        if extra:
            rows[-1] = value[-1]
        state[name] = rows
        mapped[name] = [ours[i] for i, _ in pairs]
    return mapped


def load_pretrained_model(model: nn.Module, path: str | os.PathLike, section: dict | None = None,
                          num_classes: int | None = None, class_names: Sequence[str] | None = None
                          ) -> LoadReport:  # fmt: skip
    """Load every tensor of a checkpoint whose name and shape match; report what was skipped.

    Takes the files of :func:`read_model_state`. The class heads may differ (another number of
    classes): with ``class_names`` (the run's, by logit index) and a checkpoint of ours that stores
    its own, the rows of the classes whose names match are copied (:func:`map_class_rows`), the
    other rows keep their initialisation. With the spec's model ``section``, a checkpoint of ours
    whose other tensors do not fit is refused in one line naming the fields that differ.
    """
    field = "train.pretrained_model_path"
    data = torch_load_weights(path, field)  # read once: the tensors, the class names, the model section
    state = read_model_state(model, path, field, data)
    own = model.state_dict()
    report = LoadReport()
    meta = checkpoint_metadata(data)
    theirs = meta.get("class_names") if class_names else None
    if isinstance(theirs, list) and theirs:
        theirs = [str(n) for n in theirs]
        for name, matched in map_class_rows(state, own, theirs, list(class_names)).items():
            report.mapped.append(name)
            log.info(
                "pretrained model %s: %s: rows of %d classes matched by name (%s%s), the others re-initialised",
                path, name, len(matched), ", ".join(matched[:6]), " ..." if len(matched) > 6 else "",
            )  # fmt: skip
    usable = {}
    for name, value in state.items():
        if name not in own:
            report.unexpected.append(name)
        elif own[name].shape != value.shape:
            report.mismatched.append(f"{name} {tuple(value.shape)} -> {tuple(own[name].shape)}")
        else:
            usable[name] = value
            report.loaded.append(name)
    report.missing = sorted(set(own) - set(usable))
    structural = [n for n in report.mismatched + report.unexpected if not any(c in n for c in CLASS_TENSORS)]
    if structural and section is not None:
        differences = architecture_differences(
            meta, section, num_classes or 1, "model.", ignore={"num_classes"}
        )
        if differences:
            raise UserError(
                f"train.pretrained_model_path: {path} does not fit the spec's model{differences}; give the model "
                "section the checkpoint was trained with (only the class count may differ)"
            )
    if not usable:
        raise UserError(f"train.pretrained_model_path: {path}: no tensor fits the model")
    model.load_state_dict(usable, strict=False)
    log.info("pretrained model %s: loaded %d of %d tensors", path, len(report.loaded), len(own))
    for label, names in (("skipped, shape differs", report.mismatched), ("not in the model", report.unexpected),
                         ("left at initialisation", report.missing)):  # fmt: skip
        if names:
            log.info(
                "  %s (%d): %s%s", label, len(names), ", ".join(names[:6]), " ..." if len(names) > 6 else ""
            )
    return report


def freeze(model: nn.Module, names: Sequence[str]) -> None:
    """Stop the gradients of the named submodules (e.g. backbone, encoder, decoder, or dotted names)."""
    modules = dict(model.named_modules())
    unknown = [n for n in names if n not in modules]
    if unknown:
        top = ", ".join(name for name, _ in model.named_children())
        raise UserError(f"train.freeze: no submodule named {unknown}; top-level submodules are: {top}")
    for name in names:
        modules[name].requires_grad_(False)
        log.info("froze %s", name)


def use_channels_last(model: nn.Module) -> nn.Module:
    """Store the convolution weights channels-last (NHWC), in place; feed images the same way
    (``images.contiguous(memory_format=torch.channels_last)``). oneDNN on the CPU and cuDNN's tensor
    cores run NHWC convolutions without converting layouts each call (docs/benchmarks.md, "Training
    throughput"). The arithmetic is the same; names and shapes are unchanged."""
    return model.to(memory_format=torch.channels_last)


def _checkpointed(layer: nn.Module, forward):
    def run(*args, **kwargs):
        if layer.training and torch.is_grad_enabled():
            return checkpoint(forward, *args, use_reentrant=False, **kwargs)
        return forward(*args, **kwargs)

    return run


def enable_activation_checkpointing(model: nn.Module, layer_types: tuple[type, ...] | None = None) -> int:
    """Make every transformer layer (encoder and decoder) recompute its activations in the backward
    pass instead of storing them. Parameter names and outputs are unchanged. Returns the count."""

    layer_types = layer_types or (TransformerEncoderLayer, TransformerDecoderLayer)
    count = 0
    for module in model.modules():
        if isinstance(module, layer_types) and "forward" not in vars(module):
            module.forward = _checkpointed(module, module.forward)
            count += 1
    return count


def state_misfit(theirs: dict[str, torch.Tensor], own: dict[str, torch.Tensor], model: str) -> str:
    """ "" when the tensors ``theirs`` (a file's) are exactly those of ``own`` (by name and shape),
    else what differs: "(N tensors of another shape, M missing, K extra; e.g. ...)", ``model`` naming
    the side ``own`` comes from (e.g. "the spec's model")."""
    other = [k for k in own if k in theirs and theirs[k].shape != own[k].shape]
    missing = [k for k in own if k not in theirs]
    extra = [k for k in theirs if k not in own]
    if not (other or missing or extra):
        return ""
    if other:
        key = other[0]
        example = f"{key}: shape {list(theirs[key].shape)}, {model} has {list(own[key].shape)}"
    else:
        example = f"{missing[0]} missing" if missing else f"{extra[0]} not in {model}"
    return (
        f"({len(other)} tensors of another shape, {len(missing)} missing, {len(extra)} extra; e.g. {example})"
    )
