"""COCO evaluation time: ours (rtdetr's evaluate_coco, faster-coco-eval) against pycocotools.

Generates a ground truth of N images (1-15 boxes each, 80 categories, COCO-like sizes) and M
detections per image (half of them jittered copies of true boxes with high scores, the rest random
boxes with low scores, random classes), then times, in interleaved rounds, the whole evaluation
from the in-memory ground-truth dict and results list to the 12 numbers:

- ours: ``rtdetr.evaluation.coco.evaluate_coco(gt, results)`` (what `rtdetr evaluate` calls);
- pycocotools: ``COCO()`` + ``createIndex``, ``loadRes``, ``COCOeval`` evaluate/accumulate/summarize.

Both must give the same 12 numbers (to 1e-9) before any time counts. Prints a Markdown table and
writes JSON. Target: ours at least 3x faster.

    python bench/eval_speed.py [--images 5000] [--detections 100] [--rounds 2]
"""

from __future__ import annotations

import contextlib
import copy
import io
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from common import argument_parser, command_line, machine, target_verdict, write_report

RESULTS = Path(__file__).resolve().parent / "results" / "eval_speed.json"
TARGET = 3.0


def generate(images: int, detections: int, seed: int = 0) -> tuple[dict, list[dict]]:
    """A ground-truth dict (COCO layout) and a results list, deterministic in ``seed``."""
    rng = np.random.default_rng(seed)
    gt_images, anns, results = [], [], []
    for image_id in range(1, images + 1):
        gt_images.append({"id": image_id, "width": 640, "height": 480})
        n = int(rng.integers(1, 16))
        wh = np.exp(rng.uniform(np.log(8), np.log(300), (n, 2)))
        xy = rng.uniform(0, 1, (n, 2)) * (np.array([640, 480]) - wh)
        cats = rng.integers(1, 81, n)
        for k in range(n):
            anns.append({"id": len(anns) + 1, "image_id": image_id, "category_id": int(cats[k]),
                         "bbox": [*map(float, xy[k]), *map(float, wh[k])], "area": float(wh[k].prod()),
                         "iscrowd": 0})  # fmt: skip
        near = detections // 2
        pick = rng.integers(0, n, near)
        jitter = rng.normal(0, 0.1, (near, 4)) * np.concatenate([wh[pick], wh[pick]], 1)
        boxes = np.concatenate([xy[pick], wh[pick]], 1) + jitter
        boxes[:, 2:] = np.maximum(boxes[:, 2:], 1)
        labels = np.where(rng.uniform(size=near) < 0.8, cats[pick], rng.integers(1, 81, near))
        scores = rng.uniform(0.3, 1.0, near)
        far = detections - near
        fwh = np.exp(rng.uniform(np.log(8), np.log(300), (far, 2)))
        fxy = rng.uniform(0, 1, (far, 2)) * (np.array([640, 480]) - fwh)
        boxes = np.concatenate([boxes, np.concatenate([fxy, fwh], 1)])
        labels = np.concatenate([labels, rng.integers(1, 81, far)])
        scores = np.concatenate([scores, rng.uniform(0.0, 0.5, far)])
        results += [{"image_id": image_id, "category_id": int(c), "bbox": [float(v) for v in b], "score": float(s)}
                    for b, c, s in zip(boxes, labels, scores)]  # fmt: skip
    categories = [{"id": c, "name": f"class_{c}"} for c in range(1, 81)]
    return {"images": gt_images, "annotations": anns, "categories": categories}, results


def ours(gt: dict, results: list[dict]) -> list[float]:
    from rtdetr.evaluation.coco import evaluate_coco

    return list(evaluate_coco(gt, results)["stats"].values())


def pycocotools(gt: dict, results: list[dict]) -> list[float]:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = copy.deepcopy(gt)
        coco.createIndex()
        evaluator = COCOeval(coco, coco.loadRes(copy.deepcopy(results)), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return [float(v) for v in evaluator.stats]


SIDES = {"ours": ours, "pycocotools": pycocotools}


def main(argv: list[str] | None = None) -> int:
    parser = argument_parser(__doc__)
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--detections", type=int, default=100, help="detections per image")
    parser.add_argument("--rounds", type=int, default=2, help="timed runs per side, interleaved")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    import faster_coco_eval
    import pycocotools as pct

    gt, results = generate(args.images, args.detections)
    print(f"{args.images} images, {len(gt['annotations'])} boxes, {len(results)} detections", file=sys.stderr)
    times: dict[str, list[float]] = {name: [] for name in SIDES}
    stats: dict[str, list[float]] = {}
    for r in range(args.rounds):
        for name in list(SIDES)[r % 2 :] + list(SIDES)[: r % 2]:
            start = time.perf_counter()
            stats[name] = SIDES[name](gt, results)
            times[name].append(time.perf_counter() - start)
            print(f"round {r + 1}: {name} {times[name][-1]:.2f} s", file=sys.stderr)
        worst = max(abs(a - b) for a, b in zip(stats["ours"], stats["pycocotools"]))
        if worst > 1e-9:
            raise SystemExit(
                f"the 12 numbers differ by {worst:.3g}: ours {stats['ours']}, pycocotools {stats['pycocotools']}"
            )
    median = {name: statistics.median(t) for name, t in times.items()}
    ratio = median["pycocotools"] / median["ours"]
    print("| side | median s | min s | speed-up |\n|---|---:|---:|---:|")
    for name in SIDES:
        speed = f"**{ratio:.2f}x**" if name == "ours" else "1.00x"
        print(f"| {name} | {median[name]:.2f} | {min(times[name]):.2f} | {speed} |")
    print(
        f"\nthe 12 numbers agree (max difference {worst:.1e}); mAP {stats['ours'][0]:.4f}, mAP50 {stats['ours'][1]:.4f}"
    )
    report = {
        "benchmark": "eval_speed",
        "command": command_line(argv),
        "machine": machine(1, faster_coco_eval=faster_coco_eval.__version__, pycocotools=getattr(pct, "__version__", "?")),
        "settings": {"images": args.images, "boxes": len(gt["annotations"]), "detections": len(results), "rounds": args.rounds},
        "times_s": times,
        "median_s": median,
        "speedup": ratio,
        "stats": stats["ours"],
        "max_stat_difference": worst,
        **target_verdict(f"ours >= {TARGET}x faster than pycocotools", TARGET, ratio >= TARGET),
    }  # fmt: skip
    write_report(args.out, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
