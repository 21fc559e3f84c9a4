"""Train an r18vd-sized RT-DETR from scratch on BCCD through the real CLI.

Writes a spec (backbone resnet_18vd, expansion 0.5, dec_layers 3, hidden 256, no pretrained
weights; BCCD train, validated on BCCD val every epoch; --size x --size with multi_scales off;
activation checkpointing off; fp32; no EMA) to the results directory, runs
``rtdetr train -e <spec>`` as a subprocess, then reads the run's status.json (per-epoch val_mAP,
val_mAP50, train_loss, time_per_epoch) and, when tensorboard is installed, the TensorBoard event
times to split each epoch into training and validation. Prints a Markdown table and writes JSON.

images/s: "epoch" is training images per epoch / time_per_epoch of status.json (whole seconds,
training plus validation); "train" is from the TensorBoard times of the first and last logged
training steps of the epoch ((steps - 1) * batch / time between them, so loader start-up at the
epoch's start is excluded).

    python bench/train_bccd.py [--epochs 12] [--size 320] [--batch 8] [--workers 2]
                               [--results-dir bench_runs/bccd] [--data /path/to/bccd]
                               [--out bench/results/train_bccd.json] [-- extra dotted overrides]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from common import argument_parser, bccd_sources, check_bccd, command_line, machine, write_report

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "train_bccd.json"
DEFAULT_RESULTS = Path("bench_runs/bccd")


def make_spec(args: argparse.Namespace, train_dir: Path) -> dict:
    return {
        "results_dir": str(args.results_dir),
        "model": {
            "backbone": "resnet_18vd",
            "expansion": 0.5,
            "dec_layers": 3,
            "hidden_dim": 256,
            "num_queries": 300,
            "num_select": 300,
        },
        "dataset": {
            **bccd_sources(args.data),
            "num_classes": 4,  # BCCD category ids 1..3 are logit indices: 3 + 1
            "batch_size": args.batch,
            "workers": args.workers,
            "dataset_type": "serialized",
            "augmentation": {
                "train_spatial_size": [args.size, args.size],
                "eval_spatial_size": [args.size, args.size],
                "multi_scales": [],
            },
        },
        "train": {
            "results_dir": str(train_dir),
            "num_epochs": args.epochs,
            "validation_interval": 1,
            "checkpoint_interval": args.epochs,
            "seed": args.seed,
            "precision": "fp32",
            "enable_ema": False,
            "activation_checkpoint": False,
            "optim": {
                "lr": args.lr,
                "lr_backbone": args.lr_backbone,
                "warmup_steps": args.warmup_steps,
                "lr_steps": [10_000],  # constant lr over this short budget
            },
        },
    }


def hms_seconds(text: str) -> int:
    h, m, s = (int(v) for v in text.split(":"))
    return h * 3600 + m * 60 + s


def event_times(train_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """{tag: [(step, wall_time)]} of the run's TensorBoard scalars ({} without tensorboard)."""
    try:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    except ImportError:
        return {}
    acc = EventAccumulator(str(train_dir / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.wall_time) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def split_epochs(events: dict, epochs: int, steps_per_epoch: int) -> list[dict]:
    """Per epoch: training time between its first and last logged step, and validation time
    (val_mAP's time minus the epoch's last step's time)."""
    steps = sorted(events.get("train_loss_step", []))
    val = sorted(t for _, t in events.get("val_mAP", []))
    out = []
    for e in range(epochs):
        own = [t for s, t in steps if e * steps_per_epoch <= s < (e + 1) * steps_per_epoch]
        item: dict = {"epoch": e, "logged_steps": len(own)}
        if len(own) > 1:
            item["train_s_first_to_last_step"] = own[-1] - own[0]
            if e < len(val):
                item["val_s"] = val[e] - own[-1]
        out.append(item)
    return out


def count_images(json_file: Path) -> int:
    return len(json.loads(json_file.read_text())["images"])


def markdown_table(rows: list[dict]) -> str:
    lines = [
        "| epoch | train_loss | val_mAP | val_mAP50 | time/epoch s | train s | val s | images/s (epoch) "
        "| images/s (train) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]

    def f(v, fmt):
        return "-" if v is None else format(v, fmt)

    for r in rows:
        lines.append(
            f"| {r['epoch']} | {f(r.get('train_loss'), '.3f')} | {f(r.get('val_mAP'), '.4f')} "
            f"| {f(r.get('val_mAP50'), '.4f')} | {f(r.get('time_per_epoch_s'), 'd')} "
            f"| {f(r.get('train_s'), '.1f')} | {f(r.get('val_s'), '.1f')} "
            f"| {f(r.get('images_per_s_epoch'), '.2f')} | {f(r.get('images_per_s_train'), '.2f')} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argument_parser(__doc__, bccd=True)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--size", type=int, default=320, help="square train and eval size")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--lr-backbone", type=float, default=1e-4, help="from scratch: as --lr")
    parser.add_argument("--warmup-steps", type=int, default=50)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument(
        "--results-dir", type=Path, default=DEFAULT_RESULTS, help="spec results_dir (emptied first)"
    )
    parser.add_argument("--rtdetr", default=None, help="the CLI to run (default: rtdetr beside this python)")
    parser.add_argument(
        "--parse-only",
        action="store_true",
        help="do not train: read the run already in --results-dir (e.g. one stopped early)",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("overrides", nargs="*", help="extra dotted overrides passed to rtdetr train")
    args = parser.parse_args(argv)
    if args.epochs < 1 or args.batch < 1:
        parser.error("--epochs and --batch must be >= 1")
    check_bccd(parser, args.data)
    cli = args.rtdetr or str(Path(sys.executable).parent / "rtdetr")
    if not Path(cli).exists() and shutil.which(cli) is None:
        parser.error(f"cannot find the rtdetr CLI at {cli}")

    import yaml

    train_dir = args.results_dir / "train"
    spec_path = args.results_dir / "spec.yaml"
    cmd = [cli, "train", "-e", str(spec_path), *args.overrides]
    train_images = count_images(args.data / "annotations/instances_train.json")
    steps_per_epoch = train_images // args.batch  # the training loader drops the last partial batch
    if args.parse_only:
        wall = None
    else:
        if args.results_dir.exists():
            shutil.rmtree(args.results_dir)
        args.results_dir.mkdir(parents=True)
        spec_path.write_text(yaml.safe_dump(make_spec(args, train_dir), sort_keys=False))
        print(f"running: {' '.join(cmd)} (log: {args.results_dir / 'train.log'})", file=sys.stderr)
        start = time.perf_counter()
        with (args.results_dir / "train.log").open("w") as log:
            proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, check=False)
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            tail = (args.results_dir / "train.log").read_text().splitlines()[-20:]
            raise SystemExit(f"rtdetr train failed ({proc.returncode}):\n" + "\n".join(tail))

    from rtdetr.common.status import read_status

    status = read_status(train_dir)
    split = split_epochs(event_times(train_dir), args.epochs, steps_per_epoch)
    rows = []
    for line in status:
        if line.get("status") != "RUNNING" or "epoch" not in line or "time_per_epoch" not in line:
            continue
        kpi = line.get("kpi", {})
        secs = hms_seconds(line["time_per_epoch"])
        row = {
            "epoch": line["epoch"],
            "train_loss": kpi.get("train_loss"),
            "val_mAP": kpi.get("val_mAP"),
            "val_mAP50": kpi.get("val_mAP50"),
            "val_loss": kpi.get("val_loss"),
            "time_per_epoch_s": secs,
            "images_per_s_epoch": steps_per_epoch * args.batch / secs if secs else None,
        }
        s = split[line["epoch"]] if line["epoch"] < len(split) else {}
        if "train_s_first_to_last_step" in s:
            row["train_s"] = s["train_s_first_to_last_step"]
            row["images_per_s_train"] = (s["logged_steps"] - 1) * args.batch / s["train_s_first_to_last_step"]
        if "val_s" in s:
            row["val_s"] = s["val_s"]
        rows.append(row)
    final = [s for s in status if s.get("status") in ("SUCCESS", "FAILURE")]

    print(markdown_table(rows))
    best = max((r for r in rows if r.get("val_mAP") is not None), key=lambda r: r["val_mAP"], default=None)
    summary = {
        "epochs": args.epochs,
        "epochs_completed": len(rows),
        "wall_s": wall,
        "steps_per_epoch": steps_per_epoch,
        "best_val_mAP": best and best["val_mAP"],
        "best_val_mAP50": max((r["val_mAP50"] for r in rows if r.get("val_mAP50") is not None), default=None),
        "final_status": final[-1]["status"] if final else None,
    }
    train_rates = [r["images_per_s_train"] for r in rows if r.get("images_per_s_train")]
    if train_rates:
        summary["median_images_per_s_train"] = sorted(train_rates)[len(train_rates) // 2]
    took = "" if wall is None else f" in {wall / 60:.1f} min (wall, incl. start-up)"
    print(
        f"\n{len(rows)} of {args.epochs} epochs{took}; best val_mAP {summary['best_val_mAP']}, "
        f"best val_mAP50 {summary['best_val_mAP50']}; final status {summary['final_status']}"
    )
    report = {
        "benchmark": "train_bccd",
        "command": command_line(argv),
        "cli_command": " ".join(cmd),
        "machine": machine("torch default in the CLI process (= cores)"),
        "spec": make_spec(args, train_dir),
        "train_images": train_images,
        "summary": summary,
        "epochs": rows,
    }
    write_report(args.out, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
