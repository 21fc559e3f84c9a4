"""Distillation in the training engine: the student trains as in train, plus the weighted distance of
its features to those of a frozen teacher (rtdetr.loss.distill).

The teacher is a submodule of the LightningModule, so precision, devices, DDP and channels-last
apply to it as to the student; it never trains (no gradients, always in eval mode, run without
autograd) and never enters a checkpoint: a resumed run reloads it from
``distill.pretrained_teacher_model_path``.
"""

from __future__ import annotations

import contextlib
import difflib
import logging
import os
from collections.abc import Iterable, Iterator, Sequence
from functools import partial

import torch
from torch import nn

from rtdetr.config import ExperimentConfig, spec_to_dict
from rtdetr.engine.model_setup import (
    architecture_differences,
    checkpoint_metadata,
    read_model_state,
    state_misfit,
    use_channels_last,
)
from rtdetr.engine.module import DetectionModule
from rtdetr.errors import UserError
from rtdetr.loss import Binding, DistillationLoss, total_loss
from rtdetr.loss.distill import FEATURE_NAMES, tensors_of
from rtdetr.model.checkpoint import ModelMetadata, build_from_metadata
from rtdetr.model.weights import torch_load_weights

log = logging.getLogger(__name__)

TEACHER_PREFIX = "teacher."
TEACHER_FIELD = "distill.pretrained_teacher_model_path"


class FrozenTeacher(nn.Module):
    """A model that never trains: no parameter takes a gradient, ``train()`` keeps it in eval mode
    (BatchNorm statistics fixed, no dropout, no denoising queries) and it runs without autograd.

    forward(images, features=None) -> the model's eval outputs; ``features`` as in RTDETR.forward.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        model.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> FrozenTeacher:
        return super().train(False)

    @torch.no_grad()
    def forward(self, images: torch.Tensor, features: dict | None = None) -> dict:
        return self.model(images, features=features)


def _store(found: dict, name: str, module: nn.Module, args, output) -> None:
    found[name] = output


@contextlib.contextmanager
def captured(model: nn.Module, names: Iterable[str]) -> Iterator[dict[str, object]]:
    """Within the block, the forward output of each named submodule of ``model`` (a dotted module
    path) is stored under its name in the dict yielded; a module called several times in one forward
    keeps its last output. The hooks are removed on exit."""
    found: dict[str, object] = {}
    handles = []
    try:
        for name in dict.fromkeys(names):
            handles.append(model.get_submodule(name).register_forward_hook(partial(_store, found, name)))
        yield found
    finally:
        for handle in handles:
            handle.remove()


def _shapes(tensors: list[torch.Tensor]) -> str:
    return " + ".join(str(list(t.shape)) for t in tensors) or "no tensor"


def _only_counts_differ(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    """Whether two values differ in their second dimension only (a number of queries or tokens)."""
    return len(a) == len(b) and all(
        x.dim() == y.dim() >= 3 and x.shape[0] == y.shape[0] and x.shape[2:] == y.shape[2:]
        for x, y in zip(a, b)
    )


class DistillModule(DetectionModule):
    """The DetectionModule whose training loss adds ``distillation_loss_coef`` x the sum of the
    bindings' weighted losses, comparing the student with ``teacher`` on the same (multi-scale)
    batch. Validation, checkpoints and metrics are the student's; each binding's loss and the whole
    term ("distill_loss") are logged per step and epoch and written to status.json per epoch.
    """

    def __init__(
        self,
        model: nn.Module,
        criterion: nn.Module,
        *,
        teacher: nn.Module,
        bindings: Sequence[Binding],
        distillation_loss_coef: float = 1.0,
        **kwargs,
    ):
        super().__init__(model, criterion, **kwargs)
        self.teacher = FrozenTeacher(teacher)
        self.distiller = DistillationLoss(bindings)
        self.distillation_loss_coef = distillation_loss_coef
        self.kpi_names = ("distill_loss", *self.distiller.names)
        self._check_names()

    @property
    def bindings(self) -> list[Binding]:
        return self.distiller.bindings

    # ------------------------------------------------------------------------------ bindings
    def _check_names(self) -> None:
        """UserError for a binding name that is neither srcs, dsrcs nor a module of its model."""
        for i, b in enumerate(self.bindings):
            for side, name, model in (
                ("teacher", b.teacher, self.teacher.model),
                ("student", b.student, self.model),
            ):
                if name in FEATURE_NAMES:
                    continue
                modules = [n for n, _ in model.named_modules() if n]
                if name in modules:
                    continue
                close = difflib.get_close_matches(name, modules, n=1, cutoff=0.6)
                hint = (
                    f"did you mean {close[0]!r}?"
                    if close
                    else f"module paths start with {', '.join(n for n, _ in model.named_children())}"
                )
                raise UserError(
                    f"distill.bindings[{i}].{side}_module_name: {name!r} is neither "
                    f"{' nor '.join(FEATURE_NAMES)} nor a module of the {side}; {hint}"
                )

    def _check_values(self, student: dict, teacher: dict) -> None:
        """UserError naming the binding and both shapes when a teacher and a student value differ in
        shape (or an IOU binding's teacher value is not a list of [B, hidden_dim, H, W] maps)."""
        for i, b in enumerate(self.bindings):
            s, t = tensors_of(student[b.student]), tensors_of(teacher[b.teacher])
            where = f"distill.bindings[{i}] ({b.criterion}, teacher {b.teacher}, student {b.student})"
            if not s or not t or [x.shape for x in s] != [x.shape for x in t]:
                hint = ""
                if b.student.startswith("decoder.") and _only_counts_differ(s, t):
                    hint = (
                        "; in training the student's decoder also carries its denoising queries (model.dn_number) "
                        "and its query selection computes the selected queries only, the teacher runs as in evaluation"
                    )
                raise UserError(
                    f"{where}: the teacher gives {_shapes(t)}, the student {_shapes(s)}; a binding compares "
                    f"values of the same shape (there is no projection between teacher and student){hint}"
                )
            width = teacher["enc_topk_memory"].shape[-1]
            if b.criterion == "IOU" and any(x.dim() != 4 or x.shape[1] != width for x in t):
                raise UserError(
                    f"{where}: the teacher gives {_shapes(t)}; IOU compares feature maps [B, {width}, H, W] "
                    "of the teacher's hidden_dim (srcs, dsrcs, or a module that outputs them)"
                )

    def _paths(self, side: str) -> list[str]:
        return [getattr(b, side) for b in self.bindings if getattr(b, side) not in FEATURE_NAMES]

    def compare(self, images: torch.Tensor, targets: list[dict]) -> tuple[dict, dict, dict]:
        """Both models on one batch: the student's outputs, and the student's and the teacher's
        values of every binding name (the teacher's also with its selected queries, see
        rtdetr.loss.distill.QUERY_KEYS)."""
        teacher: dict = {}
        with captured(self.teacher.model, self._paths("teacher")) as hooked:
            self.teacher(images, features=teacher)
        teacher.update(hooked)
        student: dict = {}
        with captured(self.model, self._paths("student")) as hooked:
            outputs = self.model(images, targets, features=student)
        student.update(hooked)
        return outputs, student, teacher

    def check_bindings(self, size: Sequence[int]) -> None:
        """A dry forward of both models on a blank batch of ``size`` [h, w], the student as in a
        training step (training mode, with autograd: some modules output other shapes without it):
        UserError in one line for a binding whose values differ in shape. Weights, BatchNorm
        statistics, random generators and modes are left as they were."""
        device = next(self.model.parameters()).device
        images = torch.zeros(2, 3, *size, device=device)
        box = torch.tensor([[0.5, 0.5, 0.25, 0.25]], device=device)
        targets = [
            {"labels": torch.zeros(1, dtype=torch.long, device=device), "boxes": box} for _ in range(2)
        ]
        buffers = {name: b.detach().clone() for name, b in self.model.named_buffers()}
        was_training = self.training
        try:
            with torch.random.fork_rng(devices=[]), torch.enable_grad():
                self.train()
                _, student, teacher = self.compare(self._layout(images), targets)
            self._check_values(student, teacher)
        finally:
            self.train(was_training)
            with torch.no_grad():
                for name, b in self.model.named_buffers():
                    b.copy_(buffers[name])

    # ------------------------------------------------------------------------------ training
    def training_loss(self, images: torch.Tensor, targets: list[dict]) -> torch.Tensor:
        outputs, student, teacher = self.compare(images, targets)
        self._check_values(student, teacher)  # a shape only a later batch brings
        # with coefficient 0 the term is measured only: no graph, so the gradients are exactly train's
        with torch.no_grad() if self.distillation_loss_coef == 0 else contextlib.nullcontext():
            losses = self.distiller(student, teacher, targets)
        term = self.distillation_loss_coef * sum(losses.values())
        batch_size = images.shape[0]
        log_kwargs = {"on_step": True, "on_epoch": True, "batch_size": batch_size, "sync_dist": True}
        self.log("distill_loss", term.detach(), prog_bar=True, **log_kwargs)
        for name, value in losses.items():
            self.log(name, value.detach(), **log_kwargs)
        return total_loss(self.criterion(outputs, targets)) + term

    def to_channels_last(self) -> None:
        super().to_channels_last()
        use_channels_last(self.teacher.model)

    # --------------------------------------------------------------------------- checkpoints
    def saved_state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v for k, v in self.state_dict().items() if not k.startswith(TEACHER_PREFIX)}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """The student's checkpoint: the teacher's tensors are left out."""
        super().on_save_checkpoint(checkpoint)
        state = checkpoint["state_dict"]
        for key in [k for k in state if k.startswith(TEACHER_PREFIX)]:
            del state[key]

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """A resumed run keeps the teacher loaded from its file (the checkpoint has none)."""
        own = {TEACHER_PREFIX + k: v for k, v in self.teacher.state_dict().items()}
        checkpoint["state_dict"] = {**checkpoint["state_dict"], **own}


# ---------------------------------------------------------------------------------- building
def load_teacher(teacher: nn.Module, path: str | os.PathLike, section: dict, num_classes: int) -> None:
    """Load every tensor of the teacher from ``path`` (our checkpoints, TAO's, plain state dicts);
    UserError in one line when the file does not hold exactly the tensors of distill.teacher."""
    data = torch_load_weights(path, TEACHER_FIELD)
    state = read_model_state(teacher, path, TEACHER_FIELD, data)
    misfit = state_misfit(state, teacher.state_dict(), "distill.teacher")
    if misfit:
        differences = architecture_differences(
            checkpoint_metadata(data), section, num_classes, "distill.teacher."
        )
        raise UserError(
            f"{TEACHER_FIELD}: {path} does not fit distill.teacher {misfit}{differences}; give distill.teacher "
            "the model section the teacher was trained with"
        )
    teacher.load_state_dict(state)
    log.info("teacher %s: loaded %d tensors", path, len(state))


def build_teacher(cfg: ExperimentConfig, num_classes: int) -> nn.Module:
    """distill.teacher with the weights of distill.pretrained_teacher_model_path. Built under a
    forked random generator: the student's run draws the same random numbers as in train."""
    section = spec_to_dict(cfg.distill.teacher)
    meta = ModelMetadata(model=section, num_classes=num_classes)
    with torch.random.fork_rng(devices=[]):
        try:
            teacher = build_from_metadata(meta)
        except UserError as exc:
            raise UserError(f"distill.teacher: {str(exc).removeprefix('model: ')}") from exc
    load_teacher(teacher, cfg.distill.pretrained_teacher_model_path, section, num_classes)
    return teacher


def copy_encoder_decoder(student: nn.Module, teacher: nn.Module) -> int:
    """model.load_teacher_enc_dec: copy the teacher's encoder and decoder tensors whose names and
    shapes match into the student; returns how many."""
    own = student.state_dict()
    usable = {
        k: v
        for k, v in teacher.state_dict().items()
        if k.startswith(("encoder.", "decoder.")) and k in own and own[k].shape == v.shape
    }
    student.load_state_dict(usable, strict=False)
    total = sum(k.startswith(("encoder.", "decoder.")) for k in own)
    log.info(
        "model.load_teacher_enc_dec: copied %d of the student's %d encoder and decoder tensors",
        len(usable),
        total,
    )
    if not usable:
        log.warning(
            "model.load_teacher_enc_dec: no encoder or decoder tensor of the teacher fits the student"
        )
    return len(usable)


def bindings_of(cfg: ExperimentConfig) -> list[Binding]:
    return [
        Binding(b.teacher_module_name, b.student_module_name, b.criterion, b.weight)
        for b in cfg.distill.bindings
    ]
