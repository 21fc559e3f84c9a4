"""Resident memory of the data loader: dataset_type "default" (python lists) vs "serialized" (packed bytes).

Generates a large COCO file (every image points at one small JPEG), then for each dataset_type runs, in
a fresh interpreter, a DataLoader with N forked workers over a few hundred batches and sums the PSS
(proportional set size: shared pages counted once overall) and USS (private pages) of the main
process and its workers from /proc/<pid>/smaps_rollup. Prints a Markdown table, writes JSON.

    python bench/dataset_memory.py [--images 100000] [--boxes 7] [--workers 8] [--batches 300]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

RESULTS = Path(__file__).resolve().parent / "results" / "dataset_memory.json"


def make_annotations(folder: Path, images: int, boxes: int, seed: int = 0) -> Path:
    """A COCO file of `images` 640x480 images with `boxes` boxes each, all pointing at one JPEG."""
    Image.new("RGB", (64, 48), (120, 80, 40)).save(folder / "image.jpg")
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, 400, (images, boxes, 2)).round(2)
    wh = rng.uniform(4, 200, (images, boxes, 2)).round(2)
    cats = rng.integers(1, 81, (images, boxes))
    anns, ann_id = [], 0
    for i in range(images):
        for k in range(boxes):
            ann_id += 1
            w, h = float(wh[i, k, 0]), float(wh[i, k, 1])
            anns.append({
                "id": ann_id, "image_id": i + 1, "category_id": int(cats[i, k]), "iscrowd": 0,
                "bbox": [float(xy[i, k, 0]), float(xy[i, k, 1]), w, h], "area": round(w * h, 2),
            })  # fmt: skip
    data = {
        "images": [
            {
                "id": i + 1,
                "file_name": "image.jpg",
                "width": 640,
                "height": 480,
                "license": 1,
                "coco_url": f"http://example.invalid/{i + 1:012d}.jpg",
                "date_captured": "2024-01-01",
            }
            for i in range(images)
        ],  # fmt: skip
        "annotations": anns,
        "categories": [{"id": k, "name": f"class{k}", "supercategory": "thing"} for k in range(1, 81)],
    }
    path = folder / "instances.json"
    path.write_text(json.dumps(data))
    return path


def _memory_kb(pid: int) -> dict[str, int]:
    """Pss / Rss / USS (Private_Clean + Private_Dirty) in kB of one process."""
    fields = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 2 and parts[0].endswith(":") and parts[1].isdigit():
                fields[parts[0][:-1]] = int(parts[1])
    return {
        "pss": fields["Pss"],
        "rss": fields["Rss"],
        "uss": fields["Private_Clean"] + fields["Private_Dirty"],
    }


def _children(pid: int) -> list[int]:
    kids = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as f:
            kids += [int(p) for p in f.read().split()]
    return kids


def _tree_memory(pid: int) -> dict[str, float]:
    """MB summed over the main process and its loader workers."""
    main = _memory_kb(pid)
    workers = []
    for child in _children(pid):
        try:
            workers.append(_memory_kb(child))
        except (FileNotFoundError, ProcessLookupError, KeyError):
            continue
    return {
        "main_pss_mb": main["pss"] / 1024,
        "total_pss_mb": (main["pss"] + sum(w["pss"] for w in workers)) / 1024,
        "total_uss_mb": (main["uss"] + sum(w["uss"] for w in workers)) / 1024,
        "worker_uss_mb_mean": (sum(w["uss"] for w in workers) / len(workers) / 1024) if workers else 0.0,
        "workers_seen": len(workers),
    }


def run_one(json_file: Path, dataset_type: str, workers: int, batches: int, batch_size: int) -> dict:
    """Load, build the dataset, iterate `batches` batches; memory sampled along the way (this process)."""
    import torch

    from rtdetr.data.coco import load_coco
    from rtdetr.data.dataset import CocoDetection
    from rtdetr.data.loader import build_train_loader
    from rtdetr.data.transforms import EvalPreset

    torch.set_num_threads(1)
    start = time.perf_counter()
    source = load_coco(json_file, json_file.parent, num_classes=91)
    records = source.records
    dataset = CocoDetection(records, EvalPreset([32, 32]), dataset_type=dataset_type)
    del source, records
    gc.collect()
    build_s = time.perf_counter() - start
    before = _tree_memory(os.getpid())
    loader = build_train_loader(dataset, batch_size, workers, False, None, seed=0)
    samples, peak = [], None
    start = time.perf_counter()
    for i, _ in enumerate(loader):
        if (i + 1) % max(1, batches // 10) == 0 or i + 1 == batches:
            mem = _tree_memory(os.getpid())
            samples.append({"batch": i + 1, **mem})
            peak = mem if peak is None or mem["total_pss_mb"] > peak["total_pss_mb"] else peak
        if i + 1 == batches:
            break
    iterate_s = time.perf_counter() - start
    return {
        "dataset_type": dataset_type,
        "images": len(dataset),
        "build_s": round(build_s, 2),
        "iterate_s": round(iterate_s, 2),
        "main_pss_before_loader_mb": round(before["main_pss_mb"], 1),
        "peak": {k: round(v, 1) if isinstance(v, float) else v for k, v in peak.items()},
        "final": {k: round(v, 1) if isinstance(v, float) else v for k, v in samples[-1].items()},
        "samples": samples,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--boxes", type=int, default=7)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--batches", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--types", nargs="+", default=["default", "serialized"])
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--run", help=argparse.SUPPRESS)  # internal: one dataset_type in this process
    parser.add_argument("--json-file", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.run:
        result = run_one(args.json_file, args.run, args.workers, args.batches, args.batch_size)
        sys.stdout.write(json.dumps(result) + "\n")
        return 0

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        json_file = make_annotations(Path(tmp), args.images, args.boxes)
        size_mb = json_file.stat().st_size / 2**20
        sys.stderr.write(
            f"annotations: {json_file.stat().st_size / 2**20:.0f} MB in {time.perf_counter() - start:.0f} s\n"
        )
        results = []
        for dataset_type in args.types:
            cmd = [sys.executable, __file__, "--run", dataset_type, "--json-file", str(json_file),
                   "--workers", str(args.workers), "--batches", str(args.batches),
                   "--batch-size", str(args.batch_size)]  # fmt: skip
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            results.append(json.loads(out.strip().splitlines()[-1]))
            sys.stderr.write(f"{dataset_type}: done\n")

    setup = {
        "images": args.images, "boxes_per_image": args.boxes, "annotation_file_mb": round(size_mb, 1),
        "workers": args.workers, "batches": args.batches, "batch_size": args.batch_size,
        "cpu_count": os.cpu_count(), "python": sys.version.split()[0],
    }  # fmt: skip
    lines = [
        f"{args.images} images x {args.boxes} boxes ({size_mb:.0f} MB JSON), {args.workers} workers, "
        f"{args.batches} batches of {args.batch_size}; MB summed over main process + workers",
        "",
        "| dataset_type | main PSS before loader | total PSS (peak) | total USS (peak) | USS per worker | time |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        p = r["peak"]
        lines.append(
            f"| {r['dataset_type']} | {r['main_pss_before_loader_mb']:.0f} | {p['total_pss_mb']:.0f} | "
            f"{p['total_uss_mb']:.0f} | {p['worker_uss_mb_mean']:.0f} | {r['iterate_s']:.1f} s |"
        )
    sys.stdout.write("\n".join(lines) + "\n")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"setup": setup, "results": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
