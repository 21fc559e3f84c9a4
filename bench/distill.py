"""Distillation on BCCD: a teacher trained for a fixed budget, then one small student trained alone and
with distillation (IOU on srcs, then L2 on srcs) for the same epochs, through the real CLI.

Every run is `rtdetr train` or `rtdetr distill` in a subprocess on a spec this script writes (BCCD
train, validated on BCCD val every epoch, --size x --size, multi_scales off, fp32, no EMA, no
pretrained weights, AdamW lr and lr_backbone 1e-4 with 50 warm-up steps then constant, seed 42).
The teacher (--teacher-backbone, hidden 256, --teacher-dec-layers decoder layers) trains
--teacher-epochs epochs, or --teacher-checkpoint names one already trained with that model section.
The student (--student-backbone, hidden 256 as distillation needs, expansion 0.5,
--student-dec-layers) trains --epochs epochs three times with the same seed: alone, distilled with
an IOU binding on srcs (weight --iou-weight) and with an L2 binding on srcs (weight --l2-weight);
`model.load_teacher_enc_dec` stays false, so the three students start from the same weights.

Reports per epoch each run's val mAP and mAP50 (status.json), and the median training step time of
each run (from the TensorBoard event times of its logged steps: the time between an epoch's first
and last step over the steps between them), whose ratio to the student alone is the teacher's cost.
Prints Markdown tables and writes JSON.

    python bench/distill.py --data /path/to/bccd [--size 320] [--teacher-backbone resnet_50]
                            [--teacher-epochs 12] [--teacher-checkpoint FILE] [--epochs 6]
                            [--student-backbone resnet_18] [--batch 8] [--workers 2]
                            [--results-dir /tmp/rtdetr_bench_distill] [--out bench/results/distill.json]
"""

from __future__ import annotations

import argparse
import datetime
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml
from common import argument_parser, bccd_sources, check_bccd, command_line, machine, write_report
from train_bccd import count_images, event_times

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "distill.json"
DEFAULT_RESULTS = Path("/tmp/rtdetr_bench_distill")
HIDDEN = 256


def model_section(backbone: str, dec_layers: int, expansion: float) -> dict:
    return {
        "backbone": backbone,
        "hidden_dim": HIDDEN,
        "expansion": expansion,
        "dec_layers": dec_layers,
        "num_queries": 300,
        "num_select": 300,
    }


def make_spec(
    args: argparse.Namespace, results_dir: Path, model: dict, epochs: int, validate_every: int
) -> dict:
    return {
        "results_dir": str(results_dir),
        "model": model,
        "dataset": {
            **bccd_sources(args.data),
            "num_classes": 4,  # BCCD category ids 1..3 are logit indices: 3 + 1
            "batch_size": args.batch,
            "workers": args.workers,
            "augmentation": {
                "train_spatial_size": [args.size, args.size],
                "eval_spatial_size": [args.size, args.size],
                "multi_scales": [],
            },
        },
        "train": {
            "num_epochs": epochs,
            "validation_interval": validate_every,
            "checkpoint_interval": epochs,
            "seed": 42,
            "precision": "fp32",
            "enable_ema": False,
            "activation_checkpoint": False,
            "optim": {"lr": 1e-4, "lr_backbone": 1e-4, "warmup_steps": 50, "lr_steps": [10_000]},
        },
    }


def run(cli: str, task: str, spec: dict, folder: Path) -> float:
    """`rtdetr <task> -e folder/spec.yaml`, its output in folder/<task>.log; returns the wall time."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "spec.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    log = folder / f"{task}.log"
    print(f"running: {cli} {task} -e {path} (log: {log})", file=sys.stderr, flush=True)
    start = time.perf_counter()
    with log.open("w") as fh:
        proc = subprocess.run([cli, task, "-e", str(path)], stdout=fh, stderr=subprocess.STDOUT, check=False)
    if proc.returncode != 0:
        tail = "\n".join(log.read_text().splitlines()[-20:])
        raise SystemExit(f"rtdetr {task} failed ({proc.returncode}):\n{tail}")
    return time.perf_counter() - start


def epochs_of(task_dir: Path) -> list[dict]:
    """Per validated epoch of a run: val_mAP, val_mAP50, train_loss and distill_loss (status.json)."""
    from rtdetr.common.status import read_status

    rows = []
    for line in read_status(task_dir):
        kpi = line.get("kpi") or {}
        if line.get("status") == "RUNNING" and "epoch" in line and "val_mAP" in kpi:
            rows.append({"epoch": line["epoch"], **{k: kpi.get(k) for k in
                         ("val_mAP", "val_mAP50", "train_loss", "distill_loss")}})  # fmt: skip
    return rows


def step_times(task_dir: Path, steps_per_epoch: int) -> list[float]:
    """Seconds per training step: per epoch, (last - first logged step time) / (steps between)."""
    steps = sorted(event_times(task_dir).get("train_loss_step", []))
    out = []
    for e in range(max((s for s, _ in steps), default=-1) // steps_per_epoch + 1):
        own = [(s, t) for s, t in steps if e * steps_per_epoch <= s < (e + 1) * steps_per_epoch]
        if len(own) > 1 and own[-1][0] > own[0][0]:
            out.append((own[-1][1] - own[0][1]) / (own[-1][0] - own[0][0]))
    return out


def tables(runs: dict[str, dict], epochs: int) -> str:
    names = list(runs)
    head = "| epoch | " + " | ".join(f"{n} mAP | {n} mAP50" for n in names) + " |"
    lines = [head, "|---:|" + "---:|---:|" * len(names)]
    for e in range(epochs):
        cells = []
        for n in names:
            row = next((r for r in runs[n]["epochs"] if r["epoch"] == e), {})
            cells += [f"{row['val_mAP']:.4f}" if row else "-", f"{row['val_mAP50']:.4f}" if row else "-"]
        lines.append(f"| {e} | " + " | ".join(cells) + " |")
    base = runs[names[0]].get("median_step_s")
    lines += ["", "| run | median step s | vs student alone | wall min |", "|---|---:|---:|---:|"]
    for n in names:
        step = runs[n].get("median_step_s")
        ratio = f"{step / base:.2f}x" if step and base else "-"
        lines.append(
            f"| {n} | {step:.2f} | {ratio} | {runs[n]['wall_s'] / 60:.1f} |"
            if step
            else f"| {n} | - | - | - |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argument_parser(__doc__, bccd=True)
    parser.add_argument("--size", type=int, default=320, help="square train and eval size")
    parser.add_argument("--teacher-backbone", default="resnet_50")
    parser.add_argument("--teacher-dec-layers", type=int, default=6)
    parser.add_argument("--teacher-expansion", type=float, default=1.0)
    parser.add_argument("--teacher-epochs", type=int, default=12)
    parser.add_argument(
        "--teacher-checkpoint", type=Path, help="a teacher already trained (skips its training)"
    )
    parser.add_argument("--student-backbone", default="resnet_18")
    parser.add_argument("--student-dec-layers", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=6, help="each student's epochs")
    parser.add_argument("--iou-weight", type=float, default=20.0)
    parser.add_argument("--l2-weight", type=float, default=1.0)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--results-dir", type=Path, default=DEFAULT_RESULTS, help="emptied first")
    parser.add_argument("--rtdetr", default=None, help="the CLI to run (default: rtdetr beside this python)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    check_bccd(parser, args.data)
    cli = args.rtdetr or str(Path(sys.executable).parent / "rtdetr")
    if not Path(cli).exists() and shutil.which(cli) is None:
        parser.error(f"cannot find the rtdetr CLI at {cli}")
    if args.results_dir.exists():
        shutil.rmtree(args.results_dir)
    steps_per_epoch = count_images(args.data / "annotations/instances_train.json") // args.batch

    teacher_model = model_section(args.teacher_backbone, args.teacher_dec_layers, args.teacher_expansion)
    report: dict = {"teacher": {"model": teacher_model}}
    if args.teacher_checkpoint:
        teacher_ckpt = args.teacher_checkpoint
    else:
        folder = args.results_dir / "teacher"
        spec = make_spec(args, folder, teacher_model, args.teacher_epochs, args.teacher_epochs)
        report["teacher"]["wall_s"] = run(cli, "train", spec, folder)
        teacher_ckpt = folder / "train" / "rtdetr_model_latest.pth"
        report["teacher"]["epochs"] = epochs_of(folder / "train")
        report["teacher"]["median_step_s"] = statistics.median(step_times(folder / "train", steps_per_epoch))
    report["teacher"]["checkpoint"] = str(teacher_ckpt)

    student = model_section(args.student_backbone, args.student_dec_layers, 0.5)
    bindings = {
        "alone": None,
        "IOU srcs": {"criterion": "IOU", "weight": args.iou_weight},
        "L2 srcs": {"criterion": "L2", "weight": args.l2_weight},
    }
    runs: dict[str, dict] = {}
    for name, binding in bindings.items():
        folder = args.results_dir / name.replace(" ", "_").lower()
        spec = make_spec(args, folder, student, args.epochs, 1)
        task = "train"
        if binding:
            task = "distill"
            spec["distill"] = {
                "teacher": teacher_model,
                "pretrained_teacher_model_path": str(teacher_ckpt),
                "bindings": [{"teacher_module_name": "srcs", "student_module_name": "srcs", **binding}],
            }
        wall = run(cli, task, spec, folder)
        steps = step_times(folder / task, steps_per_epoch)
        runs[name] = {"task": task, "binding": binding, "wall_s": wall, "epochs": epochs_of(folder / task),
                      "median_step_s": statistics.median(steps) if steps else None}  # fmt: skip

    text = tables(runs, args.epochs)
    teacher_rows = report["teacher"].get("epochs") or []
    if teacher_rows:
        last = teacher_rows[-1]
        text = (f"teacher {args.teacher_backbone} after {args.teacher_epochs} epochs: val mAP "
                f"{last['val_mAP']:.4f}, mAP50 {last['val_mAP50']:.4f}\n\n") + text  # fmt: skip
    print(text)
    report.update(
        date=datetime.date.today().isoformat(),
        command=command_line(argv),
        machine=machine("the CLI's default"),
        settings={k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        steps_per_epoch=steps_per_epoch,
        student={"model": student},
        runs=runs,
    )
    write_report(args.out, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
