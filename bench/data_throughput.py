"""Data loader throughput on BCCD train against the model's consumption rate.

The training loader is built exactly as `rtdetr train` builds it (``build_training_data`` of
rtdetr.engine.data: COCO sources, CocoDetection with dataset_type serialized, TAO's train
augmentation preset, the deterministic batch sampler, forked workers), for each size in --sizes
(train_spatial_size [s, s]; multi_scales off unless --multi-scales, so that a batch really is s x s).

Per size it measures, in one process:

1. loader: one pass over the loader (--batches, default a full epoch), images/s after the first
   batch (the first batch's latency, which includes starting the workers, is reported apart);
2. model: images/s of training steps of an r18vd model (backbone resnet_18vd, expansion 0.5,
   dec_layers 3, num_classes 4, the engine's criterion, AdamW groups, total_loss) in the main
   process on real batches taken from the loader (held in memory, so no loading is timed);
3. pipeline (unless --no-pipeline): the same training steps fed by the loader while its workers
   run, i.e. what a training epoch sees when loader and model share the machine's cores.

Each size runs in a fresh subprocess. Peak memory: the main process' ru_maxrss (loader pass, then
after the model steps), the workers' ru_maxrss (RUSAGE_CHILDREN, the largest
worker) and, sampled every 50 ms, the summed PSS and RSS of the main process and its workers during
the loader pass (PSS counts pages shared by the forked workers once).

    python bench/data_throughput.py [--sizes 640 320] [--batch 4] [--workers 2] [--threads 2]
                                    [--batches 0] [--steps 8] [--warmup 2]
                                    [--data /path/to/bccd]
                                    [--out bench/results/data_throughput.json]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch
from common import (
    argument_parser,
    bccd_sources,
    check_bccd,
    command_line,
    cpu_name,
    engine_optimizer,
    machine,
    write_report,
)

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "data_throughput.json"
NUM_CLASSES = 4  # BCCD categories 1..3 are logit indices


def spec(data: Path, size: int, args: argparse.Namespace):
    from rtdetr.config import load_spec

    return load_spec(
        {
            "model": {"backbone": "resnet_18vd", "expansion": 0.5, "dec_layers": 3, "hidden_dim": 256},
            "dataset": {
                **bccd_sources(data),
                "num_classes": NUM_CLASSES,
                "batch_size": args.batch,
                "workers": args.workers,
                "dataset_type": args.dataset_type,
                "augmentation": {
                    "train_spatial_size": [size, size],
                    "eval_spatial_size": [size, size],
                    "multi_scales": args.multi_scales,
                },
            },
            "train": {"seed": 0},
        }
    )


def _children(pid: int) -> list[int]:
    try:
        found = [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []
    return found + [g for c in found for g in _children(c)]


def _memory_kb(pid: int) -> tuple[int, int]:
    """(PSS, RSS) of a process in kB; (0, 0) if it is gone."""
    pss = rss = 0
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                pss = int(line.split()[1])
            elif line.startswith("Rss:"):
                rss = int(line.split()[1])
    except (OSError, ValueError):
        pass
    return pss, rss


class MemorySampler:
    """Peak summed PSS / RSS of this process and its descendants, sampled in a thread."""

    def __init__(self, interval: float = 0.05):
        self.interval = interval
        self.peak_pss_kb = self.peak_rss_kb = self.max_processes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        me = os.getpid()
        while not self._stop.is_set():
            pids = [me, *_children(me)]
            mem = [_memory_kb(p) for p in pids]
            self.peak_pss_kb = max(self.peak_pss_kb, sum(m[0] for m in mem))
            self.peak_rss_kb = max(self.peak_rss_kb, sum(m[1] for m in mem))
            self.max_processes = max(self.max_processes, len(pids))
            self._stop.wait(self.interval)

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def loader_pass(loader, max_batches: int) -> dict:
    """Iterate the loader; images/s after the first batch."""
    stamps, images = [], 0
    start = time.perf_counter()
    with MemorySampler() as mem:
        for i, (batch, _targets) in enumerate(loader):
            stamps.append(time.perf_counter())
            images += batch.shape[0]
            if max_batches and i + 1 >= max_batches:
                break
    steady = images - loader.batch_sampler.batch_size
    return {
        "batches": len(stamps),
        "images": images,
        "first_batch_s": stamps[0] - start,
        "images_per_s": steady / (stamps[-1] - stamps[0]) if len(stamps) > 1 else float("nan"),
        "images_per_s_incl_startup": images / (stamps[-1] - start),
        "peak_pss_mb_main_plus_workers": mem.peak_pss_kb / 1024,
        "peak_rss_mb_main_plus_workers": mem.peak_rss_kb / 1024,
        "processes": mem.max_processes,
        "image_shape": list(batch.shape[1:]),
    }


def build_trainee(cfg):
    """The r18vd model, criterion and optimizer as the engine builds them."""
    from rtdetr.config import spec_to_dict
    from rtdetr.engine.trainer import build_criterion
    from rtdetr.model.checkpoint import ModelMetadata, build_from_metadata

    meta = ModelMetadata(
        model=spec_to_dict(cfg.model),
        num_classes=NUM_CLASSES,
        class_names=[],
        category_ids=None,
        input_size=list(cfg.dataset.augmentation.eval_spatial_size),
    )
    model = build_from_metadata(meta).train()
    return model, build_criterion(cfg.model, NUM_CLASSES), engine_optimizer(model, cfg)


def train_step(model, criterion, optimizer, images, targets) -> None:
    from rtdetr.loss import total_loss

    optimizer.zero_grad(set_to_none=True)
    loss = total_loss(criterion(model(images, targets), targets))
    loss.backward()
    optimizer.step()


def model_rate(trainee, batches: list, warmup: int, steps: int) -> dict:
    """Training steps on batches held in memory."""
    times = []
    for i in range(warmup + steps):
        images, targets = batches[i % len(batches)]
        start = time.perf_counter()
        train_step(*trainee, images, targets)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    batch = batches[0][0].shape[0]
    return {
        "steps": steps,
        "median_step_s": statistics.median(times),
        "images_per_s": batch / statistics.median(times),
        "step_times_s": times,
    }


def pipeline_rate(trainee, loader, warmup: int, steps: int) -> dict:
    """Training steps fed by the loader (workers running): wall time per step and time waiting."""
    times, waits = [], []
    it = iter(loader)
    for i in range(warmup + steps):
        start = time.perf_counter()
        try:
            images, targets = next(it)
        except StopIteration:
            it = iter(loader)
            images, targets = next(it)
        got = time.perf_counter()
        train_step(*trainee, images, targets)
        if i >= warmup:
            times.append(time.perf_counter() - start)
            waits.append(got - start)
    del it  # shuts the workers down
    batch = loader.batch_sampler.batch_size
    return {
        "steps": steps,
        "median_step_s": statistics.median(times),
        "images_per_s": batch / statistics.median(times),
        "mean_wait_for_data_s": statistics.fmean(waits),
        "step_times_s": times,
    }


def bench_size(size: int, args: argparse.Namespace) -> dict:
    from rtdetr.engine.data import build_training_data

    cfg = spec(args.data, size, args)
    with tempfile.TemporaryDirectory() as tmp:
        data = build_training_data(cfg, Path(tmp))
    loader = data.train_loader
    print(f"{size}: {len(loader)} batches of {args.batch} per epoch; loader pass ...", file=sys.stderr)
    loading = loader_pass(loader, args.batches)
    loading["main_maxrss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    loading["worker_maxrss_mb"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(f"{size}: loader {loading['images_per_s']:.1f} images/s; model steps ...", file=sys.stderr)

    batches, it = [], iter(loader)
    for _ in range(min(4, len(loader))):
        batches.append(next(it))
    del it
    trainee = build_trainee(cfg)
    consuming = model_rate(trainee, batches, args.warmup, args.steps)
    print(f"{size}: model {consuming['images_per_s']:.2f} images/s", file=sys.stderr)
    result = {"size": size, "loader": loading, "model": consuming}
    if not args.no_pipeline:
        result["pipeline"] = pipeline_rate(trainee, loader, args.warmup, args.steps)
        print(f"{size}: pipeline {result['pipeline']['images_per_s']:.2f} images/s", file=sys.stderr)
    result["loader_over_model"] = loading["images_per_s"] / consuming["images_per_s"]
    result["main_maxrss_mb_after_training"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return result


def run_one_size(size: int, argv: list[str]) -> dict:
    """This script for one size in a subprocess; its result."""
    drop, rest = {"--sizes", "--out"}, []
    skip = False
    for a in argv:
        if a.split("=", 1)[0] in drop:
            skip = "=" not in a
            continue
        if skip and not a.startswith("--"):
            continue
        skip = False
        rest.append(a)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "one.json"
        cmd = [sys.executable, str(Path(__file__).resolve()), *rest, "--sizes", str(size), "--out", str(out)]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        return json.loads(out.read_text())["results"][0]


def markdown_table(results: list[dict], args: argparse.Namespace) -> str:
    lines = [
        f"| size | loader images/s ({args.workers} workers) | first batch s | model images/s (train step) "
        "| loader / model | pipeline images/s (wait/step s) | peak PSS MB main+workers (RSS) "
        "| ru_maxrss MB main: loader pass / +training; largest worker |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        ld, m = r["loader"], r["model"]
        p = r.get("pipeline")
        pipe = f"{p['images_per_s']:.2f} ({p['mean_wait_for_data_s']:.2f})" if p else "-"
        lines.append(
            f"| {r['size']}x{r['size']} b{args.batch} | {ld['images_per_s']:.1f} | {ld['first_batch_s']:.2f} "
            f"| {m['images_per_s']:.2f} | **{r['loader_over_model']:.1f}x** | {pipe} "
            f"| {ld['peak_pss_mb_main_plus_workers']:.0f} ({ld['peak_rss_mb_main_plus_workers']:.0f}) "
            f"| {ld['main_maxrss_mb']:.0f} / {r['main_maxrss_mb_after_training']:.0f}; {ld['worker_maxrss_mb']:.0f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argument_parser(__doc__, bccd=True)
    parser.add_argument("--sizes", type=int, nargs="+", default=[640, 320], help="square train sizes")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--workers", type=int, default=2, help="loader worker processes")
    parser.add_argument("--dataset-type", default="serialized", choices=["serialized", "default"])
    parser.add_argument(
        "--multi-scales", type=int, nargs="*", default=[], help="TAO multi_scales (default: off, fixed size)"
    )
    parser.add_argument("--batches", type=int, default=0, help="loader batches to time (0: one epoch)")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads of the main process")
    parser.add_argument("--warmup", type=int, default=2, help="untimed model steps")
    parser.add_argument("--steps", type=int, default=8, help="timed model steps (and pipeline steps)")
    parser.add_argument("--no-pipeline", action="store_true", help="skip the loader-fed training steps")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    if args.steps < 1 or args.warmup < 0 or args.batch < 1 or args.batches < 0:
        parser.error("--steps and --batch must be >= 1, --warmup and --batches >= 0")
    check_bccd(parser, args.data)

    torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, threads {torch.get_num_threads()}, CPU {cpu_name()} x{os.cpu_count()}, "
        f"batch {args.batch}, workers {args.workers}, {args.dataset_type}, sizes {args.sizes}",
        file=sys.stderr,
    )
    if len(args.sizes) == 1:
        results = [bench_size(args.sizes[0], args)]
    else:  # one fresh process per size: ru_maxrss is per process lifetime, and forked workers
        results = []  # would inherit the previous size's model
        for size in args.sizes:
            results.append(run_one_size(size, argv if argv is not None else sys.argv[1:]))
    print(markdown_table(results, args))
    report = {
        "benchmark": "data_throughput",
        "command": command_line(argv),
        "machine": machine(torch.get_num_threads()),
        "settings": {
            "data": str(args.data),
            "split": "train",
            "batch": args.batch,
            "workers": args.workers,
            "dataset_type": args.dataset_type,
            "multi_scales": args.multi_scales,
            "augmentation": "TAO train preset (distortion_prob 0.8, iou_crop_prob 0.8)",
            "model": "r18vd (resnet_18vd, expansion 0.5, dec_layers 3, hidden 256), num_classes 4",
            "warmup": args.warmup,
            "steps": args.steps,
        },
        "results": results,
    }
    write_report(args.out, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
